"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", arXiv 1708.02002)."""
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sigmoid_focal_loss", "focal_classification_loss", "reduce_loss"]


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` in {"none", "mean", "sum"}; empty inputs reduce to a 0 with a grad path."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        # mean of an empty tensor is NaN; an empty loss is 0 and must stay differentiable.
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    raise ValueError(f"reduction: expected one of 'none', 'mean', 'sum', got {reduction!r}")


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Binary focal loss on logits, elementwise over any shape (e.g. (R, K)).

    FL = -alpha_t * (1 - p_t)^gamma * log(p_t), computed through BCE-with-logits for
    numerical stability on large |logits|.

    Args:
        logits: raw scores, any shape.
        targets: same shape, in [0, 1] (one-hot rows for detection; soft targets work too).
        alpha: weight of the positive term; < 0 disables the alpha balancing.
        gamma: focusing exponent; 0 gives (alpha-weighted) BCE.
        reduction: "none" | "mean" | "sum".
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"sigmoid_focal_loss: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ"
        )
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return reduce_loss(loss, reduction)


def focal_classification_loss(logits: Tensor, labels: Tensor, *, alpha: float = 0.25,
                              gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss summed over every prior that is not excluded (the dense detectors'
    classification loss; divide by the detector's normaliser).

    Args:
        logits: (..., K) class logits, e.g. (N, R, K) for a batch.
        labels: (...) long: a class in [0, K) for positives, K for background, -1 for priors
            excluded from the loss (ignore regions, max-IoU grey zone).
        alpha, gamma: focal loss parameters.
    """
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"focal_classification_loss: labels {tuple(labels.shape)} do not match "
                         f"logits {tuple(logits.shape)} without their class dimension")
    num_classes = logits.shape[-1]
    logits, labels = logits.reshape(-1, num_classes), labels.reshape(-1)
    valid = labels >= 0
    fg = valid & (labels != num_classes)
    targets = torch.zeros_like(logits)
    targets[fg, labels[fg]] = 1.0
    return sigmoid_focal_loss(logits[valid], targets[valid], alpha=alpha, gamma=gamma,
                              reduction="sum")
