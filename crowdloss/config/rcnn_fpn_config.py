"""``RCNNFPNConfig``: Faster R-CNN (arXiv 1506.01497) with FPN (arXiv 1612.03144). cvpods key
names and defaults (``rcnn_config.py`` + ``rcnn_fpn_config.py``); the ignore-region thresholds
are ours. The Repulsion Loss (arXiv 1711.07752) on the ROI head is switched on by the
``MODEL.REPULSION`` keys every detector shares (``BaseDetectionConfig``; the ROI head reads all
of them but ``POINT_PRIOR_SCALE``, which only point priors need).
"""
from __future__ import annotations

from typing import Any, Dict

from .base_detection_config import BaseDetectionConfig

__all__ = ["RCNNFPNConfig"]

_config_dict: Dict[str, Any] = dict(
    MODEL=dict(
        RESNETS=dict(OUT_FEATURES=["res2", "res3", "res4", "res5"]),
        # P2-P5 from res2-res5; P6 is P5 max-pooled (build_resnet_fpn_backbone).
        FPN=dict(IN_FEATURES=["res2", "res3", "res4", "res5"]),
        ANCHOR_GENERATOR=dict(
            # One size per level (P2-P6), three aspect ratios h / w.
            SIZES=[[32], [64], [128], [256], [512]],
            ASPECT_RATIOS=[[0.5, 1.0, 2.0]],
            OFFSET=0.0,
        ),
        PROPOSAL_GENERATOR=dict(
            # Proposals whose width or height (after clipping) is not above this are dropped.
            MIN_SIZE=0,
        ),
        RPN=dict(
            IN_FEATURES=["p2", "p3", "p4", "p5", "p6"],
            # IoU < 0.3 negative, >= 0.7 positive, in between ignored; every GT also takes
            # the anchors of its highest IoU.
            IOU_THRESHOLDS=[0.3, 0.7],
            IOU_LABELS=[0, -1, 1],
            # Anchors covered by an ignore region beyond this IoA (intersection / anchor
            # area) that are not positive are neither positive nor negative.
            IGNORE_IOA_THRESH=0.5,
            # Anchors sampled per image for the losses, and the largest positive share.
            BATCH_SIZE_PER_IMAGE=256,
            POSITIVE_FRACTION=0.5,
            BBOX_REG_WEIGHTS=(1.0, 1.0, 1.0, 1.0),
            # Smooth L1 transition point; 0.0 = L1.
            SMOOTH_L1_BETA=0.0,
            LOSS_WEIGHT=1.0,
            # Top-k proposals kept before NMS PER LEVEL, and after NMS per image (all levels).
            PRE_NMS_TOPK_TRAIN=2000,
            PRE_NMS_TOPK_TEST=1000,
            POST_NMS_TOPK_TRAIN=1000,
            POST_NMS_TOPK_TEST=1000,
            # IoU threshold of the NMS, run per level (boxes of different levels never
            # suppress each other).
            NMS_THRESH=0.7,
        ),
        ROI_HEADS=dict(
            IN_FEATURES=["p2", "p3", "p4", "p5"],
            NUM_CLASSES=80,
            # IoU < 0.5 background, >= 0.5 foreground (no grey zone, no low-quality matches).
            IOU_THRESHOLDS=[0.5],
            IOU_LABELS=[0, 1],
            # Proposals covered by an ignore region beyond this IoA that are not foreground
            # are never sampled (neither foreground nor background).
            IGNORE_IOA_THRESH=0.5,
            # ROIs sampled per image, and the largest foreground share.
            BATCH_SIZE_PER_IMAGE=512,
            POSITIVE_FRACTION=0.25,
            SCORE_THRESH_TEST=0.05,
            # Per-class NMS of the detections.
            NMS_THRESH_TEST=0.5,
            # Add the (valid) GT boxes to the proposals in training.
            PROPOSAL_APPEND_GT=True,
        ),
        ROI_BOX_HEAD=dict(
            # Weights on (dx, dy, dw, dh) of the box targets (about unit variance).
            BBOX_REG_WEIGHTS=(10.0, 10.0, 5.0, 5.0),
            SMOOTH_L1_BETA=0.0,
            POOLER_RESOLUTION=7,
            # RoIAlign samples per bin and axis; 0 = adaptive (about one per feature pixel).
            POOLER_SAMPLING_RATIO=0,
            # "ROIAlignV2" (half-pixel aligned, detectron2's default) or "ROIAlign" (legacy).
            POOLER_TYPE="ROIAlignV2",
            NUM_CONV=0,
            CONV_DIM=256,
            # Norm of the head's convs: "" (none), "BN", "GN", "SyncBN".
            NORM="",
            NUM_FC=2,
            FC_DIM=1024,
            # One box per ROI for every class (True) or one per class (False).
            CLS_AGNOSTIC_BBOX_REG=False,
        ),
    ),
)


class RCNNFPNConfig(BaseDetectionConfig):
    """Faster R-CNN R-FPN defaults: RPN on P2-P6, ROI heads on P2-P5."""

    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)
