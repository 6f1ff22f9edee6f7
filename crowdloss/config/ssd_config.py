"""``SSDConfig``: SSD300 / SSD512 on the reduced-fc VGG16 (arXiv 1512.02325).

Defaults reproduce ssd.pytorch's SSD300 on VOC07+12 (the Repulsion-SSD seed's base): its
default boxes, matching, losses, inference and solver. SSD512 experiments override the
``MODEL.SSD`` geometry with the Caffe SSD512 values (see docs/ssd.md). Key names follow cvpods'
``ssd_config.py`` where it has them (``MODEL.SSD.BBOX_REG_WEIGHTS``, ``L2NORM_SCALE``...).
"""
from __future__ import annotations

from typing import Any, Dict

from .base_detection_config import BaseDetectionConfig

__all__ = ["SSDConfig", "ssd_train_pipeline"]


def ssd_train_pipeline(size: int, *, mean=(104, 117, 123), image_format: str = "BGR",
                       iou_rule: str = "all"):
    """The SSD training augmentation at a square ``size`` (docs/transforms.md): photometric
    distortion, zoom out (canvas filled with ``mean``, in the image's channel order), zoom in,
    mirror, fixed resize. ``iou_rule="any"`` is the Caffe sampler's rule (better in crowds)."""
    return [
        ("PhotometricDistort", dict(brightness_delta=32, contrast_range=(0.5, 1.5),
                                    saturation_range=(0.5, 1.5), hue_delta=18, prob=0.5,
                                    channel_swap_prob=0.5, image_format=image_format)),
        ("Expand", dict(mean=tuple(mean), ratio_range=(1.0, 4.0), prob=0.5)),
        ("MinIoURandomCrop", dict(min_ious=(0.1, 0.3, 0.5, 0.7, 0.9), iou_rule=iou_rule,
                                  min_crop_size=0.3, aspect_ratio_range=(0.5, 2.0),
                                  max_trials=50)),
        ("RandomFlip", dict(prob=0.5)),
        ("Resize", dict(height=size, width=size)),
    ]


_config_dict: Dict[str, Any] = dict(
    MODEL=dict(
        # Caffe's VGG16 convention (BGR, the SSD authors' mean, no std), which the pretrained
        # vgg16_reducedfc weights expect. ssd.pytorch's own checkpoints were trained on RGB
        # with the mean in RGB order: see docs/ssd.md before evaluating one.
        PIXEL_MEAN=[104.0, 117.0, 123.0],
        PIXEL_STD=[1.0, 1.0, 1.0],
        VGG=dict(
            # Initial value of conv4_3's learned L2-norm scale (ParseNet).
            L2NORM_SCALE=20.0,
            # Norm after the trunk's convs: "" (the reference), "BN" / "GN" from scratch.
            NORM="",
            # Multiplies every channel count; < 1 gives narrow CPU models (no pretrained fit).
            WIDTH_FACTOR=1.0,
        ),
        SSD=dict(
            NUM_CLASSES=20,
            # Square network input (the Resize of INPUT.AUG); selects the SSD300 / SSD512
            # extra layers and is the side the default boxes are clamped to.
            IMAGE_SIZE=300,
            IN_FEATURES=["conv4_3", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"],
            # Default boxes (ssd.pytorch's VOC SSD300): per source, centre spacing in pixels,
            # the square of side MIN_SIZE, the square of side sqrt(MIN_SIZE x MAX_SIZE), then
            # each aspect ratio r as (MIN_SIZE sqrt r, MIN_SIZE / sqrt r) and its transpose.
            STEPS=[8, 16, 32, 64, 100, 300],
            MIN_SIZES=[30, 60, 111, 162, 213, 264],
            MAX_SIZES=[60, 111, 162, 213, 264, 315],
            ASPECT_RATIOS=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
            # Clamp each default box's centre and size to [0, IMAGE_SIZE] (ssd.pytorch: True;
            # the Caffe SSD: False).
            CLIP_PRIORS=True,
            # Box2BoxTransform weights = 1 / variances (0.1, 0.1, 0.2, 0.2).
            BBOX_REG_WEIGHTS=(10.0, 10.0, 5.0, 5.0),
            # Matching: IoU >= this, plus every GT's best default box.
            IOU_THRESHOLD=0.5,
            # Boxes covered beyond this IoA by an ignore region are ignored (never mined).
            IGNORE_IOA_THRESH=0.5,
            # Hard negative mining: negatives per positive, per image.
            NEG_POS_RATIO=3.0,
            SMOOTH_L1_LOSS_BETA=1.0,
            # Inference (ssd.pytorch's Detect): probability > 0.01, top 200 per class into a
            # per-class NMS at IoU 0.45; TEST.DETECTIONS_PER_IMAGE caps the image.
            SCORE_THRESH_TEST=0.01,
            TOPK_CANDIDATES_TEST=200,
            NMS_THRESH_TEST=0.45,
            # Divide the losses by the positives averaged over all ranks.
            NORM_SYNC=True,
        ),
    ),
    INPUT=dict(
        FORMAT="BGR",
        AUG=dict(
            TRAIN_PIPELINES=ssd_train_pipeline(300),
            TEST_PIPELINES=[("Resize", dict(height=300, width=300))],
        ),
    ),
    # Every image has the network's fixed size: grouping by aspect ratio has nothing to do.
    DATALOADER=dict(ASPECT_RATIO_GROUPING=False),
    SOLVER=dict(
        # ssd.pytorch's train.py: one process, batch 32, plain SGD (momentum 0.9, weight
        # decay 5e-4 on every parameter, biases included), lr 1e-3 divided by 10 after 80k and
        # 100k iterations, 120k iterations, no warmup.
        LR_SCHEDULER=dict(MAX_ITER=120000, STEPS=(80000, 100000), WARMUP_ITERS=0,
                          WARMUP_FACTOR=1.0, GAMMA=0.1),
        OPTIMIZER=dict(NAME="SGD", BASE_LR=1e-3, WEIGHT_DECAY=5e-4, MOMENTUM=0.9),
        IMS_PER_BATCH=32,
        IMS_PER_DEVICE=32,
        REFERENCE_WORLD_SIZE=1,
        CHECKPOINT_PERIOD=5000,
    ),
    TEST=dict(DETECTIONS_PER_IMAGE=200),
)


class SSDConfig(BaseDetectionConfig):
    """SSD defaults: VGG16 + SSD300 default boxes, ssd.pytorch's recipe."""

    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)
