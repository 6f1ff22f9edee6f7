"""Small data containers shared by data, modeling and evaluation.

Boxes are plain float tensors of shape (M, 4) in absolute xyxy pixels; there is no
``Boxes`` wrapper class. ``Instances`` is a per-image bag of equally long fields
(``gt_boxes``, ``gt_classes`` for targets; ``pred_boxes``, ``scores``,
``pred_classes`` for predictions) plus the image size it refers to.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch

__all__ = ["Instances", "ShapeSpec"]


class ShapeSpec(NamedTuple):
    """Channels and stride of one feature map, as backbones report them."""

    channels: Optional[int] = None
    stride: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None


class Instances:
    """Per-image fields of equal length, addressed as attributes.

    Args:
        image_size: (height, width) of the image the boxes refer to.
        **fields: name -> tensor (or list) with the same first dimension.
    """

    def __init__(self, image_size: Tuple[int, int], **fields: Any):
        object.__setattr__(self, "_image_size", (int(image_size[0]), int(image_size[1])))
        object.__setattr__(self, "_fields", {})
        for name, value in fields.items():
            self.set(name, value)

    @property
    def image_size(self) -> Tuple[int, int]:
        return self._image_size

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str) -> Any:
        fields = object.__getattribute__(self, "_fields")
        if name not in fields:
            raise AttributeError(f"Instances has no field '{name}'; fields: {sorted(fields)}")
        return fields[name]

    def set(self, name: str, value: Any) -> None:
        n = len(value)
        if self._fields and n != len(self):
            raise ValueError(
                f"field '{name}' has length {n}, but the Instances have length {len(self)}"
            )
        self._fields[name] = value

    def get(self, name: str) -> Any:
        return self._fields[name]

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        del self._fields[name]

    def get_fields(self) -> Dict[str, Any]:
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> "Instances":
        out = Instances(self._image_size)
        for k, v in self._fields.items():
            out.set(k, v.to(*args, **kwargs) if hasattr(v, "to") else v)
        return out

    def __getitem__(self, item) -> "Instances":
        if isinstance(item, int):
            if item >= len(self) or item < -len(self):
                raise IndexError("Instances index out of range")
            item = slice(item, None, len(self))
        out = Instances(self._image_size)
        for k, v in self._fields.items():
            if isinstance(v, torch.Tensor):
                out.set(k, v[item])
            else:  # lists: index with a tensor / slice
                if isinstance(item, torch.Tensor):
                    idx = item.nonzero().flatten() if item.dtype == torch.bool else item
                    out.set(k, [v[i] for i in idx.tolist()])
                else:
                    out.set(k, v[item])
        return out

    def __len__(self) -> int:
        for v in self._fields.values():
            return len(v)
        return 0

    def __iter__(self) -> Iterator:
        raise NotImplementedError("Instances is not iterable; index it instead")

    @staticmethod
    def cat(instance_lists: List["Instances"]) -> "Instances":
        """Concatenate Instances of one image (same image_size)."""
        if not instance_lists:
            raise ValueError("Instances.cat needs at least one Instances")
        first = instance_lists[0]
        out = Instances(first.image_size)
        for k, v in first._fields.items():
            values = [i.get(k) for i in instance_lists]
            if isinstance(v, torch.Tensor):
                out.set(k, torch.cat(values, dim=0))
            else:
                out.set(k, [x for vs in values for x in vs])
        return out

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}: {tuple(v.shape) if isinstance(v, torch.Tensor) else len(v)}"
            for k, v in self._fields.items()
        )
        return f"Instances(num={len(self)}, image_size={self._image_size}, fields=[{fields}])"
