"""RetinaNet + AP Loss (arXiv 1904.06373): half-width ResNet-18-FPN, synthcrowd, 256 px,
2600 iters, CPU.

One of the three RetinaNet synthcrowd experiments (retinanet / ap_loss / alrp_loss
.res18.fpn.synthcrowd.256size.2600) that differ only in the classification loss and its box
loss: same anchors, assigner and head. They also share backbone, input, batch, LR and
schedule with the lla / fcos / atss synthcrowd experiments. Written for ONE process
(REFERENCE_WORLD_SIZE 1); no pretrained weights, so the backbone trains from scratch with
BatchNorm (FREEZE_AT 0).
"""
from crowdloss.config import RetinaNetConfig, synthcrowd_input, synthcrowd_solver

_config_dict = dict(
    MODEL=dict(
        WEIGHTS="",
        BACKBONE=dict(FREEZE_AT=0),
        RESNETS=dict(DEPTH=18, NORM="BN", STEM_OUT_CHANNELS=32, RES2_OUT_CHANNELS=32),
        FPN=dict(OUT_CHANNELS=64),
        ANCHOR_GENERATOR=dict(
            # 3 octave scales x pedestrian aspect ratios h / w = 1, 2, 3 (the CrowdHuman
            # RetinaNet experiment's anchors).
            SIZES=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]],
            ASPECT_RATIOS=[[1.0, 2.0, 3.0]],
        ),
        RETINANET=dict(
            NUM_CLASSES=1,
            # A narrow head for the CPU: 2 convs of 64 channels per tower.
            NUM_CONVS=2,
            HEAD_CHANNELS=64,
            IOU_THRESHOLDS=[0.4, 0.5],
            IOU_LABELS=[0, -1, 1],
            ALLOW_LOW_QUALITY_MATCHES=True,
            IGNORE_IOA_THRESH=0.5,
            NMS_THRESH_TEST=0.6,
            # Keep every box up to TEST.DETECTIONS_PER_IMAGE: a ranking loss orders the
            # logits, it does not calibrate them, so a probability cut-off is arbitrary. At the
            # RetinaNet default 0.05 the synthcrowd models kept 12-16 boxes per image (18.7
            # persons per image) and recall fell from 84-88 % to 57-66 % (docs/ranking_losses.md).
            SCORE_THRESH_TEST=0.0,
            # Deltas scaled by (10, 10, 5, 5) as the public AP Loss code.
            BBOX_REG_WEIGHTS=(10.0, 10.0, 5.0, 5.0),
        ),
        # Smooth L1 (beta 1) per coordinate of the positives, weight 1, as the public code.
        APLOSS=dict(DELTA=1.0, SMOOTH_L1_BETA=1.0, REG_WEIGHT=1.0),
    ),
    DATASETS=dict(
        TRAIN=("synthcrowd_train",),
        TEST=("synthcrowd_val",),
    ),
    DATALOADER=dict(NUM_WORKERS=1),
    # The schedule every synthcrowd experiment shares (crowdloss.config.synthcrowd).
    SOLVER=synthcrowd_solver(),
    # Train at 256 with flips, test at 320 (crowdloss.config.synthcrowd).
    INPUT=synthcrowd_input(),
    # Fixed before any run, as the other synthcrowd experiments.
    SEED=0,
    TEST=dict(
        # pods_test evaluates (make demo, the benchmark runner); -1: pods_train does not
        # evaluate the same final model a second time (1000 val images, ~50 s each).
        EVAL_PERIOD=-1,
        DETECTIONS_PER_IMAGE=300,
        # COCO AP and oLRP beside the CrowdHuman metrics (the ranking losses' own metrics), at
        # COCO's 100 detections per image.
        COCO_METRICS=True,
    ),
)


class CustomRetinaNetConfig(RetinaNetConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomRetinaNetConfig()
