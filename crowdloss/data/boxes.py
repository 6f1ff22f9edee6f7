"""Box clipping for dataset dicts, and the log of the boxes it drops.

One helper for every dataset format (odgt, COCO json, VOC xml) and for the mapper after the
transforms moved or cropped boxes: clip to the image, then drop what has no area left, with
every per-box field (classes, dataset annotation dicts, indices) filtered alike. Dropping is not an error (boxes
that lie outside the image are common in CrowdHuman's full-body boxes), but it must not be
silent: :class:`DroppedBoxes` logs where the first few came from and the total.

Shapes: M boxes in, K kept. numpy only.
"""
from __future__ import annotations

import logging
from typing import Any, List, Sequence, Tuple

import numpy as np

__all__ = ["clip_and_drop", "DroppedBoxes"]


def _take(field: Any, keep: np.ndarray) -> Any:
    """``field[keep]`` for arrays; the same selection, same type, for lists / tuples."""
    if isinstance(field, np.ndarray):
        return field[keep]
    picked = [field[int(i)] for i in np.flatnonzero(keep)]
    return tuple(picked) if isinstance(field, tuple) else picked


def clip_and_drop(boxes: np.ndarray, height: int, width: int, *fields: Any,
                  where: str = "boxes") -> Tuple[Any, ...]:
    """Clip xyxy boxes to the image and drop the ones left without area.

    Coordinates are clipped to ``[0, width]`` (x) and ``[0, height]`` (y); a box whose clipped
    width or height is ``<= 0`` is dropped, and so is the matching entry of every ``fields``
    sequence (numpy arrays, lists or tuples of length M: classes, dataset annotation dicts...).

    Args:
        boxes: (M, 4) absolute xyxy; a float dtype is kept (float64 stays float64, so loaders
            reading Python floats lose nothing), integers become float64.
        height, width: image size in pixels (> 0).
        *fields: per-box sequences to filter alike.
        where: what to name in error messages (a file, a line, an image id).

    Returns:
        ``(boxes_kept (K, 4), *fields_kept, num_dropped)``.

    Raises:
        ValueError: ``boxes`` is not (M, 4), holds NaN / inf, a field's length is not M, or the
            image size is not positive. Nothing is clipped silently from garbage.
    """
    arr = np.asarray(boxes)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{where}: expected boxes of shape (M, 4) xyxy, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not (height > 0 and width > 0):
        raise ValueError(f"{where}: image size must be positive, got {height}x{width}")
    if not np.isfinite(arr).all():
        k = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{where}: box {k} is not finite: {arr[k].tolist()}")
    for j, f in enumerate(fields):
        if len(f) != len(arr):
            raise ValueError(f"{where}: field {j} has {len(f)} entries for {len(arr)} boxes")
    # max / min with a per-column bound: one pass each (np.clip on strided views costs more).
    out = np.minimum(np.maximum(arr, 0), np.array([width, height, width, height], arr.dtype))
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    num_dropped = int(len(keep) - keep.sum())
    if num_dropped == 0:
        return (out, *fields, 0)
    return (out[keep], *(_take(f, keep) for f in fields), num_dropped)


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
