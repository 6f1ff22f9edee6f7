"""RetinaNet + AP Loss (arXiv 1904.06373), ResNet-101-FPN on COCO: 800 px
SSD-style training, 800 px test, 100 epochs (16 images per iteration).

The public aLRP Loss code's ``APLoss800_r101`` setting as an iteration schedule (see README.md).
"""
from crowdloss.config import RetinaNetConfig, coco_ranking_config

# The public values (anchors, matching, augmentation, warm-up, batch per GPU, test settings)
# are in coco_ranking_config; this setting's own are these.
_config_dict = coco_ranking_config(loss="ap", size=800, backbone="r101", epochs=100,
                                   lr_steps=(60, 80), base_lr=0.001)


class CustomRetinaNetConfig(RetinaNetConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomRetinaNetConfig()
