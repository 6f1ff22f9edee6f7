"""SSD's confidence loss: softmax cross-entropy with hard negative mining (arXiv 1512.02325,
section 2.2 "Hard negative mining"), as ssd.pytorch's ``MultiBoxLoss`` computes it.

Most default boxes are background, so the loss keeps, per image, only the negatives the network
gets most wrong: the ``neg_pos_ratio`` x P_i background boxes of highest background loss
(-log softmax of the background logit), P_i the image's positives. An image without positives
contributes no negative either (ssd.pytorch's rule). Ignored boxes (label -1) are never
picked.

Shape vocabulary: N images, R default boxes of one image, C = K + 1 logits (background last),
K classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["hard_negative_mask", "multibox_classification_loss"]


@torch.no_grad()
def hard_negative_mask(background_loss: Tensor, candidates: Tensor, num_pos: Tensor, *,
                       neg_pos_ratio: float = 3.0) -> Tensor:
    """Per image, the ``int(neg_pos_ratio * num_pos)`` candidates of highest loss.

    Args:
        background_loss: (N, R) loss each box would take as background.
        candidates: (N, R) bool, the boxes that may be mined (background, not ignored).
        num_pos: (N,) positives of each image.
        neg_pos_ratio: negatives per positive (3 in SSD).

    Returns:
        (N, R) bool mask of the mined negatives (ties broken by the lower box index, a
        stable sort, so the choice is deterministic).
    """
    if neg_pos_ratio < 0:
        raise ValueError(f"hard_negative_mask: neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
    num_neg = (num_pos.to(torch.float64) * float(neg_pos_ratio)).floor().long()
    loss = background_loss.masked_fill(~candidates, float("-inf"))
    order = torch.sort(loss, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (rank < num_neg[:, None]) & candidates


def multibox_classification_loss(logits: Tensor, labels: Tensor, *,
                                 neg_pos_ratio: float = 3.0) -> Tensor:
    """Summed softmax cross-entropy over the positives and the mined negatives.

    Args:
        logits: (N, R, C) class logits, background last (C = K + 1).
        labels: (N, R) long: a class in [0, K) for positives, K for background, -1 excluded.
        neg_pos_ratio: mined negatives per positive, per image.

    Returns:
        The sum (divide by the detector's normaliser, the positives of the batch).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"multibox_classification_loss: expected logits (N, R, C) and labels "
                         f"(N, R), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    background = logits.shape[-1] - 1
    log_prob = F.log_softmax(logits, dim=-1)
    positive = (labels >= 0) & (labels != background)
    negative = hard_negative_mask(-log_prob[..., background].detach(), labels == background,
                                  positive.sum(dim=1), neg_pos_ratio=neg_pos_ratio)
    selected = positive | negative
    nll = -log_prob[selected].gather(1, labels[selected][:, None])
    return nll.sum()
