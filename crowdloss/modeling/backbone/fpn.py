"""Feature Pyramid Network (arXiv 1612.03144) with its two top blocks: the P6/P7 convs of
RetinaNet and FCOS, and the P6 max-pool of the original FPN (Faster R-CNN's RPN).

Parameter names follow detectron2/cvpods (``bottom_up.*``, ``fpn_lateral3``, ``fpn_output3``,
``top_block.p6``, ``top_block.p7``) so their checkpoints load directly.

Shapes: N images, C_out = ``out_channels``; level l (p2..p7) is (N, C_out, H_l, W_l) with
stride 2^l; P6/P7 are ceil-halvings of the previous level.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from crowdloss.modeling.layers import Conv2d, c2_xavier_fill, get_norm
from crowdloss.structures import ShapeSpec

from crowdloss.config.access import cfg_get

from .backbone import Backbone
from .resnet import build_resnet_backbone

__all__ = ["FPN", "LastLevelP6P7", "LastLevelMaxPool", "build_resnet_fpn_p7_backbone",
           "build_resnet_fpn_backbone"]


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2 on P5 or C5; P7 = conv3x3/2 on ReLU(P6) (RetinaNet, arXiv 1708.02002).

    Args:
        in_channels: channels of the input (FPN width for "p5", C5 width for "res5").
        out_channels: FPN width.
        in_feature: "p5" (FCOS / cvpods default) or "res5" (RetinaNet paper).
    """

    def __init__(self, *, in_channels: int, out_channels: int, in_feature: str = "p5"):
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            c2_xavier_fill(conv)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


class LastLevelMaxPool(nn.Module):
    """P6 = P5 subsampled by 2 (max-pool with a 1x1 window, stride 2): the extra level of the
    original FPN, on which Faster R-CNN's RPN places its largest anchors. No parameters; P6
    has ceil(H5 / 2) x ceil(W5 / 2) cells."""

    def __init__(self):
        super().__init__()
        self.num_levels = 1
        self.in_feature = "p5"

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class FPN(Backbone):
    """Top-down pathway with lateral connections over a bottom-up backbone.

    Args:
        bottom_up: backbone whose ``output_shape()`` holds ``in_features``.
        in_features: bottom-up feature names, finest first (e.g. res3, res4, res5); each
            stride must be twice the previous one.
        out_channels: width of every output level.
        norm: norm of the lateral and output convs ("" = none, convs then have a bias).
        top_block: extra coarser levels (``LastLevelP6P7``, ``LastLevelMaxPool``) or None.
        fuse_type: "sum" (lateral + upsampled) or "avg" (their mean).
    """

    def __init__(self, *, bottom_up: Backbone, in_features: Sequence[str], out_channels: int,
                 norm: str = "", top_block: Optional[nn.Module] = None,
                 fuse_type: str = "sum"):
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"MODEL.FPN.FUSE_TYPE must be 'sum' or 'avg', got {fuse_type!r}")
        in_features = list(in_features)
        shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if not in_features or missing:
            raise ValueError(f"MODEL.FPN.IN_FEATURES {in_features!r} must be non-empty outputs "
                             f"of the bottom-up backbone, which has {list(shapes)} "
                             f"(MODEL.RESNETS.OUT_FEATURES)")
        strides = [shapes[f].stride for f in in_features]
        for s_prev, s in zip(strides[:-1], strides[1:]):
            if s != 2 * s_prev:
                raise ValueError(f"FPN needs strides doubling level to level, got {strides} for "
                                 f"{in_features} (RES5_DILATION 2 cannot feed an FPN)")

        self.bottom_up = bottom_up
        self.in_features = in_features
        self.top_block = top_block
        self._fuse_type = fuse_type
        use_bias = norm == ""
        self.lateral_convs, self.output_convs = [], []
        stages = [int(math.log2(s)) for s in strides]
        for feature, stage in zip(in_features, stages):
            lateral = Conv2d(shapes[feature].channels, out_channels, kernel_size=1, bias=use_bias,
                             norm=get_norm(norm, out_channels))
            output = Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=use_bias,
                            norm=get_norm(norm, out_channels))
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)

        self._out_features = [f"p{s}" for s in stages]
        if top_block is not None:
            last = stages[-1]
            self._out_features += [f"p{last + i + 1}" for i in range(top_block.num_levels)]
            in_feature = top_block.in_feature
            if in_feature not in self._out_features and in_feature not in shapes:
                raise ValueError(f"the top block reads {in_feature!r}, which is neither an FPN "
                                 f"level {self._out_features} nor a bottom-up output "
                                 f"{list(shapes)}")
        self._out_feature_strides = {f: 2 ** int(f[1:]) for f in self._out_features}
        self._out_feature_channels = {f: out_channels for f in self._out_features}
        # Only the top-down path needs aligned sizes (each level exactly twice the next), and
        # it ends at the coarsest bottom-up level; P6/P7 are padded stride-2 convs valid for any
        # size, so padding to 128 would only add border pixels and change the outputs that
        # cvpods/detectron2 models were trained and evaluated with.
        self._size_divisibility = strides[-1]

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        bottom_up = self.bottom_up(x)
        feats = [bottom_up[f] for f in self.in_features]
        prev = self.lateral_convs[-1](feats[-1])
        results = [self.output_convs[-1](prev)]
        for feat, lateral_conv, output_conv in zip(
                feats[-2::-1], self.lateral_convs[-2::-1], self.output_convs[-2::-1]):
            lateral = lateral_conv(feat)
            # Upsample to the lateral's size (= x2 on padded inputs) so unpadded odd sizes work.
            top_down = F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            prev = lateral + top_down
            if self._fuse_type == "avg":
                prev = prev / 2
            results.insert(0, output_conv(prev))
        if self.top_block is not None:
            name = self.top_block.in_feature
            if name in bottom_up:
                top_in = bottom_up[name]
            else:
                top_in = results[self._out_features.index(name)]
            results.extend(self.top_block(top_in))
        return dict(zip(self._out_features, results))


