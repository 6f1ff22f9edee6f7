"""SSD512 + RepGT + RepBox (arXiv 1512.02325, 1711.07752) on CrowdHuman full-body boxes.

The VOC SSD512 (Caffe geometry, ssd.pytorch's losses and schedule) with one class and the full
Repulsion Loss (0.5 RepGT sigma 1.0 + 0.5 RepBox sigma 0.0). CrowdHuman train (15,000 images)
is about the size of VOC07+12 trainval (16,551), so the 120k-iteration schedule gives about the
same number of epochs. Crowd-specific choices: the zoom-in crop accepts a patch when ANY person
overlaps it enough (the Caffe sampler's rule; "every person" rarely holds in a crowd), ignore
regions exclude the boxes they cover from the negatives, 1000 candidates before NMS, NMS 0.6
and 300 detections per image as every CrowdHuman experiment here. The default boxes are the
VOC ones, not tuned for pedestrians.
"""
from crowdloss.config import SSDConfig, ssd_train_pipeline

_config_dict = dict(
    MODEL=dict(
        # ssd.pytorch's pretrained VGG16 (fc6 / fc7 reduced to atrous convs), Caffe's BGR input.
        WEIGHTS="https://s3.amazonaws.com/amdegroot-models/vgg16_reducedfc.pth",
        SSD=dict(
            NUM_CLASSES=1,
            IMAGE_SIZE=512,
            IN_FEATURES=["conv4_3", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2",
                         "conv10_2"],
            STEPS=[8, 16, 32, 64, 128, 256, 512],
            MIN_SIZES=[35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8],
            MAX_SIZES=[76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6],
            ASPECT_RATIOS=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
            CLIP_PRIORS=False,
            IGNORE_IOA_THRESH=0.5,
            TOPK_CANDIDATES_TEST=1000,
            NMS_THRESH_TEST=0.6,
        ),
        REPULSION=dict(REPGT=dict(ENABLED=True, WEIGHT=0.5, SIGMA=1.0),
                       REPBOX=dict(ENABLED=True, WEIGHT=0.5, SIGMA=0.0)),
    ),
    INPUT=dict(
        AUG=dict(
            TRAIN_PIPELINES=ssd_train_pipeline(512, iou_rule="any"),
            TEST_PIPELINES=[("Resize", dict(height=512, width=512))],
        ),
    ),
    DATASETS=dict(
        TRAIN=("crowdhuman_train",),
        TEST=("crowdhuman_val",),
    ),
    DATALOADER=dict(NUM_WORKERS=8),
    SOLVER=dict(
        LR_SCHEDULER=dict(MAX_ITER=120000, STEPS=(80000, 100000), WARMUP_ITERS=0),
        OPTIMIZER=dict(NAME="SGD", BASE_LR=1e-3, WEIGHT_DECAY=5e-4, MOMENTUM=0.9),
        IMS_PER_BATCH=32,
        IMS_PER_DEVICE=32,
        REFERENCE_WORLD_SIZE=1,
        CHECKPOINT_PERIOD=5000,
    ),
    TEST=dict(EVAL_PERIOD=0, DETECTIONS_PER_IMAGE=300),
)


class CustomSSDConfig(SSDConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomSSDConfig()
