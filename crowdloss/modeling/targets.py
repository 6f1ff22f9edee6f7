"""Per-image training targets: what the losses of a dense detector see.

An assigner labels the priors of one image; ``ImageTargets`` keeps that ``AssignResult``
together with the image's FULL GT set (ignore regions included), so a loss can look past the
matched GT of a prior: the second-best GT of a positive (RepGT), pairs of positives with
different targets (RepBox), the GT areas, ... ``BatchTargets`` stacks the per-image labels for
the losses that work on the whole batch at once (focal loss, ranking losses).

Shape vocabulary: N images, M gts of one image (ignore regions included), R priors of one image,
K classes, P positives of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import List

import torch
from torch import Tensor

from .assigners.base import AssignResult

__all__ = ["ImageTargets", "BatchTargets"]


@dataclass
class ImageTargets:
    """The targets of one image.

    Attributes:
        gt_boxes: (M, 4) xyxy, every GT of the image (ignore regions included).
        gt_classes: (M,) long, -1 = ignore region.
        assignment: the assigner's result over the R priors.
        labels: (R,) long: the class for positives, K for background, -1 for priors excluded
            from the classification loss.
        matched_boxes: (R, 4) the matched GT box of each prior, zeros where unmatched.
    """

    gt_boxes: Tensor
    gt_classes: Tensor
    assignment: AssignResult
    labels: Tensor
    matched_boxes: Tensor

    @classmethod
    def from_assignment(cls, assignment: AssignResult, gt_boxes: Tensor, gt_classes: Tensor,
                        num_classes: int) -> "ImageTargets":
        labels = assignment.labels(gt_classes, num_classes)
        boxes = gt_boxes.new_zeros((labels.shape[0], 4))
        matched = assignment.gt_inds >= 0
        if gt_boxes.shape[0] > 0 and bool(matched.any()):
            boxes[matched] = gt_boxes[assignment.gt_inds[matched]].to(boxes.dtype)
        return cls(gt_boxes, gt_classes, assignment, labels, boxes)

    @property
    def positive(self) -> Tensor:
        """(R,) bool: priors trained as foreground (labels in [0, K))."""
        return self.assignment.positive & (self.labels >= 0)


class BatchTargets:
    """The ``ImageTargets`` of a batch plus stacked views (computed once, on demand).

    Args:
        images: one ``ImageTargets`` per image, all over the same R priors.
        num_classes: K (the background label).
    """

    def __init__(self, images: List[ImageTargets], num_classes: int):
        self.images = list(images)
        self.num_classes = int(num_classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> ImageTargets:
        return self.images[i]

    @cached_property
    def labels(self) -> Tensor:
        """(N, R) long labels (class / K background / -1 excluded)."""
        return torch.stack([t.labels for t in self.images])

    @cached_property
    def matched_boxes(self) -> Tensor:
        """(N, R, 4) matched GT boxes (zeros where unmatched)."""
        return torch.stack([t.matched_boxes for t in self.images])

    @cached_property
    def positive(self) -> Tensor:
        """(N, R) bool foreground mask (labels in [0, K))."""
        labels = self.labels
        return (labels >= 0) & (labels != self.num_classes)

    @property
    def num_pos(self) -> int:
        """Foreground priors of the batch on this process (a host sync)."""
        return int(self.positive.sum())

    @property
    def num_matched(self) -> int:
        """Priors matched to any GT, ignore GTs included (LLA's normaliser counts these)."""
        return int(sum(int(t.assignment.matched.sum()) for t in self.images))
