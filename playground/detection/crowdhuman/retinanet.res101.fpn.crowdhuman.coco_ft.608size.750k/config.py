"""pytorch-retinanet's RetinaNet R-101-FPN fine-tuned on CrowdHuman from a COCO model: the
CrowdHuman seed's recipe, ``PyTorchRetinaNetCrowdHumanConfig`` (its network and test settings,
COCO's 80 classes + ``head``, CSV data built from the odgt, Adam at 1e-5 for 750k iterations of
batch 2, per-class AP next to the CrowdHuman metrics), at depth 101.
"""
import os

from crowdloss.config import PyTorchRetinaNetCrowdHumanConfig
from crowdloss.engine.weight_files import cache_dir

_config_dict = dict(
    MODEL=dict(
        # No public COCO model at depth 101: train one (playground/detection/coco at DEPTH 101,
        # or pytorch-retinanet's train.py --depth 101) and save its state dict here; or start
        # from ImageNet: MODEL.WEIGHTS <torchvision resnet101 .pth> (README.md).
        WEIGHTS=os.path.join(cache_dir(), "pytorch-retinanet",
                             "coco_resnet_101_state_dict.pt"),
        RESNETS=dict(DEPTH=101),
    ),
)


class CustomRetinaNetConfig(PyTorchRetinaNetCrowdHumanConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomRetinaNetConfig()
