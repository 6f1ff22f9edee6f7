"""pytorch-retinanet's RetinaNet R-50-FPN fine-tuned on CrowdHuman from a COCO model: the
CrowdHuman seed's recipe, ``PyTorchRetinaNetCrowdHumanConfig`` (its network and test settings,
COCO's 80 classes + ``head``, CSV data built from the odgt, Adam at 1e-5 for 750k iterations of
batch 2, per-class AP next to the CrowdHuman metrics), at depth 50.
"""
import os

from crowdloss.config import PyTorchRetinaNetCrowdHumanConfig
from crowdloss.engine.weight_files import cache_dir

_config_dict = dict(
    MODEL=dict(
        # pytorch-retinanet's COCO model (33.5 COCO AP; the "Pre-trained model" link of
        # github.com/yhenon/pytorch-retinanet), put here by hand: it has no stable URL.
        WEIGHTS=os.path.join(cache_dir(), "pytorch-retinanet",
                             "coco_resnet_50_map_0_335_state_dict.pt"),
        RESNETS=dict(DEPTH=50),
    ),
)


class CustomRetinaNetConfig(PyTorchRetinaNetCrowdHumanConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomRetinaNetConfig()
