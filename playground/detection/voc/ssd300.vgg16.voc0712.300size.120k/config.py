"""SSD300 (arXiv 1512.02325) on VOC07+12, ssd.pytorch's recipe: the Repulsion-SSD seed's base.

VGG16 from ssd.pytorch's ``vgg16_reducedfc.pth``; 8,732 default boxes (ssd.pytorch's VOC
sizes); IoU 0.5 + best-box matching; 3:1 hard negatives; smooth L1 on (0.1, 0.2)-variance
offsets; SSD augmentation at 300 x 300; batch 32, lr 1e-3 (/10 after 80k and 100k), 120k
iterations, momentum 0.9, weight decay 5e-4, no warmup (ssd.pytorch's train.py has none).
Evaluated on VOC2007 test (11-point VOC07 mAP and the seed's "crowd" subset).
"""
from crowdloss.config import SSDConfig

_config_dict = dict(
    MODEL=dict(
        # ssd.pytorch's pretrained VGG16 (fc6 / fc7 reduced to atrous convs), Caffe's BGR input.
        WEIGHTS="https://s3.amazonaws.com/amdegroot-models/vgg16_reducedfc.pth",
        SSD=dict(NUM_CLASSES=20),
    ),
    DATASETS=dict(
        TRAIN=("voc_2007_trainval", "voc_2012_trainval"),
        TEST=("voc_2007_test",),
    ),
    # 32 images of photometric distortion + crops per step: enough workers to feed one GPU.
    DATALOADER=dict(NUM_WORKERS=8),
    SOLVER=dict(
        LR_SCHEDULER=dict(MAX_ITER=120000, STEPS=(80000, 100000), WARMUP_ITERS=0),
        OPTIMIZER=dict(NAME="SGD", BASE_LR=1e-3, WEIGHT_DECAY=5e-4, MOMENTUM=0.9),
        # The seed trains on ONE process with batch 32 (the schedule is written for that);
        # on N processes the launch keeps 32 per process and scales lr / iterations by N
        # (crowdloss.config.rescale). To keep the seed's batch 32 on 8 GPUs instead, pass
        # SOLVER.IMS_PER_DEVICE 4 SOLVER.REFERENCE_WORLD_SIZE 8.
        IMS_PER_BATCH=32,
        IMS_PER_DEVICE=32,
        REFERENCE_WORLD_SIZE=1,
        CHECKPOINT_PERIOD=5000,
    ),
    TEST=dict(EVAL_PERIOD=0, DETECTIONS_PER_IMAGE=200),
)


class CustomSSDConfig(SSDConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomSSDConfig()
