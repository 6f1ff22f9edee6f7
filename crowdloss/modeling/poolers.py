"""Multi-level RoIAlign pooler of Faster R-CNN with FPN (arXiv 1612.03144, Eqn. 1).

Shape vocabulary: N images, B_i boxes of image i, B = sum B_i boxes, C channels, L levels
(finest first, stride 2^(min_level + l)), PH x PW output bins.

Each box is pooled from one pyramid level chosen by its size: a box of side sqrt(area) =
``canonical_box_size`` goes to ``canonical_level`` (224 px -> P4 in the FPN paper, the size of
an ImageNet crop), and every doubling of the side moves it one level up:
``floor(canonical_level + log2(sqrt(area) / canonical_box_size + eps))``, clamped to the
levels available (small boxes pool from the finest, huge ones from the coarsest). The area of
an inverted box counts as 0 (it goes to the finest level). Then RoIAlign
(``crowdloss.ops.roi_align_levels``) pools every box from its level in one call, writing the
results in the order of the input boxes.
"""
import math
import sys
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from crowdloss.ops import box_area
from crowdloss.ops.roi_align import convert_boxes_to_rois, roi_align_levels

__all__ = ["ROIPooler", "assign_boxes_to_levels"]


def assign_boxes_to_levels(
    boxes: Sequence[Tensor],
    *,
    min_level: int,
    max_level: int,
    canonical_box_size: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """FPN level of every box, as an offset from ``min_level``.

    Args:
        boxes: per-image (B_i, 4) xyxy boxes in image pixels.
        min_level, max_level: pyramid levels available (level l has stride 2^l).
        canonical_box_size, canonical_level: a box with sqrt(area) = canonical_box_size
            belongs on canonical_level.

    Returns:
        long (B,) in [0, max_level - min_level], boxes of all images concatenated.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    sizes = torch.sqrt(torch.cat([box_area(b) for b in boxes]))
    # eps keeps log2 finite for empty boxes (they land on the finest level after the clamp).
    level = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + sys.float_info.epsilon))
    return level.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


class ROIPooler(nn.Module):
    """RoIAlign from the FPN level that suits each box's size.

    Args:
        output_size: PH (int) or (PH, PW) bins.
        scales: 1 / stride of each input level, finest first; strides must be consecutive
            powers of two (1/4, 1/8, 1/16, 1/32 for P2-P5).
        sampling_ratio: RoIAlign samples per bin and axis; 0 = adaptive (ceil(roi size / bins)).
        canonical_box_size, canonical_level: see :func:`assign_boxes_to_levels`.
        aligned: RoIAlign's half-pixel shift (True = detectron2's ROIAlignV2).
        impl: passed to ``roi_align`` ("auto", "pure" or "torchvision").
    """

    def __init__(
        self,
        *,
        output_size: Union[int, Tuple[int, int]] = 7,
        scales: Sequence[float] = (1 / 4, 1 / 8, 1 / 16, 1 / 32),
        sampling_ratio: int = 0,
        canonical_box_size: float = 224,
        canonical_level: int = 4,
        aligned: bool = True,
        impl: str = "auto",
    ):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"ROIPooler: output_size must be a positive int or (h, w), got {output_size}")
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"ROIPooler: scales must be positive 1/stride values, got {scales}")
        levels = [-math.log2(s) for s in self.scales]
        if any(not math.isclose(lv, round(lv)) for lv in levels) or [round(lv) for lv in levels] != list(
            range(round(levels[0]), round(levels[0]) + len(levels))
        ):
            raise ValueError(
                f"ROIPooler: scales {scales} must be 1/2^l for consecutive levels l, finest first "
                "(e.g. 1/4, 1/8, 1/16, 1/32)"
            )
        self.min_level, self.max_level = round(levels[0]), round(levels[-1])
        if canonical_box_size <= 0:
            raise ValueError(f"ROIPooler: canonical_box_size must be > 0, got {canonical_box_size}")
        self.canonical_box_size = float(canonical_box_size)
        self.canonical_level = int(canonical_level)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.impl = impl

    def forward(self, features: List[Tensor], boxes: List[Tensor]) -> Tensor:
        """Pool every box from its level.

        Args:
            features: L maps (N, C, H_l, W_l), finest first, matching ``scales``.
            boxes: N per-image (B_i, 4) xyxy boxes in image pixels.

        Returns:
            (B, C, PH, PW), boxes of image 0 first, each image's boxes in their given order.
        """
        if len(features) != len(self.scales):
            raise ValueError(f"ROIPooler: got {len(features)} feature maps for {len(self.scales)} scales {self.scales}")
        n, c = features[0].shape[:2]
        for lv, f in enumerate(features):
            if f.dim() != 4 or f.shape[:2] != (n, c):
                raise ValueError(f"ROIPooler: features[{lv}] has shape {tuple(f.shape)}, expected ({n}, {c}, H, W)")
        if len(boxes) != n:
            raise ValueError(f"ROIPooler: {len(boxes)} per-image box tensors for a batch of {n} images")
        rois = convert_boxes_to_rois(boxes).to(device=features[0].device)
        levels = assign_boxes_to_levels(
            boxes,
            min_level=self.min_level,
            max_level=self.max_level,
            canonical_box_size=self.canonical_box_size,
            canonical_level=self.canonical_level,
        ).to(rois.device)
        # One call for all levels: each box's pooled values are written straight to its row.
        return roi_align_levels(
            features, rois, levels, self.output_size, self.scales, self.sampling_ratio, self.aligned, impl=self.impl
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, scales={self.scales}, sampling_ratio={self.sampling_ratio}, "
            f"canonical_box_size={self.canonical_box_size}, canonical_level={self.canonical_level}, "
            f"aligned={self.aligned}"
        )
