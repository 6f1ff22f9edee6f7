"""Backbones: ResNet/ResNeXt, FPN with P6/P7 or P6 max-pool, and pretrained-weight conversion."""
from .backbone import Backbone
from .fpn import (FPN, LastLevelMaxPool, LastLevelP6P7, build_resnet_fpn_backbone,
                  build_resnet_fpn_p7_backbone)
from .resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet, build_resnet_backbone

__all__ = [
    "Backbone",
    "BasicStem",
    "BasicBlock",
    "BottleneckBlock",
    "ResNet",
    "FPN",
    "LastLevelP6P7",
    "LastLevelMaxPool",
    "build_resnet_backbone",
    "build_resnet_fpn_p7_backbone",
    "build_resnet_fpn_backbone",
]
