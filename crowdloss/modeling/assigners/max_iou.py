"""Max-IoU anchor matching (RetinaNet, Lin et al., arXiv 1708.02002) with ignore regions.

Shape vocabulary: M gts of one image (V valid ones, G ignore regions), R anchors.
"""
from typing import Optional

import torch
from torch import Tensor

from crowdloss.ops import box_ioa, box_iou

from ..priors import Priors
from .base import AssignResult, BaseAssigner

__all__ = ["MaxIoUAssigner"]


class MaxIoUAssigner(BaseAssigner):
    """IoU thresholds with low-quality matches and IoA-based ignore regions.

    Steps of ``assign``:
      1. IoU (V, R) between the valid GTs (class >= 0) and the anchors; each anchor's best GT
         (ties: lowest index).
      2. Best IoU >= ``pos_iou_thresh``: positive for that GT; < ``neg_iou_thresh``: background;
         in between: ``ignored`` (gt_inds -1).
      3. Low-quality matches (``allow_low_quality_matches``): for each valid GT with a best IoU
         > 0, every anchor reaching that best IoU (all ties) becomes positive for that GT. An
         anchor already positive by step 2 keeps its step-2 GT; an anchor that is the best of
         several GTs goes to the one it overlaps most (ties: lowest index).
      4. Anchors with IoA (intersection / anchor area) > ``ignore_ioa_thresh`` against any
         ignore GT (class -1) that are not positive are ``ignored``. Ignore GTs never produce
         positives.

    Args:
        pos_iou_thresh: positive at or above this IoU.
        neg_iou_thresh: background below this IoU.
        allow_low_quality_matches: give every GT its best anchors (step 3).
        ignore_ioa_thresh: anchor coverage by an ignore region above which it is ignored.
    """

    def __init__(
        self,
        *,
        pos_iou_thresh: float = 0.5,
        neg_iou_thresh: float = 0.4,
        allow_low_quality_matches: bool = True,
        ignore_ioa_thresh: float = 0.5,
    ):
        if neg_iou_thresh > pos_iou_thresh:
            raise ValueError(
                f"MaxIoUAssigner: neg_iou_thresh {neg_iou_thresh} must be <= pos_iou_thresh {pos_iou_thresh}"
            )
        self.pos_iou_thresh = float(pos_iou_thresh)
        self.neg_iou_thresh = float(neg_iou_thresh)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        self.ignore_ioa_thresh = float(ignore_ioa_thresh)

    def _assign(self, priors: Priors, gt_boxes: Tensor, gt_classes: Tensor,
                pred_logits: Optional[Tensor], pred_boxes: Optional[Tensor]) -> AssignResult:
        if priors.is_points:
            raise ValueError(f"{type(self).__name__}.assign: needs (R, 4) anchor priors, got "
                             "points (use an AnchorGenerator)")
        anchors = priors.tensor
        num_anchors = anchors.shape[0]
        result = AssignResult.background(num_anchors, device=anchors.device)
        valid_idx = torch.nonzero(gt_classes >= 0).squeeze(1)

        positive = torch.zeros(num_anchors, dtype=torch.bool, device=anchors.device)
        if valid_idx.numel() > 0:
            # Step 1.
            iou = box_iou(gt_boxes[valid_idx], anchors)  # (V, R)
            best_iou, best_gt = iou.max(dim=0)
            # Step 2.
            positive = best_iou >= self.pos_iou_thresh
            result.ignored[(best_iou >= self.neg_iou_thresh) & ~positive] = True
            matched = torch.where(positive, best_gt, torch.full_like(best_gt, -1))
            # Step 3.
            if self.allow_low_quality_matches:
                low, low_gt = self._low_quality_matches(iou, positive)
                matched = torch.where(low, low_gt, matched)
                positive |= low
                result.ignored[low] = False
            result.gt_inds[positive] = valid_idx[matched[positive]]

        # Step 4.
        ignore = gt_boxes[gt_classes < 0]
        if ignore.shape[0] > 0:
            covered = (box_ioa(anchors, ignore) > self.ignore_ioa_thresh).any(dim=1)
            result.ignored[covered & ~positive] = True
        return result

    def _low_quality_matches(self, iou: Tensor, positive: Tensor):
        """Step 3 -> (bool (R,) anchors it makes positive, long (R,) their valid-GT index).

        Every anchor reaching a GT's best IoU (> 0, all ties) that step 2 left non-positive;
        an anchor that is the best of several GTs goes to the one it overlaps most.
        """
        per_gt_best = iou.max(dim=1).values  # (V,)
        is_best = (iou == per_gt_best[:, None]) & (per_gt_best[:, None] > 0)
        low_iou, low_gt = torch.where(is_best, iou, torch.full_like(iou, -1.0)).max(dim=0)
        return (low_iou >= 0) & ~positive, low_gt
