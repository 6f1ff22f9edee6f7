"""Box geometry on plain float tensors in absolute xyxy.

Shape vocabulary: M boxes in the first argument, N in the second, R for elementwise (aligned)
pairs. Every function accepts empty inputs and returns correctly shaped empty outputs.

Pairwise functions build (M, N) intermediates one coordinate at a time instead of a
(M, N, 2) / (M, N, 4) broadcast, so M=400 x N=25,000 stays at a handful of 40 MB matrices.
Degenerate pairs (union or area 0) give 0 rather than NaN, so callers can threshold safely.
"""
from typing import Tuple

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "box_ioa",
    "box_intersection",
    "aligned_iou",
    "aligned_giou",
    "clip_boxes",
    "nonempty_boxes",
    "box_xywh_to_xyxy",
    "box_xyxy_to_xywh",
]


def _check_boxes(boxes: Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name}: expected boxes of shape (n, 4) in xyxy, got {tuple(boxes.shape)}")


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # 0/0 (degenerate boxes) -> 0 instead of NaN; NaN would silently pass "not > thr" tests.
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(num.dtype).tiny), torch.zeros_like(num))


def box_area(boxes: Tensor) -> Tensor:
    """Area of (M, 4) xyxy boxes -> (M,). Inverted boxes count as 0."""
    _check_boxes(boxes, "box_area")
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_intersection(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection area of (M, 4) and (N, 4) xyxy boxes -> (M, N).

    Built per axis to avoid (M, N, 2) temporaries; the building block of the IoU family, public
    so cost matrices (e.g. LLA's) can fuse their own arithmetic on it in place.
    """
    _check_boxes(a, "box_intersection a")
    _check_boxes(b, "box_intersection b")
    w = torch.min(a[:, None, 2], b[None, :, 2])
    w -= torch.max(a[:, None, 0], b[None, :, 0])
    h = torch.min(a[:, None, 3], b[None, :, 3])
    h -= torch.max(a[:, None, 1], b[None, :, 1])
    return w.clamp_(min=0).mul_(h.clamp_(min=0))


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of (M, 4) and (N, 4) xyxy boxes -> (M, N)."""
    _check_boxes(boxes1, "box_iou boxes1")
    _check_boxes(boxes2, "box_iou boxes2")
    inter = box_intersection(boxes1, boxes2)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return _safe_div(inter, union)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise GIoU (arXiv 1902.09630) of (M, 4) and (N, 4) xyxy boxes -> (M, N) in [-1, 1]."""
    _check_boxes(boxes1, "generalized_box_iou boxes1")
    _check_boxes(boxes2, "generalized_box_iou boxes2")
    inter = box_intersection(boxes1, boxes2)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    iou = _safe_div(inter, union)
    # Smallest enclosing box, again one axis at a time.
    cw = torch.max(boxes1[:, None, 2], boxes2[None, :, 2]) - torch.min(boxes1[:, None, 0], boxes2[None, :, 0])
    ch = torch.max(boxes1[:, None, 3], boxes2[None, :, 3]) - torch.min(boxes1[:, None, 1], boxes2[None, :, 1])
    enclose = cw.clamp_(min=0).mul_(ch.clamp_(min=0))
    return iou - _safe_div(enclose - union, enclose)


def box_ioa(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over the area of the FIRST argument -> (M, N).

    Used for ignore regions: ``box_ioa(anchors, ignore_boxes)`` is the fraction of each anchor
    covered by each region.
    """
    _check_boxes(boxes1, "box_ioa boxes1")
    _check_boxes(boxes2, "box_ioa boxes2")
    inter = box_intersection(boxes1, boxes2)
    return _safe_div(inter, box_area(boxes1)[:, None].expand_as(inter))


def _aligned_inter_union(boxes1: Tensor, boxes2: Tensor) -> Tuple[Tensor, Tensor]:
    if boxes1.shape != boxes2.shape or boxes1.shape[-1] != 4:
        raise ValueError(
            f"aligned box op: expected two (R, 4) tensors of equal shape, got "
            f"{tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    w = (torch.min(boxes1[..., 2], boxes2[..., 2]) - torch.max(boxes1[..., 0], boxes2[..., 0])).clamp(min=0)
    h = (torch.min(boxes1[..., 3], boxes2[..., 3]) - torch.max(boxes1[..., 1], boxes2[..., 1])).clamp(min=0)
    inter = w * h
    area1 = (boxes1[..., 2] - boxes1[..., 0]).clamp(min=0) * (boxes1[..., 3] - boxes1[..., 1]).clamp(min=0)
    area2 = (boxes2[..., 2] - boxes2[..., 0]).clamp(min=0) * (boxes2[..., 3] - boxes2[..., 1]).clamp(min=0)
    return inter, area1 + area2 - inter


def aligned_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Elementwise IoU of two (R, 4) xyxy tensors -> (R,)."""
    inter, union = _aligned_inter_union(boxes1, boxes2)
    return _safe_div(inter, union)


def aligned_giou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Elementwise GIoU (arXiv 1902.09630) of two (R, 4) xyxy tensors -> (R,)."""
    inter, union = _aligned_inter_union(boxes1, boxes2)
    cw = (torch.max(boxes1[..., 2], boxes2[..., 2]) - torch.min(boxes1[..., 0], boxes2[..., 0])).clamp(min=0)
    ch = (torch.max(boxes1[..., 3], boxes2[..., 3]) - torch.min(boxes1[..., 1], boxes2[..., 1])).clamp(min=0)
    enclose = cw * ch
    return _safe_div(inter, union) - _safe_div(enclose - union, enclose)


def clip_boxes(boxes: Tensor, image_size: Tuple[int, int]) -> Tensor:
    """Clip (M, 4) xyxy boxes to an image of ``(height, width)``; returns a new tensor."""
    _check_boxes(boxes, "clip_boxes")
    h, w = image_size
    x = boxes[:, 0::2].clamp(min=0, max=w)
    y = boxes[:, 1::2].clamp(min=0, max=h)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def nonempty_boxes(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """Bool (M,): boxes whose width and height are both > ``threshold``."""
    _check_boxes(boxes, "nonempty_boxes")
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(M, 4) [x, y, w, h] (top-left + size, COCO / odgt style) -> xyxy."""
    _check_boxes(boxes, "box_xywh_to_xyxy")
    x, y, w, h = boxes.unbind(dim=1)
    return torch.stack([x, y, x + w, y + h], dim=1)


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(M, 4) xyxy -> [x, y, w, h] (top-left + size)."""
    _check_boxes(boxes, "box_xyxy_to_xywh")
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=1)
