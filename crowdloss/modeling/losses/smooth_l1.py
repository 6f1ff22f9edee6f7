"""Smooth L1 (Huber-style) loss as in Fast R-CNN (arXiv 1504.08083), detectron2 semantics."""
import torch
from torch import Tensor

from .focal import reduce_loss

__all__ = ["smooth_l1_loss"]


def smooth_l1_loss(input: Tensor, target: Tensor, *, beta: float, reduction: str = "sum") -> Tensor:
    """0.5 * x^2 / beta where |x| < beta, else |x| - 0.5 * beta; ``beta`` 0 (or tiny) is plain L1.

    Args:
        input, target: same shape, e.g. (P, 4) box deltas.
        beta: transition point; RetinaNet on CrowdHuman uses 0.1.
        reduction: "none" | "mean" | "sum".
    """
    if input.shape != target.shape:
        raise ValueError(f"smooth_l1_loss: input {tuple(input.shape)} and target {tuple(target.shape)} differ")
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    diff = torch.abs(input - target.to(input.dtype))
    if beta < 1e-5:
        # Exact L1: avoids dividing by a ~0 beta (the quadratic zone would be empty anyway).
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return reduce_loss(loss, reduction)
