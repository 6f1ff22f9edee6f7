"""The ``Backbone`` base class."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from crowdloss.structures import ShapeSpec

__all__ = ["Backbone"]

class Backbone(nn.Module):
    """A feature extractor: ``forward(x (N, C, H, W)) -> {name: (N, C_l, H_l, W_l)}``.

    Subclasses fill ``_out_features`` (names, in order), ``_out_feature_channels`` and
    ``_out_feature_strides``; meta-architectures read them through ``output_shape()`` and pad
    inputs to ``size_divisibility``.
    """

    def __init__(self):
        super().__init__()
        self._out_features: List[str] = []
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    @property
    def size_divisibility(self) -> int:
        """Inputs are padded to a multiple of this (0 = no constraint)."""
        return 0

    @property
    def out_features(self) -> List[str]:
        return list(self._out_features)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name],
                            stride=self._out_feature_strides[name])
            for name in self._out_features
        }
