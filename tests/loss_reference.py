"""Plain-Python float64 references of the dense detectors' training losses.

Used by ``test_loss_reference.py`` to pin FCOS, ATSS, RetinaNet and LLA (on FCOS points and on
RetinaNet anchors) to the formulas, independently of the library: priors are generated here,
label assignment is written as loops over Python floats, and the losses are float64 tensor
arithmetic spelled out term by term so that autograd gives the reference gradients w.r.t. the
head outputs.

Every discrete decision (inside / outside, size range, top-k, argmin, IoU thresholds) asserts a
margin (``TIE``) between the competing values: the model decides in float32, the reference in
float64, and the toy batch must never sit on a boundary where the two could round differently.

Shape vocabulary: N images, M gts of one image (ignore regions, class -1, included), R priors of
one image (levels concatenated, y then x then anchor inside a level), K classes, A anchors per
location, P positives of the batch.
"""
import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["points", "anchors", "gather", "fcos_reference", "lla_reference", "retinanet_reference"]

# Minimum gap between two values a float32 decision compares (distances, costs, IoUs).
TIE = 1e-4
_BIG_TIE = 2e-3  # for LLA costs, which carry the 1000 outside penalty (float32 ulp ~6e-5)


def _apart(a: float, b: float, what: str, tol: float = TIE) -> None:
    assert abs(a - b) > tol, f"toy batch sits on a tie ({what}: {a} vs {b}); move a GT"


# ---------------------------------------------------------------- geometry (floats)
def area(b) -> float:
    return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)


def inter(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def iou(a, b) -> float:
    i = inter(a, b)
    u = area(a) + area(b) - i
    return i / u if u > 0 else 0.0


def ltrb(p, b) -> Tuple[float, float, float, float]:
    return (p[0] - b[0], p[1] - b[1], b[2] - p[0], b[3] - p[1])


# ------------------------------------------------------------------------ priors
def points(sizes: Sequence[Tuple[int, int]], strides: Sequence[int]):
    """Points (x * stride, y * stride), level by level, y outer; and each point's level."""
    pts, level = [], []
    for l, ((h, w), s) in enumerate(zip(sizes, strides)):
        for y in range(h):
            for x in range(w):
                pts.append((float(x * s), float(y * s)))
                level.append(l)
    return pts, level


def anchors(sizes, strides, anchor_sizes, ratios):
    """Anchors centred on the points: level -> y -> x -> (size outer, ratio h/w inner)."""
    out = []
    for l, ((h, w), s) in enumerate(zip(sizes, strides)):
        for y in range(h):
            for x in range(w):
                for size in anchor_sizes[l]:
                    for r in ratios:
                        aw = math.sqrt(size * size / r)
                        ah = r * aw
                        cx, cy = x * s, y * s
                        out.append((cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2))
    return out


def gather(per_level: List[torch.Tensor], d: int) -> torch.Tensor:
    """Per-level (N, A*d, H, W) head outputs -> (N, R, d): prior by prior (y, x, anchor a),
    value j of prior (y, x, a) at channel a*d + j. One indexing op per level (fast backward)."""
    n = per_level[0].shape[0]
    out = []
    for t in per_level:
        a = t.shape[1] // d
        idx = [(i, k * d + j, y, x) for i in range(n) for y in range(t.shape[2])
               for x in range(t.shape[3]) for k in range(a) for j in range(d)]
        i, c, y, x = (torch.tensor(v) for v in zip(*idx))
        out.append(t[i, c, y, x].reshape(n, -1, d))
    return torch.cat(out, dim=1)


# ------------------------------------------------------------ loss formulas (f64)
def focal(x: torch.Tensor, t: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Elementwise -alpha_t (1 - p_t)^gamma log(p_t)."""
    p = torch.sigmoid(x)
    ce = -(t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x))
    p_t = p * t + (1 - p) * (1 - t)
    return (alpha * t + (1 - alpha) * (1 - t)) * (1 - p_t) ** gamma * ce


def bce(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -(t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x))


def box_loss(pred: torch.Tensor, gt: torch.Tensor, kind: str) -> torch.Tensor:
    """(P, 4) xyxy -> (P,) "iou" (-log IoU), "linear_iou" (1 - IoU) or "giou" (1 - GIoU)."""
    iw = (torch.minimum(pred[:, 2], gt[:, 2]) - torch.maximum(pred[:, 0], gt[:, 0])).clamp(min=0)
    ih = (torch.minimum(pred[:, 3], gt[:, 3]) - torch.maximum(pred[:, 1], gt[:, 1])).clamp(min=0)
    i = iw * ih
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    u = area_p + (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) - i
    v = i / u
    if kind == "iou":
        return -torch.log(v)
    if kind == "linear_iou":
        return 1 - v
    ew = torch.maximum(pred[:, 2], gt[:, 2]) - torch.minimum(pred[:, 0], gt[:, 0])
    eh = torch.maximum(pred[:, 3], gt[:, 3]) - torch.minimum(pred[:, 1], gt[:, 1])
    e = ew * eh
    return 1 - (v - (e - u) / e)


def smooth_l1(d: torch.Tensor, beta: float) -> torch.Tensor:
    a = d.abs()
    return torch.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def decode_points(pts: torch.Tensor, ltrb_: torch.Tensor) -> torch.Tensor:
    """(.., 2) points + (.., 4) ltrb -> xyxy."""
    return torch.cat([pts - ltrb_[..., :2], pts + ltrb_[..., 2:]], dim=-1)


def decode_anchors(anc: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Box2Box decoding, weights (1, 1, 1, 1); dw, dh clamped at log(1000 / 16)."""
    w, h = anc[..., 2] - anc[..., 0], anc[..., 3] - anc[..., 1]
    cx, cy = anc[..., 0] + 0.5 * w, anc[..., 1] + 0.5 * h
    clamp = math.log(1000.0 / 16)
    pcx, pcy = d[..., 0] * w + cx, d[..., 1] * h + cy
    pw, ph = torch.exp(d[..., 2].clamp(max=clamp)) * w, torch.exp(d[..., 3].clamp(max=clamp)) * h
    return torch.stack([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], dim=-1)


def encode_anchor(a, g) -> List[float]:
    aw, ah = a[2] - a[0], a[3] - a[1]
    gw, gh = g[2] - g[0], g[3] - g[1]
    return [((g[0] + gw / 2) - (a[0] + aw / 2)) / aw, ((g[1] + gh / 2) - (a[1] + ah / 2)) / ah,
            math.log(gw / aw), math.log(gh / ah)]


def centerness(d) -> float:
    l, t, r, b = (max(v, 0.0) for v in d)
    return math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))


