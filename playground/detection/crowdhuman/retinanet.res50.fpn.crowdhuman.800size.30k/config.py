"""RetinaNet R-50-FPN on CrowdHuman, 30k schedule (9 anchors, pedestrian h/w ratios).

cvpods-style experiment config: the dict below is merged over ``RetinaNetConfig``'s defaults.
"""
from crowdloss.config import RetinaNetConfig

_config_dict = dict(
    MODEL=dict(
        WEIGHTS="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        RESNETS=dict(DEPTH=50),
        ANCHOR_GENERATOR=dict(
            # 3 octave scales x pedestrian aspect ratios h / w = 1, 2, 3.
            SIZES=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)]
                   for x in [32, 64, 128, 256, 512]],
            ASPECT_RATIOS=[[1.0, 2.0, 3.0]],
        ),
        RETINANET=dict(
            NUM_CLASSES=1,
            NMS_THRESH_TEST=0.6,
            BBOX_REG_WEIGHTS=(1.0, 1.0, 1.0, 1.0),
            FOCAL_LOSS_GAMMA=2.0,
            FOCAL_LOSS_ALPHA=0.25,
            IOU_THRESHOLDS=[0.4, 0.5],
            IOU_LABELS=[0, -1, 1],
            ALLOW_LOW_QUALITY_MATCHES=True,
            IGNORE_IOA_THRESH=0.5,
            SMOOTH_L1_LOSS_BETA=0.1,
            BBOX_REG_LOSS_TYPE="smooth_l1",
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


class CustomRetinaNetConfig(RetinaNetConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomRetinaNetConfig()
