"""SSD512 (arXiv 1512.02325) on VOC07+12: the SSD authors' Caffe model, ssd.pytorch's losses.

ssd.pytorch has no SSD512 (its config is empty), so the geometry is the Caffe SSD512's
(``ssd_pascal_512.py`` of the authors' code): 512 x 512 input, seven sources (conv4_3, fc7,
conv6_2 ... conv10_2 of 64, 32, 16, 8, 4, 2, 1 cells), steps 8 ... 512, box sizes from 15% to
90% of the input in equal steps of 15% (76.8, 153.6, ..., 460.8 px, each level's max the next
level's min, the last 537.6) plus 7% / 15% (35.84 / 76.8 px) on conv4_3, aspect ratios
{2} on conv4_3 and the last two levels and {2, 3} elsewhere (24,564 boxes), boxes not clipped
to the image (Caffe ``clip: false``). Solver as the Caffe SSD512 and ssd.pytorch's SSD300:
batch 32, lr 1e-3 / 10 at 80k and 100k, 120k iterations.
"""
from crowdloss.config import SSDConfig, ssd_train_pipeline

_config_dict = dict(
    MODEL=dict(
        # ssd.pytorch's pretrained VGG16 (fc6 / fc7 reduced to atrous convs), Caffe's BGR input.
        WEIGHTS="https://s3.amazonaws.com/amdegroot-models/vgg16_reducedfc.pth",
        SSD=dict(
            NUM_CLASSES=20,
            IMAGE_SIZE=512,
            IN_FEATURES=["conv4_3", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2",
                         "conv10_2"],
            STEPS=[8, 16, 32, 64, 128, 256, 512],
            MIN_SIZES=[35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8],
            MAX_SIZES=[76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6],
            ASPECT_RATIOS=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
            CLIP_PRIORS=False,
        ),
    ),
    INPUT=dict(
        AUG=dict(
            TRAIN_PIPELINES=ssd_train_pipeline(512),
            TEST_PIPELINES=[("Resize", dict(height=512, width=512))],
        ),
    ),
    DATASETS=dict(
        TRAIN=("voc_2007_trainval", "voc_2012_trainval"),
        TEST=("voc_2007_test",),
    ),
    DATALOADER=dict(NUM_WORKERS=8),
    SOLVER=dict(
        LR_SCHEDULER=dict(MAX_ITER=120000, STEPS=(80000, 100000), WARMUP_ITERS=0),
        OPTIMIZER=dict(NAME="SGD", BASE_LR=1e-3, WEIGHT_DECAY=5e-4, MOMENTUM=0.9),
        # One process with batch 32, as SSD300 (see its config for other GPU counts).
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