def _cls_loss(logits: torch.Tensor, labels: List[List[int]], k: int, alpha, gamma, norm):
    """Focal loss summed over every prior whose label is not -1 (labels: class or K)."""
    lab = torch.tensor(labels)
    targets = torch.zeros_like(logits)
    fg = (lab >= 0) & (lab < k)
    targets[fg, lab[fg]] = 1.0
    return focal(logits, targets, alpha, gamma)[lab >= 0].sum() / norm


# -------------------------------------------------------------------- assigners
# Each returns (inds, labels, stats) for one image: inds[r] the index of the GT prior r is
# matched to (ignore GTs included) or -1; labels[r] its class, K for background or -1 when it
# is left out of the classification loss.


def _labels(inds, ignored, classes, k):
    out = []
    for ind, ign in zip(inds, ignored):
        if ign or (ind >= 0 and classes[ind] < 0):
            out.append(-1)
        else:
            out.append(k if ind < 0 else classes[ind])
    return out


def fcos_assign(pts, level, strides, ranges, radius, gts, classes, k):
    """Candidates: inside the GT (radius 0) or inside its centre box (centre +- radius x stride
    clipped to the GT), with the max ltrb to the GT in the level's [lo, hi]. Each point takes
    the candidate of smallest area; a point won by an ignore GT is ignored (a point inside an
    ignore region that the region does not win stays background)."""
    inds, conflicts = [], 0
    for p, l in zip(pts, level):
        cands = []
        for m, g in enumerate(gts):
            d = ltrb(p, g)
            if radius == 0:
                box = g
            else:
                r = radius * strides[l]
                cx, cy = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
                box = (max(cx - r, g[0]), max(cy - r, g[1]), min(cx + r, g[2]), min(cy + r, g[3]))
            for v in ltrb(p, box):
                _apart(v, 0.0, "inside")
            lo, hi = ranges[l]
            _apart(max(d), lo, "size range")
            _apart(max(d), hi, "size range")
            if min(ltrb(p, box)) > 0 and lo <= max(d) <= hi:
                cands.append(m)
        conflicts += len(cands) > 1
        areas = sorted(area(gts[m]) for m in cands)
        for a, b in zip(areas, areas[1:]):
            _apart(a, b, "GT area")
        inds.append(min(cands, key=lambda m: area(gts[m])) if cands else -1)
    return inds, _labels(inds, [False] * len(inds), classes, k), dict(conflicts=conflicts)


