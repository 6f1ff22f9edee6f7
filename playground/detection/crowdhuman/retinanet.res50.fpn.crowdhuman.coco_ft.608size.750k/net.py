"""Model of this experiment: RetinaNet on ResNet-FPN P3-P7 (P6 from C5, as pytorch-retinanet)."""
from crowdloss.modeling.backbone import build_resnet_fpn_p7_backbone
from crowdloss.modeling.meta_arch import RetinaNet


def build_model(cfg):
    cfg.build_backbone = build_resnet_fpn_p7_backbone
    return RetinaNet.from_config(cfg)
