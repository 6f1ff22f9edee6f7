"""Repulsion Loss (Wang et al., "Repulsion Loss: Detecting Pedestrians in a Crowd", arXiv
1711.07752): L = L_Attr + alpha L_RepGT + beta L_RepBox.

The detector's own box loss is the attraction term; the two repulsion terms here plug into any
dense detector through its ``extra_losses`` hook, ``f(outputs, targets, normalizer) -> dict``
(``build_repulsion_losses`` reads ``MODEL.REPULSION``).

- ``smooth_ln(x, sigma)`` = -ln(1 - x) for x <= sigma, (x - sigma) / (1 - sigma) - ln(1 - sigma)
  beyond (continuous value and slope). sigma = 1 is plain -ln(1 - x), infinite at x = 1, so
  sigma is capped at 1 - ``eps``: the curve follows -ln(1 - x) up to 1 - eps and continues on
  its tangent there (value -ln eps, slope 1 / eps) instead of diverging.
- RepGT: each positive p (anchor, default box or point) attracted to GT a(p) is repelled from
  G_rep(p), the valid GT (class >= 0) other than a(p) of highest IoU with the PRIOR p (the
  paper's argmax over G != G_Attr of IoU(G, P), P the proposal). Loss: sum over positives of
  smooth_ln(IoG(B_p, G_rep), sigma_gt), IoG = area(B ∩ G) / area(G) with B_p the decoded
  predicted box, divided by the detector's normaliser (the positives of the batch). A
  positive whose prior overlaps no other valid GT has no repulsion target and adds 0. Ignore
  regions are never targets. A point prior has no extent: it stands for the square of side
  ``point_prior_scale`` x its level's stride (ATSS's anchor of a point, arXiv 1912.02424).
  Unlike the Repulsion-SSD seed code, the GT is NOT chosen by IoU with the predicted box (the
  quantity being trained), and an image with one GT gives no target (the seed repels each
  box from its own GT there).
- RepBox: over ordered pairs (i, j), i != j, of positives of one image attracted to different
  GTs: sum smooth_ln(IoU(B_i, B_j), sigma_box) / (number of those pairs with IoU > 0 + eps).
  The sums and the count run over every image of the batch (the count averaged over
  processes, so that the mean of the DDP gradients is that of one process on the whole
  batch). Exact, in chunks of rows (``repbox_pair_sums``): memory O(chunk x P), never P x P.

Gradients reach only the predicted boxes: GT boxes are constants and the target selection
runs without gradient.

Shape vocabulary: N images, R priors of one image, M gts of one image, P positives of one image.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from crowdloss.ops import box_iou
from crowdloss.utils import comm

__all__ = ["smooth_ln", "aligned_iog", "repulsion_gt_targets", "prior_boxes",
           "repbox_pair_sums", "RepGTLoss", "RepBoxLoss", "build_repulsion_losses"]


def smooth_ln(x: Tensor, sigma: float, *, eps: float = 1e-3) -> Tensor:
    """Smooth_ln(x; sigma) elementwise for x in [0, 1] (module docstring), sigma in [0, 1]."""
    if not 0.0 <= sigma <= 1.0 or not 0.0 < eps < 1.0:
        raise ValueError(f"smooth_ln: need sigma in [0, 1] and eps in (0, 1), got {sigma}, {eps}")
    s = min(float(sigma), 1.0 - float(eps))
    # The log branch sees x clamped to s, so its (discarded) value and slope stay finite
    # where the linear branch applies and torch.where's backward never multiplies 0 by inf.
    log_branch = -torch.log1p(-x.clamp(max=s))
    linear = (x - s) / (1.0 - s) - math.log1p(-s)
    return torch.where(x <= s, log_branch, linear)


def aligned_iog(boxes: Tensor, gts: Tensor) -> Tensor:
    """(P,) area(boxes ∩ gts) / area(gts) of aligned (P, 4) xyxy pairs (gts of positive area)."""
    w = (torch.min(boxes[:, 2], gts[:, 2]) - torch.max(boxes[:, 0], gts[:, 0])).clamp(min=0)
    h = (torch.min(boxes[:, 3], gts[:, 3]) - torch.max(boxes[:, 1], gts[:, 1])).clamp(min=0)
    area = ((gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])).clamp(min=1e-12)
    return w * h / area


def prior_boxes(priors, point_prior_scale: float) -> Tensor:
    """(R, 4) boxes of the priors: anchors as they are, points as squares of side
    ``point_prior_scale`` x stride centred on them."""
    if not priors.is_points:
        return priors.tensor
    half = priors.level_stride()[:, None] * (point_prior_scale / 2.0)
    return torch.cat([priors.tensor - half, priors.tensor + half], dim=1)


@torch.no_grad()
def repulsion_gt_targets(boxes: Tensor, gt_boxes: Tensor, gt_classes: Tensor,
                         attraction: Tensor) -> Tuple[Tensor, Tensor]:
    """RepGT targets of P positives.

    Args:
        boxes: (P, 4) the positives' prior boxes (NOT their predictions).
        gt_boxes, gt_classes: (M, 4), (M,) every GT of the image, -1 = ignore region.
        attraction: (P,) the GT index each positive regresses to.

    Returns:
        (P,) long index of the repulsion GT (meaningless where absent) and (P,) bool "has a
        target": some valid GT other than the attraction GT overlaps the prior.
    """
    iou = box_iou(boxes, gt_boxes)  # (P, M)
    iou[:, gt_classes < 0] = -1.0
    iou[torch.arange(boxes.shape[0], device=boxes.device), attraction] = -1.0
    best, index = iou.max(dim=1)
    return index, best > 0


def _pair_block(rows: Tensor, cols: Tensor, row_groups: Tensor, col_groups: Tensor,
                row_ids: Tensor, col_ids: Tensor, sigma: float, eps: float
                ) -> Tuple[Tensor, Tensor]:
    """smooth_ln(IoU) summed over the pairs (i in rows, j in cols) with j > i and different
    groups, and how many of those pairs overlap (IoU > 0)."""
    lt = torch.max(rows[:, None, :2], cols[None, :, :2])
    rb = torch.min(rows[:, None, 2:], cols[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_r = (rows[:, 2] - rows[:, 0]).clamp(min=0) * (rows[:, 3] - rows[:, 1]).clamp(min=0)
    area_c = (cols[:, 2] - cols[:, 0]).clamp(min=0) * (cols[:, 3] - cols[:, 1]).clamp(min=0)
    union = (area_r[:, None] + area_c[None, :] - inter).clamp(min=1e-12)
    iou = inter / union
    keep = (col_ids[None, :] > row_ids[:, None]) & (col_groups[None, :] != row_groups[:, None])
    # smooth_ln(x; 0) is x on [0, 1]: skip its log branch for the paper's RepBox sigma.
    loss = iou if sigma == 0 else smooth_ln(iou, sigma, eps=eps)
    value = torch.where(keep, loss, iou.new_zeros(()))
    return value.sum(), (keep & (iou > 0)).sum()


class _RepBoxSums(torch.autograd.Function):
    """Sum of the pair terms, computed and differentiated block by block: the backward pass
    recomputes each block under autograd, so no P x P tensor is ever held."""

    @staticmethod
    def forward(ctx, boxes, groups, sigma, eps, rows_per_chunk):
        total = boxes.new_zeros(())
        count = torch.zeros((), dtype=torch.long, device=boxes.device)
        ids = torch.arange(boxes.shape[0], device=boxes.device)
        for start in range(0, boxes.shape[0], rows_per_chunk):
            end = min(start + rows_per_chunk, boxes.shape[0])
            s, c = _pair_block(boxes[start:end], boxes[start:], groups[start:end],
                               groups[start:], ids[start:end], ids[start:], sigma, eps)
            total += s
            count += c
        ctx.save_for_backward(boxes, groups)
        ctx.params = (sigma, eps, rows_per_chunk)
        ctx.mark_non_differentiable(count)
        return total, count

    @staticmethod
    def backward(ctx, grad_total, grad_count):
        boxes, groups = ctx.saved_tensors
        sigma, eps, rows_per_chunk = ctx.params
        grad = torch.zeros_like(boxes)
        ids = torch.arange(boxes.shape[0], device=boxes.device)
        for start in range(0, boxes.shape[0], rows_per_chunk):
            end = min(start + rows_per_chunk, boxes.shape[0])
            with torch.enable_grad():
                rows = boxes[start:end].detach().requires_grad_(True)
                cols = boxes[start:].detach().requires_grad_(True)
                s, _ = _pair_block(rows, cols, groups[start:end], groups[start:],
                                   ids[start:end], ids[start:], sigma, eps)
                g_rows, g_cols = torch.autograd.grad(s, (rows, cols))
            grad[start:end] += g_rows
            grad[start:] += g_cols
        return grad * grad_total, None, None, None, None


def repbox_pair_sums(boxes: Tensor, groups: Tensor, sigma: float, *, eps: float = 1e-3,
                     max_block_elements: int = 1 << 20) -> Tuple[Tensor, Tensor]:
    """RepBox numerator and pair count of one image, over ORDERED pairs (i, j), i != j.

    Args:
        boxes: (P, 4) predicted xyxy boxes of the positives (gradients flow to them).
        groups: (P,) attraction GT of each positive; pairs of the same group are skipped.
        sigma: smooth_ln's sigma; eps: its cap (see ``smooth_ln``).
        max_block_elements: bound on rows x columns of one block (memory O(this), not P^2).

    Returns:
        sum of smooth_ln(IoU) (scalar, differentiable) and the count of pairs with IoU > 0.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or groups.shape != boxes.shape[:1]:
        raise ValueError(f"repbox_pair_sums: expected boxes (P, 4) and groups (P,), got "
                         f"{tuple(boxes.shape)} and {tuple(groups.shape)}")
    if boxes.shape[0] < 2:
        return boxes.sum() * 0.0, torch.zeros((), dtype=torch.long, device=boxes.device)
    rows = max(1, int(max_block_elements) // boxes.shape[0])
    total, count = _RepBoxSums.apply(boxes, groups, float(sigma), float(eps), rows)
    # Each unordered pair was visited once; the paper sums over i != j (both orders).
    return 2.0 * total, 2 * count


class RepGTLoss:
    """``extra_losses`` term: {"loss_repgt": weight x RepGT} (module docstring).

    Args:
        weight: alpha (0.5 in the paper). sigma: smooth_ln's sigma (1.0, the paper's best).
        eps: smooth_ln's cap. point_prior_scale: side of a point prior's box, in strides.
    """

    def __init__(self, *, weight: float = 0.5, sigma: float = 1.0, eps: float = 1e-3,
                 point_prior_scale: float = 8.0):
        smooth_ln(torch.zeros(1), sigma, eps=eps)  # validates sigma / eps now, not mid-run
        self.weight, self.sigma, self.eps = float(weight), float(sigma), float(eps)
        self.point_prior_scale = float(point_prior_scale)

    def __call__(self, outputs, targets, normalizer: float) -> Dict[str, Tensor]:
        total = outputs.deltas.sum() * 0.0  # keeps the graph when no positive has a target
        boxes = prior_boxes(outputs.priors, self.point_prior_scale)
        for i, t in enumerate(targets):
            pos = t.positive
            if not bool(pos.any()):
                continue
            attraction = t.assignment.gt_inds[pos]
            rep, has = repulsion_gt_targets(boxes[pos], t.gt_boxes, t.gt_classes, attraction)
            if not bool(has.any()):
                continue
            pred = outputs.pred_boxes[i][pos][has]
            iog = aligned_iog(pred, t.gt_boxes[rep[has]].to(pred.dtype))
            total = total + smooth_ln(iog, self.sigma, eps=self.eps).sum()
        return {"loss_repgt": self.weight * total / normalizer}


class RepBoxLoss:
    """``extra_losses`` term: {"loss_repbox": weight x RepBox} (module docstring).

    Args:
        weight: beta (0.5 in the paper). sigma: smooth_ln's sigma (0.0, the paper's best).
        eps: smooth_ln's cap and the denominator's eps.
        max_block_elements: memory bound of the pair blocks (see ``repbox_pair_sums``).
    """

    def __init__(self, *, weight: float = 0.5, sigma: float = 0.0, eps: float = 1e-3,
                 max_block_elements: int = 1 << 20):
        smooth_ln(torch.zeros(1), sigma, eps=eps)
        self.weight, self.sigma, self.eps = float(weight), float(sigma), float(eps)
        self.max_block_elements = int(max_block_elements)

    def __call__(self, outputs, targets, normalizer: float) -> Dict[str, Tensor]:
        total = outputs.deltas.sum() * 0.0
        count = 0
        for i, t in enumerate(targets):
            pos = t.positive
            if int(pos.sum()) < 2:
                continue
            s, c = repbox_pair_sums(outputs.pred_boxes[i][pos], t.assignment.gt_inds[pos],
                                    self.sigma, eps=self.eps,
                                    max_block_elements=self.max_block_elements)
            total = total + s
            count += int(c)
        pairs = comm.all_reduce_mean(torch.tensor(float(count), device=total.device))
        return {"loss_repbox": self.weight * total / (float(pairs) + self.eps)}


def build_repulsion_losses(cfg) -> List:
    """The repulsion terms ``MODEL.REPULSION`` switches on (an empty list when neither is)."""
    r = cfg.MODEL.REPULSION
    terms: List = []
    if r.REPGT.ENABLED:
        terms.append(RepGTLoss(weight=r.REPGT.WEIGHT, sigma=r.REPGT.SIGMA, eps=r.EPS,
                               point_prior_scale=r.POINT_PRIOR_SCALE))
    if r.REPBOX.ENABLED:
        terms.append(RepBoxLoss(weight=r.REPBOX.WEIGHT, sigma=r.REPBOX.SIGMA, eps=r.EPS,
                                max_block_elements=r.REPBOX.MAX_BLOCK_ELEMENTS))
    return terms
