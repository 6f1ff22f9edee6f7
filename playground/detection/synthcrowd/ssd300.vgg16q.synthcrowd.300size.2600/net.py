"""Model of this experiment: SSD on the reduced-fc VGG16."""
from crowdloss.modeling.backbone import build_ssd_vgg_backbone
from crowdloss.modeling.meta_arch import SSD


def build_model(cfg):
    cfg.build_backbone = build_ssd_vgg_backbone
    return SSD.from_config(cfg)
