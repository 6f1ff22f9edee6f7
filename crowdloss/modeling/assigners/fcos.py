"""FCOS label assignment (Tian et al., arXiv 1904.01355), cvpods flavour.

Shape vocabulary: M gts of one image, R points (all levels concatenated), L levels.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from crowdloss.ops import box_area

from .base import AssignResult, check_gts, ltrb_min_max

__all__ = ["FCOSAssigner"]

_SIZES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, math.inf))


def level_columns(points_per_level: List[Tensor], values: Sequence[Tuple[float, ...]]) -> Tensor:
    """(R, len(v)) tensor repeating ``values[l]`` for every point of level l."""
    rows = [
        torch.tensor(v, dtype=torch.float32, device=p.device).expand(p.shape[0], len(v))
        for p, v in zip(points_per_level, values)
    ]
    return torch.cat(rows, dim=0)


class FCOSAssigner:
    """Inside-box (or centre-sampling) + per-level scale-range assignment.

    Steps of ``assign``:
      1. Concatenate the points of all levels; give each its level's stride and size range.
      2. A (GT, point) pair is a candidate when the point is strictly inside the GT (all ltrb > 0)
         or, with ``center_sampling_radius`` r > 0, inside the GT's centre box
         (centre +- r * stride, clipped to the GT).
      3. ... and the point's largest ltrb distance to the GT lies in the level's range
         [lo, hi] (both ends inclusive, as in cvpods).
      4. Each point takes the candidate GT of smallest area (ties: lowest GT index); points with
         no candidate are background.
      5. Ignore GTs (class -1) compete in steps 2-4 like any GT; a point they win keeps their
         index in ``gt_inds`` with ``ignored=True``: no positive, no classification loss, and
         not foreground.

    Args:
        strides: default per-level strides (used when ``assign`` gets ``strides=None``).
        object_sizes_of_interest: per-level (lo, hi) range of the max ltrb distance.
        center_sampling_radius: in strides; 0 = plain inside-box (the cvpods CrowdHuman default).
    """

    def __init__(
        self,
        *,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        object_sizes_of_interest: Sequence[Tuple[float, float]] = _SIZES,
        center_sampling_radius: float = 0.0,
    ):
        if len(strides) != len(object_sizes_of_interest):
            raise ValueError(
                f"FCOSAssigner: {len(strides)} strides but {len(object_sizes_of_interest)} size ranges"
            )
        if center_sampling_radius < 0:
            raise ValueError(f"FCOSAssigner: center_sampling_radius must be >= 0, got {center_sampling_radius}")
        self.strides = tuple(int(s) for s in strides)
        self.object_sizes_of_interest = tuple((float(lo), float(hi)) for lo, hi in object_sizes_of_interest)
        self.center_sampling_radius = float(center_sampling_radius)

    @torch.no_grad()
    def assign(
        self,
        points_per_level: List[Tensor],
        strides: Optional[Sequence[int]],
        gt_boxes: Tensor,
        gt_classes: Tensor,
    ) -> AssignResult:
        """Assign the points of one image.

        Args:
            points_per_level: L tensors (R_l, 2) xy.
            strides: L strides (None = the constructor's).
            gt_boxes: (M, 4) xyxy.
            gt_classes: long (M,), -1 = ignore region.
        """
        strides = self.strides if strides is None else tuple(strides)
        if len(points_per_level) != len(strides) or len(strides) != len(self.object_sizes_of_interest):
            raise ValueError(
                f"FCOSAssigner.assign: {len(points_per_level)} point levels, {len(strides)} strides and "
                f"{len(self.object_sizes_of_interest)} size ranges must agree"
            )
        check_gts(gt_boxes, gt_classes, "FCOSAssigner.assign")
        points = torch.cat(points_per_level, dim=0)
        num_points = points.shape[0]
        if gt_boxes.shape[0] == 0 or num_points == 0:
            return AssignResult.background(num_points, device=points.device)
        gt_boxes = gt_boxes.to(points.dtype)

        # Step 1: per-point stride and size range.
        ranges = level_columns(points_per_level, self.object_sizes_of_interest)  # (R, 2)
        # Steps 2-3: (M, R) candidate mask.
        min_d, max_d = ltrb_min_max(points, gt_boxes)
        if self.center_sampling_radius > 0:
            point_stride = level_columns(points_per_level, [(float(s),) for s in strides])[:, 0]
            radius = point_stride[None, :] * self.center_sampling_radius  # (1, R)
            cx = (gt_boxes[:, 0:1] + gt_boxes[:, 2:3]) / 2
            cy = (gt_boxes[:, 1:2] + gt_boxes[:, 3:4]) / 2
            centre_boxes = [
                torch.max(cx - radius, gt_boxes[:, 0:1]),
                torch.max(cy - radius, gt_boxes[:, 1:2]),
                torch.min(cx + radius, gt_boxes[:, 2:3]),
                torch.min(cy + radius, gt_boxes[:, 3:4]),
            ]
            px, py = points[None, :, 0], points[None, :, 1]
            inside = (
                (px - centre_boxes[0] > 0)
                & (py - centre_boxes[1] > 0)
                & (centre_boxes[2] - px > 0)
                & (centre_boxes[3] - py > 0)
            )
        else:
            inside = min_d > 0
        del min_d
        candidate = inside & (max_d >= ranges[None, :, 0]) & (max_d <= ranges[None, :, 1])
        del inside, max_d

        # Step 4: smallest-area candidate; argmin returns the first (lowest-index) minimum.
        area = torch.where(candidate, box_area(gt_boxes)[:, None], torch.full_like(candidate, math.inf, dtype=points.dtype))
        min_area, gt_inds = area.min(dim=0)
        gt_inds[torch.isinf(min_area)] = -1

        # Step 5: points won by ignore GTs.
        ignored = (gt_inds >= 0) & (gt_classes[gt_inds.clamp(min=0)] < 0)
        return AssignResult(gt_inds, ignored)
