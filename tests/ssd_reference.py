"""Plain-PyTorch transcriptions of amdegroot/ssd.pytorch's SSD300, from its documented semantics.

Everything is in ssd.pytorch's own conventions, so the tests compare against the reference's
behaviour rather than against our code: default boxes in normalised centre form (cx, cy, w,
h) in [0, 1], GT boxes normalised xyxy, class 0 = background, and a state dict in its layout
(``vgg.<i>``, ``L2Norm.weight``, ``extras.<k>``, ``loc.<l>``, ``conf.<l>``).

Shape vocabulary: N images, R default boxes, M gts, C = K + 1 classes (background FIRST).
"""
import math

import torch
import torch.nn.functional as F

VOC = dict(feature_maps=[38, 19, 10, 5, 3, 1], min_dim=300, steps=[8, 16, 32, 64, 100, 300],
           min_sizes=[30, 60, 111, 162, 213, 264], max_sizes=[60, 111, 162, 213, 264, 315],
           aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]])
COCO = dict(VOC, min_sizes=[21, 45, 99, 153, 207, 261], max_sizes=[45, 99, 153, 207, 261, 315])
VARIANCES = (0.1, 0.2)


def prior_box(cfg, clip=True):
    """(R, 4) cx, cy, w, h: rows y outer, columns x inner, then the boxes of one cell."""
    out = []
    size = cfg["min_dim"]
    for k, f in enumerate(cfg["feature_maps"]):
        cells_per_side = size / cfg["steps"][k]
        s = cfg["min_sizes"][k] / size
        s_big = math.sqrt(s * cfg["max_sizes"][k] / size)
        for row in range(f):
            for col in range(f):
                cx, cy = (col + 0.5) / cells_per_side, (row + 0.5) / cells_per_side
                out += [[cx, cy, s, s], [cx, cy, s_big, s_big]]
                for r in cfg["aspect_ratios"][k]:
                    out += [[cx, cy, s * math.sqrt(r), s / math.sqrt(r)],
                            [cx, cy, s / math.sqrt(r), s * math.sqrt(r)]]
    priors = torch.tensor(out, dtype=torch.float32)
    return priors.clamp(0, 1) if clip else priors


def corners(c):
    return torch.cat([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], dim=1)


def jaccard(a, b):
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def encode(matched, priors):
    centre = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (VARIANCES[0] * priors[:, 2:])
    size = torch.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / VARIANCES[1]
    return torch.cat([centre, size], dim=1)


def decode(loc, priors):
    centre = priors[:, :2] + loc[:, :2] * VARIANCES[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def match(truths, labels, priors, threshold=0.5, point_form=None):
    """-> (matched GT index (R,), class target (R,) with 0 = background). ``point_form``: the
    default boxes as xyxy (the reference computes them from ``priors``; passing ours lets a
    test compare the matching rules on identical IoU values)."""
    overlaps = jaccard(truths, corners(priors) if point_form is None else point_form)  # (M, R)
    best_prior = overlaps.argmax(dim=1)          # (M,)
    best_truth_overlap, best_truth = overlaps.max(dim=0)
    best_truth_overlap[best_prior] = 2.0         # every GT's best prior is kept...
    for j in range(truths.shape[0]):             # ... for that GT, the last GT winning
        best_truth[best_prior[j]] = j
    conf = labels[best_truth] + 1
    conf[best_truth_overlap < threshold] = 0
    return best_truth, conf


def multibox_loss(loc, conf, priors, targets, neg_pos=3, point_form=None):
    """(loss_l, loss_c) of MultiBoxLoss: ``targets`` is a list of (M_i, 5) [x1, y1, x2, y2,
    label] normalised rows (``point_form``: see ``match``)."""
    n, r, c = conf.shape
    loc_t = torch.zeros(n, r, 4)
    conf_t = torch.zeros(n, r, dtype=torch.long)
    for i, t in enumerate(targets):
        idx, conf_t[i] = match(t[:, :4], t[:, 4].long(), priors, point_form=point_form)
        loc_t[i] = encode(t[idx, :4], priors)
    pos = conf_t > 0
    loss_l = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
    flat = conf.reshape(-1, c)
    mining = (torch.logsumexp(flat, dim=1) - flat.gather(1, conf_t.reshape(-1, 1))[:, 0]).detach()
    mining = mining.reshape(n, r)
    mining[pos] = 0
    rank = mining.sort(dim=1, descending=True).indices.sort(dim=1).indices
    num_neg = (neg_pos * pos.sum(dim=1, keepdim=True)).clamp(max=r - 1)
    neg = rank < num_neg
    chosen = pos | neg
    loss_c = F.cross_entropy(conf[chosen], conf_t[chosen], reduction="sum")
    total = pos.sum()
    return loss_l / total, loss_c / total


def _vgg_plan():
    """ssd.pytorch's VGG ModuleList: ("conv", index, padding, dilation) / ("pool", kind)."""
    plan, index = [], 0
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]:
        if isinstance(v, str):
            plan.append(("pool", v))
            index += 1
        else:
            plan.append(("conv", index, 1, 1))
            index += 2  # conv, ReLU
    plan += [("pool", "pool5"), ("conv", index + 1, 6, 6), ("conv", index + 3, 0, 1)]
    return plan


