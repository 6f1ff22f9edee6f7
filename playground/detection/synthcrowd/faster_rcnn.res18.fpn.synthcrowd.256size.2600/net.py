"""Model of this experiment: Faster R-CNN on ResNet-FPN P2-P6 (RPN on P2-P6, ROI heads on
P2-P5), ignore-aware."""
from crowdloss.modeling.backbone import build_resnet_fpn_backbone
from crowdloss.modeling.meta_arch import GeneralizedRCNN


def build_model(cfg):
    cfg.build_backbone = build_resnet_fpn_backbone
    return GeneralizedRCNN.from_config(cfg)
