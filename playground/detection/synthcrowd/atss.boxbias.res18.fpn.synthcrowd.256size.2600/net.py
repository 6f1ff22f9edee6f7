"""Model of this experiment: ATSS on ResNet-FPN P3-P7."""
from crowdloss.modeling.backbone import build_resnet_fpn_p7_backbone
from crowdloss.modeling.meta_arch import ATSS


def build_model(cfg):
    cfg.build_backbone = build_resnet_fpn_p7_backbone
    return ATSS.from_config(cfg)
