"""cvpods-style augmentation pipelines: ``[("ResizeShortestEdge", dict(...)), ...]``.

A transform maps ``(image, annos, rng) -> (image, annos)``: an HWC uint8 image in the channel
order of ``INPUT.FORMAT`` and ALL of its :class:`~crowdloss.data.annotations.Annotations`
(boxes, classes with -1 = ignore region, extra per-box fields), so it may crop, expand, drop or
clip boxes. Randomness comes only from the ``rng`` it is given. See ``docs/transforms.md``.

Registered names: ``ResizeShortestEdge``, ``RandomFlip``, ``Resize`` (fixed size), and the SSD
training augmentations (arXiv 1512.02325) ``PhotometricDistort``, ``Expand`` and
``MinIoURandomCrop``, and the PCA ``LightingNoise`` of the AP Loss / aLRP Loss augmentation.
"""
from .base import TRANSFORMS, Pipeline, build_transforms, register_transform
from .geometry import RandomFlip, Resize, ResizeShortestEdge
from .photometric import LightingNoise
from .ssd import Expand, MinIoURandomCrop, PhotometricDistort

__all__ = ["ResizeShortestEdge", "RandomFlip", "Resize", "Expand", "MinIoURandomCrop",
           "PhotometricDistort", "LightingNoise", "Pipeline", "build_transforms", "register_transform",
           "TRANSFORMS"]
