"""``PyTorchRetinaNetConfig``: RetinaNet (arXiv 1708.02002) exactly as yhenon's pytorch-retinanet
builds, feeds, decodes and trains it, so that its checkpoints (``MODEL.WEIGHTS`` of format
"pytorch_retinanet") give the boxes and scores its own model gives.

What differs from ``RetinaNetConfig`` (cvpods) and why:

- input: RGB in 0-255 with ImageNet mean / std (its ``Normalizer`` on RGB in [0, 1]: mean
  (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), times 255 here); short side 608, long
  side at most 1024; padding by ``32 - n % 32`` (``MODEL.PAD_MODE`` "always": 608 -> 640);
- backbone: torchvision ResNet (stride in the 3x3 conv), BatchNorm statistics frozen but its
  affine parameters trained, nothing frozen (``FrozenStatsBN``, ``FREEZE_AT`` 0);
- FPN: P6 from C5 (``TOP_BLOCK_IN_FEATURE`` "res5"); P7 from ReLU(P6) and the upsampling of
  the lateral sum before the 3x3 are what ``FPN`` / ``LastLevelP6P7`` do anyway;
- anchors: centres at (x + 0.5) * stride, the 9 anchors of a location ratio-major (ratio
  h / w 0.5, 1, 2 outer, scales 2^0, 2^(1/3), 2^(2/3) inner);
- boxes: deltas times std (0.1, 0.1, 0.2, 0.2) = ``BBOX_REG_WEIGHTS`` (10, 10, 5, 5), no clamp
  of dw / dh before exp;
- test: score > 0.05, every candidate (no top-k), NMS per class at 0.5, boxes clipped to the
  padded size (``TEST_CLIP`` "padded");
- training (where the losses differ, docs/retinanet_workflow.md): IoU >= 0.5 positive,
  < 0.4 negative, no low-quality matches; smooth L1 with beta 1/9 averaged over the 4
  coordinates (``REG_WEIGHT`` 0.25); Adam at 1e-5 without weight decay, gradient norm clipped
  at 0.1, batch 2 on one process, a constant learning rate.
"""
from __future__ import annotations

from typing import Any, Dict

from .retinanet_config import RetinaNetConfig

__all__ = ["PyTorchRetinaNetConfig", "PyTorchRetinaNetCrowdHumanConfig", "IMAGENET_RGB_MEAN",
           "IMAGENET_RGB_STD"]

# pytorch-retinanet's Normalizer, on 0-255 RGB values.
IMAGENET_RGB_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_RGB_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]

_config_dict: Dict[str, Any] = dict(
    MODEL=dict(
        PIXEL_MEAN=IMAGENET_RGB_MEAN,
        PIXEL_STD=IMAGENET_RGB_STD,
        PAD_MODE="always",
        BACKBONE=dict(FREEZE_AT=0),
        RESNETS=dict(DEPTH=50, STRIDE_IN_1X1=False, NORM="FrozenStatsBN",
                     OUT_FEATURES=["res3", "res4", "res5"]),
        FPN=dict(IN_FEATURES=["res3", "res4", "res5"], OUT_CHANNELS=256, NORM="",
                 TOP_BLOCK_IN_FEATURE="res5"),
        ANCHOR_GENERATOR=dict(
            SIZES=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]],
            ASPECT_RATIOS=[[0.5, 1.0, 2.0]],
            OFFSET=0.5,
            ORDER="ratio_major",
        ),
        RETINANET=dict(
            NUM_CLASSES=80,
            NUM_CONVS=4,
            HEAD_CHANNELS=256,
            NORM="",
            PRIOR_PROB=0.01,
            IOU_THRESHOLDS=[0.4, 0.5],
            IOU_LABELS=[0, -1, 1],
            ALLOW_LOW_QUALITY_MATCHES=False,
            BBOX_REG_WEIGHTS=(10.0, 10.0, 5.0, 5.0),
            SCALE_CLAMP=float("inf"),
            SMOOTH_L1_LOSS_BETA=1.0 / 9,
            BBOX_REG_LOSS_TYPE="smooth_l1",
            REG_WEIGHT=0.25,
            SCORE_THRESH_TEST=0.05,
            TOPK_CANDIDATES_TEST=0,
            NMS_THRESH_TEST=0.5,
            TEST_CLIP="padded",
        ),
    ),
    INPUT=dict(
        FORMAT="RGB",
        AUG=dict(
            TRAIN_PIPELINES=[
                ("ResizeShortestEdge",
                 dict(short_edge_length=(608,), max_size=1024, sample_style="choice")),
                ("RandomFlip", dict()),
            ],
            TEST_PIPELINES=[
                ("ResizeShortestEdge",
                 dict(short_edge_length=608, max_size=1024, sample_style="choice")),
            ],
        ),
    ),
    SOLVER=dict(
        LR_SCHEDULER=dict(NAME="WarmupMultiStepLR", STEPS=(), WARMUP_ITERS=0),
        OPTIMIZER=dict(NAME="Adam", BASE_LR=1e-5, WEIGHT_DECAY=0.0),
        CLIP_GRADIENTS=dict(ENABLED=True, CLIP_TYPE="norm", CLIP_VALUE=0.1, NORM_TYPE=2.0),
        IMS_PER_BATCH=2,
        IMS_PER_DEVICE=2,
        REFERENCE_WORLD_SIZE=1,
    ),
)


