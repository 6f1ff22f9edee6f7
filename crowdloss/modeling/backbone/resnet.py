"""ResNet / ResNeXt backbones (arXiv 1512.03385, 1611.05431) with detectron2/cvpods names.

Parameter names match the published detectron2/cvpods checkpoints (``stem.conv1.weight``,
``stem.conv1.norm.weight``, ``res2.0.conv1.weight``, ``res2.0.shortcut.norm.bias``, ...), so
those load directly; MSRA Caffe2 and torchvision weights go through ``weights.py`` first.

Shapes: N images, C channels; the stem has stride 4, res2..res5 strides 4, 8, 16, 32
(res5 stride 16 with ``res5_dilation=2``).
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from crowdloss.modeling.layers import Conv2d, c2_msra_fill, convert_frozen_batchnorm, get_norm
from crowdloss.structures import ShapeSpec

from crowdloss.config.access import cfg_get

from .backbone import Backbone

__all__ = ["BasicStem", "BasicBlock", "BottleneckBlock", "ResNet", "build_resnet_backbone"]

# Blocks per stage res2..res5 for each depth (arXiv 1512.03385, Table 1).
_BLOCKS_PER_DEPTH = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                     152: (3, 8, 36, 3)}
_STAGE_NAMES = ("res2", "res3", "res4", "res5")


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str):
    # Projection only where the identity cannot be added (channel or resolution change);
    # this is where both MSRA ("branch1") and torchvision ("downsample") checkpoints have one.
    if in_channels == out_channels and stride == 1:
        return None
    return Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                  norm=get_norm(norm, out_channels))


class BasicStem(nn.Module):
    """conv7x7/2 + norm + ReLU + maxpool3x3/2: stride 4."""

    def __init__(self, *, in_channels: int = 3, out_channels: int = 64, norm: str = "BN"):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, 4
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3,
                            bias=False, norm=get_norm(norm, out_channels))
        c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); the stride sits on the first one."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int = 1,
                 norm: str = "BN"):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1,
                            bias=False, norm=get_norm(norm, out_channels))
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False,
                            norm=get_norm(norm, out_channels))
        for conv in (self.shortcut, self.conv1, self.conv2):
            if conv is not None:
                c2_msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand (ResNet-50+).

    Args:
        stride_in_1x1: put the stride on the first 1x1 conv (MSRA / Caffe2 weights) instead
            of the 3x3 conv (torchvision weights). The weights fit either way, but a
            checkpoint only gives its accuracy with the placement it was trained with.
        dilation: dilation of the 3x3 conv (res5 dilation 2 keeps stride 16).
    """

    def __init__(self, *, in_channels: int, out_channels: int, bottleneck_channels: int,
                 stride: int = 1, num_groups: int = 1, norm: str = "BN",
                 stride_in_1x1: bool = False, dilation: int = 1):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1,
                            bias=False, norm=get_norm(norm, bottleneck_channels))
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, kernel_size=3,
                            stride=stride_3x3, padding=dilation, dilation=dilation,
                            groups=num_groups, bias=False,
                            norm=get_norm(norm, bottleneck_channels))
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, out_channels))
        for conv in (self.shortcut, self.conv1, self.conv2, self.conv3):
            if conv is not None:
                c2_msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


