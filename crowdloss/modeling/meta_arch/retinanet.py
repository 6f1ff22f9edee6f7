"""RetinaNet: focal loss for dense object detection (arXiv 1708.02002).

A anchors per location on P3-P7, towers without norm, K sigmoid outputs per anchor, max-IoU
matching with ignore regions (IoA), focal loss / num_pos and smooth L1 (beta 0.1) on
``Box2BoxTransform`` deltas, or GIoU on the decoded boxes (``BBOX_REG_LOSS_TYPE``), times
``REG_WEIGHT``.

Shape vocabulary: N images, M gts of one image (ignore regions included), R anchors of one
image (all levels, H_l * W_l * A each), A anchors per location, K classes, P positives.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from crowdloss.modeling.anchors import AnchorGenerator
from crowdloss.modeling.assigners import MaxIoUAssigner
from crowdloss.modeling.box_coder import Box2BoxTransform
from crowdloss.modeling.heads import RetinaNetHead
from crowdloss.modeling.losses import focal_classification_loss, iou_loss, smooth_l1_loss

from ..targets import BatchTargets
from .dense_detector import DenseDetector, DenseOutputs, dense_config_kwargs

__all__ = ["RetinaNet"]

_REG_LOSS_TYPES = ("smooth_l1", "giou")


class RetinaNet(DenseDetector):
    """RetinaNet detector.

    Args:
        see ``DenseDetector`` (``prior_generator`` an ``AnchorGenerator``, ``box_coder`` a
        ``Box2BoxTransform``, ``head`` a ``RetinaNetHead``), plus:
        focal_loss_alpha, focal_loss_gamma: focal loss parameters.
        smooth_l1_beta: smooth L1 transition point (0 = L1).
        bbox_reg_loss_type: "smooth_l1" on deltas or "giou" on decoded boxes.
        reg_weight: multiplier of the box loss.
    """

    with_quality = False  # an IoU branch on the box tower (LLARetinaNet sets it)

    def __init__(self, *, focal_loss_alpha: float = 0.25, focal_loss_gamma: float = 2.0,
                 smooth_l1_beta: float = 0.1, bbox_reg_loss_type: str = "smooth_l1",
                 reg_weight: float = 1.0, **kwargs):
        kwargs.setdefault("nms_thresh_test", 0.5)
        super().__init__(**kwargs)
        if bbox_reg_loss_type not in _REG_LOSS_TYPES:
            raise ValueError(
                f"MODEL.RETINANET.BBOX_REG_LOSS_TYPE must be one of {_REG_LOSS_TYPES}, got "
                f"{bbox_reg_loss_type!r}"
            )
        self.focal_loss_alpha = float(focal_loss_alpha)
        self.focal_loss_gamma = float(focal_loss_gamma)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.bbox_reg_loss_type = bbox_reg_loss_type
        self.reg_weight = float(reg_weight)

    # ----------------------------------------------------------------- config
    @classmethod
    def build_assigner(cls, cfg):
        r = cfg.MODEL.RETINANET
        thresholds, labels = list(r.IOU_THRESHOLDS), list(r.IOU_LABELS)
        # Only the (negative, ignored, positive) three-way split of RetinaNet is supported.
        if len(thresholds) != 2 or labels != [0, -1, 1]:
            raise ValueError(
                "MODEL.RETINANET.IOU_THRESHOLDS must be [neg, pos] with IOU_LABELS [0, -1, 1], "
                f"got {thresholds} and {labels}"
            )
        return MaxIoUAssigner(
            neg_iou_thresh=thresholds[0],
            pos_iou_thresh=thresholds[1],
            allow_low_quality_matches=r.ALLOW_LOW_QUALITY_MATCHES,
            ignore_ioa_thresh=r.IGNORE_IOA_THRESH,
        )

    @classmethod
    def build_head(cls, cfg, input_shape, num_anchors: int) -> nn.Module:
        r = cfg.MODEL.RETINANET
        return RetinaNetHead(
            input_shape=input_shape,
            num_classes=r.NUM_CLASSES,
            num_anchors=num_anchors,
            num_convs=r.NUM_CONVS,
            head_channels=r.HEAD_CHANNELS,
            prior_prob=r.PRIOR_PROB,
            norm=r.NORM,
            with_quality=cls.with_quality,
        )

    @classmethod
    def config_kwargs(cls, cfg) -> dict:
        """Constructor arguments from ``MODEL.RETINANET.*`` / ``MODEL.ANCHOR_GENERATOR.*``
        (shared with ``LLARetinaNet``)."""
        r = cfg.MODEL.RETINANET
        kwargs, input_shape = dense_config_kwargs(cfg, r, "MODEL.RETINANET")
        g = cfg.MODEL.ANCHOR_GENERATOR
        anchor_generator = AnchorGenerator(
            sizes=g.SIZES,
            aspect_ratios=g.ASPECT_RATIOS,
            strides=[s.stride for s in input_shape],
            offset=g.OFFSET,
            order=g.ORDER,
        )
        kwargs.update(
            head=cls.build_head(cfg, input_shape, anchor_generator.num_anchors),
            prior_generator=anchor_generator,
            box_coder=Box2BoxTransform(weights=r.BBOX_REG_WEIGHTS, scale_clamp=r.SCALE_CLAMP),
            test_clip=r.TEST_CLIP,
            assigner=cls.build_assigner(cfg),
            focal_loss_alpha=r.FOCAL_LOSS_ALPHA,
            focal_loss_gamma=r.FOCAL_LOSS_GAMMA,
            reg_weight=r.REG_WEIGHT,
        )
        return kwargs

    @classmethod
    def from_config(cls, cfg) -> "RetinaNet":
        """The detector of a config with ``MODEL.RETINANET.*`` (RetinaNetConfig)."""
        r = cfg.MODEL.RETINANET
        return cls(
            smooth_l1_beta=r.SMOOTH_L1_LOSS_BETA,
            bbox_reg_loss_type=r.BBOX_REG_LOSS_TYPE,
            **cls.config_kwargs(cfg),
        )

    # ----------------------------------------------------------------- losses
    def losses(self, outputs: DenseOutputs, targets: BatchTargets) -> Dict[str, torch.Tensor]:
        """Focal loss over non-ignored anchors and box loss over positives, both / num_pos."""
        fg = targets.positive.flatten()
        normalizer = self.normalizer(int(fg.sum()))
        loss_cls = focal_classification_loss(outputs.logits, targets.labels,
                                             alpha=self.focal_loss_alpha,
                                             gamma=self.focal_loss_gamma) / normalizer

        fg_gt_boxes = targets.matched_boxes.reshape(-1, 4)[fg]
        if self.bbox_reg_loss_type == "smooth_l1":
            fg_anchors = outputs.priors.tensor.expand(len(targets), -1, -1).reshape(-1, 4)[fg]
            loss_box_reg = smooth_l1_loss(
                outputs.deltas.reshape(-1, 4)[fg],
                self.box_coder.get_deltas(fg_anchors, fg_gt_boxes),
                beta=self.smooth_l1_beta,
                reduction="sum",
            )
        else:
            loss_box_reg = iou_loss(outputs.pred_boxes.reshape(-1, 4)[fg], fg_gt_boxes,
                                    loss_type="giou", reduction="sum")
        return {"loss_cls": loss_cls, "loss_box_reg": self.reg_weight * loss_box_reg / normalizer}
