"""ATSS: adaptive training sample selection (Zhang et al., arXiv 1912.02424) on FCOS points.

Shape vocabulary: M gts of one image (V of them valid, i.e. not ignore regions), R points (all
levels concatenated), L levels, C = sum over levels of min(topk, R_l) candidates per GT.
"""
from typing import Optional

import torch
from torch import Tensor

from crowdloss.ops import aligned_iou

from ..priors import Priors
from .base import AssignResult, BaseAssigner, ltrb_min_max

__all__ = ["ATSSAssigner"]

# cvpods / mmdetection count a point as inside a GT when every ltrb distance exceeds this.
_INSIDE_EPS = 0.01


class ATSSAssigner(BaseAssigner):
    """Statistics-based positive selection around each GT centre.

    Steps of ``assign``:
      1. Each point stands for a square anchor of side ``anchor_scale`` x its level's stride,
         centred on it (anchor priors stand for themselves, as in mmdetection, with their
         centres as points); IoU between valid GTs and these anchors is only ever needed at the
         candidates of step 2, so it is computed there: (V, C), not (V, R).
      2. Per level, take the ``topk`` points nearest (L2) to each GT's centre: C candidates per GT.
      3. Per GT, threshold = mean + std (unbiased) of the candidates' IoUs.
      4. A candidate is positive when its IoU >= threshold and the point lies inside the GT
         (all four ltrb distances > 0.01).
      5. A point positive for several GTs goes to the one of highest IoU (ties: lowest index).
      6. Ignore GTs (class -1) take no part in steps 1-5. A point that is not positive and lies
         strictly inside an ignore region (all ltrb > 0, the point itself, not its anchor) is
         ``ignored`` with ``gt_inds`` -1. Choice: for a point detector the point is what is
         classified, so a point in a crowd region is "don't care" whatever its anchor covers.

    Args:
        topk: candidates per level per GT (9 in the paper).
        anchor_scale: side of the virtual square anchor in strides (8 in the paper).
    """

    def __init__(self, *, topk: int = 9, anchor_scale: float = 8.0):
        if topk < 1 or anchor_scale <= 0:
            raise ValueError(f"ATSSAssigner: need topk >= 1 and anchor_scale > 0, got {topk}, {anchor_scale}")
        self.topk = int(topk)
        self.anchor_scale = float(anchor_scale)

    def _assign(self, priors: Priors, gt_boxes: Tensor, gt_classes: Tensor,
                pred_logits: Optional[Tensor], pred_boxes: Optional[Tensor]) -> AssignResult:
        points = priors.centers()
        num_points = points.shape[0]
        result = AssignResult.background(num_points, device=points.device)
        valid_idx = torch.nonzero(gt_classes >= 0).squeeze(1)
        valid = gt_boxes[valid_idx]

        if valid.shape[0] > 0:
            # Step 1 (only at the candidates of step 2): the prior's (virtual) anchor.
            if priors.is_points:
                half = priors.level_values([s * self.anchor_scale / 2 for s in priors.strides])
                anchors = torch.cat([points - half[:, None], points + half[:, None]], dim=1)
            else:
                anchors = priors.tensor

            # Step 2: per-level nearest points to each GT centre.
            centres = (valid[:, :2] + valid[:, 2:]) / 2
            candidates = []
            start = 0
            for level_points in points.split(priors.num_per_level):
                end = start + level_points.shape[0]
                if end > start:
                    # Squared L2 written out: cdist's matmul path loses precision and
                    # reorders near-ties between equally distant grid points.
                    dist = (centres[:, None, 0] - level_points[None, :, 0]) ** 2
                    dist += (centres[:, None, 1] - level_points[None, :, 1]) ** 2  # (V, R_l)
                    k = min(self.topk, end - start)
                    candidates.append(dist.topk(k, dim=1, largest=False).indices + start)
                start = end
            candidates = torch.cat(candidates, dim=1)  # (V, C)
            cand_points = points[candidates]  # (V, C, 2)
            cand_anchors = anchors[candidates]  # (V, C, 4)
            gts = valid[:, None, :].expand_as(cand_anchors)
            cand_iou = aligned_iou(gts, cand_anchors)  # (V, C)

            # Step 3: adaptive threshold per GT.
            std = cand_iou.std(dim=1) if cand_iou.shape[1] > 1 else torch.zeros_like(cand_iou[:, 0])
            threshold = cand_iou.mean(dim=1) + std

            # Step 4: positives among candidates.
            ltrb = torch.cat([cand_points - gts[..., :2], gts[..., 2:] - cand_points], dim=-1)
            cand_pos = (cand_iou >= threshold[:, None]) & (ltrb.min(dim=-1).values > _INSIDE_EPS)

            # Step 5: highest IoU wins (ties: lowest GT index), by two scatter reductions.
            gt_of = torch.arange(valid.shape[0], device=points.device)[:, None].expand_as(candidates)
            pos_points, pos_iou, pos_gt = candidates[cand_pos], cand_iou[cand_pos], gt_of[cand_pos]
            best_iou = torch.full((num_points,), -1.0, device=points.device)
            best_iou.scatter_reduce_(0, pos_points, pos_iou, reduce="amax")
            top = pos_iou == best_iou[pos_points]
            winner = torch.full((num_points,), valid.shape[0], dtype=torch.long, device=points.device)
            winner.scatter_reduce_(0, pos_points[top], pos_gt[top], reduce="amin")
            has_pos = winner < valid.shape[0]
            result.gt_inds[has_pos] = valid_idx[winner[has_pos]]

        # Step 6: ignore regions.
        ignore = gt_boxes[gt_classes < 0]
        if ignore.shape[0] > 0:
            in_ignore = (ltrb_min_max(points, ignore, with_max=False)[0] > 0).any(dim=0)
            result.ignored[in_ignore & (result.gt_inds < 0)] = True
        return result
