"""SSD's default-box matching (Liu et al., arXiv 1512.02325, section 2.2 "Matching strategy").

Shape vocabulary: M gts of one image (V valid ones, G ignore regions), R default boxes.
"""
import torch
from torch import Tensor

from .max_iou import MaxIoUAssigner

__all__ = ["SSDMatcher"]


class SSDMatcher(MaxIoUAssigner):
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
         (the rule of ``MaxIoUAssigner``, whose steps 1, 2 and 4 this is; ssd.pytorch has no
         ignore regions). ``ignore_ioa_thresh`` >= 1 switches this off.

    Args:
        iou_thresh: positive at or above this IoU (0.5 in SSD).
        ignore_ioa_thresh: box coverage by an ignore region above which it is ignored.
    """

    def __init__(self, *, iou_thresh: float = 0.5, ignore_ioa_thresh: float = 0.5):
        if not 0.0 < iou_thresh <= 1.0:
            raise ValueError(f"SSDMatcher: iou_thresh must be in (0, 1], got {iou_thresh}")
        # No grey zone (negative threshold = positive one); step 3 always on.
        super().__init__(pos_iou_thresh=iou_thresh, neg_iou_thresh=iou_thresh,
                         allow_low_quality_matches=True, ignore_ioa_thresh=ignore_ioa_thresh)

    def _low_quality_matches(self, iou: Tensor, positive: Tensor):
        """Step 3: each GT's best box is forced to it, overriding a threshold match; the last
        GT naming a box wins (scatter with "amax" over the GT order is the deterministic form
        of ssd.pytorch's sequential loop)."""
        per_gt_iou, per_gt_box = iou.max(dim=1)  # (V,)
        gts = torch.arange(iou.shape[0], device=iou.device)
        overlapping = per_gt_iou > 0
        owner = torch.full((iou.shape[1],), -1, dtype=torch.long, device=iou.device)
        owner.scatter_reduce_(0, per_gt_box[overlapping], gts[overlapping], reduce="amax")
        return owner >= 0, owner
