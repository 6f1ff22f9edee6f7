"""FCOS label assignment (Tian et al., arXiv 1904.01355), cvpods flavour.

Shape vocabulary: M gts of one image, R points (all levels concatenated), L levels.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from crowdloss.ops import box_area

from ..priors import Priors
from .base import AssignResult, BaseAssigner, ltrb_min_max

__all__ = ["FCOSAssigner"]

_SIZES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, math.inf))


class FCOSAssigner(BaseAssigner):
    """Inside-box (or centre-sampling) + per-level scale-range assignment.

    Steps of ``assign``:
      1. Give each point (anchors: their centres) its level's stride and size range.
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
        object_sizes_of_interest: per-level (lo, hi) range of the max ltrb distance.
        center_sampling_radius: in strides; 0 = plain inside-box (the FCOSConfig default; the
            CrowdHuman FCOS baseline uses 1.5).
        chunk_size: GTs per chunk: bounds memory to a few (chunk_size, R) matrices.
    """

    def __init__(
        self,
        *,
        object_sizes_of_interest: Sequence[Tuple[float, float]] = _SIZES,
        center_sampling_radius: float = 0.0,
        chunk_size: int = 128,
    ):
        if center_sampling_radius < 0:
            raise ValueError(f"FCOSAssigner: center_sampling_radius must be >= 0, got {center_sampling_radius}")
        self.object_sizes_of_interest = tuple((float(lo), float(hi)) for lo, hi in object_sizes_of_interest)
        self.center_sampling_radius = float(center_sampling_radius)
        if chunk_size < 1:
            raise ValueError(f"FCOSAssigner: chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)

    def _assign(self, priors: Priors, gt_boxes: Tensor, gt_classes: Tensor,
                pred_logits: Optional[Tensor], pred_boxes: Optional[Tensor]) -> AssignResult:
        if len(priors.num_per_level) != len(self.object_sizes_of_interest):
            raise ValueError(
                f"FCOSAssigner.assign: {len(priors.num_per_level)} prior levels but "
                f"{len(self.object_sizes_of_interest)} size ranges (OBJECT_SIZES_OF_INTEREST)"
            )
        points = priors.centers()
        num_points = points.shape[0]

        # Step 1: per-point size range (and stride for centre sampling).
        lo = priors.level_values([r[0] for r in self.object_sizes_of_interest])
        hi = priors.level_values([r[1] for r in self.object_sizes_of_interest])
        point_stride = priors.level_stride() if self.center_sampling_radius > 0 else None
        areas = box_area(gt_boxes)
        # Steps 2-4 over chunks of GTs, keeping a running per-point (min area, argmin): strict <
        # lets earlier (lower-index) GTs keep ties, exactly like one argmin over all M rows.
        best_area = torch.full((num_points,), math.inf, dtype=points.dtype, device=points.device)
        gt_inds = torch.full((num_points,), -1, dtype=torch.long, device=points.device)
        for start in range(0, gt_boxes.shape[0], self.chunk_size):
            chunk = gt_boxes[start : start + self.chunk_size]
            candidate = self._candidates(points, chunk, lo, hi, point_stride)
            area = torch.where(candidate, areas[start : start + chunk.shape[0], None], math.inf)
            del candidate
            chunk_area, chunk_arg = area.min(dim=0)
            better = chunk_area < best_area
            best_area = torch.where(better, chunk_area, best_area)
            gt_inds = torch.where(better, chunk_arg + start, gt_inds)
            del area

        # Step 5: points won by ignore GTs.
        ignored = (gt_inds >= 0) & (gt_classes[gt_inds.clamp(min=0)] < 0)
        return AssignResult(gt_inds, ignored)

    def _candidates(self, points: Tensor, gt_boxes: Tensor, lo: Tensor, hi: Tensor, point_stride) -> Tensor:
        """Steps 2-3 for a chunk of B GTs -> bool (B, R)."""
        min_d, max_d = ltrb_min_max(points, gt_boxes)
        if point_stride is None:
            inside = min_d > 0
        else:
            radius = point_stride[None, :] * self.center_sampling_radius  # (1, R)
            cx = (gt_boxes[:, 0:1] + gt_boxes[:, 2:3]) / 2
            cy = (gt_boxes[:, 1:2] + gt_boxes[:, 3:4]) / 2
            px, py = points[None, :, 0], points[None, :, 1]
            inside = (
                (px > torch.max(cx - radius, gt_boxes[:, 0:1]))
                & (py > torch.max(cy - radius, gt_boxes[:, 1:2]))
                & (px < torch.min(cx + radius, gt_boxes[:, 2:3]))
                & (py < torch.min(cy + radius, gt_boxes[:, 3:4]))
            )
        del min_d
        inside &= max_d >= lo[None, :]
        inside &= max_d <= hi[None, :]
        return inside
