"""``BaseDetectionConfig``: ``BaseConfig`` + the ResNet / FPN backbone and detection test keys.

Key names and defaults are cvpods' (``base_detection_config.py``), trimmed to what crowdloss
builds; the CrowdHuman evaluation keys (``TEST.JI_MATCHING`` ...) are ours, see docs/metrics.md.
"""
from __future__ import annotations

from typing import Any, Dict

from .base_config import BaseConfig

__all__ = ["BaseDetectionConfig"]

_config_dict: Dict[str, Any] = dict(
    MODEL=dict(
        BACKBONE=dict(
            # Freeze the stem (1) and res2 (2) as in the MSRA/detectron2 recipes.
            FREEZE_AT=2,
        ),
        RESNETS=dict(
            DEPTH=50,
            OUT_FEATURES=["res4"],
            NUM_GROUPS=1,
            # FrozenBN: ImageNet statistics are kept; batches of 2 per GPU are too small for BN.
            NORM="FrozenBN",
            WIDTH_PER_GROUP=64,
            # MSRA weights put the stride-2 conv in the 1x1 (torchvision: in the 3x3).
            STRIDE_IN_1X1=True,
            RES5_DILATION=1,
            RES2_OUT_CHANNELS=256,
            STEM_OUT_CHANNELS=64,
        ),
        FPN=dict(
            IN_FEATURES=[],
            OUT_CHANNELS=256,
            NORM="",
            FUSE_TYPE="sum",
            # P6/P7 are computed from this feature.
            TOP_BLOCK_IN_FEATURE="p5",
        ),
    ),
    DATASETS=dict(
        # CrowdHuman box to train on: "fbox" (full body), "vbox" (visible) or "hbox" (head).
        BOX_TYPE="fbox",
        # Skip (and count) unreadable images instead of failing the run.
        SKIP_BAD_IMAGES=False,
    ),
    TEST=dict(
        # CrowdHuman JI: "weight" = max-weight bipartite matching (official), "greedy" otherwise.
        JI_MATCHING="weight",
        COCO_MAX_DETS=100,
        # Algorithm name in detections_<split>_<name>_results.json, written (not scored) for
        # splits without annotations such as coco_2017_test-dev; no "_" (the server's separator).
        COCO_SUBMISSION_NAME="crowdloss",
        # Write PR / MR-FPPI plots under inference/<dataset>/.
        PLOT=True,
    ),
)


class BaseDetectionConfig(BaseConfig):
    """Defaults shared by every detector: ResNet + FPN, detection evaluation."""

    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)
