"""Faster R-CNN + Repulsion Loss (arXiv 1711.07752): half-width ResNet-18-FPN, synthcrowd, CPU.

faster_rcnn.res18.fpn.synthcrowd.256size.2600 plus, on the ROI head, 0.5 x RepGT (Smooth_ln
sigma 1.0) and 0.5 x RepBox (sigma 0.0), the paper's setting on Faster R-CNN. Everything else
is identical to that experiment, so the two differ only in the repulsion terms. Written for
ONE process (REFERENCE_WORLD_SIZE 1); no pretrained weights (FREEZE_AT 0, BatchNorm).
"""
from crowdloss.config import RCNNFPNConfig, synthcrowd_input, synthcrowd_solver

_config_dict = dict(
    MODEL=dict(
        WEIGHTS="",
        BACKBONE=dict(FREEZE_AT=0),
        RESNETS=dict(DEPTH=18, NORM="BN", STEM_OUT_CHANNELS=32, RES2_OUT_CHANNELS=32),
        FPN=dict(OUT_CHANNELS=64),
        ANCHOR_GENERATOR=dict(
            SIZES=[[32], [64], [128], [256], [512]],
            ASPECT_RATIOS=[[1.0, 2.0, 3.0]],
        ),
        PROPOSAL_GENERATOR=dict(MIN_SIZE=2),
        RPN=dict(
            PRE_NMS_TOPK_TRAIN=2000,
            PRE_NMS_TOPK_TEST=1000,
            POST_NMS_TOPK_TRAIN=1000,
            POST_NMS_TOPK_TEST=1000,
            SMOOTH_L1_BETA=1.0,
        ),
        ROI_HEADS=dict(
            NUM_CLASSES=1,
            POSITIVE_FRACTION=0.5,
        ),
        ROI_BOX_HEAD=dict(
            # A narrow head for the CPU: 2 FC layers of 256 (1024 in the R-50 experiment).
            NUM_FC=2,
            FC_DIM=256,
            SMOOTH_L1_BETA=1.0,
        ),
        REPULSION=dict(
            REPGT=dict(ENABLED=True, WEIGHT=0.5, SIGMA=1.0),
            REPBOX=dict(ENABLED=True, WEIGHT=0.5, SIGMA=0.0),
        ),
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
    # The fixed seed of the other synthcrowd experiments (chosen before any run, not tuned).
    SEED=0,
    TEST=dict(
        # pods_test evaluates (make demo, the benchmark runner); -1: pods_train does not
        # evaluate the same final model a second time (1000 val images, ~50 s each).
        EVAL_PERIOD=-1,
        DETECTIONS_PER_IMAGE=300,
        # COCO AP / AP75 and oLRP beside the CrowdHuman metrics: AP75 and oLRP's localisation
        # component show how well the boxes sit, which repulsion acts on.
        COCO_METRICS=True,
        # The band of the README's synthcrowd Faster R-CNN table (benchmark runner, 2 seeds):
        # mean +- 3 seed stds (at least 0.01); pods_test says when a run falls outside.
        EXPECTED_RESULTS=[
            ["synthcrowd_val", "crowdhuman", "AP", 0.6885, 0.0137],
            ["synthcrowd_val", "crowdhuman", "mMR", 0.7447, 0.0321],
            ["synthcrowd_val", "crowdhuman", "Recall", 0.8528, 0.01],
            ["synthcrowd_val", "crowdhuman", "JI", 0.5629, 0.0267],
        ],
    ),
)


class RepulsionRCNNFPNConfig(RCNNFPNConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = RepulsionRCNNFPNConfig()
