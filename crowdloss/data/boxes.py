"""Box clipping for dataset dicts, and the log of the boxes it drops.

One helper for every dataset format (odgt, COCO json) and for transforms that move or crop
boxes: clip to the image, then drop what has no area left. Dropping is not an error (boxes
that lie outside the image are common in CrowdHuman's full-body boxes), but it must not be
silent: :class:`DroppedBoxes` logs where the first few came from and the total.

Shapes: M boxes in, K kept. numpy only.
"""
from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["clip_and_drop", "DroppedBoxes"]


def clip_and_drop(boxes: np.ndarray, image_size: Tuple[int, int], *,
                  min_size: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image and drop those left too small.

    Args:
        boxes: (M, 4) absolute x1, y1, x2, y2 (any float dtype; kept).
        image_size: (height, width); x is clipped to [0, width], y to [0, height].
        min_size: a box is kept when its clipped width AND height are both > ``min_size``.

    Returns:
        (clipped (K, 4) of the kept boxes, keep (M,) bool), so callers can index parallel
        arrays (classes, ...) with ``keep`` and report the dropped ones.
    """
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"clip_and_drop: boxes must be (M, 4), got {boxes.shape}")
    h, w = image_size
    out = boxes.copy()
    # max then min, element by element as the scalar code did: NaN never gets here (the
    # parsers reject it), so the order only matters for bit-identical results.
    np.clip(out[:, 0::2], 0, w, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, h, out=out[:, 1::2])
    keep = ((out[:, 2] - out[:, 0]) > min_size) & ((out[:, 3] - out[:, 1]) > min_size)
    return out[keep], keep


class DroppedBoxes:
    """Counts dropped boxes and remembers where the first ``max_listed`` came from.

    Usage: ``drops.add("a.odgt:12 gtboxes[3]", box)`` per drop, then ``drops.report(logger)``
    once per file.
    """

    def __init__(self, source: str, *, max_listed: int = 5):
        self.source, self.max_listed = source, max_listed
        self.count = 0
        self._listed: List[str] = []

    def add(self, where: str, box: Sequence[float]) -> None:
        self.count += 1
        if len(self._listed) < self.max_listed:
            self._listed.append(f"{where} {[round(float(v), 2) for v in box]}")

    def report(self, logger: logging.Logger) -> None:
        """One INFO line: the total, the listed places, and how many more there were."""
        if not self.count:
            return
        more = self.count - len(self._listed)
        logger.info("%s: dropped %d empty boxes (no area left inside the image): %s%s",
                    self.source, self.count, "; ".join(self._listed),
                    f"; and {more} more" if more else "")
