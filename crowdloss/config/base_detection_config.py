"""``BaseDetectionConfig``: ``BaseConfig`` + the ResNet / FPN backbone, the repulsion terms any
dense detector can add, and detection test keys.

Key names and defaults are cvpods' (``base_detection_config.py``), trimmed to what crowdloss
builds; the CrowdHuman evaluation keys (``TEST.JI_MATCHING`` ...) are ours (their meaning:
``crowdloss.evaluation.crowdhuman``).
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
        # Repulsion Loss (arXiv 1711.07752) added to any dense detector's own losses:
        # + WEIGHT x RepGT (push each positive's box off the GT, other than its own, that
        # overlaps its prior most) and + WEIGHT x RepBox (push apart the boxes of positives
        # attracted to different GTs). SIGMA is Smooth_ln's; the paper's best are 1.0 (RepGT)
        # and 0.0 (RepBox), with weights (alpha, beta) 0.5. See docs/ssd.md.
        REPULSION=dict(
            REPGT=dict(ENABLED=False, WEIGHT=0.5, SIGMA=1.0),
            # MAX_BLOCK_ELEMENTS bounds the pair blocks (rows x columns) held at once.
            REPBOX=dict(ENABLED=False, WEIGHT=0.5, SIGMA=0.0, MAX_BLOCK_ELEMENTS=1 << 20),
            # Smooth_ln's sigma is capped at 1 - EPS (-ln(1 - x) is infinite at x = 1); also
            # RepBox's denominator eps.
            EPS=1e-3,
            # A point prior (FCOS family) stands for a square of this many strides when RepGT
            # ranks the GTs by IoU with the prior (ATSS's anchor of a point: 8).
            POINT_PRIOR_SCALE=8.0,
        ),
        # Batch padding: "ceil" to the next multiple of the backbone's size divisibility;
        # "always" adds a whole block even to a multiple (pytorch-retinanet: 608 -> 640).
        PAD_MODE="ceil",
    ),
    DATASETS=dict(
        # CrowdHuman box to train on: "fbox" (full body), "vbox" (visible) or "hbox" (head).
        BOX_TYPE="fbox",
        # Skip (and log, with the path) missing / truncated / corrupt images instead of failing
        # the run: dropped at load time, replaced (deterministically) when only the decode in
        # training finds them, left out of evaluation with their GT counted as missed.
        SKIP_BAD_IMAGES=False,
        # Training boxes flagged difficult (VOC): "drop" them (ssd.pytorch), "keep" them as
        # objects (detectron2) or "ignore" them (class -1, mmdetection). Evaluation always
        # keeps them flagged: the VOC metric ignores detections on them.
        TRAIN_DIFFICULT="drop",
        # odgt tags other than "person" / "mask" -> "person" (a valid box) or "mask" (an
        # ignore region), e.g. dict(crowd="mask"); an unmapped unknown tag is an error.
        TAG_MAP=dict(),
        # pytorch-retinanet CSV files, its --csv_train / --csv_val / --csv_classes as keys:
        # TRAIN / VAL register the datasets "csv_train" / "csv_val" (docs/datasets.md). Paths
        # may be relative to the datasets root. IMAGE_ROOT: what relative image paths in the
        # CSV resolve against ("" = the CSV's folder; the CrowdHuman seed's files need its
        # checkout). DELIMITER: "," or " " (the seed's build_annotations_file.py). IGNORE_CLASS:
        # a class name read as ignore regions. VAL_ODGT: the odgt VAL was built from, to score
        # it with the CrowdHuman metrics (person class) instead of per-class AP.
        CSV=dict(TRAIN="", VAL="", CLASSES="", IMAGE_ROOT="", DELIMITER=",", IGNORE_CLASS="",
                 VAL_ODGT=""),
    ),
    TEST=dict(
        # CrowdHuman JI: "weight" = max-weight bipartite matching (official), "greedy" otherwise.
        JI_MATCHING="weight",
        COCO_MAX_DETS=100,
        # CrowdHuman-format (odgt) datasets: also score the detections with COCO AP / AR and
        # oLRP (task "bbox"; ignore regions as iscrowd), at most COCO_MAX_DETS per image.
        COCO_METRICS=False,
        # Algorithm name in detections_<split>_<name>_results.json, written (not scored) for
        # splits without annotations such as coco_2017_test-dev; no "_" (the server's separator).
        COCO_SUBMISSION_NAME="crowdloss",
        # Write PR / MR-FPPI plots under inference/<dataset>/.
        PLOT=True,
        # Per-class AP beside any dataset's own metrics: "" (off), "voc_devkit" or
        # "retinanet_csv" (the convention, docs/metrics.md); task "per_class_ap".
        PER_CLASS_AP="",
        # IoU a detection needs to match (VOC and per-class AP evaluators).
        AP_IOU_THRESHOLD=0.5,
        # VOC "crowd" subset: images with two same-class GT boxes overlapping by IoU > this.
        VOC_CROWD_IOU=0.3,
    ),
)


class BaseDetectionConfig(BaseConfig):
    """Defaults shared by every detector: ResNet + FPN, detection evaluation."""

    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)
