"""Anchor generators: RetinaNet's size x aspect-ratio grids and SSD's default boxes.

Two ways to describe the anchors of a location, one generator:

- cvpods / detectron2 (RetinaNet, arXiv 1708.02002): per level a list of sizes (sqrt of the
  area) and of aspect ratios h / w; anchors of a location are ordered sizes outer, ratios
  inner (``order="size_major"``), or ratios outer, sizes inner (``"ratio_major"``: the order
  of pytorch-retinanet, whose head channels therefore mean other anchors). One list may be
  broadcast to every level.
- SSD (arXiv 1512.02325, ssd.pytorch's ``PriorBox``): per level a ``min_size``, an optional
  ``max_size`` and aspect ratios; a location holds the square of side min_size, the square of
  side sqrt(min_size * max_size), then for each ratio r the pair (w, h) = (s sqrt r, s / sqrt r)
  and its transpose; centres at cell centres ((x + 0.5) * step); centre, width and height
  clamped to [0, image_size] (ssd.pytorch clamps cx, cy, w, h, not the corners).

Levels may hold different anchor counts (SSD300: 4 / 6 / 6 / 6 / 4 / 4); a head with weights
shared across levels needs one count, which ``num_anchors`` checks.

Anchors are computed in float64 and rounded to float32 once (as pytorch-retinanet and
ssd.pytorch do in numpy), so a corner is the float32 nearest its exact value.

Shape vocabulary: L levels, A_l anchors per location of level l, H_l x W_l cells, R anchors.
"""
import math
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .priors import Priors
from .shifts import grid_points

__all__ = ["AnchorGenerator", "ssd_cell_sizes", "ANCHOR_ORDERS"]

# Order of the anchors of one location: sizes outer (cvpods, detectron2, mmdetection) or
# aspect ratios outer (pytorch-retinanet).
ANCHOR_ORDERS = ("size_major", "ratio_major")

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


def _size_ratio_cell(sizes: List[float], aspect_ratios: List[float],
                     order: str = "size_major") -> List[List[float]]:
    """(w, h) of each anchor of a location: area size^2, h / w = ratio; sizes outer
    ("size_major") or ratios outer ("ratio_major")."""
    if order not in ANCHOR_ORDERS:
        raise ValueError(f"AnchorGenerator: order must be one of {ANCHOR_ORDERS}, got {order!r}")
    pairs = ([(s, r) for s in sizes for r in aspect_ratios] if order == "size_major"
             else [(s, r) for r in aspect_ratios for s in sizes])
    cell = []
    for size, ratio in pairs:
        if size <= 0 or ratio <= 0:
            raise ValueError(f"AnchorGenerator: sizes and aspect ratios must be > 0, got "
                             f"{size}, {ratio}")
        w = math.sqrt(size * size / ratio)
        cell.append([w, ratio * w])
    return cell


def ssd_cell_sizes(min_size: float, max_size: Optional[float],
                   aspect_ratios: Sequence[float]) -> List[List[float]]:
    """(w, h) of SSD's default boxes of one location, in ssd.pytorch's order.

    Args:
        min_size: side s of the first square.
        max_size: the second square has side sqrt(s * max_size); None or 0 = no second square.
        aspect_ratios: each r adds (s sqrt r, s / sqrt r) and (s / sqrt r, s sqrt r).
    """
    if min_size <= 0 or (max_size is not None and max_size < 0):
        raise ValueError(f"SSD anchors: need min_size > 0 and max_size >= 0, got {min_size}, {max_size}")
    cell = [[min_size, min_size]]
    if max_size:
        side = math.sqrt(min_size * max_size)
        cell.append([side, side])
    for r in aspect_ratios:
        if r <= 0:
            raise ValueError(f"SSD anchors: aspect ratios must be > 0, got {r}")
        cell += [[min_size * math.sqrt(r), min_size / math.sqrt(r)],
                 [min_size / math.sqrt(r), min_size * math.sqrt(r)]]
    return cell


