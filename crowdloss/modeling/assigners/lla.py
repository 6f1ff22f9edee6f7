"""LLA: loss-aware label assignment (Ge et al., arXiv 2101.04307) for FCOS-style heads.

Shape vocabulary: M gts of one image, R points (all levels jointly), K classes, B gts per chunk.
"""
import math
from typing import Optional

import torch
from torch import Tensor

from crowdloss.ops import box_area, box_intersection
from crowdloss.modeling.losses import sigmoid_focal_loss

from ..priors import Priors
from .base import AssignResult, BaseAssigner, ltrb_min_max

__all__ = ["LLAAssigner"]


class LLAAssigner(BaseAssigner):
    """Each GT takes the points where the detector's own loss for it would be lowest.

    Prediction-aware (``uses_predictions``): the detector passes each image's detached class
    logits and decoded boxes. Anchor priors are measured from their centres.

    Steps of ``assign`` (docs/algorithms.md "LLA"; per image, all levels' points in one pool):
      1. cls cost (M, R): sigmoid focal loss (``focal_alpha``, ``focal_gamma``) of the point's K
         logits against the one-hot of the GT's class, summed over the K classes. Ignore GTs
         (class -1) use class 0, so they compete for points like a class-0 GT.
      2. reg cost (M, R): -log(IoU) between the point's predicted box and the GT, IoU clamped
         at ``iou_eps``.
      3. inside (M, R): all four ltrb distances from the point to the GT > ``inside_eps``.
      4. cost = cls + ``reg_cost`` x reg + ``outside_cost`` x (1 - inside): a soft penalty, so a
         GT with fewer than ``topk`` interior points still takes ``topk`` points. With
         ``outside_cost`` = inf only interior points can be taken (a small GT takes fewer).
      5. Each GT takes its ``topk`` lowest-cost points over all levels jointly. Conflicts,
         literally as written: a point taken by exactly one GT goes to that GT; a point taken
         by two or more GTs goes to the argmin of its whole cost column over ALL M GT rows
         (ties: lowest index), which may be a GT that did not take it. Points taken by no GT
         are background.
    Points whose winner is an ignore GT get ``gt_inds`` = that GT and ``ignored=True``.

    Memory: GTs are processed in chunks of ``chunk_size`` rows; each chunk holds a few (B, R)
    float32 matrices. Top-k is per row, so it is exact per chunk; the column argmin, the taker
    count and the single taker of each point are merged across chunks (strict < keeps the
    lowest index on ties, as a single argmin would).

    Args:
        topk: points per GT (10 in the paper's CrowdHuman config).
        reg_cost: weight of the reg cost (1.5).
        focal_alpha, focal_gamma: focal loss parameters of the cls cost.
        outside_cost: penalty for points outside the GT (1000 published; inf = never).
        inside_eps: minimum ltrb distance of an "inside" point.
        chunk_size: GT rows per chunk (B).
        iou_eps: IoU floor inside the log of the reg cost.
    """

    uses_predictions = True

    def __init__(
        self,
        *,
        topk: int = 10,
        reg_cost: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        outside_cost: float = 1000.0,
        inside_eps: float = 0.01,
        chunk_size: int = 128,
        iou_eps: float = 1e-6,
    ):
        if topk < 1 or chunk_size < 1:
            raise ValueError(f"LLAAssigner: need topk >= 1 and chunk_size >= 1, got {topk}, {chunk_size}")
        self.topk = int(topk)
        self.reg_cost = float(reg_cost)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.outside_cost = float(outside_cost)
        self.inside_eps = float(inside_eps)
        self.chunk_size = int(chunk_size)
        self.iou_eps = float(iou_eps)

    def cost_rows(self, cls_terms, pred_boxes: Tensor, points: Tensor, gt_boxes: Tensor, gt_cls: Tensor) -> Tensor:
        """Steps 1-4 for a chunk of B GTs -> (B, R) cost.

        ``cls_terms`` = (neg_sum (R,), pos_minus_neg (K, R)) from ``cls_cost_terms``.
        """
        neg_sum, pos_minus_neg = cls_terms
        # Step 1: sum_k FL(x_k, onehot_k) = sum_k FL(x_k, 0) + FL(x_c, 1) - FL(x_c, 0).
        cost = pos_minus_neg.index_select(0, gt_cls)
        cost += neg_sum[None, :]
        # Step 2: -log(IoU), fused in place on the intersection matrix.
        inter = box_intersection(gt_boxes, pred_boxes)
        union = box_area(gt_boxes)[:, None] + box_area(pred_boxes)[None, :]
        union -= inter
        iou = inter.div_(union.clamp_(min=torch.finfo(union.dtype).tiny))
        del union
        cost.sub_(iou.clamp_(min=self.iou_eps).log_(), alpha=self.reg_cost)
        del iou
        # Steps 3-4: min_d becomes the 0/1 "outside" indicator in place.
        min_d, _ = ltrb_min_max(points, gt_boxes, with_max=False)
        outside = min_d.le_(self.inside_eps)
        if math.isinf(self.outside_cost):  # inf x 0 would be NaN inside
            cost.masked_fill_(outside.bool(), math.inf)
        else:
            cost.add_(outside, alpha=self.outside_cost)
        return cost

    def cls_cost_terms(self, cls_logits: Tensor):
        """Per-point pieces of the summed focal cost: (sum_k FL(x_k, 0) (R,), FL(x, 1) - FL(x, 0) (K, R))."""
        focal = dict(alpha=self.focal_alpha, gamma=self.focal_gamma)
        neg = sigmoid_focal_loss(cls_logits, torch.zeros_like(cls_logits), **focal)  # (R, K)
        pos = sigmoid_focal_loss(cls_logits, torch.ones_like(cls_logits), **focal)
        return neg.sum(dim=1), (pos - neg).t().contiguous()

    def _assign(self, priors: Priors, gt_boxes: Tensor, gt_classes: Tensor,
                pred_logits: Optional[Tensor], pred_boxes: Optional[Tensor]) -> AssignResult:
        points = priors.centers()
        num_points, num_classes = points.shape[0], pred_logits.shape[1]
        if int(gt_classes.max()) >= num_classes:
            raise ValueError(f"LLAAssigner.assign: gt class {int(gt_classes.max())} >= K={num_classes}")
        result = AssignResult.background(num_points, device=points.device)
        num_gts = gt_boxes.shape[0]

        logits = pred_logits.float()
        pred_boxes = pred_boxes.float()
        points = points.float()
        gt_boxes = gt_boxes.float()
        cls_terms = self.cls_cost_terms(logits)
        cost_cls = gt_classes.clamp(min=0)  # ignore GTs compete as class 0

        k = min(self.topk, num_points)
        col_min = torch.full((num_points,), math.inf, device=points.device)
        col_arg = torch.full((num_points,), -1, dtype=torch.long, device=points.device)
        takers = torch.zeros(num_points, dtype=torch.long, device=points.device)
        taker = torch.full((num_points,), -1, dtype=torch.long, device=points.device)
        for start in range(0, num_gts, self.chunk_size):
            end = min(start + self.chunk_size, num_gts)
            cost = self.cost_rows(cls_terms, pred_boxes, points, gt_boxes[start:end], cost_cls[start:end])
            # Step 5a: this chunk's top-k per GT row.
            values, top = cost.topk(k, dim=1, largest=False)  # (B, k)
            rows = torch.arange(start, end, device=points.device)[:, None].expand_as(top)
            # An infinite cost (outside the GT with outside_cost = inf) is never taken.
            finite = torch.isfinite(values)
            flat, rows = top[finite], rows[finite]
            takers.index_add_(0, flat, torch.ones_like(flat))
            taker[flat] = rows  # only read back where exactly one GT took the point
            # Step 5b: running column argmin over all GT rows.
            chunk_min, chunk_arg = cost.min(dim=0)
            better = chunk_min < col_min
            col_min = torch.where(better, chunk_min, col_min)
            col_arg = torch.where(better, chunk_arg + start, col_arg)
            del cost

        result.gt_inds = torch.where(takers == 1, taker, torch.where(takers > 1, col_arg, result.gt_inds))
        won = result.gt_inds >= 0
        result.ignored = won & (gt_classes[result.gt_inds.clamp(min=0)] < 0)
        return result
