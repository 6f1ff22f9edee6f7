"""``FCOSConfig``: FCOS (arXiv 1904.01355) and the point-based detectors built on its head,
ATSS (arXiv 1912.02424) and LLA (arXiv 2101.04307). cvpods key names and defaults.
"""
from __future__ import annotations

from typing import Any, Dict

from .base_detection_config import BaseDetectionConfig

__all__ = ["FCOSConfig"]

_config_dict: Dict[str, Any] = dict(
    MODEL=dict(
        RESNETS=dict(OUT_FEATURES=["res3", "res4", "res5"]),
        FPN=dict(IN_FEATURES=["res3", "res4", "res5"], TOP_BLOCK_IN_FEATURE="p5"),
        SHIFT_GENERATOR=dict(
            # Points at (x * stride, y * stride) as cvpods; 0.5 puts them at cell centres.
            OFFSET=0.0,
        ),
        FCOS=dict(
            NUM_CLASSES=80,
            IN_FEATURES=["p3", "p4", "p5", "p6", "p7"],
            NUM_CONVS=4,
            # Tower norm: "GN" (published), "BN", "SyncBN" or "" (none).
            NORM="GN",
            FPN_STRIDES=[8, 16, 32, 64, 128],
            PRIOR_PROB=0.01,
            CENTERNESS_ON_REG=False,
            NORM_REG_TARGETS=False,
            # Initial bias of the box outputs; 0 = published. With NORM_REG_TARGETS, 1.0 starts
            # every box one stride per side, out of the ReLU's dead zone (docs/benchmark.md).
            BBOX_BIAS_INIT=0.0,
            SCORE_THRESH_TEST=0.05,
            TOPK_CANDIDATES_TEST=1000,
            NMS_THRESH_TEST=0.6,
            BBOX_REG_WEIGHTS=(1.0, 1.0, 1.0, 1.0),
            FOCAL_LOSS_GAMMA=2.0,
            FOCAL_LOSS_ALPHA=0.25,
            IOU_LOSS_TYPE="iou",
            REG_WEIGHT=1.0,
            # 0 = the whole GT box; > 0 = within radius x stride of its centre.
            CENTER_SAMPLING_RADIUS=0.0,
            OBJECT_SIZES_OF_INTEREST=[
                [-1, 64], [64, 128], [128, 256], [256, 512], [512, float("inf")],
            ],
            # Divide losses by the number of positives averaged over all ranks.
            NORM_SYNC=True,
            # Tower width; 0 = FPN.OUT_CHANNELS.
            HEAD_CHANNELS=256,
        ),
        ATSS=dict(TOPK=9, ANCHOR_SCALE=8),
        # cvpods' LLA release spells TOPK "TopK"; both are accepted (legacy.KEY_ALIASES).
        LLA=dict(
            TOPK=10, REG_COST=1.5, IOU_WEIGHT=0.5,
            # Cost added for a point outside the GT: 1000 (published) lets a GT with fewer than
            # TOPK interior points take outside ones; inf = interior points only.
            OUTSIDE_COST=1000.0,
            # Assignment warm-up (as TOOD, arXiv 2108.07755): WARMUP_ASSIGNER's rule ("atss" or
            # "fcos", with their own MODEL.ATSS / MODEL.FCOS keys) for the first WARMUP_ITERS
            # iterations, then LLA. 0 = the published LLA.
            WARMUP_ITERS=0,
            WARMUP_ASSIGNER="atss",
        ),
    ),
)


class FCOSConfig(BaseDetectionConfig):
    """FCOS / ATSS / LLA defaults on ResNet-FPN P3-P7."""

    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)