class AnchorGenerator(nn.Module):
    """Anchors for every level of a feature pyramid.

    Args:
        sizes: anchor sizes (sqrt of area) in pixels: one list for all levels or one per level.
        aspect_ratios: h / w ratios, same broadcasting rule.
        strides: one stride per level.
        offset: anchor centre at ((x + offset) * stride, (y + offset) * stride).
        cell_sizes: instead of sizes x aspect ratios, the explicit (w, h) of every anchor of a
            location, one list per level (``from_ssd`` builds these).
        clip_size: clamp each anchor's centre, width and height to [0, clip_size] (SSD's fixed
            square input); None = no clamping.
        order: anchors of a location sizes outer ("size_major") or aspect ratios outer
            ("ratio_major", pytorch-retinanet); not used with ``cell_sizes``.
    """

    def __init__(self, *, sizes: Param = (), aspect_ratios: Param = (1.0,),
                 strides: Sequence[int], offset: float = 0.0,
                 cell_sizes: Optional[Sequence[Sequence[Sequence[float]]]] = None,
                 clip_size: Optional[float] = None, order: str = "size_major"):
        super().__init__()
        if len(strides) == 0:
            raise ValueError("AnchorGenerator: strides must list at least one level")
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"AnchorGenerator: offset must be in [0, 1), got {offset}")
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)
        self.clip_size = None if clip_size is None else float(clip_size)
        if cell_sizes is None:
            level_sizes = _per_level(sizes, len(self.strides), "sizes")
            ratios = _per_level(aspect_ratios, len(self.strides), "aspect_ratios")
            cell_sizes = [_size_ratio_cell(s, r, order) for s, r in zip(level_sizes, ratios)]
        elif len(cell_sizes) != len(self.strides):
            raise ValueError(f"AnchorGenerator: {len(cell_sizes)} cell_sizes lists for "
                             f"{len(self.strides)} strides")
        self.num_anchors_per_level = [len(c) for c in cell_sizes]
        for i, cell in enumerate(cell_sizes):
            wh = torch.tensor(cell, dtype=torch.float64).reshape(-1, 2)
            if wh.shape[0] == 0 or bool((wh <= 0).any()):
                raise ValueError(f"AnchorGenerator: level {i} needs anchors of positive size, got {cell}")
            self.register_buffer(f"cell_wh_{i}", wh, persistent=False)

    @classmethod
    def from_ssd(cls, *, steps: Sequence[int], min_sizes: Sequence[float],
                 max_sizes: Sequence[float], aspect_ratios: Sequence[Sequence[float]],
                 image_size: float = 300, clip: bool = True) -> "AnchorGenerator":
        """SSD's default boxes (ssd.pytorch ``PriorBox``) in input pixels.

        Args:
            steps: per-level step (the stride; 8, 16, 32, 64, 100, 300 for SSD300).
            min_sizes, max_sizes: per-level square sides (max 0 = no second square).
            aspect_ratios: per-level extra ratios, e.g. [[2], [2, 3], [2, 3], [2, 3], [2], [2]].
            image_size: the square input side the boxes are defined for.
            clip: clamp centre and size to [0, image_size] as ssd.pytorch does.
        """
        n = len(steps)
        if not (len(min_sizes) == len(max_sizes) == len(aspect_ratios) == n):
            raise ValueError(f"SSD anchors: steps, min_sizes, max_sizes and aspect_ratios need "
                             f"one entry per level, got {n}, {len(min_sizes)}, {len(max_sizes)}, "
                             f"{len(aspect_ratios)}")
        cells = [ssd_cell_sizes(float(lo), float(hi), r)
                 for lo, hi, r in zip(min_sizes, max_sizes, aspect_ratios)]
        return cls(strides=steps, offset=0.5, cell_sizes=cells,
                   clip_size=float(image_size) if clip else None)

    @property
    def num_anchors(self) -> int:
        """A, the anchors per location, when every level has the same count (shared heads)."""
        counts = set(self.num_anchors_per_level)
        if len(counts) != 1:
            raise ValueError(f"AnchorGenerator: levels hold different anchor counts "
                             f"{self.num_anchors_per_level}; a head shared across levels "
                             "needs one count (use a per-level head)")
        return counts.pop()

    @property
    def cell_anchors(self) -> List[Tensor]:
        """Per level (A_l, 4) xyxy anchors centred on (0, 0)."""
        return [torch.cat([-wh / 2, wh / 2], dim=1).float() for wh in self._cell_wh()]

    def _cell_wh(self) -> List[Tensor]:
        return [getattr(self, f"cell_wh_{i}") for i in range(len(self.strides))]

    def forward(self, features: List[Tensor]) -> Priors:
        """``features``: L tensors (N, C, H_l, W_l) -> ``Priors`` of (R, 4) xyxy anchors."""
        if len(features) != len(self.strides):
            raise ValueError(f"AnchorGenerator: got {len(features)} feature levels for {len(self.strides)} strides")
        out = []
        for f, stride, wh in zip(features, self.strides, self._cell_wh()):
            points = grid_points(f.shape[-2], f.shape[-1], stride, self.offset, device=f.device,
                                 dtype=torch.float64)
            wh = wh.to(f.device)
            if self.clip_size is None:
                shifts = torch.cat([points, points], dim=1)
                cell = torch.cat([-wh / 2, wh / 2], dim=1)
                out.append((shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4).float())
                continue
            centres = points[:, None, :].expand(-1, wh.shape[0], 2).clamp(0, self.clip_size)
            sizes = wh[None].expand(points.shape[0], -1, 2).clamp(0, self.clip_size)
            out.append(torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)
                       .reshape(-1, 4).float())
        return Priors.cat(out, self.strides)
