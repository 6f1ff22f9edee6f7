"""LLA: loss-aware label assignment for dense pedestrian detection (arXiv 2101.04307).

Each GT takes the ``TOPK`` points (or anchors) of the joint pool of all levels whose CURRENT
predictions (detached) would cost least: focal loss of the class logits + ``REG_COST`` x
-log IoU of the predicted box + a 1000 penalty outside the GT (``LLAAssigner``). A quality
branch predicts the IoU of each box with its GT.

Losses, each / num_fg (points matched to any GT, ignore regions included, rank-averaged, >= 1):
focal over every point not won by an ignore GT; ``REG_WEIGHT`` (2.0) x GIoU over valid
positives; ``IOU_WEIGHT`` (0.5) x BCE-with-logits of the IoU branch against the no-grad IoU of
the predicted box with its GT. Inference score: sqrt(prob x sigmoid(iou logit)).

Shape vocabulary: N images, M gts of one image (ignore regions included), R points/anchors of
one image (all levels concatenated), K classes, P positives.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F

from crowdloss.modeling.assigners import LLAAssigner
from crowdloss.modeling.losses import iou_loss
from crowdloss.ops import aligned_iou
from crowdloss.structures import Instances

from .dense_detector import cfg_get
from .fcos import FCOS, matched_targets
from .retinanet import RetinaNet

__all__ = ["LLAFCOS", "LLARetinaNet", "build_lla_assigner"]


def build_lla_assigner(cfg, head) -> LLAAssigner:
    """``MODEL.LLA.{TOPK, REG_COST}`` (cvpods' ``TopK`` spelling accepted); the cls cost uses
    the focal loss parameters of the ``head`` config node (``MODEL.FCOS`` / ``MODEL.RETINANET``)
    so that the cost is the loss the point would get."""
    lla = cfg.MODEL.LLA
    topk = cfg_get(lla, "TOPK", None)
    if topk is None:
        topk = cfg_get(lla, "TopK", 10)
    return LLAAssigner(
        topk=int(topk),
        reg_cost=float(cfg_get(lla, "REG_COST", 1.5)),
        focal_alpha=float(head.FOCAL_LOSS_ALPHA),
        focal_gamma=float(head.FOCAL_LOSS_GAMMA),
    )


class _LLALosses:
    """Assignment + losses shared by ``LLAFCOS`` and ``LLARetinaNet``: the subclass supplies
    ``num_classes``, ``normalizer``, focal parameters, ``reg_weight``, ``iou_weight`` and
    ``lla_assigner``."""

    def lla_losses(
        self,
        points: torch.Tensor,
        logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        iou_logits: torch.Tensor,
        gt_instances: List[Instances],
    ) -> Dict[str, torch.Tensor]:
        """Args:
            points: (R, 2) points (or anchor centres) the "inside" term is measured from.
            logits: (N, R, K); pred_boxes: (N, R, 4) decoded xyxy; iou_logits: (N, R, 1).
        """
        r = points.shape[0]
        labels, boxes, num_fg = [], [], 0
        with torch.no_grad():
            for i, gt in enumerate(gt_instances):
                result = self.lla_assigner.assign(
                    logits[i].detach(), pred_boxes[i].detach(), points, gt.gt_boxes, gt.gt_classes
                )
                # num_fg counts points won by ignore GTs too (they are matched, just not
                # trained as person); this is the published normaliser.
                num_fg += int(result.matched.sum())
                labels_i, boxes_i = matched_targets(result, gt, self.num_classes, r)
                labels.append(labels_i)
                boxes.append(boxes_i)
        gt_labels = torch.stack(labels).flatten()
        gt_boxes = torch.stack(boxes).reshape(-1, 4)
        fg = (gt_labels >= 0) & (gt_labels != self.num_classes)
        normalizer = self.normalizer(num_fg)

        loss_cls = self.focal_classification_loss(
            logits.reshape(-1, self.num_classes), gt_labels, normalizer
        )

        fg_pred = pred_boxes.reshape(-1, 4)[fg]
        fg_gt = gt_boxes[fg]
        loss_box_reg = (
            self.reg_weight * iou_loss(fg_pred, fg_gt, loss_type="giou", reduction="sum")
            / normalizer
        )
        with torch.no_grad():
            iou_target = aligned_iou(fg_pred.detach(), fg_gt)
        loss_iou = (
            self.iou_weight
            * F.binary_cross_entropy_with_logits(
                iou_logits.reshape(-1)[fg], iou_target, reduction="sum"
            )
            / normalizer
        )
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg, "loss_iou": loss_iou}


class LLAFCOS(_LLALosses, FCOS):
    """LLA on FCOS: the FCOS head whose quality branch predicts IoU (on the box tower).

    Keyword arguments as ``FCOS`` (its ``assigner`` is unused: pass the ``LLAAssigner`` as
    ``lla_assigner``), plus ``iou_weight`` (0.5). ``reg_weight`` defaults to 2.0.
    """

    def __init__(
        self, *, lla_assigner, reg_weight: float = 2.0, iou_weight: float = 0.5, **kwargs
    ):
        kwargs.setdefault("assigner", None)
        super().__init__(reg_weight=reg_weight, **kwargs)
        self.lla_assigner = lla_assigner
        self.iou_weight = float(iou_weight)

    @classmethod
    def build_assigner(cls, cfg):
        return None  # LLA assigns inside forward_training from the predictions

    @classmethod
    def default_reg_weight(cls, cfg) -> float:
        return cfg_get(cfg.MODEL.FCOS, "REG_WEIGHT", 2.0)

    @classmethod
    def from_config(cls, cfg):
        return cls(
            lla_assigner=build_lla_assigner(cfg, cfg.MODEL.FCOS),
            iou_weight=float(cfg_get(cfg.MODEL.LLA, "IOU_WEIGHT", 0.5)),
            **cls.from_config_kwargs(cfg),
        )

    def forward_training(self, images, image_sizes, features, predictions, gt_instances):
        points_per_level = self.shift_generator(features)
        points = torch.cat(points_per_level)
        logits, ltrb, iou_logits = self.flatten_predictions(predictions)
        pred_boxes = self.decode(ltrb, points.expand(ltrb.shape[0], -1, -1))
        return self.lla_losses(points, logits, pred_boxes, iou_logits, gt_instances)


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

    Keyword arguments as ``RetinaNet`` (``assigner`` unused) plus ``lla_assigner``,
    ``reg_weight`` (2.0) and ``iou_weight`` (0.5).
    """

    with_quality = True

    def __init__(
        self, *, lla_assigner, reg_weight: float = 2.0, iou_weight: float = 0.5, **kwargs
    ):
        kwargs.setdefault("assigner", None)
        kwargs.setdefault("bbox_reg_loss_type", "giou")
        super().__init__(**kwargs)
        self.lla_assigner = lla_assigner
        self.reg_weight = float(reg_weight)
        self.iou_weight = float(iou_weight)

    @classmethod
    def build_assigner(cls, cfg):
        return None

    @classmethod
    def from_config(cls, cfg):
        lla = cfg.MODEL.LLA
        return cls(
            lla_assigner=build_lla_assigner(cfg, cfg.MODEL.RETINANET),
            reg_weight=float(cfg_get(cfg.MODEL.RETINANET, "REG_WEIGHT", 2.0)),
            iou_weight=float(cfg_get(lla, "IOU_WEIGHT", 0.5)),
            **cls.from_config_kwargs(cfg),
        )

    def forward_training(self, images, image_sizes, features, predictions, gt_instances):
        anchors = torch.cat(self.anchor_generator(features))
        logits, deltas, iou_logits = self.transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        pred_boxes = self.decode(deltas, anchors.expand(deltas.shape[0], -1, -1))
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        return self.lla_losses(centres, logits, pred_boxes, iou_logits, gt_instances)
