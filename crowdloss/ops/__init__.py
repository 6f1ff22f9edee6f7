"""Box geometry and NMS on plain tensors (pure PyTorch)."""
from .boxes import (
    aligned_giou,
    aligned_iou,
    box_area,
    box_intersection,
    box_ioa,
    box_iou,
    box_xywh_to_xyxy,
    box_xyxy_to_xywh,
    clip_boxes,
    generalized_box_iou,
    nonempty_boxes,
)
from .nms import batched_nms, nms

__all__ = [
    "aligned_giou",
    "aligned_iou",
    "box_area",
    "box_intersection",
    "box_ioa",
    "box_iou",
    "box_xywh_to_xyxy",
    "box_xyxy_to_xywh",
    "clip_boxes",
    "generalized_box_iou",
    "nonempty_boxes",
    "nms",
    "batched_nms",
]
