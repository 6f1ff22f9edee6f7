"""PCA lighting noise (AlexNet, Krizhevsky et al. 2012, section 4.1), the last photometric step
of the AP Loss (arXiv 1904.06373) and aLRP Loss (arXiv 2009.13592) training augmentation.

Shape vocabulary: H, W image size. Boxes are untouched.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import register_transform

__all__ = ["LightingNoise", "IMAGENET_PCA_EIGVAL", "IMAGENET_PCA_EIGVEC"]

# Principal components of ImageNet RGB pixel values (0-255): eigenvalues and eigenvectors
# (one per column, rows R, G, B), the values the AlexNet-style augmentation uses.
IMAGENET_PCA_EIGVAL = (55.46, 4.794, 1.148)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                       (-0.5808, -0.0045, -0.8140),
                       (-0.5836, -0.6948, 0.4203))


@register_transform
class LightingNoise:
    """Shift every pixel by one colour drawn along the principal components of ImageNet.

    With probability ``prob``: ``alpha ~ N(0, std)`` per component, and every pixel gets
    ``sum_j eigvec[:, j] * alpha_j * eigval_j`` (an RGB vector; a few 0-255 units at std 0.1),
    in the image's own channel order (``image_format``); the result is rounded and clipped to
    uint8. Draws ``random()`` then, if applied, ``normal(0, std, 3)`` from ``rng``.

    The AP Loss / aLRP Loss code names this ``RandomLightingNoise`` (in ssd.pytorch that name
    is a channel swap) and adds the RGB vector to its BGR images as is; here it is added in
    the true colour order.

    Args:
        std: standard deviation of each component's weight.
        prob: probability of applying it.
        eigval, eigvec: the principal components (RGB), ImageNet's by default.
        image_format: channel order of the images ("BGR" or "RGB"), = INPUT.FORMAT.
    """

    def __init__(self, *, std: float = 0.1, prob: float = 0.5,
                 eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC,
                 image_format: str = "BGR"):
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"LightingNoise: image_format must be 'BGR' or 'RGB', got "
                             f"{image_format!r}")
        if not std >= 0 or not 0.0 <= prob <= 1.0:
            raise ValueError(f"LightingNoise: need std >= 0 and prob in [0, 1], got std={std}, "
                             f"prob={prob}")
        self.eigval = np.asarray(eigval, dtype=np.float64).reshape(-1)
        self.eigvec = np.asarray(eigvec, dtype=np.float64)
        if self.eigval.shape != (3,) or self.eigvec.shape != (3, 3):
            raise ValueError(f"LightingNoise: eigval must have 3 values and eigvec be 3 x 3, "
                             f"got {self.eigval.shape} and {self.eigvec.shape}")
        self.std, self.prob, self.image_format = float(std), float(prob), image_format

    def __call__(self, image, annos, rng):
        if image.shape[2] != 3:
            raise ValueError(f"LightingNoise: expected 3 channels, got {image.shape[2]}")
        if rng.random() >= self.prob:
            return image, annos
        alpha = rng.normal(0.0, self.std, 3)
        rgb = self.eigvec @ (alpha * self.eigval)
        shift = (rgb[::-1] if self.image_format == "BGR" else rgb).astype(np.float32)
        out = np.clip(np.rint(image.astype(np.float32) + shift), 0, 255).astype(np.uint8)
        return out, annos