class PyTorchRetinaNetConfig(RetinaNetConfig):
    """RetinaNet as pytorch-retinanet builds it (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


# The CrowdHuman seed's fine-tuning recipe (classes, data, schedule, evaluation); each
# retinanet.res<depth>.fpn.crowdhuman.coco_ft experiment adds its depth and COCO weights.
_crowdhuman_finetune: Dict[str, Any] = dict(
    MODEL=dict(
        # The checkpoint's classes, in its channel order.
        WEIGHTS_CLASSES=("coco",),
        RETINANET=dict(NUM_CLASSES=81),
    ),
    DATASETS=dict(
        # pytorch-retinanet's --csv_train / --csv_val / --csv_classes, relative to the
        # datasets root (override with absolute paths, e.g. the seed's own files).
        CSV=dict(
            TRAIN="crowdhuman/csv/train.csv",
            VAL="crowdhuman/csv/val.csv",
            CLASSES="crowdhuman/csv/classes.csv",
            IGNORE_CLASS="ignore",
            VAL_ODGT="crowdhuman/annotations/annotation_val.odgt",
        ),
        TRAIN=("csv_train",),
        TEST=("csv_val",),
    ),
    SOLVER=dict(
        LR_SCHEDULER=dict(MAX_ITER=750000),
        CHECKPOINT_PERIOD=7500,  # once per epoch, as the seed saves
    ),
    TEST=dict(
        EVAL_PERIOD=0,  # evaluate once, after training (the seed evaluates every epoch)
        DETECTIONS_PER_IMAGE=300,
        PER_CLASS_AP="retinanet_csv",
    ),
)


class PyTorchRetinaNetCrowdHumanConfig(PyTorchRetinaNetConfig):
    """pytorch-retinanet's RetinaNet fine-tuned on CrowdHuman from a COCO model: the CrowdHuman
    seed's recipe (qbxlvnf11/retinanet, built on yhenon/pytorch-retinanet).

    - network, input (608 / 1024, RGB, ImageNet mean / std) and test post-processing:
      ``PyTorchRetinaNetConfig``, so a pytorch-retinanet checkpoint runs as in its own code;
    - classes: the seed's class map, COCO's 80 (darknet spellings) + ``head`` (81). The COCO
      model's 80 classes keep their classifier channels (``MODEL.WEIGHTS_CLASSES`` "coco"),
      ``head`` starts from the prior init. The seed itself loads the COCO state dict with
      ``load_state_dict``, which fails on the 720 vs 729 class channels;
    - data: CSV files built from CrowdHuman's odgt by ``python -m crowdloss.tools.build_csv``:
      full-body ``person``, ``head``, ignore regions as class ``ignore`` read as ignore regions.
      The seed wrote the visible box as ``person`` and no ignore regions (``--person-box vbox
      --ignore seed``);
    - optimisation: the seed's (pytorch-retinanet's train.py): Adam, lr 1e-5, no weight decay,
      gradient norm clipped at 0.1, batch 2, 100 epochs of CrowdHuman train's 15000 images
      (750k iterations) at a constant lr (its ReduceLROnPlateau, which divides the lr by 10
      after four epochs without a lower mean loss, is not reproduced);
    - evaluation: CrowdHuman metrics of the ``person`` class against the val odgt, and
      per-class AP as pytorch-retinanet's csv_eval computes it (``TEST.PER_CLASS_AP``).
    """

    def __init__(self):
        super().__init__()
        self._register_configuration(_crowdhuman_finetune)
