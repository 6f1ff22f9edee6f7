"""The dense head's output over a batch, in the priors' layout (one row per prior of an image).

``permute_to_N_R_K`` flattens a level's (N, A*K, H, W) map to the order the prior generators
emit (row-major over the level, the A anchors of a location fastest); ``DenseOutputs`` holds
the flattened logits, box deltas and quality logits of all levels with their priors and
decodes the boxes once, on demand. Dense detectors and the RPN share both.

Shape vocabulary: N images, R priors of one image (all levels concatenated), A anchors per
location, K outputs per prior (classes, 4 box deltas, 1 quality logit).
"""
from __future__ import annotations

from functools import cached_property
from typing import Callable, Optional

import torch

from .priors import Priors

__all__ = ["DenseOutputs", "permute_to_N_R_K"]


def permute_to_N_R_K(tensor: torch.Tensor, K: int) -> torch.Tensor:
    """(N, A*K, H, W) -> (N, H*W*A, K): the layout the priors are generated in."""
    n, _, h, w = tensor.shape
    return tensor.view(n, -1, K, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, K)


class DenseOutputs:
    """The head's output over the batch, flattened to the priors' layout.

    Args:
        priors: the batch's ``Priors`` (R of them).
        logits: (N, R, C) class logits.
        deltas: (N, R, 4) box outputs (ltrb distances or anchor deltas: the box coder's input).
        quality: (N, R, 1) quality logits (centerness / IoU branch) or None.
        decode: ``(deltas, priors_tensor) -> xyxy boxes`` (the detector's box coder).
    """

    def __init__(self, priors: Priors, logits: torch.Tensor, deltas: torch.Tensor,
                 quality: Optional[torch.Tensor], decode: Callable):
        self.priors, self.logits, self.deltas, self.quality = priors, logits, deltas, quality
        self._decode = decode

    @cached_property
    def pred_boxes(self) -> torch.Tensor:
        """(N, R, 4) decoded xyxy boxes, computed once. Decoded with grad enabled even when
        first asked for inside the no-grad assignment (LLA), so the losses that reuse the cache
        still backpropagate into the box branch; under a global no_grad the deltas carry no
        graph and neither does the result."""
        prior = self.priors.tensor.expand(self.deltas.shape[0], -1, -1)
        with torch.enable_grad():
            return self._decode(self.deltas, prior)
