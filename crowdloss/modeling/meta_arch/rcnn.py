"""Faster R-CNN (arXiv 1506.01497) with FPN (arXiv 1612.03144): ``GeneralizedRCNN``, the cvpods /
detectron2 meta-architecture of the two-stage detectors, ignore-aware for crowds, with the
Repulsion Loss (arXiv 1711.07752) on its ROI head as an option.

    images -> backbone (ResNet + FPN P2-P6) -> RPN on P2-P6 -> proposals (no gradient)
           -> ROI heads on P2-P5 (sample, RoIAlign, box head, predictor) -> losses / detections

It subclasses ``Detector`` (pixel normalisation, padding, rescaling of the detections) and
inherits nothing of the dense detectors' inference: the RPN is a dense head internally (anchors,
max-IoU assignment), the final detections come from the ROI heads. Module names follow
detectron2 (``backbone``, ``proposal_generator.rpn_head``, ``roi_heads.box_head``,
``roi_heads.box_predictor``), so its Faster R-CNN checkpoints load directly.

Shape vocabulary: N images, C channels, H x W the padded batch, P proposals of one image,
D detections of one image.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from crowdloss.structures import Instances

from ..proposal_generator import RPN
from ..roi_heads import StandardROIHeads
from .base import Detector, build_backbone_from_cfg

__all__ = ["GeneralizedRCNN"]


class GeneralizedRCNN(Detector):
    """Backbone + proposal generator + ROI heads.

    Args:
        backbone, pixel_mean, pixel_std: see ``Detector``.
        proposal_generator: ``(features, image_sizes, gt_instances) -> (proposals, losses)``
            (an ``RPN``).
        roi_heads: ``(features, proposals, gt_instances) -> losses`` in training,
            ``-> [Instances]`` in eval (``StandardROIHeads``).
    """

    def __init__(self, *, backbone: nn.Module, proposal_generator: nn.Module,
                 roi_heads: nn.Module, pixel_mean: Sequence[float], pixel_std: Sequence[float]):
        super().__init__(backbone=backbone, pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.check_in_features(proposal_generator.in_features, "MODEL.RPN.IN_FEATURES")
        self.check_in_features(roi_heads.in_features, "MODEL.ROI_HEADS.IN_FEATURES")

    @classmethod
    def config_kwargs(cls, cfg) -> dict:
        """Constructor arguments from an ``RCNNFPNConfig``: the backbone net.py attached (else
        ResNet-FPN P2-P6), ``RPN.from_config`` and ``StandardROIHeads.from_config``."""
        from crowdloss.modeling.backbone import build_resnet_fpn_backbone

        backbone = build_backbone_from_cfg(cfg, default=build_resnet_fpn_backbone)
        shapes = backbone.output_shape()
        return dict(
            backbone=backbone,
            proposal_generator=RPN.from_config(cfg, shapes),
            roi_heads=StandardROIHeads.from_config(cfg, shapes),
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
        )

    @classmethod
    def from_config(cls, cfg) -> "GeneralizedRCNN":
        return cls(**cls.config_kwargs(cfg))

    def forward_train(self, images: torch.Tensor, image_sizes: List[Tuple[int, int]],
                      gt_instances: List[Instances]) -> Dict[str, torch.Tensor]:
        """``loss_rpn_cls``, ``loss_rpn_loc``, ``loss_cls``, ``loss_box_reg`` (+ the repulsion
        terms MODEL.REPULSION enables)."""
        features = self.backbone(images)
        proposals, losses = self.proposal_generator(features, image_sizes, gt_instances)
        losses.update(self.roi_heads(features, proposals, gt_instances))
        return losses

    def forward_test(self, images: torch.Tensor,
                     image_sizes: List[Tuple[int, int]]) -> List[Instances]:
        features = self.backbone(images)
        proposals, _ = self.proposal_generator(features, image_sizes)
        return self.roi_heads(features, proposals)
