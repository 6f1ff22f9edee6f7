"""cvpods-style augmentation pipelines: ``[("ResizeShortestEdge", dict(...)), ...]``.

Every transform maps an image (HWC uint8 BGR numpy) and its boxes (xyxy float numpy, (M, 4))
consistently, drawing randomness only from the ``rng`` it is given, so a sample's
augmentation is a function of (seed, sample position) and ``--resume`` replays it exactly.
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["ResizeShortestEdge", "RandomFlip", "Pipeline", "build_transforms",
           "register_transform", "TRANSFORMS"]

TRANSFORMS: Dict[str, Callable] = {}


def register_transform(cls):
    """Make a transform class usable by name in pipeline lists."""
    TRANSFORMS[cls.__name__] = cls
    return cls


@register_transform
class ResizeShortestEdge:
    """Resize so the short side is ``short_edge_length`` (sampled), long side <= ``max_size``.

    Args:
        short_edge_length: int, or a tuple: (min, max) for sample_style "range", choices for
            "choice".
        max_size: cap on the long side.
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
        scale = size / min(h, w)
        newh, neww = h * scale, w * scale
        if max(newh, neww) > self.max_size:
            scale = self.max_size / max(newh, neww)
            newh, neww = newh * scale, neww * scale
        return int(newh + 0.5), int(neww + 0.5)

    def __call__(self, image, boxes, rng):
        if self.sample_style == "range":
            lo, hi = self.short_edge_length
            size = int(rng.integers(lo, hi + 1)) if hi > lo else lo
        else:
            choices = self.short_edge_length
            size = choices[int(rng.integers(len(choices)))] if len(choices) > 1 else choices[0]
        if size == 0:
            return image, boxes
        h, w = image.shape[:2]
        newh, neww = self.output_size(h, w, size)
        if (newh, neww) == (h, w):
            return image, boxes
        image = cv2.resize(image, (neww, newh), interpolation=self.interp)
        boxes = boxes * np.array([neww / w, newh / h, neww / w, newh / h], dtype=boxes.dtype)
        return image, boxes


@register_transform
class RandomFlip:
    """Flip horizontally (or vertically) with probability ``prob``."""

    def __init__(self, *, prob: float = 0.5, horizontal: bool = True, vertical: bool = False):
        if horizontal == vertical:
            raise ValueError("RandomFlip: exactly one of horizontal / vertical must be True")
        self.prob, self.horizontal = prob, horizontal

    def __call__(self, image, boxes, rng):
        if rng.random() >= self.prob:
            return image, boxes
        h, w = image.shape[:2]
        boxes = boxes.copy()
        if self.horizontal:
            image = cv2.flip(image, 1)
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        else:
            image = cv2.flip(image, 0)
            boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
        return image, boxes


class Pipeline:
    """Apply transforms in order: ``image, boxes = pipeline(image, boxes, rng)``."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, boxes, rng=None):
        rng = np.random.default_rng() if rng is None else rng
        for t in self.transforms:
            image, boxes = t(image, boxes, rng)
        return image, boxes

    def __repr__(self) -> str:
        return f"Pipeline({[type(t).__name__ for t in self.transforms]})"


def build_transforms(pipeline_list: Sequence) -> Pipeline:
    """``[(name, kwargs), ...]`` (cvpods ``INPUT.AUG.*_PIPELINES``) -> :class:`Pipeline`."""
    transforms: List = []
    for k, item in enumerate(pipeline_list or []):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], dict)):
            raise ValueError(f"pipeline entry {k} must be (name, dict(kwargs)), got {item!r}")
        name, kwargs = item
        if name not in TRANSFORMS:
            raise KeyError(f"pipeline entry {k}: unknown transform '{name}' "
                           f"(known: {', '.join(sorted(TRANSFORMS))})")
        transforms.append(TRANSFORMS[name](**kwargs))
    return Pipeline(transforms)
