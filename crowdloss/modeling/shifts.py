"""Point (shift) generator for anchor-free heads: one point per feature-map cell and level.

Shape vocabulary: L levels, H_l x W_l cells of level l, N images, C channels, R points.
"""
from typing import List, Sequence

import torch
from torch import Tensor, nn

from .priors import Priors

__all__ = ["ShiftGenerator", "grid_points"]


def grid_points(height: int, width: int, stride: float, offset: float, device=None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """(H * W, 2) xy points at ((x + offset) * stride, (y + offset) * stride), row-major (y outer)."""
    xs = (torch.arange(width, dtype=dtype, device=device) + offset) * stride
    ys = (torch.arange(height, dtype=dtype, device=device) + offset) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


class ShiftGenerator(nn.Module):
    """Generate FCOS points for every level of a feature pyramid.

    cvpods puts points at (x * stride, y * stride) (``SHIFT_GENERATOR.OFFSET`` 0.0); 0.5 puts
    them at cell centres.

    Args:
        strides: one stride per level, e.g. (8, 16, 32, 64, 128).
        offset: cell offset in [0, 1).
    """

    def __init__(self, *, strides: Sequence[int], offset: float = 0.0):
        super().__init__()
        if len(strides) == 0:
            raise ValueError("ShiftGenerator: strides must list at least one level")
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"ShiftGenerator: offset must be in [0, 1), got {offset}")
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)

    def forward(self, features: List[Tensor]) -> Priors:
        """``features``: L tensors (N, C, H_l, W_l) -> ``Priors`` of R = sum H_l * W_l xy points."""
        if len(features) != len(self.strides):
            raise ValueError(
                f"ShiftGenerator: got {len(features)} feature levels for {len(self.strides)} strides"
            )
        return Priors.cat(
            [grid_points(f.shape[-2], f.shape[-1], stride, self.offset, device=f.device)
             for f, stride in zip(features, self.strides)],
            self.strides,
        )
