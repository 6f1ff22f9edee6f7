"""IoU-family box regression losses on absolute xyxy boxes.

"iou" is UnitBox's -log(IoU) (arXiv 1608.01471), "linear_iou" is 1 - IoU, "giou" is 1 - GIoU
(arXiv 1902.09630), as in the FCOS / cvpods IOULoss, but on boxes rather than ltrb offsets.
Shape vocabulary: P positive pairs.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from crowdloss.ops import aligned_iou

from .focal import reduce_loss

__all__ = ["iou_loss", "iou_quality_loss"]

_TYPES = ("iou", "linear_iou", "giou")


def iou_loss(
    pred: Tensor,
    target: Tensor,
    *,
    weight: Optional[Tensor] = None,
    loss_type: str = "iou",
    reduction: str = "sum",
    eps: float = 1e-6,
) -> Tensor:
    """IoU loss between aligned (P, 4) predicted and target xyxy boxes.

    Args:
        pred: (P, 4) predicted boxes (gradients flow through these).
        target: (P, 4) target boxes.
        weight: optional (P,) per-pair weight (e.g. the centerness target).
        loss_type: "iou" (-log IoU, IoU clamped at ``eps``), "linear_iou" or "giou".
        reduction: "none" | "mean" | "sum".
        eps: floor for denominators and for IoU inside the log.
    """
    if loss_type not in _TYPES:
        raise ValueError(f"iou_loss: loss_type must be one of {_TYPES}, got {loss_type!r}")
    if pred.shape != target.shape or pred.shape[-1:] != (4,):
        raise ValueError(
            f"iou_loss: expected pred and target of equal shape (P, 4), got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if weight is not None and weight.shape != pred.shape[:-1]:
        raise ValueError(f"iou_loss: weight must have shape {tuple(pred.shape[:-1])}, got {tuple(weight.shape)}")
    target = target.to(pred.dtype)
    # Elementwise geometry written out (not ops.aligned_*) so the eps clamps keep gradients
    # finite for degenerate predictions instead of the zero-for-0/0 rule of the ops.
    w = (torch.min(pred[..., 2], target[..., 2]) - torch.max(pred[..., 0], target[..., 0])).clamp(min=0)
    h = (torch.min(pred[..., 3], target[..., 3]) - torch.max(pred[..., 1], target[..., 1])).clamp(min=0)
    inter = w * h
    area_p = (pred[..., 2] - pred[..., 0]).clamp(min=0) * (pred[..., 3] - pred[..., 1]).clamp(min=0)
    area_t = (target[..., 2] - target[..., 0]).clamp(min=0) * (target[..., 3] - target[..., 1]).clamp(min=0)
    union = (area_p + area_t - inter).clamp(min=eps)
    iou = inter / union
    if loss_type == "iou":
        loss = -torch.log(iou.clamp(min=eps))
    elif loss_type == "linear_iou":
        loss = 1 - iou
    else:
        cw = torch.max(pred[..., 2], target[..., 2]) - torch.min(pred[..., 0], target[..., 0])
        ch = torch.max(pred[..., 3], target[..., 3]) - torch.min(pred[..., 1], target[..., 1])
        enclose = (cw.clamp(min=0) * ch.clamp(min=0)).clamp(min=eps)
        loss = 1 - (iou - (enclose - union) / enclose)
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    return reduce_loss(loss, reduction)


def iou_quality_loss(quality_logits: Tensor, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """BCE-with-logits of an IoU branch against the IoU of the predicted box with its target,
    summed over the P positives (LLA, arXiv 2101.04307). The target is computed without
    gradient: the branch learns to predict the box quality, it does not move the box.

    Args:
        quality_logits: (P,) logits of the IoU branch.
        pred_boxes, target_boxes: (P, 4) xyxy.
    """
    with torch.no_grad():
        target = aligned_iou(pred_boxes.detach(), target_boxes)
    return F.binary_cross_entropy_with_logits(quality_logits, target, reduction="sum")
