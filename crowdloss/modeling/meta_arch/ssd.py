"""SSD: Single Shot MultiBox Detector (Liu et al., arXiv 1512.02325), ssd.pytorch's recipe.

Default boxes of several aspect ratios on six (SSD300) or seven (SSD512) maps of the VGG16
backbone (``backbone/vgg.py``), a 3x3 class conv and a 3x3 box conv per map
(``PerLevelHead``, K + 1 logits per box with the background LAST; ssd.pytorch puts it first and
``ssd_weights.py`` permutes its checkpoints), and:

- matching: ``SSDMatcher`` (IoU >= 0.5 plus the best box of every GT, ssd.pytorch's overrides;
  ignore regions excluded by IoA);
- box coding: ``Box2BoxTransform`` with weights (10, 10, 5, 5), which is ssd.pytorch's
  encoding with variances (0.1, 0.2): ((g_c - d_c) / (0.1 d_wh), log(g_wh / d_wh) / 0.2) on the
  centre form of the (clamped) default box d;
- losses: softmax cross-entropy over the positives and the 3:1 hard negatives of each image
  plus smooth L1 (beta 1) on the encoded offsets of the positives, both divided by the
  positives of the batch (``MultiBoxLoss``); repulsion terms through ``extra_losses``;
- inference: softmax, per class the boxes of probability > 0.01, at most 200 per class, NMS at
  IoU 0.45 per class on the unclipped boxes, then clip and ``TEST.DETECTIONS_PER_IMAGE``
  (ssd.pytorch's ``Detect`` keeps 200 per class and has no image cap).

Shape vocabulary: N images, R default boxes of one image (all levels, H_l * W_l * A_l each),
A_l boxes per location of level l, K classes, P positives of the batch.
"""
from __future__ import annotations

from typing import Dict

import torch

from crowdloss.modeling.anchors import AnchorGenerator
from crowdloss.modeling.assigners import SSDMatcher
from crowdloss.modeling.box_coder import Box2BoxTransform
from crowdloss.modeling.heads import PerLevelHead
from crowdloss.modeling.losses import multibox_classification_loss, smooth_l1_loss

from ..targets import BatchTargets
from .dense_detector import DenseDetector, DenseOutputs, dense_config_kwargs

__all__ = ["SSD"]


class SSD(DenseDetector):
    """SSD detector.

    Args:
        see ``DenseDetector`` (``prior_generator`` from ``AnchorGenerator.from_ssd``,
        ``box_coder`` a ``Box2BoxTransform``, ``head`` a ``PerLevelHead`` with K + 1 logits,
        ``assigner`` an ``SSDMatcher``; scoring is "softmax" with per-class candidates and
        NMS on unclipped boxes), plus:
        neg_pos_ratio: hard negatives per positive, per image (3).
        smooth_l1_beta: smooth L1 transition point on the encoded offsets (1).
    """

    def __init__(self, *, neg_pos_ratio: float = 3.0, smooth_l1_beta: float = 1.0, **kwargs):
        fixed = {"scoring": "softmax", "candidates_per": "class", "clip_before_nms": False}
        clash = {k: kwargs[k] for k in fixed if k in kwargs and kwargs[k] != fixed[k]}
        if clash:
            raise ValueError(f"SSD: {clash} are not SSD's inference ({fixed})")
        kwargs.update(fixed)
        super().__init__(**kwargs)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.smooth_l1_beta = float(smooth_l1_beta)

    # ----------------------------------------------------------------- config
    @classmethod
    def build_prior_generator(cls, cfg) -> AnchorGenerator:
        s = cfg.MODEL.SSD
        return AnchorGenerator.from_ssd(
            steps=s.STEPS, min_sizes=s.MIN_SIZES, max_sizes=s.MAX_SIZES,
            aspect_ratios=s.ASPECT_RATIOS, image_size=s.IMAGE_SIZE, clip=s.CLIP_PRIORS)

    @classmethod
    def config_kwargs(cls, cfg) -> dict:
        """Constructor arguments from ``MODEL.SSD.*`` (SSDConfig)."""
        s = cfg.MODEL.SSD
        kwargs, input_shape = dense_config_kwargs(cfg, s, "MODEL.SSD")
        if len(s.STEPS) != len(s.IN_FEATURES):
            raise ValueError(f"MODEL.SSD.STEPS has {len(s.STEPS)} levels but MODEL.SSD."
                             f"IN_FEATURES {len(s.IN_FEATURES)} ({list(s.IN_FEATURES)})")
        generator = cls.build_prior_generator(cfg)
        kwargs.update(
            head=PerLevelHead(input_shape=input_shape,
                              num_anchors=generator.num_anchors_per_level,
                              num_logits=s.NUM_CLASSES + 1),
            prior_generator=generator,
            box_coder=Box2BoxTransform(weights=s.BBOX_REG_WEIGHTS),
            assigner=SSDMatcher(iou_thresh=s.IOU_THRESHOLD,
                                ignore_ioa_thresh=s.IGNORE_IOA_THRESH),
            neg_pos_ratio=s.NEG_POS_RATIO,
            smooth_l1_beta=s.SMOOTH_L1_LOSS_BETA,
        )
        return kwargs

    @classmethod
    def from_config(cls, cfg) -> "SSD":
        """The detector of a config with ``MODEL.SSD.*``; ``cfg.build_backbone`` as attached
        by net.py (``build_ssd_vgg_backbone``)."""
        return cls(**cls.config_kwargs(cfg))

    # ----------------------------------------------------------------- losses
    def losses(self, outputs: DenseOutputs, targets: BatchTargets) -> Dict[str, torch.Tensor]:
        """MultiBoxLoss: mined softmax cross-entropy and smooth L1, both / positives."""
        fg = targets.positive.flatten()
        normalizer = self.normalizer(int(fg.sum()))
        loss_cls = multibox_classification_loss(
            outputs.logits, targets.labels, neg_pos_ratio=self.neg_pos_ratio) / normalizer
        anchors = outputs.priors.tensor.expand(len(targets), -1, -1).reshape(-1, 4)[fg]
        loss_box_reg = smooth_l1_loss(
            outputs.deltas.reshape(-1, 4)[fg],
            self.box_coder.get_deltas(anchors, targets.matched_boxes.reshape(-1, 4)[fg]),
            beta=self.smooth_l1_beta, reduction="sum") / normalizer
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}