class ResNet(Backbone):
    """ResNet-18/34/50/101/152 and ResNeXt (``num_groups`` > 1) as a ``Backbone``.

    Only the stages up to the deepest requested output are built (and so only their weights
    are expected in a checkpoint).

    Args:
        depth: 18, 34 (BasicBlock) or 50, 101, 152 (BottleneckBlock).
        in_channels: input image channels.
        out_features: subset of "stem", "res2", "res3", "res4", "res5".
        num_groups: ResNeXt cardinality (32 for X-101-32x8d).
        width_per_group: bottleneck width per group in res2 (64 for ResNet, 8 for 32x8d).
        stem_out_channels: stem width (64 standard; smaller for CPU demos).
        res2_out_channels: res2 output width (256 for Bottleneck, = stem width for Basic);
            each later stage doubles it.
        stride_in_1x1: see ``BottleneckBlock``.
        res5_dilation: 1, or 2 for a stride-16 res5.
        norm: "FrozenBN", "BN", "SyncBN", "GN" or "".
        freeze_at: 0 trains everything, 1 freezes the stem, k >= 2 the stem and res2..res{k}.
            Frozen = ``requires_grad`` False and BatchNorms converted to FrozenBatchNorm2d.
    """

    def __init__(self, *, depth: int = 50, in_channels: int = 3,
                 out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
                 num_groups: int = 1, width_per_group: int = 64, stem_out_channels: int = 64,
                 res2_out_channels: int = 256, stride_in_1x1: bool = True,
                 res5_dilation: int = 1, norm: str = "FrozenBN", freeze_at: int = 0):
        super().__init__()
        if depth not in _BLOCKS_PER_DEPTH:
            raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(_BLOCKS_PER_DEPTH)}, "
                             f"got {depth!r}")
        valid = ("stem",) + _STAGE_NAMES
        out_features = list(out_features)
        bad = [f for f in out_features if f not in valid]
        if bad or not out_features:
            raise ValueError(f"MODEL.RESNETS.OUT_FEATURES must be a non-empty subset of "
                             f"{list(valid)}, got {out_features!r}")
        if res5_dilation not in (1, 2):
            raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {res5_dilation!r}")
        basic = depth in (18, 34)
        if basic:
            if num_groups != 1:
                raise ValueError(f"ResNet-{depth} (BasicBlock) has no grouped convs; "
                                 f"MODEL.RESNETS.NUM_GROUPS must be 1, got {num_groups}")
            if res2_out_channels != stem_out_channels:
                raise ValueError(
                    f"ResNet-{depth} (BasicBlock) needs MODEL.RESNETS.RES2_OUT_CHANNELS == "
                    f"STEM_OUT_CHANNELS (64 for standard weights), got {res2_out_channels} and "
                    f"{stem_out_channels}")
            if res5_dilation != 1:
                raise ValueError(f"ResNet-{depth} (BasicBlock) does not support "
                                 f"MODEL.RESNETS.RES5_DILATION {res5_dilation}")

        self.stem = BasicStem(in_channels=in_channels, out_channels=stem_out_channels, norm=norm)
        self._out_feature_channels["stem"] = stem_out_channels
        self._out_feature_strides["stem"] = self.stem.stride

        last_stage = max(valid.index(f) for f in out_features)  # 0 = stem, 4 = res5
        self.stage_names = list(_STAGE_NAMES[:last_stage])
        in_ch, stride_total = stem_out_channels, self.stem.stride
        out_ch = res2_out_channels
        bottleneck_ch = num_groups * width_per_group
        for idx, name in enumerate(self.stage_names):
            dilation = res5_dilation if name == "res5" else 1
            first_stride = 1 if idx == 0 or dilation > 1 else 2
            blocks = []
            for b in range(_BLOCKS_PER_DEPTH[depth][idx]):
                stride = first_stride if b == 0 else 1
                if basic:
                    block = BasicBlock(in_channels=in_ch, out_channels=out_ch, stride=stride,
                                       norm=norm)
                else:
                    block = BottleneckBlock(
                        in_channels=in_ch, out_channels=out_ch,
                        bottleneck_channels=bottleneck_ch, stride=stride,
                        num_groups=num_groups, norm=norm, stride_in_1x1=stride_in_1x1,
                        dilation=dilation)
                blocks.append(block)
                in_ch = out_ch
            stride_total *= first_stride
            self.add_module(name, nn.Sequential(*blocks))
            self._out_feature_channels[name] = out_ch
            self._out_feature_strides[name] = stride_total
            out_ch *= 2
            bottleneck_ch *= 2

        # Keep the declared order stem, res2, ... whatever order the config lists them in.
        self._out_features = [f for f in valid if f in out_features]
        self._out_feature_channels = {f: self._out_feature_channels[f] for f in self._out_features}
        self._out_feature_strides = {f: self._out_feature_strides[f] for f in self._out_features}
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int = 0) -> "ResNet":
        """Freeze the stem (``freeze_at`` >= 1) and res2..res{freeze_at} (see class doc)."""
        if freeze_at < 0:
            raise ValueError(f"MODEL.BACKBONE.FREEZE_AT must be >= 0, got {freeze_at}")
        modules = [self.stem] + [getattr(self, n) for n in self.stage_names]
        for module in modules[:freeze_at]:
            for p in module.parameters():
                p.requires_grad_(False)
            convert_frozen_batchnorm(module)
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.stem.in_channels:
            raise ValueError(f"ResNet takes (N, {self.stem.in_channels}, H, W) input, got "
                             f"{tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


def build_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """ResNet from ``MODEL.RESNETS.*`` and ``MODEL.BACKBONE.FREEZE_AT`` (cvpods keys; defaults
    in ``BaseDetectionConfig``)."""
    r = "MODEL.RESNETS."
    in_channels = input_shape.channels if input_shape.channels is not None else 3
    return ResNet(
        depth=int(cfg_get(cfg, r + "DEPTH")),
        in_channels=in_channels,
        out_features=cfg_get(cfg, r + "OUT_FEATURES"),
        num_groups=int(cfg_get(cfg, r + "NUM_GROUPS")),
        width_per_group=int(cfg_get(cfg, r + "WIDTH_PER_GROUP")),
        stem_out_channels=int(cfg_get(cfg, r + "STEM_OUT_CHANNELS")),
        res2_out_channels=int(cfg_get(cfg, r + "RES2_OUT_CHANNELS")),
        stride_in_1x1=bool(cfg_get(cfg, r + "STRIDE_IN_1X1")),
        res5_dilation=int(cfg_get(cfg, r + "RES5_DILATION")),
        norm=cfg_get(cfg, r + "NORM"),
        freeze_at=int(cfg_get(cfg, "MODEL.BACKBONE.FREEZE_AT")),
    )
