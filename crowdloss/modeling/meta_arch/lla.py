"""LLA: loss-aware label assignment for dense pedestrian detection (arXiv 2101.04307).

Each GT takes the ``TOPK`` points (or anchors) of the joint pool of all levels whose CURRENT
predictions (detached) would cost least: focal loss of the class logits + ``REG_COST`` x
-log IoU of the predicted box + a 1000 penalty outside the GT (``LLAAssigner``, which the
detector calls like any assigner, with the image's predictions). A quality branch predicts the
IoU of each box with its GT.

Losses, each / num_fg (points matched to any GT, ignore regions included, rank-averaged, >= 1):
focal over every point not won by an ignore GT; ``REG_WEIGHT`` (2.0) x GIoU over valid
positives; ``LLA.IOU_WEIGHT`` (0.5) x BCE-with-logits of the IoU branch against the no-grad IoU
of the predicted box with its GT. Inference score: sqrt(prob x sigmoid(iou logit)).

Shape vocabulary: N images, M gts of one image (ignore regions included), R points/anchors of
one image (all levels concatenated), K classes, P positives.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from crowdloss.modeling.assigners import LLAAssigner, WarmupAssigner
from crowdloss.modeling.assigners.base import BaseAssigner
from crowdloss.modeling.losses import focal_classification_loss, iou_loss, iou_quality_loss

from ..targets import BatchTargets
from .atss import ATSS
from .dense_detector import DenseOutputs
from .fcos import FCOS
from .retinanet import RetinaNet

__all__ = ["LLAFCOS", "LLARetinaNet", "build_lla_assigner"]


def build_lla_assigner(cfg, head, warmup_rules: Optional[Dict[str, Callable]] = None
                       ) -> BaseAssigner:
    """``MODEL.LLA.{TOPK, REG_COST, OUTSIDE_COST}`` (cvpods' ``TopK`` spelling is migrated on
    load); the cls
    cost uses the focal loss parameters of the ``head`` config node (``MODEL.FCOS`` /
    ``MODEL.RETINANET``) so that the cost is the loss the point would get.

    ``MODEL.LLA.WARMUP_ITERS`` W > 0 wraps it in a ``WarmupAssigner``: the rule named by
    ``MODEL.LLA.WARMUP_ASSIGNER`` (built by ``warmup_rules[name](cfg)``) for the first W
    iterations, LLA afterwards. W = 0 is the published LLA.
    """
    lla = cfg.MODEL.LLA
    assigner = LLAAssigner(
        topk=int(lla.TOPK),
        reg_cost=float(lla.REG_COST),
        focal_alpha=float(head.FOCAL_LOSS_ALPHA),
        focal_gamma=float(head.FOCAL_LOSS_GAMMA),
        outside_cost=float(lla.OUTSIDE_COST),
    )
    iters = int(lla.WARMUP_ITERS)
    if iters < 0:
        raise ValueError(f"MODEL.LLA.WARMUP_ITERS must be >= 0 (0 = no warm-up), got {iters}")
    if iters == 0:
        return assigner
    rules = warmup_rules or {}
    name = str(lla.WARMUP_ASSIGNER).lower()
    if name not in rules:
        raise ValueError(f"MODEL.LLA.WARMUP_ASSIGNER = {lla.WARMUP_ASSIGNER!r}; expected one of "
                         f"{sorted(rules)} for this detector")
    return WarmupAssigner(warmup=rules[name](cfg), main=assigner, warmup_iters=iters)


class _LLALosses:
    """The LLA losses, shared by ``LLAFCOS`` and ``LLARetinaNet`` (the detector supplies
    ``num_classes``, ``normalizer``, the focal parameters, ``reg_weight`` and ``iou_weight``)."""

    def losses(self, outputs: DenseOutputs, targets: BatchTargets) -> Dict[str, torch.Tensor]:
        # num_fg counts points won by ignore GTs too (they are matched, just not trained as
        # person): the published normaliser.
        normalizer = self.normalizer(targets.num_matched)
        fg = targets.positive.flatten()
        loss_cls = focal_classification_loss(outputs.logits, targets.labels,
                                             alpha=self.focal_loss_alpha,
                                             gamma=self.focal_loss_gamma) / normalizer
        fg_pred = outputs.pred_boxes.reshape(-1, 4)[fg]
        fg_gt = targets.matched_boxes.reshape(-1, 4)[fg]
        loss_box_reg = self.reg_weight * iou_loss(
            fg_pred, fg_gt, loss_type="giou", reduction="sum") / normalizer
        loss_iou = self.iou_weight * iou_quality_loss(
            outputs.quality.reshape(-1)[fg], fg_pred, fg_gt) / normalizer
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg, "loss_iou": loss_iou}


class LLAFCOS(_LLALosses, FCOS):
    """LLA on FCOS: the FCOS head whose quality branch predicts IoU (on the box tower).

    Keyword arguments as ``FCOS`` (with an ``LLAAssigner`` as ``assigner``) plus
    ``iou_weight`` (0.5).
    """

    def __init__(self, *, iou_weight: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.iou_weight = float(iou_weight)

    @classmethod
    def build_assigner(cls, cfg):
        # Warm-up rules: ATSS (as TOOD) or FCOS, from their own config keys.
        return build_lla_assigner(cfg, cfg.MODEL.FCOS, {"atss": ATSS.build_assigner,
                                                        "fcos": FCOS.build_assigner})

    @classmethod
    def from_config(cls, cfg) -> "LLAFCOS":
        # LLA's box loss is always GIoU: MODEL.FCOS.IOU_LOSS_TYPE is not read.
        return cls(iou_weight=cfg.MODEL.LLA.IOU_WEIGHT, **cls.config_kwargs(cfg))


class LLARetinaNet(_LLALosses, RetinaNet):
    """LLA on RetinaNet (the paper reports it, no code was released): ``LLAAssigner`` over the
    joint pool of ANCHORS, cost from each anchor's focal loss and its decoded box, the "inside"
    term measured from the anchor's centre, plus an IoU branch on the box tower.

    Anchors per location: all A configured anchors compete in the pool, each with its own
    prediction, so the assignment picks whichever anchor shape the network currently regresses
    best (the loss-aware idea applied to shapes as well as positions). The shipped experiment
    uses A = 1 square anchor of the RetinaNet base size (4 x stride): ATSS (arXiv 1912.02424)
    showed that with a good assignment A = 1 matches A = 9, and with A = 1 the model is exactly
    LLA-FCOS with an anchor-relative box parametrisation, the comparison the paper makes; A = 9
    would also make the top-k of 10 cover fewer distinct locations and cost 9x the head work.

    Keyword arguments as ``RetinaNet`` (with an ``LLAAssigner`` as ``assigner``) plus
    ``iou_weight`` (0.5).
    """

    with_quality = True

    def __init__(self, *, iou_weight: float = 0.5, **kwargs):
        kwargs.setdefault("bbox_reg_loss_type", "giou")
        super().__init__(**kwargs)
        self.iou_weight = float(iou_weight)

    @classmethod
    def build_assigner(cls, cfg):
        # Warm-up rule: RetinaNet's max-IoU matching (MODEL.RETINANET.IOU_THRESHOLDS ...).
        return build_lla_assigner(cfg, cfg.MODEL.RETINANET,
                                  {"max_iou": RetinaNet.build_assigner})

    @classmethod
    def from_config(cls, cfg) -> "LLARetinaNet":
        # Always GIoU on decoded boxes: SMOOTH_L1_LOSS_BETA / BBOX_REG_LOSS_TYPE are not read.
        return cls(iou_weight=cfg.MODEL.LLA.IOU_WEIGHT, **cls.config_kwargs(cfg))
