"""RetinaNet trained by ranking: aLRP Loss (Oksuz et al., arXiv 2009.13592) and AP Loss (Chen et
al., arXiv 1904.06373).

Both replace the per-anchor focal loss by a loss over the RANKING of every (anchor, class)
logit of the per-process batch: the positives are the matched class entries of the positive
anchors, the negatives every other entry of a non-excluded anchor (background anchors and the
other K - 1 classes of positive anchors), and the entries of excluded anchors (IoU between the
two thresholds, covered by an ignore region) take no part. The losses are normalised by their
definition (means over the positives), not by a detector normaliser.

- ``ALRPLossRetinaNet``: L = L_cls + w L_loc of aLRP Loss, with the localisation error of a
  positive E = 1 - GIoU of its decoded box with its GT (in [0, 2]; the public code's
  (1 - GIoU) / 2 divided by 1 - 0.5, so that E = 1 is the IoU-0.5 limit of LRP) and w the
  self-balance weight (``SelfBalance``). There is no other box-loss weight.
- ``APLossRetinaNet``: AP Loss + smooth L1 on the anchor deltas, summed and divided by 4 x the
  number of positives (per coordinate, as the public code), times ``MODEL.APLOSS.REG_WEIGHT``.

Shape vocabulary: N images, R anchors of one image (all levels), K classes, P positives of
the batch, E = N * R * K ranked entries.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from crowdloss.modeling.losses import alrp_loss, ap_loss, iou_loss, smooth_l1_loss
from crowdloss.modeling.losses.self_balance import SelfBalance

from ..targets import BatchTargets
from .dense_detector import DenseOutputs
from .retinanet import RetinaNet

__all__ = ["ranking_labels", "ALRPLossRetinaNet", "APLossRetinaNet", "LOC_ERRORS"]

# Localisation error of aLRP Loss; both are 1 at the IoU-0.5 limit of LRP (public code: "GIoU"
# (1 - GIoU) / 2 / (1 - 0.5) and "IoU" (1 - IoU) / (1 - 0.5)).
LOC_ERRORS = ("giou", "iou")

# RetinaNet's focal / box-loss keys mean nothing to the ranking detectors.
_UNUSED_KWARGS = ("focal_loss_alpha", "focal_loss_gamma", "reg_weight")


def ranking_labels(labels: Tensor, num_classes: int) -> Tensor:
    """Per-anchor labels -> per-(anchor, class) labels of the ranking losses.

    Args:
        labels: (N, R) long, ``BatchTargets.labels``: the class in [0, K) for positives, K for
            background, -1 for excluded anchors.
        num_classes: K.

    Returns:
        (N, R, K) int8: 1 on the matched class entry of each positive, -1 on every entry of an
        excluded anchor, 0 on every other entry (background anchors, other classes).
    """
    k = int(num_classes)
    bad = (labels < -1) | (labels > k)
    if bool(bad.any()):
        value = labels[bad][0].item()
        raise ValueError(f"ranking_labels: label {value} outside [-1, {k}] (class, {k} = "
                         "background, -1 = excluded)")
    out = torch.zeros(labels.shape + (k,), dtype=torch.int8, device=labels.device)
    out[labels == -1] = -1
    flat, cls = out.view(-1, k), labels.reshape(-1)
    pos = torch.nonzero((cls >= 0) & (cls < k)).squeeze(1)
    flat[pos, cls[pos]] = 1
    return out


def _ranking_kwargs(kwargs: dict) -> dict:
    """``RetinaNet.config_kwargs`` without the focal loss / box weight arguments."""
    for key in _UNUSED_KWARGS:
        kwargs.pop(key, None)
    return kwargs


class ALRPLossRetinaNet(RetinaNet):
    """RetinaNet + aLRP Loss with self-balance.

    Args:
        see ``RetinaNet`` (its focal loss / box loss arguments are not used), plus:
        delta: half-width of the smoothed step of the ranking (``MODEL.ALRP.DELTA``).
        loc_error: "giou" (1 - GIoU, the paper) or "iou" (2 (1 - IoU)).
        sb_init: the first self-balance weight (50).
        sb_period: training forward passes per self-balance period (0: the weight stays
            ``sb_init``).

    Training returns ``loss_cls`` (L_cls), ``loss_box_reg`` (w x L_loc) and ``sb_weight`` (w,
    a logged scalar, not a loss: the runner adds only ``loss_*`` entries).
    """

    def __init__(self, *, delta: float = 1.0, loc_error: str = "giou", sb_init: float = 50.0,
                 sb_period: int = 0, **kwargs):
        super().__init__(**kwargs)
        if loc_error not in LOC_ERRORS:
            raise ValueError(f"MODEL.ALRP.LOC_ERROR must be one of {LOC_ERRORS}, got "
                             f"{loc_error!r}")
        if not delta > 0:
            raise ValueError(f"MODEL.ALRP.DELTA = {delta}; expected > 0")
        self.delta = float(delta)
        self.loc_error = loc_error
        self.self_balance = SelfBalance(init_weight=sb_init, period=sb_period)

    @classmethod
    def from_config(cls, cfg) -> "ALRPLossRetinaNet":
        """The detector of ``MODEL.RETINANET`` (head, anchors, assigner, inference) and
        ``MODEL.ALRP``; a self-balance period of ``SB_PERIOD`` iterations is
        ``SB_PERIOD x SOLVER.BATCH_SUBDIVISIONS`` forward passes."""
        a = cfg.MODEL.ALRP
        passes = int(a.SB_PERIOD) * int(cfg.SOLVER.BATCH_SUBDIVISIONS)
        return cls(delta=a.DELTA, loc_error=a.LOC_ERROR, sb_init=a.SB_INIT, sb_period=passes,
                   **_ranking_kwargs(cls.config_kwargs(cfg)))

    def localisation_errors(self, pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
        """(P,) error in [0, 2] of each positive's decoded box against its GT."""
        if self.loc_error == "giou":
            return iou_loss(pred_boxes, gt_boxes, loss_type="giou", reduction="none")
        return 2 * iou_loss(pred_boxes, gt_boxes, loss_type="linear_iou", reduction="none")

    def ranking_losses(self, outputs: DenseOutputs, targets: BatchTargets):
        """(L_cls, L_loc, number of positives) of aLRP Loss on the whole per-process batch."""
        fg = targets.positive.reshape(-1)
        loc_errors = self.localisation_errors(outputs.pred_boxes.reshape(-1, 4)[fg],
                                              targets.matched_boxes.reshape(-1, 4)[fg])
        labels = ranking_labels(targets.labels, self.num_classes)
        loss_cls, loss_loc = alrp_loss(outputs.logits, labels, loc_errors, delta=self.delta)
        return loss_cls, loss_loc, loc_errors.numel()

    def losses(self, outputs: DenseOutputs, targets: BatchTargets) -> Dict[str, Tensor]:
        loss_cls, loss_loc, num_pos = self.ranking_losses(outputs, targets)
        if self.training:
            weight = self.self_balance.step(loss_cls, loss_loc, num_pos > 0)
        else:
            weight = self.self_balance.weight.clone()
        return {"loss_cls": loss_cls, "loss_box_reg": loss_loc * weight.to(loss_loc.dtype),
                "sb_weight": weight.to(torch.float32)}


