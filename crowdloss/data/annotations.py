"""One image's annotations as they travel through augmentation, and the one clip-and-drop rule.

A transform (``crowdloss.data.transforms``) sees the image and ALL its annotations, so it can
crop, expand, drop or clip boxes and keep every per-box field in step. The mapper then applies
:func:`clip_and_drop` once to the final image; dataset loaders use the same function so that
"clipped to the image, boxes without area dropped" means the same thing everywhere.

Shape vocabulary: M boxes (objects and ignore regions together), K kept boxes.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np

from .boxes import clip_and_drop

__all__ = ["Annotations", "clip_and_drop"]


class Annotations:
    """Boxes, classes and optional per-box numpy fields of one image, kept in step.

    Transforms never modify an ``Annotations`` (or its arrays) in place: they return a new one
    (:meth:`replace`, :meth:`subset`), so a caller's copy stays valid.

    Attributes:
        boxes: float32 (M, 4) absolute xyxy in the current image's pixels.
        classes: int64 (M,), 0-based class ids; -1 marks an ignore region (it moves, is cropped
            and dropped like any other box, but is not an object).
        fields: name -> numpy array whose first dimension is M (non-geometric data such as an
            occlusion flag or a box id: geometric transforms carry it unchanged).
    """

    __slots__ = ("boxes", "classes", "fields")

    def __init__(self, boxes: Any, classes: Any, **fields: np.ndarray):
        boxes = np.asarray(boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"Annotations: boxes must be (M, 4) xyxy, got {boxes.shape}")
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        if len(classes) != len(boxes):
            raise ValueError(f"Annotations: {len(classes)} classes for {len(boxes)} boxes")
        for name, value in fields.items():
            if not isinstance(value, np.ndarray) or value.ndim == 0 or len(value) != len(boxes):
                raise ValueError(f"Annotations: field '{name}' must be a numpy array with "
                                 f"{len(boxes)} rows, got {getattr(value, 'shape', type(value))}")
        self.boxes, self.classes, self.fields = boxes, classes, dict(fields)

    @classmethod
    def from_dataset_dict(cls, annotations: Sequence[dict], where: str = "") -> "Annotations":
        """Build from a dataset dict's ``annotations`` (``bbox`` xyxy, ``category_id``).

        Raises:
            ValueError: naming ``where`` and the index of the first malformed annotation.
        """
        if len(annotations) == 0:
            return cls.empty()
        try:  # fast path: one vectorised conversion (the mapper calls this per sample)
            boxes = np.array([a["bbox"] for a in annotations], dtype=np.float32)
            classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
            if boxes.shape == (len(annotations), 4) and classes.shape == (len(annotations),):
                return cls(boxes, classes)
        except (KeyError, TypeError, ValueError):
            pass
        for k, a in enumerate(annotations):  # slow path: find and name the culprit
            ok = isinstance(a, dict) and "category_id" in a and np.ndim(a.get("bbox")) == 1 \
                and np.size(a.get("bbox")) == 4 and np.ndim(a["category_id"]) == 0
            if not ok:
                raise ValueError(f"{where} annotations[{k}]: expected {{'bbox': [x1, y1, x2, "
                                 f"y2], 'category_id': int}}, got {a!r}")
        raise ValueError(f"{where}: annotations are not numeric boxes / class ids")

    @classmethod
    def empty(cls) -> "Annotations":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def is_object(self) -> np.ndarray:
        """Bool (M,): real objects (class >= 0), i.e. not ignore regions."""
        return self.classes >= 0

    def subset(self, keep: Any) -> "Annotations":
        """The boxes selected by ``keep``: a bool mask (M,) or an index array, every field alike."""
        keep = np.asarray(keep)
        if keep.dtype == bool and keep.shape != (len(self),):
            raise ValueError(f"Annotations.subset: bool mask of shape {keep.shape} for "
                             f"{len(self)} boxes")
        if keep.dtype != bool:
            keep = keep.astype(np.int64).reshape(-1)
        return Annotations(self.boxes[keep], self.classes[keep],
                           **{k: v[keep] for k, v in self.fields.items()})

    def replace(self, *, boxes: np.ndarray) -> "Annotations":
        """Same boxes count, new coordinates (a geometric transform's result)."""
        return Annotations(boxes, self.classes, **self.fields)

    def clip_and_drop(self, height: int, width: int) -> Tuple["Annotations", int]:
        """:func:`clip_and_drop` applied to these annotations -> (kept, num_dropped)."""
        names = list(self.fields)
        boxes, classes, *rest, dropped = clip_and_drop(
            self.boxes, height, width, self.classes, *(self.fields[n] for n in names),
            where="Annotations")
        return Annotations(boxes, classes, **dict(zip(names, rest))), dropped

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Annotations):
            return NotImplemented
        return (np.array_equal(self.boxes, other.boxes)
                and np.array_equal(self.classes, other.classes)
                and self.fields.keys() == other.fields.keys()
                and all(np.array_equal(v, other.fields[k]) for k, v in self.fields.items()))

    __hash__ = None  # mutable container semantics, like numpy arrays

    def __repr__(self) -> str:
        extra = f", fields={sorted(self.fields)}" if self.fields else ""
        return (f"Annotations(num_boxes={len(self)}, "
                f"num_ignore={int((~self.is_object).sum())}{extra})")