def atss_assign(pts, level, strides, topk, scale, gts, classes, k):
    """Valid GTs only: per level the ``topk`` points nearest the GT centre; IoU of the GT with a
    square of side scale x stride on each; threshold mean + unbiased std over all of the GT's
    candidates; positive when IoU >= threshold and every ltrb > 0.01; a point positive for
    several GTs goes to the highest IoU. Non-positive points strictly inside an ignore region
    are ignored."""
    claims = [[] for _ in pts]  # (iou, gt) per point
    for m, (g, c) in enumerate(zip(gts, classes)):
        if c < 0:
            continue
        cx, cy = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
        cand = []
        for l in range(len(strides)):
            dist = sorted(((p[0] - cx) ** 2 + (p[1] - cy) ** 2, r)
                          for r, (p, lv) in enumerate(zip(pts, level)) if lv == l)
            n = min(topk, len(dist))
            if n < len(dist):
                _apart(dist[n - 1][0], dist[n][0], "ATSS distance", TIE * max(1.0, dist[n][0]))
            cand += [r for _, r in dist[:n]]
        ious = []
        for r in cand:
            half = scale * strides[level[r]] / 2
            p = pts[r]
            ious.append(iou(g, (p[0] - half, p[1] - half, p[0] + half, p[1] + half)))
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        for r, v in zip(cand, ious):
            _apart(v, mean + std, "ATSS threshold")
            inside = min(ltrb(pts[r], g))
            _apart(inside, 0.01, "ATSS inside")
            if v >= mean + std and inside > 0.01:
                claims[r].append((v, m))
    inds, ignored, conflicts = [], [], 0
    for p, cl in zip(pts, claims):
        conflicts += len(cl) > 1
        vals = sorted(v for v, _ in cl)
        for a, b in zip(vals, vals[1:]):
            _apart(a, b, "ATSS conflict IoU")
        inds.append(max(cl)[1] if cl else -1)
        in_ignore = False
        for g, c in zip(gts, classes):
            if c < 0:
                for v in ltrb(p, g):
                    _apart(v, 0.0, "ignore region")
                in_ignore |= min(ltrb(p, g)) > 0
        ignored.append(in_ignore and not cl)
    return inds, _labels(inds, ignored, classes, k), dict(conflicts=conflicts)


def max_iou_assign(anc, gts, classes, k, pos=0.5, neg=0.4, ioa_thresh=0.5):
    """RetinaNet: over valid GTs, best IoU >= pos positive, < neg background, else ignored;
    low-quality matches give each GT (best IoU > 0) every anchor reaching its best IoU (an
    anchor best for several GTs: the one it overlaps most); non-positive anchors covered by an
    ignore region beyond ``ioa_thresh`` (intersection / anchor area) are ignored."""
    valid = [m for m, c in enumerate(classes) if c >= 0]
    table = [[iou(gts[m], a) for a in anc] for m in valid]  # (V, R)
    gt_best = []
    for row in table:
        top = sorted(row, reverse=True)
        _apart(top[0], top[1], "best anchor of a GT", 1e-5)
        gt_best.append(top[0])
    inds, ignored, low_quality = [], [], 0
    for r, a in enumerate(anc):
        col = [row[r] for row in table]
        ind, ign = -1, False
        if col:
            best = max(col)
            _apart(best, pos, "positive IoU")
            _apart(best, neg, "negative IoU")
            if best >= pos:
                if len(col) > 1:
                    _apart(best, sorted(col)[-2], "best GT of an anchor", 1e-5)
                ind = valid[col.index(best)]
            elif best >= neg:
                ign = True
            lq = [(col[v], v) for v in range(len(valid)) if gt_best[v] > 0 and col[v] == gt_best[v]]
            if len(lq) > 1:
                _apart(sorted(lq)[-1][0], sorted(lq)[-2][0], "low-quality GT of an anchor", 1e-5)
            if ind < 0 and lq:
                ind, ign = valid[max(lq)[1]], False
                low_quality += 1
        if ind < 0:
            for g, c in zip(gts, classes):
                if c < 0:
                    cover = inter(a, g) / area(a)
                    _apart(cover, ioa_thresh, "ignore IoA")
                    ign |= cover > ioa_thresh
        inds.append(ind)
        ignored.append(ign)
    return inds, _labels(inds, ignored, classes, k), dict(low_quality=low_quality)


def _focal_float(x: float, t: float, alpha: float, gamma: float) -> float:
    p = 1 / (1 + math.exp(-x))
    ce = max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))
    p_t = p * t + (1 - p) * (1 - t)
    return (alpha * t + (1 - alpha) * (1 - t)) * (1 - p_t) ** gamma * ce


