"""Faster R-CNN R-50-FPN + Repulsion Loss (arXiv 1711.07752) on CrowdHuman, 1x.

faster_rcnn.res50.fpn.crowdhuman.800size.1x plus, on the ROI head, 0.5 x RepGT (Smooth_ln
sigma 1.0; each foreground ROI's box pushed off the valid GT, other than its own, that
overlaps its proposal most) and 0.5 x RepBox (sigma 0.0; boxes of foreground ROIs attracted
to different GTs pushed apart): the paper's setting on Faster R-CNN. Everything else is
identical to that experiment, so the two differ only in the repulsion terms.

cvpods-style experiment config: the dict below is merged over ``RCNNFPNConfig``'s defaults,
with cvpods' CrowdHuman values (pedestrian anchor ratios h / w 1, 2, 3; RPN top-k 12000 / 6000
before NMS and 2000 / 1000 after it; proposals of side <= 2 px dropped; smooth L1 beta 1.0 in
both stages; half of the 512 ROIs may be foreground; LR 0.02). Ignore regions are ignored by
IoA > 0.5 in the RPN and in the ROI sampling (see README.md).
"""
from crowdloss.config import RCNNFPNConfig

_config_dict = dict(
    MODEL=dict(
        WEIGHTS="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        RESNETS=dict(DEPTH=50),
        ANCHOR_GENERATOR=dict(
            SIZES=[[32], [64], [128], [256], [512]],
            ASPECT_RATIOS=[[1.0, 2.0, 3.0]],
        ),
        PROPOSAL_GENERATOR=dict(MIN_SIZE=2),
        RPN=dict(
            PRE_NMS_TOPK_TRAIN=12000,
            PRE_NMS_TOPK_TEST=6000,
            POST_NMS_TOPK_TRAIN=2000,
            POST_NMS_TOPK_TEST=1000,
            SMOOTH_L1_BETA=1.0,
        ),
        ROI_HEADS=dict(
            IN_FEATURES=["p2", "p3", "p4", "p5"],
            POSITIVE_FRACTION=0.5,
            NUM_CLASSES=1,
        ),
        ROI_BOX_HEAD=dict(
            NUM_FC=2,
            POOLER_RESOLUTION=7,
            SMOOTH_L1_BETA=1.0,
        ),
        REPULSION=dict(
            REPGT=dict(ENABLED=True, WEIGHT=0.5, SIGMA=1.0),
            REPBOX=dict(ENABLED=True, WEIGHT=0.5, SIGMA=0.0),
        ),
    ),
    DATASETS=dict(
        TRAIN=("crowdhuman_train",),
        TEST=("crowdhuman_val",),
    ),
    SOLVER=dict(
        LR_SCHEDULER=dict(
            MAX_ITER=28125,
            STEPS=(18750, 24375),
        ),
        OPTIMIZER=dict(
            BASE_LR=0.02,
        ),
        IMS_PER_BATCH=16,
        IMS_PER_DEVICE=2,
        CHECKPOINT_PERIOD=1000,
    ),
    INPUT=dict(
        AUG=dict(
            TRAIN_PIPELINES=[
                ("ResizeShortestEdge",
                 dict(short_edge_length=(800,), max_size=1400, sample_style="choice")),
                ("RandomFlip", dict()),
            ],
            TEST_PIPELINES=[
                ("ResizeShortestEdge",
                 dict(short_edge_length=800, max_size=1400, sample_style="choice")),
            ],
        ),
    ),
    TEST=dict(
        EVAL_PERIOD=0,  # evaluate once, after training
        DETECTIONS_PER_IMAGE=300,
    ),
)


class FasterRCNNRepulsionConfig(RCNNFPNConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = FasterRCNNRepulsionConfig()
