"""Dense prediction heads shared by the one-stage detectors.

Three heads. Two are applied with shared weights to every FPN level:

- ``FCOSHead`` (FCOS, arXiv 1904.01355; reused by ATSS and LLA): a classification tower and a
  box tower of ``num_convs`` x (conv3x3 + norm + ReLU), K class logits, 4 ltrb distances with a
  learnable per-level ``Scale``, and one quality logit (centerness for FCOS/ATSS, IoU for LLA)
  computed from the box tower (``centerness_on_reg``) or the classification tower.
- ``RetinaNetHead`` (RetinaNet, arXiv 1708.02002): the same towers (no norm by default),
  A x K class logits and A x 4 box deltas per location, plus an optional A x 1 quality
  branch on the box tower (LLA on RetinaNet).

and one keeps separate weights per level, so that levels may differ in channels and in
anchors per location:

- ``PerLevelHead`` (SSD's multibox head, arXiv 1512.02325): on level l one 3x3 conv to
  A_l x C class logits and one to A_l x 4 box deltas, C = K + 1 for a softmax with background.

Shape vocabulary: N images, C_l channels of level l, H_l x W_l its size, K classes, C class
outputs per anchor, A (A_l) anchors per location.
"""
from __future__ import annotations

import logging
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from crowdloss.structures import ShapeSpec

__all__ = ["Scale", "build_tower", "FCOSHead", "RetinaNetHead", "PerLevelHead"]

logger = logging.getLogger(__name__)

# FCOSHead's dead-output check: below this fraction of positive ltrb a forward counts as dead.
# Measured on synthcrowd LLA: about 50 % at initialisation, 97.8 % in a trained model, 0.08 %
# in the run whose box output died (its few live distances all under a pixel).
_DEAD_BOX_FRACTION = 0.01
_SIDES = ("left", "top", "right", "bottom")  # the ltrb channels


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level in FCOS, since the levels share the
    regression conv but predict distances of very different magnitudes)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _norm_layer(norm: str, channels: int) -> Optional[nn.Module]:
    """The backbone's norm factory, so "GN"/"BN"/"SyncBN" mean the same everywhere."""
    if not norm:
        return None
    from crowdloss.modeling.layers import get_norm

    return get_norm(norm, channels)


def build_tower(
    in_channels: int, channels: int, num_convs: int, norm: str = ""
) -> nn.Sequential:
    """``num_convs`` x (conv3x3 + optional norm + ReLU); the first conv maps ``in_channels``
    to ``channels`` so a CPU demo can run a narrow head on a wider FPN."""
    layers: List[nn.Module] = []
    for i in range(num_convs):
        c_in = in_channels if i == 0 else channels
        # A conv followed by a norm needs no bias (the norm's shift replaces it).
        layers.append(nn.Conv2d(c_in, channels, 3, padding=1, bias=not norm))
        norm_module = _norm_layer(norm, channels)
        if norm_module is not None:
            layers.append(norm_module)
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _init_convs(modules: Sequence[nn.Module], prior_prob: float, cls_logits: nn.Conv2d) -> None:
    # Normal(0, 0.01) for every conv, zero bias; the classification bias starts at the prior
    # so that the focal loss of the ~100k background locations does not swamp the first steps.
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, mean=0.0, std=0.01)
                if layer.bias is not None:
                    nn.init.constant_(layer.bias, 0.0)
    nn.init.constant_(cls_logits.bias, -math.log((1.0 - prior_prob) / prior_prob))