def lla_assign(logits, boxes, centres, gts, classes, k, topk, reg_cost, alpha, gamma):
    """cost = sum over classes of the focal loss against the GT's one-hot (ignore GTs as class
    0) + reg_cost x -log(max(IoU(pred, GT), 1e-6)) + 1000 x [some ltrb <= 0.01]; each GT takes
    its topk cheapest priors; a prior taken once goes to its taker, a prior taken by >= 2 GTs
    to the argmin of its whole cost column. Priors won by ignore GTs are ignored."""
    cost = []
    for g, c in zip(gts, classes):
        cls = max(c, 0)
        row = []
        for x, b, p in zip(logits, boxes, centres):
            inside = min(ltrb(p, g))
            _apart(inside, 0.01, "LLA inside")
            v = sum(_focal_float(xk, float(j == cls), alpha, gamma) for j, xk in enumerate(x))
            v += reg_cost * -math.log(max(iou(b, g), 1e-6)) + 1000.0 * (inside <= 0.01)
            row.append(v)
        cost.append(row)
    n = min(topk, len(centres))
    takers = [[] for _ in centres]
    for m, row in enumerate(cost):
        order = sorted(range(len(row)), key=row.__getitem__)
        if n < len(row):
            _apart(row[order[n - 1]], row[order[n]], "LLA top-k", _BIG_TIE)
        for r in order[:n]:
            takers[r].append(m)
    inds, conflicts, overruled = [], 0, 0
    for r, t in enumerate(takers):
        if len(t) == 1:
            inds.append(t[0])
        elif len(t) > 1:
            col = sorted((row[r], m) for m, row in enumerate(cost))
            _apart(col[0][0], col[1][0], "LLA column argmin", _BIG_TIE)
            inds.append(col[0][1])
            conflicts += 1
            overruled += col[0][1] not in t
        else:
            inds.append(-1)
    return inds, _labels(inds, [False] * len(inds), classes, k), dict(conflicts=conflicts,
                                                                       overruled=overruled)


# ------------------------------------------------------------------------ losses
def _stats(batch_inds, batch_gts):
    """Per image, the number of priors matched to each GT."""
    return [[sum(1 for i in inds if i == m) for m in range(len(gts))]
            for inds, (gts, _) in zip(batch_inds, batch_gts)]


def fcos_reference(outs, batch_gts, *, strides, k, alpha, gamma, iou_type, reg_weight,
                   assigner: str, ranges=None, radius=0.0, topk=9, scale=8.0):
    """FCOS / ATSS losses. ``outs``: float64 per-level (logits, ltrb, quality) lists.

    focal over non-ignored points / max(num_fg, 1); reg_weight x box loss weighted by the
    centerness target / max(sum of centerness targets, 1e-6); BCE(quality, centerness target)
    / max(num_fg, 1). num_fg = points matched to valid GTs over the batch."""
    logits_l, ltrb_l, q_l = outs
    pts, level = points([tuple(t.shape[-2:]) for t in logits_l], strides)
    logits, box, q = gather(logits_l, k), gather(ltrb_l, 4), gather(q_l, 1)[..., 0]
    all_inds, all_labels, extra = [], [], []
    for gts, classes in batch_gts:
        if assigner == "fcos":
            inds, labels, st = fcos_assign(pts, level, strides, ranges, radius, gts, classes, k)
        else:
            inds, labels, st = atss_assign(pts, level, strides, topk, scale, gts, classes, k)
        all_inds.append(inds)
        all_labels.append(labels)
        extra.append(st)
    fg = [(i, r) for i, lab in enumerate(all_labels) for r, v in enumerate(lab) if 0 <= v < k]
    norm = max(len(fg), 1)
    matched = [batch_gts[i][0][all_inds[i][r]] for i, r in fg]
    ctr = torch.tensor([centerness(ltrb(pts[r], g)) for (_, r), g in zip(fg, matched)],
                       dtype=torch.float64)
    pred = decode_points(torch.tensor([pts[r] for _, r in fg], dtype=torch.float64),
                         torch.stack([box[i, r] for i, r in fg]))
    gt = torch.tensor(matched, dtype=torch.float64)
    losses = {
        "loss_cls": _cls_loss(logits, all_labels, k, alpha, gamma, norm),
        "loss_box_reg": reg_weight * (ctr * box_loss(pred, gt, iou_type)).sum()
        / max(float(ctr.sum()), 1e-6),
        "loss_centerness": bce(torch.stack([q[i, r] for i, r in fg]), ctr).sum() / norm,
    }
    return losses, dict(num_fg=len(fg), per_gt=_stats(all_inds, batch_gts), images=extra,
                        labels=all_labels)


