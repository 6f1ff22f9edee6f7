"""The public aLRP Loss code's COCO settings (arXiv 2009.13592, and AP Loss arXiv 1904.06373
as that code reproduces it) as crowdloss config dicts, for the ``playground/detection/coco/``
experiments, which differ only in the loss, the input size, the backbone and the schedule.

Everything is the public code's: RetinaNet with 6 anchors per location (2 scales x 3 ratios,
base 4 x stride), IoU 0.5 / 0.4 with low-quality matches, deltas scaled by (10, 10, 5, 5),
its "SSD_Style" augmentation then a square resize (512 for the "500" settings, 800 for the
"800" ones), a 500 / 800 test size, SGD with a linear 500-iteration warm-up from 1/3 of the
LR, 8 (500) or 4 (800) images per GPU on 4 GPUs, the ranking per process. Epochs become
iterations: one COCO train2017 epoch = ceil(117266 images with boxes / batch).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Sequence

__all__ = ["COCO_TRAIN_IMAGES", "coco_ranking_config"]

COCO_TRAIN_IMAGES = 117266  # train2017 images with at least one box

# backbone -> (MODEL keys, INPUT.FORMAT)
_BACKBONES = {
    # MSRA (Caffe) ImageNet ResNet-101, BGR with std 1: the weights the public code takes from
    # the AP Loss release, converted from the same MSRA model.
    "r101": (dict(WEIGHTS="detectron2://ImageNetPretrained/MSRA/R-101.pkl",
                  RESNETS=dict(DEPTH=101)), "BGR"),
    # torchvision's ResNeXt-101 32x8d (the public code's resnext101_32x8d-8ba56ff5.pth): RGB
    # input, ImageNet mean / std, stride in the 3x3 conv.
    "x101_32x8d": (dict(WEIGHTS="https://download.pytorch.org/models/"
                                "resnext101_32x8d-8ba56ff5.pth",
                        PIXEL_MEAN=[123.675, 116.280, 103.530],
                        PIXEL_STD=[58.395, 57.120, 57.375],
                        RESNETS=dict(DEPTH=101, NUM_GROUPS=32, WIDTH_PER_GROUP=8,
                                     STRIDE_IN_1X1=False)), "RGB"),
}
# test size -> (square training size, test short side, test long side, images per GPU)
_SIZES = {500: (512, 500, 833, 8), 800: (800, 800, 1333, 4)}


def coco_ranking_config(*, loss: str, size: int, backbone: str, epochs: int,
                        lr_steps: Sequence[int], base_lr: float) -> Dict[str, Any]:
    """The config dict of one public setting (e.g. ``aLRPLoss500_r101``).

    Args:
        loss: "alrp" (self-balance once per epoch) or "ap" (smooth L1 box loss).
        size: 500 or 800.
        backbone: "r101" or "x101_32x8d".
        epochs: schedule length; lr_steps: the epochs after which the LR drops 10x.
        base_lr: the LR of the whole batch (4 GPUs).
    """
    if loss not in ("alrp", "ap") or size not in _SIZES or backbone not in _BACKBONES:
        raise ValueError(f"coco_ranking_config: unknown setting loss={loss!r}, size={size!r}, "
                         f"backbone={backbone!r}")
    square, test_short, test_long, per_gpu = _SIZES[size]
    batch = 4 * per_gpu
    epoch = math.ceil(COCO_TRAIN_IMAGES / batch)
    model, image_format = _BACKBONES[backbone]
    # The fill of Expand: MODEL.PIXEL_MEAN (ImageNet's) in INPUT.FORMAT order.
    mean = (103.530, 116.280, 123.675) if image_format == "BGR" else (123.675, 116.280, 103.530)
    model = dict(
        model,
        # P6 from C5, as RetinaNet and the public code.
        FPN=dict(TOP_BLOCK_IN_FEATURE="res5"),
        ANCHOR_GENERATOR=dict(
            # 2 scales (2^0, 2^0.5) x 3 ratios of base size 4 x stride: A = 6 per location.
            SIZES=[[4 * s, 4 * s * 2 ** 0.5] for s in (8, 16, 32, 64, 128)],
            ASPECT_RATIOS=[[0.5, 1.0, 2.0]],
            # The public anchors are centred at (stride - 1) / 2 of each cell.
            OFFSET=0.5,
        ),
        RETINANET=dict(
            NUM_CLASSES=80,
            # IoU >= 0.5 positive (plus each GT's best anchors), < 0.4 negative, else excluded.
            IOU_THRESHOLDS=[0.4, 0.5],
            IOU_LABELS=[0, -1, 1],
            ALLOW_LOW_QUALITY_MATCHES=True,
            # The public code drops COCO crowd boxes: anchors on them are negatives.
            IGNORE_IOA_THRESH=1.0,
            # Deltas scaled as the public code's stds (0.1, 0.1, 0.2, 0.2).
            BBOX_REG_WEIGHTS=(10.0, 10.0, 5.0, 5.0),
            # Public inference: top 1000 per level above 0.01, class-wise NMS 0.5, 100 kept.
            SCORE_THRESH_TEST=0.01,
            TOPK_CANDIDATES_TEST=1000,
            NMS_THRESH_TEST=0.5,
        ),
    )
    if loss == "alrp":
        # 1 - GIoU in [0, 2]; self-balance once per epoch, as the public train.py.
        model["ALRP"] = dict(DELTA=1.0, LOC_ERROR="giou", SB_INIT=50.0, SB_PERIOD=epoch)
    else:
        model["APLOSS"] = dict(DELTA=1.0, SMOOTH_L1_BETA=1.0, REG_WEIGHT=1.0)
    return dict(
        MODEL=model,
        DATASETS=dict(
            TRAIN=("coco_2017_train",),
            # minival; DATASETS.TEST "('coco_2017_test-dev',)" writes the server submission.
            TEST=("coco_2017_val",),
        ),
        SOLVER=dict(
            LR_SCHEDULER=dict(
                MAX_ITER=epochs * epoch,
                STEPS=tuple(e * epoch for e in lr_steps),
                # Linear warmup from 1/3 of the LR over 500 iterations.
                WARMUP_FACTOR=1.0 / 3,
                WARMUP_ITERS=500,
                WARMUP_METHOD="linear",
                GAMMA=0.1,
            ),
            OPTIMIZER=dict(BASE_LR=base_lr, MOMENTUM=0.9, WEIGHT_DECAY=1e-4),
            # per_gpu images on each of 4 GPUs: the ranking runs over each process's images.
            IMS_PER_BATCH=batch,
            IMS_PER_DEVICE=per_gpu,
            REFERENCE_WORLD_SIZE=4,
            CHECKPOINT_PERIOD=10 * epoch,
        ),
        INPUT=dict(
            FORMAT=image_format,
            AUG=dict(
                # The public "SSD_Style" augmentation, then a square resize.
                TRAIN_PIPELINES=[
                    ("PhotometricDistort", dict(brightness_delta=32, contrast_range=(0.5, 1.5),
                                                saturation_range=(0.5, 1.5), hue_delta=18,
                                                prob=0.5, channel_swap_prob=0.0,
                                                image_format=image_format)),
                    ("LightingNoise", dict(std=0.1, prob=0.5, image_format=image_format)),
                    ("Expand", dict(mean=mean, ratio_range=(1.0, 4.0), prob=0.5)),
                    # Its crop modes: whole image, any patch, or a patch overlapping SOME
                    # object by IoU >= 0.1 / 0.3 / 0.7 / 0.9.
                    ("MinIoURandomCrop", dict(min_ious=(0.1, 0.3, 0.7, 0.9), iou_rule="any",
                                              min_crop_size=0.3, aspect_ratio_range=(0.5, 2.0),
                                              max_trials=50)),
                    ("RandomFlip", dict(prob=0.5)),
                    # Interpolation drawn per image: cv2 linear, area, nearest, cubic, Lanczos4.
                    ("Resize", dict(height=square, width=square, interp=(1, 3, 0, 2, 4))),
                ],
                TEST_PIPELINES=[
                    ("ResizeShortestEdge",
                     dict(short_edge_length=test_short, max_size=test_long,
                          sample_style="choice")),
                ],
            ),
        ),
        TEST=dict(
            EVAL_PERIOD=0,  # evaluate once, after training
            DETECTIONS_PER_IMAGE=100,
            # detections_test-dev2017_<name>_results.json on coco_2017_test-dev
            COCO_SUBMISSION_NAME="aLRPLoss" if loss == "alrp" else "APLoss",
        ),
    )