class FCOSHead(nn.Module):
    """FCOS head: returns per-level class logits, ltrb distances and a quality logit.

    Args:
        input_shape: one ShapeSpec per input level (all with the same channels).
        num_classes: K.
        fpn_strides: stride of every level (multiplies the distances when
            ``norm_reg_targets``).
        num_convs: convs per tower.
        head_channels: tower width (None: the input channels).
        prior_prob: initial foreground probability of the classifier.
        norm: tower norm ("GN" as published, "BN", or "" for none).
        norm_reg_targets: ltrb = ReLU(scale * x) * stride (FCOS "improvements"); otherwise
            ltrb = exp(scale * x).
        centerness_on_reg: compute the quality logit from the box tower.
        bbox_bias_init: initial bias of the 4 box outputs (0 as published). With
            ``norm_reg_targets`` a positive value starts every box at about that many strides
            per side, away from the ReLU's dead zone: at 0 half the distances start at exactly
            0 and a from-scratch run can lose the rest within its warm-up (one LLA seed on
            synthcrowd, docs/benchmark.md).
        dead_box_patience: with ``norm_reg_targets``, fail training once ReLU(scale * x) has
            been 0 at over 99 % of the distances for this many training forwards in a row (0:
            never). The boxes then have (nearly) zero size and the layer (nearly) no gradient,
            so it does not come back (seen on synthcrowd: an LLA run that trained an hour for
            AP 0). One side dead alone (boxes that cannot grow that way) is logged as a warning
            after as many forwards: on synthcrowd it came back after 1000-1500 iterations.
    """

    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        fpn_strides: Sequence[int],
        num_convs: int = 4,
        head_channels: Optional[int] = None,
        prior_prob: float = 0.01,
        norm: str = "GN",
        norm_reg_targets: bool = True,
        centerness_on_reg: bool = True,
        bbox_bias_init: float = 0.0,
        dead_box_patience: int = 100,
    ):
        super().__init__()
        in_channels = {s.channels for s in input_shape}
        if len(in_channels) != 1:
            raise ValueError(f"FCOSHead needs equal channels on every level, got {in_channels}")
        if len(fpn_strides) != len(input_shape):
            raise ValueError(
                f"FCOS.FPN_STRIDES has {len(fpn_strides)} entries but the head gets "
                f"{len(input_shape)} levels (FCOS.IN_FEATURES)"
            )
        if not math.isfinite(bbox_bias_init):
            raise ValueError(f"FCOSHead: bbox_bias_init (MODEL.FCOS.BBOX_BIAS_INIT) must be a "
                             f"finite number, got {bbox_bias_init}")
        in_ch = in_channels.pop()
        ch = head_channels or in_ch
        self.fpn_strides = [int(s) for s in fpn_strides]
        self.norm_reg_targets = norm_reg_targets
        self.centerness_on_reg = centerness_on_reg
        self.cls_subnet = build_tower(in_ch, ch, num_convs, norm)
        self.bbox_subnet = build_tower(in_ch, ch, num_convs, norm)
        self.cls_score = nn.Conv2d(ch, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(ch, 4, 3, padding=1)
        self.quality = nn.Conv2d(ch, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.fpn_strides])
        self.dead_box_patience = int(dead_box_patience)
        self._dead_box_forwards = 0  # training forwards in a row with almost every ltrb 0
        self._dead_side_forwards = 0  # ... with one side (l, t, r or b) almost always 0
        _init_convs(
            [self.cls_subnet, self.bbox_subnet, self.cls_score, self.bbox_pred, self.quality],
            prior_prob,
            self.cls_score,
        )
        nn.init.constant_(self.bbox_pred.bias, float(bbox_bias_init))

    def forward(
        self, features: List[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """Returns three lists over levels: logits (N, K, H_l, W_l), ltrb (N, 4, H_l, W_l) in
        pixels, quality logits (N, 1, H_l, W_l)."""
        logits, ltrb, quality = [], [], []
        for level, feature in enumerate(features):
            cls_feat = self.cls_subnet(feature)
            box_feat = self.bbox_subnet(feature)
            logits.append(self.cls_score(cls_feat))
            quality.append(self.quality(box_feat if self.centerness_on_reg else cls_feat))
            reg = self.scales[level](self.bbox_pred(box_feat))
            if self.norm_reg_targets:
                ltrb.append(F.relu(reg) * self.fpn_strides[level])
            else:
                ltrb.append(torch.exp(reg))
        if self.training and self.norm_reg_targets and self.dead_box_patience > 0:
            self._check_box_output_alive(ltrb)
        return logits, ltrb, quality

    def _check_box_output_alive(self, ltrb: List[torch.Tensor]) -> None:
        # Four counts per forward, one device sync (as the train loop's finite-loss check).
        positive = torch.stack([(x > 0).sum(dim=(0, 2, 3)) for x in ltrb]).sum(0).tolist()
        per_side = sum(x.numel() for x in ltrb) // 4
        live = sum(positive) / (4 * per_side)
        self._dead_box_forwards = 0 if live >= _DEAD_BOX_FRACTION else self._dead_box_forwards + 1
        if self._dead_box_forwards >= self.dead_box_patience:
            raise RuntimeError(
                f"FCOSHead: the box output ReLU(scale * x) has been 0 at more than "
                f"{1 - _DEAD_BOX_FRACTION:.0%} of the distances for {self._dead_box_forwards} "
                f"training forwards in a row (now {1 - live:.2%}): the boxes have (nearly) zero "
                f"size and the box layer gets (nearly) no gradient, so training does not recover "
                f"(a dead ReLU; MODEL.FCOS.NORM_REG_TARGETS True). Stopped rather than train on "
                f"for a detector without boxes: train again with another SEED, with "
                f"MODEL.FCOS.BBOX_BIAS_INIT 1.0 (boxes start one stride per side, away from the "
                f"ReLU's zero), or with NORM_REG_TARGETS False (ltrb = exp(scale * x), which "
                f"cannot die)")
        # One side dead everywhere is not fatal (it can come back as the tower changes) but the
        # boxes cannot grow that way meanwhile: warn once per such episode.
        dead = [side for side, p in zip(_SIDES, positive) if p < _DEAD_BOX_FRACTION * per_side]
        self._dead_side_forwards = self._dead_side_forwards + 1 if dead else 0
        if self._dead_side_forwards == self.dead_box_patience:
            logger.warning(
                "FCOSHead: the %s distance of the box output ReLU(scale * x) has been 0 at more "
                "than %.0f%% of the locations for %d training forwards in a row: no box can grow "
                "to that side until it comes back (a dead ReLU of one output; a positive "
                "MODEL.FCOS.BBOX_BIAS_INIT starts the boxes away from it)", "/".join(dead),
                100 * (1 - _DEAD_BOX_FRACTION), self._dead_side_forwards)


class RetinaNetHead(nn.Module):
    """RetinaNet head: A x K class logits, A x 4 box deltas and optionally A x 1 quality
    logits (from the box tower) per location.

    Args:
        input_shape: one ShapeSpec per input level.
        num_classes: K.
        num_anchors: A.
        num_convs: convs per tower.
        head_channels: tower width (None: the input channels).
        prior_prob: initial foreground probability of the classifier.
        norm: tower norm ("" as published).
        with_quality: add the quality (IoU) branch.
    """

    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: int,
        num_convs: int = 4,
        head_channels: Optional[int] = None,
        prior_prob: float = 0.01,
        norm: str = "",
        with_quality: bool = False,
    ):
        super().__init__()
        in_channels = {s.channels for s in input_shape}
        if len(in_channels) != 1:
            raise ValueError(f"RetinaNetHead needs equal channels per level, got {in_channels}")
        in_ch = in_channels.pop()
        ch = head_channels or in_ch
        self.cls_subnet = build_tower(in_ch, ch, num_convs, norm)
        self.bbox_subnet = build_tower(in_ch, ch, num_convs, norm)
        self.cls_score = nn.Conv2d(ch, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(ch, num_anchors * 4, 3, padding=1)
        self.quality = nn.Conv2d(ch, num_anchors, 3, padding=1) if with_quality else None
        modules = [self.cls_subnet, self.bbox_subnet, self.cls_score, self.bbox_pred]
        if self.quality is not None:
            modules.append(self.quality)
        _init_convs(modules, prior_prob, self.cls_score)

    def forward(self, features: List[torch.Tensor]):
        """Returns lists over levels: logits (N, A*K, H_l, W_l), deltas (N, A*4, H_l, W_l)
        and, with the quality branch, quality logits (N, A, H_l, W_l)."""
        logits, deltas, quality = [], [], []
        for feature in features:
            cls_feat = self.cls_subnet(feature)
            box_feat = self.bbox_subnet(feature)
            logits.append(self.cls_score(cls_feat))
            deltas.append(self.bbox_pred(box_feat))
            if self.quality is not None:
                quality.append(self.quality(box_feat))
        if self.quality is None:
            return logits, deltas
        return logits, deltas, quality


class PerLevelHead(nn.Module):
    """Separate class / box predictors on every level (SSD's multibox head).

    Args:
        input_shape: one ShapeSpec per level; the channels may differ (SSD300: 512, 1024,
            512, 256, 256, 256).
        num_anchors: A_l anchors per location of each level (SSD300: 4, 6, 6, 6, 4, 4).
        num_logits: C class outputs per anchor (K + 1 with a softmax background class).
        kernel_size: predictor kernel (3 in SSD).
    """

    def __init__(self, *, input_shape: List[ShapeSpec], num_anchors: Sequence[int],
                 num_logits: int, kernel_size: int = 3):
        super().__init__()
        if len(num_anchors) != len(input_shape):
            raise ValueError(f"PerLevelHead: {len(num_anchors)} anchor counts for "
                             f"{len(input_shape)} levels")
        pad = kernel_size // 2
        self.num_logits = int(num_logits)
        self.cls_score = nn.ModuleList(
            nn.Conv2d(s.channels, a * num_logits, kernel_size, padding=pad)
            for s, a in zip(input_shape, num_anchors))
        self.bbox_pred = nn.ModuleList(
            nn.Conv2d(s.channels, a * 4, kernel_size, padding=pad)
            for s, a in zip(input_shape, num_anchors))
        # Xavier-uniform weights and zero biases, as ssd.pytorch initialises its multibox head.
        for conv in list(self.cls_score) + list(self.bbox_pred):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: List[torch.Tensor]):
        """Returns two lists over levels: logits (N, A_l*C, H_l, W_l), deltas (N, A_l*4, ...)."""
        if len(features) != len(self.cls_score):
            raise ValueError(f"PerLevelHead: got {len(features)} levels, built for "
                             f"{len(self.cls_score)}")
        return ([conv(f) for conv, f in zip(self.cls_score, features)],
                [conv(f) for conv, f in zip(self.bbox_pred, features)])