def retinanet_reference(outs, batch_gts, *, strides, anchor_sizes, ratios, k, alpha, gamma,
                        beta, loss_type):
    """RetinaNet: focal over non-ignored anchors and smooth L1 (beta) on (1, 1, 1, 1) deltas or
    GIoU on decoded boxes over positives, both / max(num_pos, 1)."""
    logits_l, deltas_l = outs[:2]
    anc = anchors([tuple(t.shape[-2:]) for t in logits_l], strides, anchor_sizes, ratios)
    logits, deltas = gather(logits_l, k), gather(deltas_l, 4)
    all_inds, all_labels, extra = [], [], []
    for gts, classes in batch_gts:
        inds, labels, st = max_iou_assign(anc, gts, classes, k)
        all_inds.append(inds)
        all_labels.append(labels)
        extra.append(st)
    fg = [(i, r) for i, lab in enumerate(all_labels) for r, v in enumerate(lab) if 0 <= v < k]
    norm = max(len(fg), 1)
    matched = [batch_gts[i][0][all_inds[i][r]] for i, r in fg]
    d = torch.stack([deltas[i, r] for i, r in fg])
    if loss_type == "smooth_l1":
        target = torch.tensor([encode_anchor(anc[r], g) for (_, r), g in zip(fg, matched)],
                              dtype=torch.float64)
        reg = smooth_l1(d - target, beta).sum()
    else:
        a = torch.tensor([anc[r] for _, r in fg], dtype=torch.float64)
        reg = box_loss(decode_anchors(a, d), torch.tensor(matched, dtype=torch.float64),
                       "giou").sum()
    losses = {"loss_cls": _cls_loss(logits, all_labels, k, alpha, gamma, norm),
              "loss_box_reg": reg / norm}
    return losses, dict(num_fg=len(fg), per_gt=_stats(all_inds, batch_gts), images=extra,
                        labels=all_labels)


def lla_reference(outs, batch_gts, *, strides, k, alpha, gamma, topk, reg_cost, reg_weight,
                  iou_weight, anchor_sizes=None, ratios=None):
    """LLA on points (``anchor_sizes`` None: ltrb outputs) or on anchors (delta outputs, the
    "inside" term measured from the anchor centre). Every loss / max(num_fg, 1) with num_fg the
    priors matched to ANY GT, ignore GTs included: focal over priors not won by an ignore GT;
    reg_weight x GIoU loss and iou_weight x BCE(quality, detached IoU of the predicted box with
    its GT) over valid positives."""
    logits_l, box_l, q_l = outs
    sizes = [tuple(t.shape[-2:]) for t in logits_l]
    box = gather(box_l, 4)
    if anchor_sizes is None:
        centres, _ = points(sizes, strides)
        pred = decode_points(torch.tensor(centres, dtype=torch.float64), box)
    else:
        anc = anchors(sizes, strides, anchor_sizes, ratios)
        centres = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in anc]
        pred = decode_anchors(torch.tensor(anc, dtype=torch.float64), box)
    logits, q = gather(logits_l, k), gather(q_l, 1)[..., 0]
    all_inds, all_labels, extra = [], [], []
    for i, (gts, classes) in enumerate(batch_gts):
        inds, labels, st = lla_assign(logits[i].tolist(), pred[i].tolist(), centres, gts,
                                      classes, k, topk, reg_cost, alpha, gamma)
        all_inds.append(inds)
        all_labels.append(labels)
        extra.append(st)
    num_fg = sum(1 for inds in all_inds for v in inds if v >= 0)
    norm = max(num_fg, 1)
    fg = [(i, r) for i, lab in enumerate(all_labels) for r, v in enumerate(lab) if 0 <= v < k]
    matched = [batch_gts[i][0][all_inds[i][r]] for i, r in fg]
    pred_fg = torch.stack([pred[i, r] for i, r in fg])
    target = torch.tensor([iou(b, g) for b, g in zip(pred_fg.tolist(), matched)],
                          dtype=torch.float64)
    losses = {
        "loss_cls": _cls_loss(logits, all_labels, k, alpha, gamma, norm),
        "loss_box_reg": reg_weight * box_loss(pred_fg, torch.tensor(matched, dtype=torch.float64),
                                              "giou").sum() / norm,
        "loss_iou": iou_weight * bce(torch.stack([q[i, r] for i, r in fg]), target).sum() / norm,
    }
    return losses, dict(num_fg=num_fg, per_gt=_stats(all_inds, batch_gts), images=extra,
                        labels=all_labels)
