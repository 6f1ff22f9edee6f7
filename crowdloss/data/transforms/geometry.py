"""Geometric transforms: shortest-edge and fixed-size resizing, flips.

Shape vocabulary: H, W image height / width before a transform, M boxes (``annos.boxes``
(M, 4) absolute xyxy float32). Ignore regions (class -1) move exactly like objects.

``ResizeShortestEdge`` and ``RandomFlip`` are the detectron2 / cvpods transforms every FPN
experiment uses; their outputs (pixels, box values and the number of draws from ``rng``) are
pinned by ``tests/fixtures/transforms_legacy_golden.json``. ``Resize`` is SSD's fixed input
size (arXiv 1512.02325; amdegroot/ssd.pytorch's ``Resize``).
"""
from __future__ import annotations

import sys
from typing import Tuple

import cv2
import numpy as np

from ..annotations import Annotations
from .base import register_transform

__all__ = ["ResizeShortestEdge", "RandomFlip", "Resize"]


def _scale_boxes(annos: Annotations, sx: float, sy: float) -> Annotations:
    # float32 scale factors, as the pipelines always computed them (pinned by the golden test).
    boxes = annos.boxes * np.array([sx, sy, sx, sy], dtype=annos.boxes.dtype)
    return annos.replace(boxes=boxes)


@register_transform
class ResizeShortestEdge:
    """Resize so the short side is ``short_edge_length`` (sampled), long side <= ``max_size``.

    Args:
        short_edge_length: int, or a tuple: (min, max) for sample_style "range" (an integer
            drawn uniformly, both ends included), choices for "choice". 0 = leave unchanged.
        max_size: cap on the long side (the scale shrinks to respect it).
        sample_style: "range" or "choice".
        interp: cv2 interpolation flag (bilinear: fast and what cvpods uses).
    """

    def __init__(self, *, short_edge_length=800, max_size: int = sys.maxsize,
                 sample_style: str = "range", interp: int = cv2.INTER_LINEAR):
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        if sample_style not in ("range", "choice"):
            raise ValueError(f"ResizeShortestEdge: sample_style must be 'range' or 'choice', "
                             f"got {sample_style!r}")
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError("ResizeShortestEdge: sample_style 'range' needs (min, max), got "
                             f"{short_edge_length!r}")
        self.short_edge_length = tuple(int(s) for s in short_edge_length)
        self.max_size, self.sample_style, self.interp = max_size, sample_style, interp

    def output_size(self, h: int, w: int, size: int) -> Tuple[int, int]:
        """(new_h, new_w) for an ``h`` x ``w`` image and short side ``size``."""
        scale = size / min(h, w)
        newh, neww = h * scale, w * scale
        if max(newh, neww) > self.max_size:
            scale = self.max_size / max(newh, neww)
            newh, neww = newh * scale, neww * scale
        return int(newh + 0.5), int(neww + 0.5)

    def __call__(self, image, annos, rng):
        # No draw when there is nothing to choose: later transforms' draws depend on it.
        if self.sample_style == "range":
            lo, hi = self.short_edge_length
            size = int(rng.integers(lo, hi + 1)) if hi > lo else lo
        else:
            choices = self.short_edge_length
            size = choices[int(rng.integers(len(choices)))] if len(choices) > 1 else choices[0]
        if size == 0:
            return image, annos
        h, w = image.shape[:2]
        newh, neww = self.output_size(h, w, size)
        if (newh, neww) == (h, w):
            return image, annos
        image = cv2.resize(image, (neww, newh), interpolation=self.interp)
        return image, _scale_boxes(annos, neww / w, newh / h)


@register_transform
class RandomFlip:
    """Flip horizontally (or vertically) with probability ``prob``; one ``rng.random()`` draw.

    A horizontal flip maps x to W - x, so box (x1, y1, x2, y2) becomes (W - x2, y1, W - x1, y2).
    With ``prob`` 0.5 this is SSD's random mirror.
    """

    def __init__(self, *, prob: float = 0.5, horizontal: bool = True, vertical: bool = False):
        if horizontal == vertical:
            raise ValueError("RandomFlip: exactly one of horizontal / vertical must be True")
        self.prob, self.horizontal = prob, horizontal

    def __call__(self, image, annos, rng):
        if rng.random() >= self.prob:
            return image, annos
        h, w = image.shape[:2]
        boxes = annos.boxes.copy()
        if self.horizontal:
            image = cv2.flip(image, 1)
            boxes[:, [0, 2]] = w - annos.boxes[:, [2, 0]]
        else:
            image = cv2.flip(image, 0)
            boxes[:, [1, 3]] = h - annos.boxes[:, [3, 1]]
        return image, annos.replace(boxes=boxes)


_INTERPS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA,
            cv2.INTER_LANCZOS4)


@register_transform
class Resize:
    """Resize to exactly ``height`` x ``width``, ignoring the aspect ratio (SSD300 / SSD512).

    Boxes scale by (width / W, height / H). Deterministic (draws nothing from ``rng``) unless
    ``interp`` is a list of flags: then one is drawn uniformly per image, as the AP Loss / aLRP
    Loss code's resize does (linear, area, nearest, cubic, Lanczos).

    Args:
        height, width: output size in pixels.
        interp: cv2 interpolation flag (bilinear is what ssd.pytorch's ``cv2.resize`` uses), or
            a list of flags to draw from.
    """

    def __init__(self, *, height: int = 300, width: int = 300, interp=cv2.INTER_LINEAR):
        if int(height) <= 0 or int(width) <= 0:
            raise ValueError(f"Resize: height and width must be positive, got {height}x{width}")
        flags = tuple(interp) if isinstance(interp, (list, tuple)) else (interp,)
        if not flags or any(f not in _INTERPS for f in flags):
            raise ValueError(f"Resize: interp must be a cv2 interpolation flag in {_INTERPS} "
                             f"(nearest, linear, cubic, area, lanczos4) or a list of them, got "
                             f"{interp!r}")
        self.height, self.width = int(height), int(width)
        # A tuple means "draw one per image"; a single flag is used as given.
        self.interp = flags if isinstance(interp, (list, tuple)) else interp

    def __call__(self, image, annos, rng):
        interp = self.interp
        if isinstance(interp, tuple):
            interp = interp[int(rng.integers(len(interp)))]
        h, w = image.shape[:2]
        if (h, w) == (self.height, self.width):
            return image, annos
        image = cv2.resize(image, (self.width, self.height), interpolation=interp)
        return image, _scale_boxes(annos, self.width / w, self.height / h)
