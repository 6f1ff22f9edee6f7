"""``Priors``: the points or anchors a dense head predicts from, with their level layout.

Every prior generator (``ShiftGenerator`` for point heads, ``AnchorGenerator`` for anchor
heads, SSD's default boxes included) returns one ``Priors`` for a batch, and every assigner
and loss reads the same object, so "which level is this prior on, with which stride" has one
answer everywhere.

Shape vocabulary: R priors of one image (all levels concatenated in level order; inside a level
row-major, y outer, x inner, the anchors of a location contiguous), R_l those of level l, L
levels, D = 2 (points, xy) or 4 (anchors, xyxy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch
from torch import Tensor

__all__ = ["Priors"]


@dataclass
class Priors:
    """The priors of one batch (all images of a padded batch share them).

    Attributes:
        tensor: (R, D) points (D = 2) or anchors (D = 4), absolute input pixels.
        num_per_level: L counts R_l, summing to R.
        strides: L strides (input pixels per feature cell).
    """

    tensor: Tensor
    num_per_level: List[int]
    strides: List[int]

    def __post_init__(self):
        self.num_per_level = [int(n) for n in self.num_per_level]
        self.strides = [int(s) for s in self.strides]
        if self.tensor.dim() != 2 or self.tensor.shape[1] not in (2, 4):
            raise ValueError(f"Priors: tensor must be (R, 2) points or (R, 4) anchors, got "
                             f"{tuple(self.tensor.shape)}")
        if len(self.num_per_level) != len(self.strides):
            raise ValueError(f"Priors: {len(self.num_per_level)} level counts but "
                             f"{len(self.strides)} strides")
        if sum(self.num_per_level) != self.tensor.shape[0]:
            raise ValueError(f"Priors: level counts {self.num_per_level} sum to "
                             f"{sum(self.num_per_level)}, not R = {self.tensor.shape[0]}")

    @classmethod
    def cat(cls, per_level: Sequence[Tensor], strides: Sequence[int]) -> "Priors":
        """Concatenate per-level (R_l, D) tensors."""
        return cls(torch.cat(list(per_level), dim=0), [len(p) for p in per_level], list(strides))

    def __len__(self) -> int:
        return self.tensor.shape[0]

    @property
    def is_points(self) -> bool:
        return self.tensor.shape[1] == 2

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def per_level(self) -> List[Tensor]:
        """L views (R_l, D)."""
        return list(self.tensor.split(self.num_per_level))

    def centers(self) -> Tensor:
        """(R, 2) xy: the points themselves, or the anchors' centres."""
        if self.is_points:
            return self.tensor
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def level_values(self, values: Sequence[float]) -> Tensor:
        """(R,) float32: ``values[l]`` repeated for every prior of level l (e.g. the strides)."""
        if len(values) != len(self.num_per_level):
            raise ValueError(f"Priors.level_values: {len(values)} values for "
                             f"{len(self.num_per_level)} levels")
        counts = torch.tensor(self.num_per_level, device=self.device)
        table = torch.tensor([float(v) for v in values], dtype=torch.float32, device=self.device)
        return table.repeat_interleave(counts)

    def level_stride(self) -> Tensor:
        """(R,) float32 stride of each prior's level."""
        return self.level_values(self.strides)
