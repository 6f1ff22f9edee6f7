"""Box geometry, NMS and RoIAlign on plain tensors (pure PyTorch)."""
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
from .roi_align import convert_boxes_to_rois, roi_align, roi_align_levels

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
    "roi_align",
    "roi_align_levels",
    "convert_boxes_to_rois",
]
