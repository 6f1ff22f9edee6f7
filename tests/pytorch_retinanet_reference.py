"""A plain-PyTorch transcription of yhenon/pytorch-retinanet's detector (@0348a9d), written from
its semantics for the tests: the state-dict layout of its ``model.resnet{18..152}``, its forward
pass in eval mode (BatchNorm on running statistics), its anchors (numpy float64, cast to float32
once), box decoding, clipping and per-class NMS. Nothing here imports crowdloss, so the
converted model is checked against an independent statement of what the reference computes.

Shapes: K classes, A = 9 anchors per location, R anchors of the image, D detections.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
          152: (3, 8, 36, 3)}
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def _conv(sd, name, c_out, c_in, k, gen, bias=False, std=None):
    std = std if std is not None else math.sqrt(2.0 / (k * k * c_in))
    sd[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=gen) * std
    if bias:
        sd[f"{name}.bias"] = torch.randn(c_out, generator=gen) * 0.05


def _bn(sd, name, c, gen):
    sd[f"{name}.weight"] = 1.0 + 0.1 * torch.randn(c, generator=gen)
    sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=gen)
    sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=gen)
    sd[f"{name}.running_var"] = 1.0 + 0.2 * torch.rand(c, generator=gen)
    sd[f"{name}.num_batches_tracked"] = torch.tensor(100)


def state_dict(depth: int, num_classes: int, seed: int = 0, *, empty: bool = False
               ) -> Dict[str, torch.Tensor]:
    """A state dict with the names and shapes of ``model.resnet<depth>(num_classes)``; random
    values that give a few hundred detections above 0.05 on a small image (``empty``: zeros,
    for layout-only checks of the big depths)."""
    gen = torch.Generator().manual_seed(seed)
    sd: Dict[str, torch.Tensor] = {}
    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    _conv(sd, "conv1", 64, 3, 7, gen)
    _bn(sd, "bn1", 64, gen)
    inplanes = 64
    c_out = []
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), LAYERS[depth])):
        stride = 1 if i == 0 else 2
        for b in range(blocks):
            p = f"layer{i + 1}.{b}"
            if bottleneck:
                _conv(sd, f"{p}.conv1", planes, inplanes, 1, gen)
                _bn(sd, f"{p}.bn1", planes, gen)
                _conv(sd, f"{p}.conv2", planes, planes, 3, gen)
                _bn(sd, f"{p}.bn2", planes, gen)
                _conv(sd, f"{p}.conv3", planes * 4, planes, 1, gen)
                _bn(sd, f"{p}.bn3", planes * 4, gen)
            else:
                _conv(sd, f"{p}.conv1", planes, inplanes, 3, gen)
                _bn(sd, f"{p}.bn1", planes, gen)
                _conv(sd, f"{p}.conv2", planes, planes, 3, gen)
                _bn(sd, f"{p}.bn2", planes, gen)
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                _conv(sd, f"{p}.downsample.0", planes * expansion, inplanes, 1, gen)
                _bn(sd, f"{p}.downsample.1", planes * expansion, gen)
            inplanes = planes * expansion
        c_out.append(inplanes)
    c3, c4, c5 = c_out[1:]
    for lvl, c in ((3, c3), (4, c4), (5, c5)):
        _conv(sd, f"fpn.P{lvl}_1", 256, c, 1, gen, bias=True)
        _conv(sd, f"fpn.P{lvl}_2", 256, 256, 3, gen, bias=True)
    _conv(sd, "fpn.P6", 256, c5, 3, gen, bias=True)
    _conv(sd, "fpn.P7_2", 256, 256, 3, gen, bias=True)
    for head, out in (("regressionModel", 9 * 4), ("classificationModel", 9 * num_classes)):
        for i in range(1, 5):
            _conv(sd, f"{head}.conv{i}", 256, 256, 3, gen, bias=True)
        _conv(sd, f"{head}.output", out, 256, 3, gen, bias=True, std=0.002)
    # Scores around 0.05 so that the threshold, the NMS and the class layout all matter.
    sd["classificationModel.output.bias"] = -3.0 + 0.3 * torch.randn(9 * num_classes,
                                                                      generator=gen)
    if empty:
        sd = {k: torch.zeros_like(v) for k, v in sd.items()}
    return sd


def preprocess(image_rgb: np.ndarray) -> torch.Tensor:
    """Its Normalizer (float64 maths on RGB / 255) and the Resizer's padding (no resize here:
    scale 1), as a (1, 3, H', W') float32 batch."""
    image = (image_rgb.astype(np.float32) / 255.0 - MEAN) / STD
    rows, cols = image.shape[:2]
    padded = np.zeros((rows + 32 - rows % 32, cols + 32 - cols % 32, 3), np.float32)
    padded[:rows, :cols] = image.astype(np.float32)
    return torch.from_numpy(padded).permute(2, 0, 1)[None].contiguous()


def _bn_eval(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                        sd[f"{p}.bias"], False, 0.0, 1e-5)


def _backbone(x, sd, depth):
    x = F.relu(_bn_eval(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    feats = []
    for i, blocks in enumerate(LAYERS[depth]):
        for b in range(blocks):
            p = f"layer{i + 1}.{b}"
            stride = 2 if (i > 0 and b == 0) else 1
            if depth >= 50:  # torchvision Bottleneck: the stride is on the 3x3 conv
                out = F.relu(_bn_eval(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                out = F.relu(_bn_eval(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride,
                                               padding=1), sd, f"{p}.bn2"))
                out = _bn_eval(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            else:
                out = F.relu(_bn_eval(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride,
                                               padding=1), sd, f"{p}.bn1"))
                out = _bn_eval(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn_eval(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd,
                             f"{p}.downsample.1")
            x = F.relu(out + x)
        feats.append(x)
    return feats[1:]  # C3, C4, C5


def _c(x, sd, name, **kw):
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], **kw)


def _fpn(c3, c4, c5, sd):
    up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    lat5 = _c(c5, sd, "fpn.P5_1")
    lat4 = _c(c4, sd, "fpn.P4_1") + up(lat5)  # the lateral SUM is what goes up
    lat3 = _c(c3, sd, "fpn.P3_1") + up(lat4)
    p6 = _c(c5, sd, "fpn.P6", stride=2, padding=1)  # from C5, not P5
    p7 = _c(F.relu(p6), sd, "fpn.P7_2", stride=2, padding=1)
    return [_c(lat3, sd, "fpn.P3_2", padding=1), _c(lat4, sd, "fpn.P4_2", padding=1),
            _c(lat5, sd, "fpn.P5_2", padding=1), p6, p7]


def _head(x, sd, name):
    for i in range(1, 5):
        x = F.relu(_c(x, sd, f"{name}.conv{i}", padding=1))
    return _c(x, sd, f"{name}.output", padding=1)


def anchors(height: int, width: int) -> torch.Tensor:
    """(R, 4) float32: levels 3..7, rows, columns, then ratio-major anchors, in float64."""
    out = []
    scales = np.array([2 ** 0, 2 ** (1.0 / 3.0), 2 ** (2.0 / 3.0)])
    for p in range(3, 8):
        stride, base = 2 ** p, 2 ** (p + 2)
        cell = []
        for ratio in (0.5, 1.0, 2.0):
            for s in scales:
                area = (base * s) * (base * s)
                w = np.sqrt(area / ratio)
                h = w * ratio
                cell.append([-w / 2, -h / 2, w / 2, h / 2])
        cell = np.array(cell)
        rows, cols = (height + stride - 1) // stride, (width + stride - 1) // stride
        ys, xs = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride,
                             indexing="ij")
        shifts = np.stack([xs.ravel(), ys.ravel(), xs.ravel(), ys.ravel()], axis=1)
        out.append((shifts[:, None, :] + cell[None]).reshape(-1, 4))
    return torch.from_numpy(np.concatenate(out).astype(np.float32))


def _nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> List[int]:
    """Greedy NMS: by descending score (stable), drop boxes with IoU > thr to a kept one."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive = torch.ones(len(scores), dtype=torch.bool)
    keep = []
    for i in order:
        if not alive[i]:
            continue
        keep.append(i)
        lt = torch.max(boxes[i, :2], boxes[:, :2])
        rb = torch.min(boxes[i, 2:], boxes[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        iou = inter / (area[i] + area - inter)
        alive &= ~(iou > thr)
    return keep


@torch.no_grad()
def detect(sd: Dict[str, torch.Tensor], batch: torch.Tensor, depth: int, num_classes: int
           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Its eval forward on a (1, 3, H, W) batch: (scores (D,), classes (D,), boxes (D, 4))
    in the padded input's pixels, class by class as it returns them."""
    feats = _fpn(*_backbone(batch, sd, depth), sd)
    reg = torch.cat([_head(f, sd, "regressionModel").permute(0, 2, 3, 1).reshape(1, -1, 4)
                     for f in feats], dim=1)[0]
    cls = torch.cat([_head(f, sd, "classificationModel").sigmoid().permute(0, 2, 3, 1)
                     .reshape(1, -1, num_classes) for f in feats], dim=1)[0]
    a = anchors(*batch.shape[-2:])
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    cx, cy = a[:, 0] + 0.5 * w, a[:, 1] + 0.5 * h
    std = torch.tensor([0.1, 0.1, 0.2, 0.2])
    d = reg * std
    pcx, pcy = cx + d[:, 0] * w, cy + d[:, 1] * h
    pw, ph = torch.exp(d[:, 2]) * w, torch.exp(d[:, 3]) * h
    boxes = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=1)
    H, W = batch.shape[-2:]
    boxes[:, 0] = boxes[:, 0].clamp(min=0)
    boxes[:, 1] = boxes[:, 1].clamp(min=0)
    boxes[:, 2] = boxes[:, 2].clamp(max=W)
    boxes[:, 3] = boxes[:, 3].clamp(max=H)
    out_s, out_c, out_b = [], [], []
    for k in range(num_classes):
        s = cls[:, k]
        over = s > 0.05
        if not over.any():
            continue
        s, b = s[over], boxes[over]
        keep = _nms(b, s, 0.5)
        out_s.append(s[keep])
        out_c.append(torch.full((len(keep),), k))
        out_b.append(b[keep])
    if not out_s:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4)
    return torch.cat(out_s), torch.cat(out_c), torch.cat(out_b)