class APLossRetinaNet(RetinaNet):
    """RetinaNet + AP Loss for classification and smooth L1 for the boxes.

    Args:
        see ``RetinaNet`` (``smooth_l1_beta`` and ``reg_weight`` are the box loss's; its focal
        loss arguments are not used), plus:
        delta: half-width of the smoothed step of the ranking (``MODEL.APLOSS.DELTA``).
    """

    def __init__(self, *, delta: float = 1.0, smooth_l1_beta: float = 1.0, **kwargs):
        super().__init__(smooth_l1_beta=smooth_l1_beta, **kwargs)
        if not delta > 0:
            raise ValueError(f"MODEL.APLOSS.DELTA = {delta}; expected > 0")
        self.delta = float(delta)

    @classmethod
    def from_config(cls, cfg) -> "APLossRetinaNet":
        """The detector of ``MODEL.RETINANET`` (head, anchors, assigner, box coder, inference)
        and ``MODEL.APLOSS.{DELTA, SMOOTH_L1_BETA, REG_WEIGHT}``."""
        a = cfg.MODEL.APLOSS
        kwargs = _ranking_kwargs(cls.config_kwargs(cfg))
        return cls(delta=a.DELTA, smooth_l1_beta=a.SMOOTH_L1_BETA, reg_weight=a.REG_WEIGHT,
                   **kwargs)

    def losses(self, outputs: DenseOutputs, targets: BatchTargets) -> Dict[str, Tensor]:
        labels = ranking_labels(targets.labels, self.num_classes)
        loss_cls = ap_loss(outputs.logits, labels, delta=self.delta)
        fg = targets.positive.reshape(-1)
        anchors = outputs.priors.tensor.expand(len(targets), -1, -1).reshape(-1, 4)[fg]
        loss_box = smooth_l1_loss(
            outputs.deltas.reshape(-1, 4)[fg],
            self.box_coder.get_deltas(anchors, targets.matched_boxes.reshape(-1, 4)[fg]),
            beta=self.smooth_l1_beta, reduction="sum")
        # Mean over the 4 coordinates of every positive (the public code's normaliser).
        normalizer = 4 * self.normalizer(int(fg.sum()))
        return {"loss_cls": loss_cls, "loss_box_reg": self.reg_weight * loss_box / normalizer}