def forward(sd, x):
    """Raw (loc (N, R, 4), conf (N, R, C)) of an SSD300 state dict in ssd.pytorch's layout."""
    sources = []
    for step in _vgg_plan():
        if step[0] == "pool":
            kind = step[1]
            if kind == "pool5":
                x = F.max_pool2d(x, 3, 1, 1)
            else:
                x = F.max_pool2d(x, 2, 2, ceil_mode=(kind == "C"))
            continue
        _, i, pad, dil = step
        x = F.relu(F.conv2d(x, sd[f"vgg.{i}.weight"], sd[f"vgg.{i}.bias"], padding=pad,
                            dilation=dil))
        if i == 21:  # conv4_3 after its ReLU: L2-normalised copy, eps after the sqrt
            norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10
            sources.append(x / norm * sd["L2Norm.weight"].view(1, -1, 1, 1))
    sources.append(x)
    extras = [(1, 1, 0), (3, 2, 1), (1, 1, 0), (3, 2, 1), (1, 1, 0), (3, 1, 0), (1, 1, 0), (3, 1, 0)]
    for k, (_, stride, pad) in enumerate(extras):
        x = F.relu(F.conv2d(x, sd[f"extras.{k}.weight"], sd[f"extras.{k}.bias"], stride=stride,
                            padding=pad))
        if k % 2 == 1:
            sources.append(x)
    locs, confs = [], []
    for l, s in enumerate(sources):
        locs.append(F.conv2d(s, sd[f"loc.{l}.weight"], sd[f"loc.{l}.bias"], padding=1)
                    .permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4))
        c = sd[f"conf.{l}.weight"].shape[0] // (sd[f"loc.{l}.weight"].shape[0] // 4)
        confs.append(F.conv2d(s, sd[f"conf.{l}.weight"], sd[f"conf.{l}.bias"], padding=1)
                     .permute(0, 2, 3, 1).reshape(x.shape[0], -1, c))
    return torch.cat(locs, dim=1), torch.cat(confs, dim=1)


def nms(boxes, scores, overlap, top_k):
    """Greedy: the top_k highest scores, keep the best, drop the rest with IoU > overlap."""
    idx = scores.argsort()[-top_k:]
    keep = []
    while idx.numel() > 0:
        i = idx[-1]
        keep.append(int(i))
        idx = idx[:-1]
        if idx.numel() == 0:
            break
        iou = jaccard(boxes[i][None], boxes[idx])[0]
        idx = idx[iou <= overlap]
    return keep


def detect(loc, conf, priors, conf_thresh=0.01, nms_thresh=0.45, top_k=200):
    """Detect of one image: [(class >= 1, score, normalised xyxy box)] per class."""
    boxes = decode(loc, priors)
    probs = conf.softmax(dim=-1)
    out = []
    for cl in range(1, probs.shape[1]):
        mask = probs[:, cl] > conf_thresh
        if not bool(mask.any()):
            continue
        b, s = boxes[mask], probs[mask, cl]
        for k in nms(b, s, nms_thresh, top_k):
            out.append((cl, float(s[k]), b[k].tolist()))
    return out
