"""FCOS: fully convolutional one-stage detection (arXiv 1904.01355), cvpods flavour.

One point per feature cell and level regresses the four distances to the sides of the box it
lies in. The published CrowdHuman baseline uses the "improvements": GN towers, centerness on
the box tower, ``NORM_REG_TARGETS`` (ltrb = ReLU(scale * x) * stride), center sampling and GIoU.

Shape vocabulary: N images, M gts of one image (ignore regions included), R points of one
image (all levels concatenated), K classes, P positives of the batch.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from crowdloss.modeling.assigners import FCOSAssigner
from crowdloss.modeling.box_coder import Shift2BoxTransform
from crowdloss.modeling.heads import FCOSHead
from crowdloss.modeling.losses import focal_classification_loss, iou_loss
from crowdloss.modeling.shifts import ShiftGenerator

from ..targets import BatchTargets
from .dense_detector import DenseDetector, DenseOutputs, dense_config_kwargs

__all__ = ["FCOS", "centerness_targets"]


def centerness_targets(ltrb: torch.Tensor) -> torch.Tensor:
    """(P, 4) ltrb distances -> (P,) sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))."""
    ltrb = ltrb.clamp(min=0)
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values.clamp(min=1e-6)) * (
        tb.min(dim=1).values / tb.max(dim=1).values.clamp(min=1e-6)
    )
    return ratio.sqrt()


class FCOS(DenseDetector):
    """FCOS detector: points, FCOS head with a quality (centerness) branch, ``FCOSAssigner``.

    Args:
        see ``DenseDetector`` (``prior_generator`` a ``ShiftGenerator``, ``box_coder`` a
        ``Shift2BoxTransform``, ``head`` an ``FCOSHead``), plus:
        focal_loss_alpha, focal_loss_gamma: focal loss parameters.
        iou_loss_type: "iou" | "linear_iou" | "giou".
        reg_weight: multiplier of the box loss (1.0 FCOS, 2.0 ATSS / LLA).
    """

    def __init__(self, *, focal_loss_alpha: float = 0.25, focal_loss_gamma: float = 2.0,
                 iou_loss_type: str = "giou", reg_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.focal_loss_alpha = float(focal_loss_alpha)
        self.focal_loss_gamma = float(focal_loss_gamma)
        self.iou_loss_type = iou_loss_type
        self.reg_weight = float(reg_weight)

    # ----------------------------------------------------------------- config
    @classmethod
    def build_assigner(cls, cfg):
        f = cfg.MODEL.FCOS
        return FCOSAssigner(
            object_sizes_of_interest=f.OBJECT_SIZES_OF_INTEREST,
            center_sampling_radius=f.CENTER_SAMPLING_RADIUS,
        )

    @classmethod
    def config_kwargs(cls, cfg) -> dict:
        """Constructor arguments from ``MODEL.FCOS.*`` (FCOSConfig), shared by ATSS and LLA."""
        f = cfg.MODEL.FCOS
        kwargs, input_shape = dense_config_kwargs(cfg, f, "MODEL.FCOS")
        kwargs.update(
            head=FCOSHead(
                input_shape=input_shape,
                num_classes=f.NUM_CLASSES,
                fpn_strides=f.FPN_STRIDES,
                num_convs=f.NUM_CONVS,
                head_channels=f.HEAD_CHANNELS,
                prior_prob=f.PRIOR_PROB,
                norm=f.NORM,
                norm_reg_targets=f.NORM_REG_TARGETS,
                centerness_on_reg=f.CENTERNESS_ON_REG,
                bbox_bias_init=f.BBOX_BIAS_INIT,
            ),
            prior_generator=ShiftGenerator(
                strides=f.FPN_STRIDES, offset=cfg.MODEL.SHIFT_GENERATOR.OFFSET
            ),
            box_coder=Shift2BoxTransform(weights=f.BBOX_REG_WEIGHTS),
            assigner=cls.build_assigner(cfg),
            focal_loss_alpha=f.FOCAL_LOSS_ALPHA,
            focal_loss_gamma=f.FOCAL_LOSS_GAMMA,
            reg_weight=f.REG_WEIGHT,
        )
        return kwargs

    @classmethod
    def from_config(cls, cfg) -> "FCOS":
        """The detector of a config with ``MODEL.FCOS.*``; ``cfg.build_backbone`` as attached
        by net.py."""
        return cls(iou_loss_type=cfg.MODEL.FCOS.IOU_LOSS_TYPE, **cls.config_kwargs(cfg))

    # ----------------------------------------------------------------- losses
    def losses(self, outputs: DenseOutputs, targets: BatchTargets) -> Dict[str, torch.Tensor]:
        """FCOS losses (cvpods): focal over non-ignored points / num_fg; GIoU weighted by the
        centerness target / sum of centerness targets (both rank-averaged); BCE centerness /
        num_fg."""
        fg = targets.positive.flatten()
        normalizer = self.normalizer(int(fg.sum()))
        loss_cls = focal_classification_loss(outputs.logits, targets.labels,
                                             alpha=self.focal_loss_alpha,
                                             gamma=self.focal_loss_gamma) / normalizer

        n = len(targets)
        fg_points = outputs.priors.tensor.expand(n, -1, -1).reshape(-1, 2)[fg]
        fg_gt_boxes = targets.matched_boxes.reshape(-1, 4)[fg]
        fg_pred_boxes = outputs.pred_boxes.reshape(-1, 4)[fg]
        ctr_target = centerness_targets(self.box_coder.get_deltas(fg_points, fg_gt_boxes))
        # The box loss is a centerness-weighted mean: normalised by the (rank-averaged) sum of
        # the weights rather than by num_fg, as in cvpods' FCOS.
        ctr_sum = self.normalizer(float(ctr_target.sum()), min_value=1e-6)
        loss_box_reg = self.reg_weight * iou_loss(
            fg_pred_boxes, fg_gt_boxes, weight=ctr_target, loss_type=self.iou_loss_type,
            reduction="sum",
        ) / ctr_sum
        loss_centerness = F.binary_cross_entropy_with_logits(
            outputs.quality.reshape(-1)[fg], ctr_target, reduction="sum"
        ) / normalizer
        return {
            "loss_cls": loss_cls,
            "loss_box_reg": loss_box_reg,
            "loss_centerness": loss_centerness,
        }
