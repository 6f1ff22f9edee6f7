"""RetinaNet + aLRP Loss (arXiv 2009.13592), ResNet-101-FPN on COCO: 512 px
SSD-style training, 500 px test, 160 epochs (32 images per iteration).

The public aLRP Loss code's ``aLRPLoss500_r101`` setting as an iteration schedule (see README.md).
"""
from crowdloss.config import RetinaNetConfig, coco_ranking_config

# The public values (anchors, matching, augmentation, warm-up, batch per GPU, test settings)
# are in coco_ranking_config; this setting's own are these.
_config_dict = coco_ranking_config(loss="alrp", size=500, backbone="r101", epochs=160,
                                   lr_steps=(90, 110, 140), base_lr=0.008)


class CustomRetinaNetConfig(RetinaNetConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomRetinaNetConfig()
