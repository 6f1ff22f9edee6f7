"""SSD's default-box matching (Liu et al., arXiv 1512.02325, section 2.2 "Matching strategy").

Shape vocabulary: M gts of one image (V valid ones, G ignore regions), R default boxes.
"""
from typing import Optional

import torch
from torch import Tensor

from crowdloss.ops import box_ioa, box_iou

from ..priors import Priors
from .base import AssignResult, BaseAssigner

__all__ = ["SSDMatcher"]


class SSDMatcher(BaseAssigner):
    """Threshold matching plus the best default box of every GT, with ssd.pytorch's overrides.

    Steps of ``assign`` (ssd.pytorch's ``match``, in absolute pixels instead of [0, 1]
    coordinates, which leaves every IoU unchanged):
      1. IoU (V, R) between the valid GTs (class >= 0) and the default boxes.
      2. Every box takes the GT it overlaps most (ties: lowest GT index): positive when that
         IoU >= ``iou_thresh``, background otherwise. There is no grey zone (SSD's negative
         threshold equals the positive one).
      3. Every GT takes the box it overlaps most (ties: lowest box index). That box becomes
         positive for that GT whatever its IoU and whatever step 2 gave it: the forcing
         overrides a threshold match to another GT. GTs are applied in order, so a box that is
         the best of several GTs ends with the LAST of them (ssd.pytorch's loop). A GT that
         overlaps no box at all (IoU 0 everywhere: an empty box, which the data pipeline
         drops) forces nothing, where ssd.pytorch would hand it box 0.
      4. Ignore regions (class -1) never match. A box that is not positive and whose IoA
         (intersection / box area) with any ignore region exceeds ``ignore_ioa_thresh`` is
         ``ignored``: neither positive nor a negative that hard negative mining could pick
         (the rule of ``MaxIoUAssigner``; ssd.pytorch has no ignore regions). ``ignore_ioa_thresh``
         >= 1 switches this off.

    Args:
        iou_thresh: positive at or above this IoU (0.5 in SSD).
        ignore_ioa_thresh: box coverage by an ignore region above which it is ignored.
    """

    def __init__(self, *, iou_thresh: float = 0.5, ignore_ioa_thresh: float = 0.5):
        if not 0.0 < iou_thresh <= 1.0:
            raise ValueError(f"SSDMatcher: iou_thresh must be in (0, 1], got {iou_thresh}")
        self.iou_thresh = float(iou_thresh)
        self.ignore_ioa_thresh = float(ignore_ioa_thresh)

    def _assign(self, priors: Priors, gt_boxes: Tensor, gt_classes: Tensor,
                pred_logits: Optional[Tensor], pred_boxes: Optional[Tensor]) -> AssignResult:
        if priors.is_points:
            raise ValueError("SSDMatcher.assign: needs (R, 4) default boxes, got points "
                             "(use AnchorGenerator.from_ssd)")
        boxes = priors.tensor
        num = boxes.shape[0]
        result = AssignResult.background(num, device=boxes.device)
        valid_idx = torch.nonzero(gt_classes >= 0).squeeze(1)
        positive = torch.zeros(num, dtype=torch.bool, device=boxes.device)
        if valid_idx.numel() > 0:
            iou = box_iou(gt_boxes[valid_idx], boxes)  # (V, R)
            # Step 2.
            best_iou, best_gt = iou.max(dim=0)
            positive = best_iou >= self.iou_thresh
            matched = best_gt
            # Step 3: the last GT naming a box as its best wins (scatter with "amax" over the
            # GT order is the deterministic form of ssd.pytorch's sequential loop).
            per_gt_iou, per_gt_box = iou.max(dim=1)  # (V,)
            gts = torch.arange(valid_idx.numel(), device=boxes.device)
            overlapping = per_gt_iou > 0
            owner = torch.full((num,), -1, dtype=torch.long, device=boxes.device)
            owner.scatter_reduce_(0, per_gt_box[overlapping], gts[overlapping], reduce="amax")
            forced = owner >= 0
            matched = torch.where(forced, owner, matched)
            positive |= forced
            result.gt_inds[positive] = valid_idx[matched[positive]]
        # Step 4.
        ignore = gt_boxes[gt_classes < 0]
        if ignore.shape[0] > 0 and self.ignore_ioa_thresh < 1.0:
            covered = (box_ioa(boxes, ignore) > self.ignore_ioa_thresh).any(dim=1)
            result.ignored[covered & ~positive] = True
        return result