def build_resnet_fpn_p7_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN P3-P5 + P6/P7 (FCOS, ATSS, RetinaNet, LLA), from cvpods config keys.

    ``MODEL.FPN.TOP_BLOCK_IN_FEATURE`` ("p5" or "res5") picks the input of P6. cvpods names it
    ``MODEL.FPN.BLOCK_IN_FEATURES``; that spelling is a legacy alias migrated when a config is
    merged or overridden (``crowdloss.config.legacy``), so only the new name is read here.
    Defaults: ``BaseDetectionConfig``.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = int(cfg_get(cfg, "MODEL.FPN.OUT_CHANNELS"))
    in_feature = cfg_get(cfg, "MODEL.FPN.TOP_BLOCK_IN_FEATURE")
    if in_feature == "p5":
        top_in_channels = out_channels
    elif in_feature == "res5":
        shapes = bottom_up.output_shape()
        if "res5" not in shapes:
            raise ValueError("MODEL.FPN.TOP_BLOCK_IN_FEATURE 'res5' needs 'res5' in "
                             f"MODEL.RESNETS.OUT_FEATURES, got {list(shapes)}")
        top_in_channels = shapes["res5"].channels
    else:
        raise ValueError(f"MODEL.FPN.TOP_BLOCK_IN_FEATURE must be 'p5' or 'res5', "
                         f"got {in_feature!r}")
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg_get(cfg, "MODEL.FPN.IN_FEATURES"),
        out_channels=out_channels,
        norm=cfg_get(cfg, "MODEL.FPN.NORM"),
        top_block=LastLevelP6P7(in_channels=top_in_channels, out_channels=out_channels,
                                in_feature=in_feature),
        fuse_type=cfg_get(cfg, "MODEL.FPN.FUSE_TYPE"),
    )


def build_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN P2-P5 + P6 max-pooled from P5 (Faster R-CNN, detectron2's
    ``build_resnet_fpn_backbone``), from ``MODEL.RESNETS.*`` / ``MODEL.FPN.*``. The FPN levels
    follow ``MODEL.FPN.IN_FEATURES`` (res2-res5 in ``RCNNFPNConfig``); P6 always comes from P5
    (``MODEL.FPN.TOP_BLOCK_IN_FEATURE`` is the P6/P7 block's key and is not read here)."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg_get(cfg, "MODEL.FPN.IN_FEATURES"),
        out_channels=int(cfg_get(cfg, "MODEL.FPN.OUT_CHANNELS")),
        norm=cfg_get(cfg, "MODEL.FPN.NORM"),
        top_block=LastLevelMaxPool(),
        fuse_type=cfg_get(cfg, "MODEL.FPN.FUSE_TYPE"),
    )
