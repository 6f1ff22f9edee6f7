"""``RetinaNetConfig``: RetinaNet with focal loss (arXiv 1708.02002), plus LLA on its anchors
(arXiv 2101.04307) and the ranking losses on its head: aLRP Loss (arXiv 2009.13592, ``ALRP``)
and AP Loss (arXiv 1904.06373, ``APLOSS``). cvpods key names and defaults.
"""
from __future__ import annotations

import math
from typing import Any, Dict

from .base_detection_config import BaseDetectionConfig

__all__ = ["RetinaNetConfig"]

_config_dict: Dict[str, Any] = dict(
    MODEL=dict(
        RESNETS=dict(OUT_FEATURES=["res3", "res4", "res5"]),
        FPN=dict(IN_FEATURES=["res3", "res4", "res5"], TOP_BLOCK_IN_FEATURE="p5"),
        ANCHOR_GENERATOR=dict(
            # Three octave scales per level: x, x * 2^(1/3), x * 2^(2/3).
            SIZES=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]],
            ASPECT_RATIOS=[[0.5, 1.0, 2.0]],
            OFFSET=0.0,
            # Anchors of a location: "size_major" (sizes outer, cvpods) or "ratio_major"
            # (aspect ratios outer: pytorch-retinanet's head channels).
            ORDER="size_major",
        ),
        RETINANET=dict(
            NUM_CLASSES=80,
            IN_FEATURES=["p3", "p4", "p5", "p6", "p7"],
            NUM_CONVS=4,
            # Tower norm: "" (none, published), "GN", "BN".
            NORM="",
            # IoU < 0.4 negative, >= 0.5 positive, in between ignored.
            IOU_THRESHOLDS=[0.4, 0.5],
            IOU_LABELS=[0, -1, 1],
            ALLOW_LOW_QUALITY_MATCHES=True,
            # Anchors covered by an ignore region beyond this IoA are ignored.
            IGNORE_IOA_THRESH=0.5,
            PRIOR_PROB=0.01,
            SCORE_THRESH_TEST=0.05,
            TOPK_CANDIDATES_TEST=1000,
            NMS_THRESH_TEST=0.5,
            BBOX_REG_WEIGHTS=(1.0, 1.0, 1.0, 1.0),
            # Largest dw / dh (after dividing by the weights) decoded: log(1000 / 16) as
            # detectron2; float("inf") = no clamp (pytorch-retinanet).
            SCALE_CLAMP=math.log(1000.0 / 16),
            # Test-time clip before NMS: "image" (the unpadded input, empty boxes dropped) or
            # "padded" (pytorch-retinanet: x1, y1 >= 0, x2 / y2 <= the padded batch size).
            TEST_CLIP="image",
            FOCAL_LOSS_GAMMA=2.0,
            FOCAL_LOSS_ALPHA=0.25,
            SMOOTH_L1_LOSS_BETA=0.1,
            BBOX_REG_LOSS_TYPE="smooth_l1",
            # Multiplier of the box loss (LLA.RetinaNet uses 2.0, as LLA.FCOS).
            REG_WEIGHT=1.0,
            NORM_SYNC=True,
            HEAD_CHANNELS=256,
        ),
        LLA=dict(
            TOPK=10, REG_COST=1.5, IOU_WEIGHT=0.5,
            # Cost added for a point outside the GT: 1000 (published) lets a GT with fewer than
            # TOPK interior points take outside ones; inf = interior points only.
            OUTSIDE_COST=1000.0,
            # Assignment warm-up: WARMUP_ASSIGNER's rule ("max_iou": RetinaNet's matching with
            # the MODEL.RETINANET keys) for the first WARMUP_ITERS iterations, then LLA.
            # 0 = no warm-up.
            WARMUP_ITERS=0,
            WARMUP_ASSIGNER="max_iou",
        ),
        # ALRPLossRetinaNet: L_cls + w L_loc, w by self-balance (docs/algorithms.md).
        ALRP=dict(
            # Half-width of the smoothed step H of the ranking (the paper's 1.0).
            DELTA=1.0,
            # Localisation error: "giou" 1 - GIoU (the paper) or "iou" 2 (1 - IoU), in [0, 2].
            LOC_ERROR="giou",
            # Self-balance: w starts at SB_INIT and, every SB_PERIOD iterations ("an epoch"),
            # becomes (mean L_loc + mean L_cls) / mean L_loc over them; 0 keeps SB_INIT.
            # 3665 = one COCO train2017 epoch (117266 images with boxes) at 32 images per
            # iteration. Rescaled with the schedule when the world size changes.
            SB_INIT=50.0,
            SB_PERIOD=3665,
        ),
        # APLossRetinaNet: AP Loss + REG_WEIGHT x smooth L1 (beta SMOOTH_L1_BETA) / (4 x P).
        APLOSS=dict(DELTA=1.0, SMOOTH_L1_BETA=1.0, REG_WEIGHT=1.0),
    ),
)


class RetinaNetConfig(BaseDetectionConfig):
    """RetinaNet (and LLA.RetinaNet) defaults on ResNet-FPN P3-P7."""

    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)
