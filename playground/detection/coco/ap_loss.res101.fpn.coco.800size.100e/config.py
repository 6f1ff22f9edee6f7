"""RetinaNet + AP Loss (arXiv 1904.06373), ResNet-101-FPN on COCO: 800 px
SSD-style training, 800 px test, 100 epochs (16 images per iteration).

The public aLRP Loss code's ``APLoss800_r101`` setting as an iteration schedule (see README.md).
"""
from crowdloss.config import RetinaNetConfig

# Iterations per COCO train2017 epoch: 117266 images with boxes / 16 images per iteration.
_EPOCH = 7330
_MEAN = (103.530, 116.280, 123.675)  # MODEL.PIXEL_MEAN, in INPUT.FORMAT order: the fill of Expand

_config_dict = dict(
    MODEL=dict(
        # MSRA (Caffe) ImageNet ResNet-101, BGR with std 1: the weights the public code takes
        # from the AP Loss release, converted from the same MSRA model.
        WEIGHTS="detectron2://ImageNetPretrained/MSRA/R-101.pkl",
        RESNETS=dict(DEPTH=101),
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
            # The public code drops COCO crowd boxes: anchors on them are negatives, not ignored.
            IGNORE_IOA_THRESH=1.0,
            # Deltas scaled as the public code's stds (0.1, 0.1, 0.2, 0.2).
            BBOX_REG_WEIGHTS=(10.0, 10.0, 5.0, 5.0),
            # Public inference: top 1000 per level above 0.01, class-wise NMS 0.5, 100 kept.
            SCORE_THRESH_TEST=0.01,
            TOPK_CANDIDATES_TEST=1000,
            NMS_THRESH_TEST=0.5,
        ),
        APLOSS=dict(DELTA=1.0, SMOOTH_L1_BETA=1.0, REG_WEIGHT=1.0),
    ),
    DATASETS=dict(
        TRAIN=("coco_2017_train",),
        # minival; DATASETS.TEST "('coco_2017_test-dev',)" writes the server submission.
        TEST=("coco_2017_val",),
    ),
    SOLVER=dict(
        LR_SCHEDULER=dict(
            MAX_ITER=100 * _EPOCH,
            STEPS=(60 * _EPOCH, 80 * _EPOCH),
            # Linear warmup from 1/3 of the LR over 500 iterations.
            WARMUP_FACTOR=1.0 / 3,
            WARMUP_ITERS=500,
            WARMUP_METHOD="linear",
            GAMMA=0.1,
        ),
        OPTIMIZER=dict(BASE_LR=0.001, MOMENTUM=0.9, WEIGHT_DECAY=1e-4),
        # 4 images on each of 4 GPUs: the ranking runs over each process's 4 images.
        IMS_PER_BATCH=16,
        IMS_PER_DEVICE=4,
        REFERENCE_WORLD_SIZE=4,
        CHECKPOINT_PERIOD=10 * _EPOCH,
    ),
    INPUT=dict(
        FORMAT="BGR",
        AUG=dict(
            # The public "SSD_Style" augmentation, then a square 800 x 800 resize.
            TRAIN_PIPELINES=[
                ("PhotometricDistort", dict(brightness_delta=32, contrast_range=(0.5, 1.5),
                                            saturation_range=(0.5, 1.5), hue_delta=18,
                                            prob=0.5, channel_swap_prob=0.0,
                                            image_format="BGR")),
                ("LightingNoise", dict(std=0.1, prob=0.5, image_format="BGR")),
                ("Expand", dict(mean=_MEAN, ratio_range=(1.0, 4.0), prob=0.5)),
                # Its crop modes: whole image, any patch, or a patch overlapping SOME object
                # by IoU >= 0.1 / 0.3 / 0.7 / 0.9.
                ("MinIoURandomCrop", dict(min_ious=(0.1, 0.3, 0.7, 0.9), iou_rule="any",
                                          min_crop_size=0.3, aspect_ratio_range=(0.5, 2.0),
                                          max_trials=50)),
                ("RandomFlip", dict(prob=0.5)),
                # Interpolation drawn per image: cv2 linear, area, nearest, cubic, Lanczos4.
                ("Resize", dict(height=800, width=800, interp=(1, 3, 0, 2, 4))),
            ],
            TEST_PIPELINES=[
                ("ResizeShortestEdge",
                 dict(short_edge_length=800, max_size=1333, sample_style="choice")),
            ],
        ),
    ),
    TEST=dict(
        EVAL_PERIOD=0,  # evaluate once, after training
        DETECTIONS_PER_IMAGE=100,
        # detections_test-dev2017_APLoss_results.json on coco_2017_test-dev
        COCO_SUBMISSION_NAME="APLoss",
    ),
)


class CustomRetinaNetConfig(RetinaNetConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomRetinaNetConfig()
