"""Backbones: ResNet/ResNeXt, FPN with P6/P7 or P6 max-pool, SSD's VGG16, and pretrained-weight
conversion."""
from .backbone import Backbone
from .fpn import (FPN, LastLevelMaxPool, LastLevelP6P7, build_resnet_fpn_backbone,
                  build_resnet_fpn_p7_backbone)
from .resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet, build_resnet_backbone
from .vgg import L2Norm, SSDVGG, build_ssd_vgg_backbone

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
    "L2Norm",
    "SSDVGG",
    "build_ssd_vgg_backbone",
    "build_resnet_fpn_backbone",
]
