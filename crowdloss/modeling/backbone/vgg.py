"""VGG16 for SSD (arXiv 1512.02325): the reduced-fc trunk, conv4_3's L2 norm, the extra layers.

The trunk is VGG16 (arXiv 1409.1556, configuration D) turned fully convolutional as SSD does:

- conv1_1 ... conv5_3: 3x3 convs (padding 1) + ReLU; 2x2/2 max pools after conv1_2, conv2_2,
  conv3_3 (ceil mode, so a 75-pixel map becomes 38 at a 300 input) and conv4_3;
- pool5: 3x3, stride 1, padding 1 (keeps the resolution, unlike VGG's 2x2/2);
- fc6 -> 3x3 conv to 1024 channels with dilation 6 and padding 6; fc7 -> 1x1 conv to 1024
  (the "reduced", atrous fc layers of the pretrained ``vgg16_reducedfc`` weights);
- conv4_3_norm: the conv4_3 map (after its ReLU) divided by its L2 norm over channels (eps
  added after the square root) times a learned per-channel scale initialised to 20
  (ParseNet, arXiv 1506.04579), because conv4_3's activations are much larger than those of
  the later maps. The trunk continues from the un-normalised map.

Then the extra layers, pairs of (1x1 reduce + ReLU, 3x3 + ReLU), whose second conv is a source:

- SSD300: conv6_2 (512, stride 2), conv7_2 (256, stride 2), conv8_2 and conv9_2 (256, 3x3
  without padding): sources of 38, 19, 10, 5, 3, 1 cells for a 300 input;
- SSD512: conv6_2 (512, stride 2), conv7_2 ... conv9_2 (256, stride 2) and conv10_2 (256,
  4x4, padding 1): sources of 64, 32, 16, 8, 4, 2, 1 cells for a 512 input (the Caffe SSD512
  model, ``ssd_pascal_512.py`` of the SSD authors' code; ssd.pytorch has no SSD512).

Layer names are the SSD authors' Caffe names (conv4_3, fc7, conv6_2, ...), so the converters
in ``ssd_weights.py`` only rename.

Shape vocabulary: N images, C channels, S the square input side (300 / 512).
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from crowdloss.config.access import cfg_get
from crowdloss.modeling.layers import Conv2d, c2_msra_fill, get_norm
from crowdloss.structures import ShapeSpec

from .backbone import Backbone

__all__ = ["L2Norm", "SSDVGG", "SSD_EXTRAS", "VGG16_LAYERS", "build_ssd_vgg_backbone"]

# VGG16 "D" up to conv5_3: (name, channels) of each conv, "M" a 2x2/2 pool, "C" the same pool
# in ceil mode (pool3). fc6 / fc7 and pool5 follow.
VGG16_LAYERS: Tuple = (
    ("conv1_1", 64), ("conv1_2", 64), "M",
    ("conv2_1", 128), ("conv2_2", 128), "M",
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), "C",
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), "M",
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512),
)

# (name, out_channels, kernel, stride, padding) of every extra conv; each "*_2" is a source.
SSD_EXTRAS: Dict[int, Tuple] = {
    300: (("conv6_1", 256, 1, 1, 0), ("conv6_2", 512, 3, 2, 1),
          ("conv7_1", 128, 1, 1, 0), ("conv7_2", 256, 3, 2, 1),
          ("conv8_1", 128, 1, 1, 0), ("conv8_2", 256, 3, 1, 0),
          ("conv9_1", 128, 1, 1, 0), ("conv9_2", 256, 3, 1, 0)),
    512: (("conv6_1", 256, 1, 1, 0), ("conv6_2", 512, 3, 2, 1),
          ("conv7_1", 128, 1, 1, 0), ("conv7_2", 256, 3, 2, 1),
          ("conv8_1", 128, 1, 1, 0), ("conv8_2", 256, 3, 2, 1),
          ("conv9_1", 128, 1, 1, 0), ("conv9_2", 256, 3, 2, 1),
          ("conv10_1", 128, 1, 1, 0), ("conv10_2", 256, 4, 1, 1)),
}


class L2Norm(nn.Module):
    """x / (||x||_2 over channels + eps) x a learned per-channel scale (ParseNet).

    Args:
        channels: C.
        scale: initial value of every channel's scale (20 in SSD).
        eps: added to the norm after the square root (1e-10, ssd.pytorch's value).
    """

    def __init__(self, channels: int, *, scale: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


class SSDVGG(Backbone):
    """VGG16 trunk + L2Norm on conv4_3 + SSD's extra layers (see the module docstring).

    Args:
        image_size: 300 or 512: which extra layers (SSD300 / SSD512) are built; the reported
            strides are those of a square input of this side.
        in_channels: input channels (3).
        l2norm_scale: initial scale of conv4_3_norm.
        norm: normalisation after every conv of the trunk, fc6 and fc7 included ("" = none,
            as the reference; "BN" / "GN" for models trained from scratch). The extra layers
            never get one: their last maps hold 1-3 cells, too few for batch statistics.
        width_factor: multiplies every channel count (1.0 = VGG16; small values give narrow
            CPU models, which no pretrained weights fit).
    """

    def __init__(self, *, image_size: int = 300, in_channels: int = 3,
                 l2norm_scale: float = 20.0, norm: str = "", width_factor: float = 1.0):
        super().__init__()
        if image_size not in SSD_EXTRAS:
            raise ValueError(f"SSDVGG: image_size must be one of {sorted(SSD_EXTRAS)} (the "
                             f"SSD300 / SSD512 extra layers), got {image_size}")
        if not 0 < width_factor <= 4:
            raise ValueError(f"SSDVGG: width_factor must be in (0, 4], got {width_factor}")
        self.image_size = int(image_size)

        def width(c: int) -> int:
            return max(1, int(round(c * width_factor)))

        def conv(cin, cout, k, stride=1, padding=1, dilation=1, norm=norm):
            return Conv2d(cin, cout, kernel_size=k, stride=stride, padding=padding,
                          dilation=dilation, bias=not norm, norm=get_norm(norm, cout),
                          activation=F.relu_)

        self._trunk: List[str] = []  # conv names and pool markers, in order
        channels = in_channels
        for item in VGG16_LAYERS:
            if isinstance(item, str):
                self._trunk.append(item)
                continue
            name, cout = item
            self.add_module(name, conv(channels, width(cout), 3))
            c2_msra_fill(getattr(self, name))  # from-scratch init; pretrained files replace it
            self._trunk.append(name)
            channels = width(cout)
        conv4_3_channels = width(512)
        self.conv4_3_norm = L2Norm(conv4_3_channels, scale=l2norm_scale)
        self.fc6 = conv(channels, width(1024), 3, padding=6, dilation=6)
        self.fc7 = conv(width(1024), width(1024), 1, padding=0)
        for layer in (self.fc6, self.fc7):
            c2_msra_fill(layer)
        channels = width(1024)

        self._extras: List[str] = []
        out_channels = {"conv4_3": conv4_3_channels, "fc7": channels}
        for name, cout, k, stride, pad in SSD_EXTRAS[self.image_size]:
            # No norm on the extras: their last maps are 1-3 cells, too few for batch statistics.
            layer = conv(channels, width(cout), k, stride=stride, padding=pad, norm="")
            # Xavier-uniform weights and zero biases, as ssd.pytorch initialises its extras.
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
            self.add_module(name, layer)
            self._extras.append(name)
            channels = width(cout)
            if name.endswith("_2"):
                out_channels[name] = channels

        self._out_features = list(out_channels)
        self._out_feature_channels = out_channels
        sizes = self.feature_sizes(self.image_size)
        # The real sampling ratio of each source for a square input of image_size (300 / 38
        # rounds to 8, 300 / 10 to 30); the default boxes use their own steps (MODEL.SSD.STEPS).
        self._out_feature_strides = {k: int(round(self.image_size / s)) for k, s in sizes.items()}

    def feature_sizes(self, side: int) -> Dict[str, int]:
        """Side of every source map for a square ``side`` x ``side`` input (no forward pass)."""
        x = side
        for item in self._trunk[: self._trunk.index("conv4_3")]:
            if item == "M":
                x = x // 2
            elif item == "C":
                x = math.ceil(x / 2)
        sizes = {"conv4_3": x}
        # pool4 halves it; pool5 (3x3/1/1), fc6 (dilated and padded alike) and fc7 keep it.
        x = x // 2
        sizes["fc7"] = x
        for name, _, k, stride, pad in SSD_EXTRAS[self.image_size]:
            x = (x + 2 * pad - k) // stride + 1
            if name.endswith("_2"):
                sizes[name] = x
        return sizes


    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs: Dict[str, torch.Tensor] = {}
        for item in self._trunk:
            if item == "M":
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            elif item == "C":
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
            else:
                x = getattr(self, item)(x)
                if item == "conv4_3":
                    outputs["conv4_3"] = self.conv4_3_norm(x)
        x = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)  # pool5
        x = self.fc7(self.fc6(x))
        outputs["fc7"] = x
        for name in self._extras:
            x = getattr(self, name)(x)
            if name in self._out_feature_channels:
                outputs[name] = x
        return outputs


def build_ssd_vgg_backbone(cfg, input_shape: ShapeSpec) -> SSDVGG:
    """``SSDVGG`` from ``MODEL.SSD.IMAGE_SIZE`` and ``MODEL.VGG.{L2NORM_SCALE, NORM,
    WIDTH_FACTOR}`` (SSDConfig). The whole network trains (no frozen stages, as ssd.pytorch);
    ``MODEL.BACKBONE.FREEZE_AT`` is not read."""
    return SSDVGG(
        image_size=int(cfg_get(cfg, "MODEL.SSD.IMAGE_SIZE")),
        in_channels=input_shape.channels or 3,
        l2norm_scale=float(cfg_get(cfg, "MODEL.VGG.L2NORM_SCALE")),
        norm=cfg_get(cfg, "MODEL.VGG.NORM"),
        width_factor=float(cfg_get(cfg, "MODEL.VGG.WIDTH_FACTOR")),
    )
