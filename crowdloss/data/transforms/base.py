"""The transform contract, the name registry and :class:`Pipeline`.

Contract: a transform is a callable ``t(image, annos, rng) -> (image, annos)`` where

- ``image`` is an HWC uint8 numpy array in the channel order of ``INPUT.FORMAT`` ("BGR" unless
  a config says "RGB"); colour transforms take that order as their ``image_format`` kwarg;
- ``annos`` is an :class:`~crowdloss.data.annotations.Annotations` holding EVERY box of the
  image (objects and ignore regions, class -1), so geometric transforms may crop, expand, drop
  or clip boxes and keep classes and extra fields in step; boxes stay in the CURRENT image's
  absolute pixels after every transform;
- ``rng`` is the ``np.random.Generator`` the data loader seeded for this sample from (seed,
  rank, position in the sample stream). A transform draws ALL its randomness from it, never
  from ``np.random`` / ``random`` / torch, so a sample's augmentation is a function of that
  seed and ``--resume`` replays the stream exactly;
- inputs are never modified in place; transforms return new arrays / Annotations.

Boxes may leave the image or become empty inside a pipeline; the mapper runs
:func:`~crowdloss.data.boxes.clip_and_drop` once on the final result. Mean subtraction
is not a transform: the model normalises pixels with ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``.

Config entry point (cvpods ``INPUT.AUG.TRAIN_PIPELINES`` / ``TEST_PIPELINES``):
``build_transforms([(name, kwargs), ...])``.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..annotations import Annotations

__all__ = ["TRANSFORMS", "register_transform", "Pipeline", "build_transforms"]

TRANSFORMS: Dict[str, Callable] = {}


def register_transform(cls):
    """Make a transform class usable by name in pipeline lists (class decorator)."""
    TRANSFORMS[cls.__name__] = cls
    return cls


def _check_image(image, who: str) -> None:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[0] > 0 and image.shape[1] > 0):
        desc = (f"{type(image).__name__} {getattr(image, 'dtype', '')} "
                f"{getattr(image, 'shape', '')}")
        raise TypeError(f"{who}: expected a non-empty HWC uint8 numpy image, got {desc}")


class Pipeline:
    """Apply transforms in order: ``image, annos = pipeline(image, annos, rng)``.

    Every step's output is checked against the contract (a uint8 HWC image and an
    ``Annotations``), so a transform written for the old ``(image, boxes)`` contract fails
    with its name instead of corrupting targets.
    """

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, annos: Annotations,
                 rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, Annotations]:
        """Run the pipeline.

        Args:
            image: HWC uint8.
            annos: all annotations of the image.
            rng: the sample's generator. ``None`` draws a fresh unseeded one (only for ad-hoc
                use: training and test loaders always pass a seeded generator).
        """
        _check_image(image, "Pipeline input")
        if not isinstance(annos, Annotations):
            raise TypeError(f"Pipeline: annotations must be crowdloss.data.Annotations, got "
                            f"{type(annos).__name__} (transforms take (image, annos, rng))")
        rng = np.random.default_rng() if rng is None else rng
        for t in self.transforms:
            out = t(image, annos, rng)
            who = type(t).__name__
            if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Annotations)):
                raise TypeError(f"transform {who} must return (image, Annotations), got "
                                f"{type(out).__name__}")
            image, annos = out
            _check_image(image, f"transform {who} output")
        return image, annos

    def __repr__(self) -> str:
        return f"Pipeline({[type(t).__name__ for t in self.transforms]})"


def build_transforms(pipeline_list: Sequence) -> Pipeline:
    """``[(name, kwargs), ...]`` (cvpods ``INPUT.AUG.*_PIPELINES``) -> :class:`Pipeline`.

    Raises:
        ValueError: an entry is not a ``(name, dict)`` pair, or its kwargs are invalid (the
            message names the entry and the transform).
        KeyError: an unknown transform name (the message lists the known ones).
    """
    transforms: List = []
    for k, item in enumerate(pipeline_list or []):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], dict)):
            raise ValueError(f"pipeline entry {k} must be (name, dict(kwargs)), got {item!r}")
        name, kwargs = item
        if name not in TRANSFORMS:
            raise KeyError(f"pipeline entry {k}: unknown transform '{name}' "
                           f"(known: {', '.join(sorted(TRANSFORMS))})")
        try:
            transforms.append(TRANSFORMS[name](**kwargs))
        except TypeError as e:  # unknown / positional kwargs: say which entry
            raise ValueError(f"pipeline entry {k} ({name}): {e}") from e
    return Pipeline(transforms)
