"""pytorch-retinanet's RetinaNet R-50-FPN trained on COCO 2017 from ImageNet (its train.py
--dataset coco --depth 50), the model the CrowdHuman seed fine-tunes.

``PyTorchRetinaNetConfig`` gives its network, input (608 / 1024, RGB, ImageNet mean / std),
test post-processing and optimiser (Adam 1e-5, gradient norm 0.1, batch 2, constant lr). The
backbone starts from the torchvision ImageNet ResNet-50 pytorch-retinanet downloads. Length:
pytorch-retinanet's train.py defaults to 100 epochs (5.9M iterations at batch 2) and does
not say how long its 33.5 AP model trained; 720k iterations = 12 epochs of 118k images, the
images a standard 1x schedule sees (90k x 16), is what this experiment runs. Evaluated as its
coco_validation.py does (COCO AP, 100 detections per image).
"""
from crowdloss.config import PyTorchRetinaNetConfig

_config_dict = dict(
    MODEL=dict(
        # pytorch-retinanet's model_urls["resnet50"] (torchvision's ImageNet weights).
        WEIGHTS="https://download.pytorch.org/models/resnet50-19c8e357.pth",
        RESNETS=dict(DEPTH=50),
        RETINANET=dict(NUM_CLASSES=80),
    ),
    DATASETS=dict(
        TRAIN=("coco_2017_train",),
        TEST=("coco_2017_val",),
    ),
    SOLVER=dict(
        LR_SCHEDULER=dict(MAX_ITER=720000),
        CHECKPOINT_PERIOD=60000,
    ),
    TEST=dict(
        EVAL_PERIOD=0,  # evaluate once, after training
        DETECTIONS_PER_IMAGE=100,
    ),
)


class CustomRetinaNetConfig(PyTorchRetinaNetConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomRetinaNetConfig()
