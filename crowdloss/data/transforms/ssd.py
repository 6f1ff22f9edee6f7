"""SSD's training augmentations (arXiv 1512.02325, section 2.2 "Data augmentation").

Shape vocabulary: H, W image size, M boxes (objects and ignore regions), O objects (class >= 0).

As implemented by amdegroot/ssd.pytorch's ``SSDAugmentation`` (and mmdetection's equivalents,
which the aLRP Loss code trains with): ``PhotometricDistort``, ``Expand`` (zoom out),
``MinIoURandomCrop`` (zoom in), then ``RandomFlip`` and the fixed-size ``Resize`` of
``geometry.py``. Mean subtraction is the model's job (``MODEL.PIXEL_MEAN``). Every rule and
every deliberate departure from the reference is listed in docs/transforms.md; the short
version sits in each class's docstring.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import cv2
import numpy as np

from ..annotations import Annotations
from .base import register_transform

__all__ = ["PhotometricDistort", "Expand", "MinIoURandomCrop"]

_TO_HSV = {"BGR": (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR),
           "RGB": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)}


def _range(name: str, value, lo_min: float = 0.0) -> Tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not lo_min <= lo <= hi:
        raise ValueError(f"PhotometricDistort: {name} must satisfy {lo_min} <= min <= max, "
                         f"got {value!r}")
    return lo, hi


@register_transform
class PhotometricDistort:
    """Random brightness, contrast, saturation, hue and channel order (SSD training).

    amdegroot/ssd.pytorch's ``PhotometricDistort`` (mmdetection's ``PhotoMetricDistortion``,
    used by the aLRP Loss code, is the same sequence), computed like them in float32 on 0-255:

    1. brightness: with probability ``prob`` add ``U[-brightness_delta, brightness_delta)``;
    2. a fair coin puts the contrast step before 3 or after 5: with probability ``prob``
       multiply by ``U[contrast_range)``;
    3. saturation: with probability ``prob`` multiply OpenCV's float HSV S (in [0, 1]) by
       ``U[saturation_range)``;
    4. hue: with probability ``prob`` add ``U[-hue_delta, hue_delta)`` degrees to H (float
       HSV: [0, 360)), wrapped into [0, 360);
    5. back from HSV (skipped, with the conversion, when neither 3 nor 4 applies);
    6. channel swap: with probability ``channel_swap_prob`` a uniform permutation of the 3
       channels (identity included), as ssd.pytorch's ``RandomLightingNoise``. The original
       Caffe SSD configs disable it (``random_order_prob: 0.0``): pass 0.0 for that.

    Draws from ``rng`` in that order: per step one ``random()`` ("apply?"), then the amount if
    applied; one ``random()`` for the contrast position; ``permutation(3)`` for the swap.
    Intermediate values are not clipped (as in the references); the one departure is that
    the result is rounded and clipped to uint8 at the end, where the references hand the
    unclipped floats to the network. HSV is computed from the true colours whatever the
    channel order (``image_format``), so BGR and RGB runs distort alike. Boxes are untouched.

    Args:
        brightness_delta: max absolute brightness shift, in 0-255 units.
        contrast_range: (min, max) contrast factor.
        saturation_range: (min, max) saturation factor.
        hue_delta: max absolute hue shift in degrees (of 360).
        prob: probability of each of brightness, contrast, saturation and hue.
        channel_swap_prob: probability of a random channel permutation.
        image_format: channel order of the images ("BGR" or "RGB"): must equal INPUT.FORMAT
            (the mapper checks), so hue and saturation act on the true colours.
    """

    def __init__(self, *, brightness_delta: float = 32.0,
                 contrast_range: Tuple[float, float] = (0.5, 1.5),
                 saturation_range: Tuple[float, float] = (0.5, 1.5), hue_delta: float = 18.0,
                 prob: float = 0.5, channel_swap_prob: float = 0.5, image_format: str = "BGR"):
        if image_format not in _TO_HSV:
            raise ValueError(f"PhotometricDistort: image_format must be 'BGR' or 'RGB', got "
                             f"{image_format!r}")
        if not 0.0 <= brightness_delta <= 255.0:
            raise ValueError(f"PhotometricDistort: brightness_delta must be in [0, 255], got "
                             f"{brightness_delta}")
        if not 0.0 <= hue_delta <= 360.0:
            raise ValueError(f"PhotometricDistort: hue_delta must be in [0, 360] degrees, got "
                             f"{hue_delta}")
        for name, p in (("prob", prob), ("channel_swap_prob", channel_swap_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"PhotometricDistort: {name} must be in [0, 1], got {p}")
        self.brightness_delta, self.hue_delta = float(brightness_delta), float(hue_delta)
        self.contrast_range = _range("contrast_range", contrast_range)
        self.saturation_range = _range("saturation_range", saturation_range)
        self.prob, self.channel_swap_prob = float(prob), float(channel_swap_prob)
        self.image_format = image_format

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < self.prob:
            img *= np.float32(rng.uniform(*self.contrast_range))
        return img

    def __call__(self, image, annos, rng):
        if image.shape[2] != 3:
            raise ValueError(f"PhotometricDistort: expected 3 channels, got {image.shape[2]}")
        img = image.astype(np.float32)
        # In-place float32 arithmetic, OpenCV for the uint8 conversions and the channel swap:
        # on megapixel images the naive numpy versions cost several times more.
        if rng.random() < self.prob:
            img += np.float32(rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = rng.random() < 0.5
        if contrast_first:
            img = self._contrast(img, rng)
        saturation = rng.uniform(*self.saturation_range) if rng.random() < self.prob else None
        hue = rng.uniform(-self.hue_delta, self.hue_delta) if rng.random() < self.prob else None
        if saturation is not None or hue is not None:
            # Skipped when neither applies: the float round trip would only add rounding noise.
            to_hsv, from_hsv = _TO_HSV[self.image_format]
            hsv = cv2.cvtColor(img, to_hsv)
            if saturation is not None:
                hsv[..., 1] *= np.float32(saturation)
            if hue is not None:
                # H in [0, 360) plus a shift in [0, 360) (hue mod 360, the same rotation)
                # lands in [0, 720): one conditional subtraction wraps it.
                hv = hsv[..., 0]
                hv += np.float32(hue % 360.0)
                np.subtract(hv, np.float32(360.0), out=hv, where=hv >= 360.0)
            img = cv2.cvtColor(hsv, from_hsv)
        if not contrast_first:
            img = self._contrast(img, rng)
        # Round to nearest (ties to even, as np.rint) and saturate to [0, 255] in one pass.
        out = cv2.add(img, 0.0, dtype=cv2.CV_8U)
        if rng.random() < self.channel_swap_prob:
            # Permuting after rounding is the same as before it, on a third of the bytes.
            channels = cv2.split(out)
            out = cv2.merge([channels[int(k)] for k in rng.permutation(3)])
        return out, annos


@register_transform
class Expand:
    """SSD's zoom out: place the image on a larger canvas filled with the pixel mean.

    With probability ``prob``: draw ``ratio ~ U[ratio_range)``, a canvas of
    ``int(H * ratio) x int(W * ratio)`` filled with ``mean``, and offsets
    ``left ~ U[0, W * ratio - W)``, ``top ~ U[0, H * ratio - H)``; the image goes to
    ``[int(top), int(left)]`` and every box shifts by ``(int(left), int(top))``. Objects become
    small relative to the canvas, which is how SSD learns small people (arXiv 1512.02325,
    section 3.6). Draws: one ``rng.random()``, then (if applied) ratio, left, top.

    Args:
        mean: fill value per channel, IN THE IMAGE'S CHANNEL ORDER (give ``MODEL.PIXEL_MEAN``,
            which is in ``INPUT.FORMAT`` order, so the canvas is ~0 after the model subtracts
            it). Rounded to uint8. Default: ssd.pytorch's BGR mean (104, 117, 123).
        ratio_range: (min, max) zoom-out ratio, min >= 1.
        prob: probability of expanding.
    """

    def __init__(self, *, mean: Sequence[float] = (104.0, 117.0, 123.0),
                 ratio_range: Tuple[float, float] = (1.0, 4.0), prob: float = 0.5):
        fill = np.asarray(mean, dtype=np.float64).reshape(-1)
        if fill.size != 3 or not np.all((fill >= 0) & (fill <= 255)):
            raise ValueError(f"Expand: mean must be 3 values in [0, 255] (image channel order), "
                             f"got {mean!r}")
        lo, hi = (float(r) for r in ratio_range)
        if not 1.0 <= lo <= hi:
            raise ValueError(f"Expand: ratio_range must satisfy 1 <= min <= max, got {ratio_range}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"Expand: prob must be in [0, 1], got {prob}")
        self.fill = np.rint(fill).astype(np.uint8)
        self.ratio_range, self.prob = (lo, hi), float(prob)

    def __call__(self, image, annos, rng):
        if rng.random() >= self.prob:
            return image, annos
        h, w, c = image.shape
        if c != 3:
            raise ValueError(f"Expand: expected a 3-channel image, got {c} channels")
        ratio = rng.uniform(*self.ratio_range)
        left = int(rng.uniform(0.0, w * ratio - w))
        top = int(rng.uniform(0.0, h * ratio - h))
        # top < H * ratio - H, so int(top) + H <= int(H * ratio): the image always fits.
        # copyMakeBorder fills the margins in one pass (a numpy broadcast fill of a 4x canvas
        # costs ~40x more).
        bottom, right = int(h * ratio) - top - h, int(w * ratio) - left - w
        canvas = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                    value=[int(v) for v in self.fill])
        boxes = annos.boxes + np.array([left, top, left, top], dtype=np.float32)
        return canvas, annos.replace(boxes=boxes)


_RULES = ("all", "any")


def _iou_with_rects(boxes: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """IoU of (O, 4) xyxy boxes with (T, 4) xyxy rectangles -> (T, O); a zero union gives 0.

    numpy, not ``crowdloss.ops.box_iou``: transforms run in numpy per sample, and the torch
    version would cost conversions for a (50, O) matrix.
    """
    r = rects[:, None, :].astype(np.float64)
    b = boxes[None, :, :]
    iw = np.clip(np.minimum(b[..., 2], r[..., 2]) - np.maximum(b[..., 0], r[..., 0]), 0, None)
    ih = np.clip(np.minimum(b[..., 3], r[..., 3]) - np.maximum(b[..., 1], r[..., 1]), 0, None)
    inter = iw * ih
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area[None, :] + (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@register_transform
class MinIoURandomCrop:
    """Random crop whose IoU with the objects is constrained (SSD's "sample a patch").

    Per call a mode is drawn uniformly from: whole image (no crop), unconstrained patch, or
    one per ``min_ious`` threshold. A patch mode draws ``max_trials`` rectangles as
    ssd.pytorch does: ``w ~ U[min_crop_size * W, W)``, ``h ~ U[min_crop_size * H, H)``,
    ``left ~ U[0, W - w)``, ``top ~ U[0, H - h)``, snapped to ``int(left), int(top),
    int(left + w), int(top + h)``. A rectangle is acceptable if ``h / w`` is within
    ``aspect_ratio_range``, the IoU rule holds and at least one object's centre lies strictly
    inside; the first acceptable one is used. If none is, a new mode is drawn (the whole-image
    mode ends the loop with probability 1 / (len(min_ious) + 2) per round).

    Kept boxes: every box (ignore regions too) whose CENTRE is strictly inside the patch,
    clipped to it and shifted to its coordinates; the others are dropped with their classes
    and fields. Ignore regions do not count for the IoU rule or the "keeps an object" test;
    an image without objects takes the first patch that passes the size / aspect tests.

    Deliberate departures from ssd.pytorch: its rejection test ``overlap.min() < min_iou and
    max_iou < overlap.max()`` never rejects (max_iou is +inf), so all its min-IoU modes are
    unconstrained; here the rule is enforced. Its mode list lacks the paper's 0.5. Its
    ``uniform(width - w)`` sets numpy's LOW bound (high = 1), so its patches start in
    [1, W - w]; here in [0, W - w).

    Args:
        min_ious: IoU thresholds of the constrained modes (the paper's 0.1, 0.3, 0.5, 0.7,
            0.9). The other two modes, whole image and unconstrained patch, always exist.
            ``(0.0, 0.0, 0.0, 0.0)`` reproduces what ssd.pytorch actually runs (see above).
        iou_rule: "all": every object must have IoU >= the threshold with the patch (the
            paper's "minimum jaccard overlap with the objects", ssd.pytorch's intent,
            mmdetection's rule); "any": one object suffices (the original Caffe SSD sampler).
            In crowds "all" rarely succeeds for high thresholds and falls back to other modes.
        min_crop_size: patch width / height drawn from U[min_crop_size, 1) of the image's.
        aspect_ratio_range: allowed patch height / width (in pixels), ends included.
        max_trials: candidate patches per mode before drawing a new mode.
    """

    def __init__(self, *, min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                 iou_rule: str = "all", min_crop_size: float = 0.3,
                 aspect_ratio_range: Tuple[float, float] = (0.5, 2.0), max_trials: int = 50):
        min_ious = tuple(float(t) for t in min_ious)
        if not all(0.0 <= t <= 1.0 for t in min_ious):
            raise ValueError(f"MinIoURandomCrop: min_ious must lie in [0, 1], got {min_ious}")
        if iou_rule not in _RULES:
            raise ValueError(f"MinIoURandomCrop: iou_rule must be one of {_RULES}, got "
                             f"{iou_rule!r}")
        if not 0.0 < min_crop_size <= 1.0:
            raise ValueError(f"MinIoURandomCrop: min_crop_size must be in (0, 1], got "
                             f"{min_crop_size}")
        lo, hi = (float(a) for a in aspect_ratio_range)
        if not 0.0 < lo <= hi:
            raise ValueError(f"MinIoURandomCrop: aspect_ratio_range must be 0 < min <= max, got "
                             f"{aspect_ratio_range}")
        if int(max_trials) < 1:
            raise ValueError(f"MinIoURandomCrop: max_trials must be >= 1, got {max_trials}")
        # Mode list: None = whole image, -inf = unconstrained patch, then the thresholds.
        self.modes = (None, float("-inf")) + min_ious
        self.iou_rule, self.min_crop_size = iou_rule, float(min_crop_size)
        self.aspect_ratio_range, self.max_trials = (lo, hi), int(max_trials)

    def _accepts(self, objects: np.ndarray, rects: np.ndarray, min_iou: float) -> np.ndarray:
        """Bool (T,): rectangles satisfying the IoU rule."""
        if len(objects) == 0 or min_iou == float("-inf"):
            return np.ones(len(rects), bool)
        iou = _iou_with_rects(objects, rects)
        return (iou.min(1) if self.iou_rule == "all" else iou.max(1)) >= min_iou

    def sample_patch(self, annos: Annotations, height: int, width: int,
                     rng: np.random.Generator):
        """Draw a patch for an image of ``height`` x ``width``.

        A round's ``max_trials`` candidates are drawn at once (4 arrays: w, h, left, top) and
        the first acceptable one is taken: the same distribution as ssd.pytorch's one-by-one
        loop, with a fixed number of draws per round and no Python loop over trials.

        Returns:
            ``None`` (keep the whole image) or ``(rect, keep, min_iou)``: the patch as int64
            (4,) xyxy, the boxes to keep (bool (M,), centre strictly inside) and the mode's
            IoU threshold (``-inf`` for the unconstrained mode).
        """
        is_object = annos.is_object
        objects = annos.boxes[is_object].astype(np.float64)
        centres = (annos.boxes[:, :2].astype(np.float64) + annos.boxes[:, 2:]) / 2.0
        lo_ar, hi_ar = self.aspect_ratio_range
        t = self.max_trials
        while True:
            min_iou = self.modes[int(rng.integers(len(self.modes)))]
            if min_iou is None:
                return None
            w = rng.uniform(self.min_crop_size * width, width, size=t)
            h = rng.uniform(self.min_crop_size * height, height, size=t)
            left = rng.uniform(0.0, width - w)
            top = rng.uniform(0.0, height - h)
            rects = np.stack([left, top, left + w, top + h], 1).astype(np.int64)  # floor, >= 0
            ok = (h / w >= lo_ar) & (h / w <= hi_ar)
            ok &= (rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1])  # not a line
            ok &= self._accepts(objects, rects, min_iou)
            # (T, M): centre strictly inside; the patch must still show an object.
            keep = ((centres[None, :, 0] > rects[:, None, 0])
                    & (centres[None, :, 1] > rects[:, None, 1])
                    & (centres[None, :, 0] < rects[:, None, 2])
                    & (centres[None, :, 1] < rects[:, None, 3]))
            if len(objects):
                ok &= keep[:, is_object].any(1)
            if ok.any():
                i = int(np.argmax(ok))
                return rects[i], keep[i], min_iou

    def __call__(self, image, annos, rng):
        height, width = image.shape[:2]
        patch = self.sample_patch(annos, height, width, rng)
        if patch is None:
            return image, annos
        rect, keep, _ = patch
        x1, y1, x2, y2 = (int(v) for v in rect)
        image = image[y1:y2, x1:x2].copy()
        kept = annos.subset(keep)
        boxes = kept.boxes.copy()
        np.clip(boxes[:, 0::2], x1, x2, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], y1, y2, out=boxes[:, 1::2])
        boxes -= np.array([x1, y1, x1, y1], dtype=np.float32)
        return image, kept.replace(boxes=boxes)
