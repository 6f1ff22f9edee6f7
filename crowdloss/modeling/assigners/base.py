"""The assigner interface, what every assigner returns, and the geometry they share.

Every assigner (max-IoU, FCOS, ATSS, LLA, and the SSD / RPN matchers) is called the same way,
mmdetection-style, on one image::

    result = assigner.assign(priors, gt_boxes, gt_classes,
                             pred_logits=None, pred_boxes=None)

- ``priors``: the ``Priors`` of the batch: (R, 2) points or (R, 4) anchors of all levels, with
  the per-level counts and strides;
- ``gt_boxes`` (M, 4) xyxy and ``gt_classes`` (M,) long, -1 = ignore region;
- ``pred_logits`` (R, C) / ``pred_boxes`` (R, 4): the image's detached predictions, passed only
  to assigners whose ``uses_predictions`` is True (prediction-aware rules such as LLA).

It returns one ``AssignResult`` with the same ignore semantics everywhere.

Shape vocabulary: M gts of one image, R points/anchors (all levels concatenated), K classes.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..priors import Priors

__all__ = ["AssignResult", "BaseAssigner", "ltrb_min_max", "check_gts"]


@dataclass
class AssignResult:
    """Per-point assignment of one image.

    Attributes:
        gt_inds: long (R,): index of the matched GT over all M (ignore GTs included), -1 = none.
        ignored: bool (R,): points excluded from the classification loss (matched to an ignore GT,
            inside an ignore region, or in the IoU "grey zone" of max-IoU matching).
    """

    gt_inds: Tensor
    ignored: Tensor

    def __post_init__(self):
        if self.gt_inds.shape != self.ignored.shape or self.gt_inds.dim() != 1:
            raise ValueError(
                f"AssignResult: gt_inds {tuple(self.gt_inds.shape)} and ignored "
                f"{tuple(self.ignored.shape)} must both be (R,)"
            )

    @property
    def matched(self) -> Tensor:
        """bool (R,): points matched to any GT, ignore GTs included (LLA's num_fg counts these)."""
        return self.gt_inds >= 0

    @property
    def positive(self) -> Tensor:
        """bool (R,): valid positives (matched and not ignored): the box-regression set."""
        return (self.gt_inds >= 0) & ~self.ignored

    def labels(self, gt_classes: Tensor, num_classes: int) -> Tensor:
        """long (R,): the GT class for valid positives, ``num_classes`` for background, -1 for ignored."""
        labels = torch.full_like(self.gt_inds, num_classes)
        pos = self.positive
        if bool(pos.any()):
            labels[pos] = gt_classes[self.gt_inds[pos]].to(labels.dtype)
        # A positive matched to an ignore GT (class -1) is never a foreground label.
        labels[self.ignored | (labels < 0)] = -1
        return labels

    @classmethod
    def background(cls, num_points: int, device=None) -> "AssignResult":
        """Everything background: the zero-GT answer of every assigner."""
        return cls(
            torch.full((num_points,), -1, dtype=torch.long, device=device),
            torch.zeros(num_points, dtype=torch.bool, device=device),
        )


class BaseAssigner:
    """Base class of the assigners: one ``assign`` per image (see the module docstring).

    ``assign`` checks its inputs once for every rule, answers "all background" when the image
    has no GT or there are no priors, and otherwise calls the subclass's ``_assign`` with
    ``gt_boxes`` cast to the priors' dtype (and the predictions detached, where used).
    """

    #: True when ``assign`` needs ``pred_logits`` / ``pred_boxes`` (the detector then passes
    #: the image's detached predictions).
    uses_predictions = False

    @torch.no_grad()
    def assign(self, priors: Priors, gt_boxes: Tensor, gt_classes: Tensor, *,
               pred_logits: Optional[Tensor] = None,
               pred_boxes: Optional[Tensor] = None) -> AssignResult:
        """Assign the R priors of one image.

        Args:
            priors: points or anchors of all levels, with per-level counts and strides.
            gt_boxes: (M, 4) xyxy.
            gt_classes: long (M,), -1 = ignore region.
            pred_logits: (R, C) class logits of this image (prediction-aware assigners only).
            pred_boxes: (R, 4) its decoded xyxy boxes (prediction-aware assigners only).
        """
        who = f"{type(self).__name__}.assign"
        check_gts(gt_boxes, gt_classes, who)
        num = len(priors)
        if self.uses_predictions:
            if pred_logits is None or pred_boxes is None:
                raise ValueError(f"{who}: needs pred_logits and pred_boxes (the assignment "
                                 "depends on the predictions)")
            if pred_logits.dim() != 2 or pred_logits.shape[0] != num or pred_boxes.shape != (num, 4):
                raise ValueError(f"{who}: expected pred_logits ({num}, C) and pred_boxes "
                                 f"({num}, 4), got {tuple(pred_logits.shape)} and "
                                 f"{tuple(pred_boxes.shape)}")
            pred_logits, pred_boxes = pred_logits.detach(), pred_boxes.detach()
        if gt_boxes.shape[0] == 0 or num == 0:
            return AssignResult.background(num, device=priors.device)
        return self._assign(priors, gt_boxes.to(priors.tensor.dtype), gt_classes,
                            pred_logits, pred_boxes)

    def _assign(self, priors: Priors, gt_boxes: Tensor, gt_classes: Tensor,
                pred_logits: Optional[Tensor], pred_boxes: Optional[Tensor]
                ) -> AssignResult:  # pragma: no cover
        """The rule itself, for M >= 1 GTs and R >= 1 priors."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def check_gts(gt_boxes: Tensor, gt_classes: Tensor, who: str) -> None:
    """Clear error for malformed GT tensors."""
    if gt_boxes.dim() != 2 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"{who}: gt_boxes must be (M, 4) xyxy, got {tuple(gt_boxes.shape)}")
    if gt_classes.shape != gt_boxes.shape[:1]:
        raise ValueError(
            f"{who}: gt_classes must be ({gt_boxes.shape[0]},) to match gt_boxes, got {tuple(gt_classes.shape)}"
        )


def ltrb_min_max(points: Tensor, boxes: Tensor, with_max: bool = True) -> Tuple[Tensor, Tensor]:
    """Min (and max) over the four point-to-side distances of every (box, point) pair.

    Args:
        points: (R, 2) xy.
        boxes: (M, 4) xyxy.

    Returns:
        (M, R) min distance (> 0 iff the point is strictly inside) and (M, R) max distance
        (None unless ``with_max``). Built one side at a time so no (M, R, 4) tensor exists.
    """
    px, py = points[None, :, 0], points[None, :, 1]
    left = px - boxes[:, None, 0]
    top = py - boxes[:, None, 1]
    lo = torch.min(left, top)
    hi = torch.max(left, top) if with_max else None
    del left, top
    for side in (boxes[:, None, 2] - px, boxes[:, None, 3] - py):
        torch.minimum(lo, side, out=lo)
        if with_max:
            torch.maximum(hi, side, out=hi)
    return lo, hi
