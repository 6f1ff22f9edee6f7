"""Anchor generator for anchor-based heads (RetinaNet, arXiv 1708.02002), cvpods semantics.

Shape vocabulary: L levels, A anchors per location, H_l x W_l cells of level l.
Aspect ratio is h / w (cvpods / detectron2); anchors of one location are contiguous, ordered
sizes outer, aspect ratios inner.
"""
import math
from typing import List, Sequence, Union

import torch
from torch import Tensor, nn

from .shifts import grid_points

__all__ = ["AnchorGenerator"]

Param = Union[Sequence[float], Sequence[Sequence[float]]]


def _per_level(param: Param, num_levels: int, name: str) -> List[List[float]]:
    """One flat list for all levels, a list holding one list (broadcast), or one list per level."""
    param = list(param)
    if len(param) == 0:
        raise ValueError(f"AnchorGenerator: {name} is empty")
    if all(isinstance(p, (int, float)) for p in param):
        return [[float(p) for p in param]] * num_levels
    if not all(isinstance(p, (list, tuple)) and len(p) > 0 for p in param):
        raise ValueError(f"AnchorGenerator: {name} must be a list of numbers or of non-empty lists, got {param}")
    if len(param) == 1:
        return [[float(p) for p in param[0]]] * num_levels
    if len(param) != num_levels:
        raise ValueError(
            f"AnchorGenerator: {name} has {len(param)} per-level lists for {num_levels} strides"
        )
    return [[float(p) for p in level] for level in param]


def _cell_anchors(sizes: List[float], aspect_ratios: List[float]) -> Tensor:
    # (A, 4) anchors centred on (0, 0): area size^2, h / w = ratio.
    anchors = []
    for size in sizes:
        for ratio in aspect_ratios:
            if size <= 0 or ratio <= 0:
                raise ValueError(f"AnchorGenerator: sizes and aspect ratios must be > 0, got {size}, {ratio}")
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            anchors.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(anchors, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Anchors for every level of a feature pyramid.

    Args:
        sizes: anchor sizes (sqrt of area) in pixels: one list for all levels or one per level.
        aspect_ratios: h / w ratios, same broadcasting rule.
        strides: one stride per level.
        offset: anchor centre at ((x + offset) * stride, (y + offset) * stride).
    """

    def __init__(self, *, sizes: Param, aspect_ratios: Param, strides: Sequence[int], offset: float = 0.0):
        super().__init__()
        if len(strides) == 0:
            raise ValueError("AnchorGenerator: strides must list at least one level")
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"AnchorGenerator: offset must be in [0, 1), got {offset}")
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)
        sizes = _per_level(sizes, len(self.strides), "sizes")
        ratios = _per_level(aspect_ratios, len(self.strides), "aspect_ratios")
        cells = [_cell_anchors(s, r) for s, r in zip(sizes, ratios)]
        counts = {c.shape[0] for c in cells}
        if len(counts) != 1:
            # A shared head predicts the same A per location on every level.
            raise ValueError(f"AnchorGenerator: every level needs the same anchor count, got {[c.shape[0] for c in cells]}")
        self._num_anchors = counts.pop()
        for i, c in enumerate(cells):
            self.register_buffer(f"cell_anchors_{i}", c, persistent=False)

    @property
    def num_anchors(self) -> int:
        """A: anchors per location (same on every level)."""
        return self._num_anchors

    @property
    def cell_anchors(self) -> List[Tensor]:
        return [getattr(self, f"cell_anchors_{i}") for i in range(len(self.strides))]

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        """``features``: L tensors (N, C, H_l, W_l) -> L tensors (H_l * W_l * A, 4) xyxy."""
        if len(features) != len(self.strides):
            raise ValueError(f"AnchorGenerator: got {len(features)} feature levels for {len(self.strides)} strides")
        out = []
        for f, stride, cell in zip(features, self.strides, self.cell_anchors):
            points = grid_points(f.shape[-2], f.shape[-1], stride, self.offset, device=f.device)
            shifts = torch.cat([points, points], dim=1)
            out.append((shifts[:, None, :] + cell.to(f.device)[None, :, :]).reshape(-1, 4))
        return out
