"""Random foreground / background subsampling of labelled candidates (Faster R-CNN, arXiv
1506.01497): the RPN's 256 anchors per image and the ROI heads' 512 proposals per image.

Shape vocabulary: R candidates of one image, P / Q sampled positives / negatives.
"""
from typing import Tuple

import torch
from torch import Tensor

__all__ = ["subsample_labels"]


def subsample_labels(labels: Tensor, num_samples: int, positive_fraction: float,
                     bg_label: int) -> Tuple[Tensor, Tensor]:
    """Draw at most ``num_samples`` candidates, positives first.

    Positives are the candidates whose label is neither -1 (excluded: grey zone, ignore region)
    nor ``bg_label``; negatives those labelled ``bg_label``. Up to
    ``int(num_samples * positive_fraction)`` positives are drawn uniformly without
    replacement; negatives fill the rest of ``num_samples`` as far as there are enough. Draws
    use the global torch generator (``torch.randperm``), so seeding torch fixes them.

    Args:
        labels: (R,) integer labels: -1 excluded, ``bg_label`` background, anything else
            foreground.
        num_samples: candidates wanted in all (256 for the RPN, 512 for the ROI heads).
        positive_fraction: the largest share of positives (0.5 RPN, 0.25 ROI heads).
        bg_label: the background label (0 for the RPN, K for the ROI heads).

    Returns:
        (P,) and (Q,) long indices into ``labels`` of the sampled positives and negatives,
        P + Q <= num_samples.
    """
    if labels.dim() != 1:
        raise ValueError(f"subsample_labels: labels must be (R,), got {tuple(labels.shape)}")
    if num_samples < 0 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"subsample_labels: need num_samples >= 0 and positive_fraction in "
                         f"[0, 1], got {num_samples}, {positive_fraction}")
    positive = torch.nonzero((labels != -1) & (labels != bg_label)).squeeze(1)
    negative = torch.nonzero(labels == bg_label).squeeze(1)
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    pos = positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]]
    neg = negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]
    return pos, neg
