"""pytorch-retinanet's RetinaNet R-34-FPN fine-tuned on CrowdHuman from a COCO model: the
CrowdHuman seed's recipe, ``PyTorchRetinaNetCrowdHumanConfig`` (its network and test settings,
COCO's 80 classes + ``head``, CSV data built from the odgt, Adam at 1e-5 for 750k iterations of
batch 2, per-class AP next to the CrowdHuman metrics), at depth 34.
"""
import os

from crowdloss.config import PyTorchRetinaNetCrowdHumanConfig
from crowdloss.engine.weight_files import cache_dir

_config_dict = dict(
    MODEL=dict(
        # No public COCO model at depth 34: train one (playground/detection/coco at DEPTH 34,
        # or pytorch-retinanet's train.py --depth 34) and save its state dict here; or start
        # from ImageNet: MODEL.WEIGHTS <torchvision resnet34 .pth> (README.md).
        WEIGHTS=os.path.join(cache_dir(), "pytorch-retinanet",
                             "coco_resnet_34_state_dict.pt"),
        RESNETS=dict(DEPTH=34, RES2_OUT_CHANNELS=64),
    ),
)


class CustomRetinaNetConfig(PyTorchRetinaNetCrowdHumanConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomRetinaNetConfig()
