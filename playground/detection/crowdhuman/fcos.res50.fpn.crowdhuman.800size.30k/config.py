"""FCOS R-50-FPN on CrowdHuman, 30k schedule (cvpods baseline of the LLA paper).

cvpods-style experiment config: the dict below is merged over ``FCOSConfig``'s defaults.
"""
from crowdloss.config import FCOSConfig

_config_dict = dict(
    MODEL=dict(
        WEIGHTS="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        RESNETS=dict(DEPTH=50),
        SHIFT_GENERATOR=dict(OFFSET=0.0),
        FCOS=dict(
            NUM_CLASSES=1,
            CENTERNESS_ON_REG=True,
            NORM_REG_TARGETS=True,
            NMS_THRESH_TEST=0.6,
            BBOX_REG_WEIGHTS=(1.0, 1.0, 1.0, 1.0),
            FOCAL_LOSS_GAMMA=2.0,
            FOCAL_LOSS_ALPHA=0.25,
            IOU_LOSS_TYPE="giou",
            CENTER_SAMPLING_RADIUS=1.5,
            REG_WEIGHT=1.0,
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
            BASE_LR=0.01,
        ),
        IMS_PER_BATCH=16,
        IMS_PER_DEVICE=2,
        CHECKPOINT_PERIOD=5000,
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


class CustomFCOSConfig(FCOSConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomFCOSConfig()
