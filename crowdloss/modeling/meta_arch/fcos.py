"""FCOS: fully convolutional one-stage detection (arXiv 1904.01355), cvpods flavour.

One point per feature cell and level regresses the four distances to the sides of the box it
lies in. The published CrowdHuman baseline uses the "improvements": GN towers, centerness on
the box tower, ``NORM_REG_TARGETS`` (ltrb = ReLU(scale * x) * stride), center sampling and GIoU.

Shape vocabulary: N images, M gts of one image (ignore regions included), R points of one
image (all levels concatenated), R_l points of level l, K classes, P positives.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from crowdloss.modeling.assigners import FCOSAssigner
from crowdloss.modeling.box_coder import Shift2BoxTransform
from crowdloss.modeling.heads import FCOSHead
from crowdloss.modeling.losses import iou_loss
from crowdloss.modeling.shifts import ShiftGenerator
from crowdloss.structures import Instances

from .dense_detector import DenseDetector, build_backbone_from_cfg, cfg_get

__all__ = ["FCOS", "centerness_targets", "matched_targets"]


def centerness_targets(ltrb: torch.Tensor) -> torch.Tensor:
    """(P, 4) ltrb distances -> (P,) sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))."""
    ltrb = ltrb.clamp(min=0)
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values.clamp(min=1e-6)) * (
        tb.min(dim=1).values / tb.max(dim=1).values.clamp(min=1e-6)
    )
    return ratio.sqrt()


def matched_targets(result, gt: Instances, num_classes: int, num_points: int):
    """(R,) labels (class / K background / -1 ignored) and (R, 4) matched GT boxes (zeros
    where unmatched) of one image from an assigner's ``AssignResult``."""
    labels = result.labels(gt.gt_classes, num_classes)
    boxes = gt.gt_boxes.new_zeros((num_points, 4))
    if len(gt) > 0:
        matched = result.gt_inds >= 0
        boxes[matched] = gt.gt_boxes[result.gt_inds[matched]].to(boxes.dtype)
    return labels, boxes


class FCOS(DenseDetector):
    """FCOS detector: points, FCOS head with a centerness branch, ``FCOSAssigner``.

    Args:
        backbone, head_in_features, pixel_mean, pixel_std, num_classes, score_thresh_test,
            topk_candidates_test, nms_thresh_test, max_detections_per_image, norm_sync:
            see ``DenseDetector``.
        head: an ``FCOSHead`` (logits, ltrb, quality per level).
        fpn_strides: stride of each level.
        shift_generator: per-level points.
        box_coder: ``Shift2BoxTransform`` between ltrb and xyxy.
        assigner: object with ``assign(points_per_level, strides, gt_boxes, gt_classes)``.
        focal_loss_alpha, focal_loss_gamma: focal loss parameters.
        iou_loss_type: "iou" | "linear_iou" | "giou".
        reg_weight: multiplier of the box loss (1.0 FCOS, 2.0 ATSS).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        head_in_features: Sequence[str],
        fpn_strides: Sequence[int],
        shift_generator: nn.Module,
        box_coder: Shift2BoxTransform,
        assigner,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        iou_loss_type: str = "giou",
        reg_weight: float = 1.0,
        score_thresh_test: float = 0.05,
        topk_candidates_test: int = 1000,
        nms_thresh_test: float = 0.6,
        max_detections_per_image: int = 100,
        norm_sync: bool = True,
    ):
        super().__init__(
            backbone=backbone,
            head=head,
            head_in_features=head_in_features,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            num_classes=num_classes,
            score_thresh_test=score_thresh_test,
            topk_candidates_test=topk_candidates_test,
            nms_thresh_test=nms_thresh_test,
            max_detections_per_image=max_detections_per_image,
            norm_sync=norm_sync,
        )
        self.fpn_strides = [int(s) for s in fpn_strides]
        self.shift_generator = shift_generator
        self.box_coder = box_coder
        self.assigner = assigner
        self.focal_loss_alpha = float(focal_loss_alpha)
        self.focal_loss_gamma = float(focal_loss_gamma)
        self.iou_loss_type = iou_loss_type
        self.reg_weight = float(reg_weight)

    # ----------------------------------------------------------------- config
    @classmethod
    def build_assigner(cls, cfg):
        f = cfg.MODEL.FCOS
        return FCOSAssigner(
            strides=f.FPN_STRIDES,
            object_sizes_of_interest=f.OBJECT_SIZES_OF_INTEREST,
            center_sampling_radius=f.CENTER_SAMPLING_RADIUS,
        )

    @classmethod
    def default_reg_weight(cls, cfg) -> float:
        return cfg_get(cfg.MODEL.FCOS, "REG_WEIGHT", 1.0)

    @classmethod
    def from_config(cls, cfg):
        """Build from a config with ``MODEL.FCOS.*`` (FCOSConfig); ``cfg.build_backbone`` as
        attached by net.py."""
        return cls(**cls.from_config_kwargs(cfg))

    @classmethod
    def from_config_kwargs(cls, cfg) -> dict:
        """Constructor arguments from the config (shared with ATSS and LLAFCOS)."""
        f = cfg.MODEL.FCOS
        backbone = build_backbone_from_cfg(cfg)
        shapes = backbone.output_shape()
        missing = [name for name in f.IN_FEATURES if name not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.FCOS.IN_FEATURES {missing} are not backbone outputs {sorted(shapes)}"
            )
        head = FCOSHead(
            input_shape=[shapes[name] for name in f.IN_FEATURES],
            num_classes=f.NUM_CLASSES,
            fpn_strides=f.FPN_STRIDES,
            num_convs=f.NUM_CONVS,
            head_channels=cfg_get(f, "HEAD_CHANNELS", None),
            prior_prob=f.PRIOR_PROB,
            norm=cfg_get(f, "NORM", "GN"),
            norm_reg_targets=f.NORM_REG_TARGETS,
            centerness_on_reg=f.CENTERNESS_ON_REG,
        )
        return dict(
            backbone=backbone,
            head=head,
            head_in_features=f.IN_FEATURES,
            fpn_strides=f.FPN_STRIDES,
            shift_generator=ShiftGenerator(
                strides=f.FPN_STRIDES, offset=cfg.MODEL.SHIFT_GENERATOR.OFFSET
            ),
            box_coder=Shift2BoxTransform(weights=f.BBOX_REG_WEIGHTS),
            assigner=cls.build_assigner(cfg),
            num_classes=f.NUM_CLASSES,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            focal_loss_alpha=f.FOCAL_LOSS_ALPHA,
            focal_loss_gamma=f.FOCAL_LOSS_GAMMA,
            iou_loss_type=f.IOU_LOSS_TYPE,
            reg_weight=cls.default_reg_weight(cfg),
            score_thresh_test=f.SCORE_THRESH_TEST,
            topk_candidates_test=f.TOPK_CANDIDATES_TEST,
            nms_thresh_test=f.NMS_THRESH_TEST,
            max_detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            norm_sync=cfg_get(f, "NORM_SYNC", True),
        )

    # --------------------------------------------------------------- training
    def decode(self, deltas: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.box_coder.apply_deltas(deltas, points)

    def flatten_predictions(self, predictions):
        """Head output -> (N, R, K) logits, (N, R, 4) ltrb, (N, R, 1) quality logits."""
        return self.transpose_dense_predictions(predictions, [self.num_classes, 4, 1])

    @torch.no_grad()
    def label_points(self, points_per_level: List[torch.Tensor], gt_instances: List[Instances]):
        """Assign every point of every image: (N, R) labels, (N, R, 4) matched GT boxes."""
        num_points = sum(len(p) for p in points_per_level)
        labels, boxes = [], []
        for gt in gt_instances:
            result = self.assigner.assign(
                points_per_level, self.fpn_strides, gt.gt_boxes, gt.gt_classes
            )
            labels_i, boxes_i = matched_targets(result, gt, self.num_classes, num_points)
            labels.append(labels_i)
            boxes.append(boxes_i)
        return torch.stack(labels), torch.stack(boxes)

    def forward_training(self, images, image_sizes, features, predictions, gt_instances):
        points_per_level = self.shift_generator(features)
        logits, ltrb, quality = self.flatten_predictions(predictions)
        gt_labels, gt_boxes = self.label_points(points_per_level, gt_instances)
        points = torch.cat(points_per_level).expand(len(gt_instances), -1, -1)
        return self.losses(points, gt_labels, gt_boxes, logits, ltrb, quality)

    def losses(self, points, gt_labels, gt_boxes, logits, ltrb, quality) -> Dict[str, torch.Tensor]:
        """FCOS losses (cvpods): focal over non-ignored points / num_fg; GIoU weighted by the
        centerness target / sum of centerness targets (both rank-averaged); BCE centerness /
        num_fg.

        Args:
            points: (N, R, 2); gt_labels: (N, R); gt_boxes: (N, R, 4);
            logits: (N, R, K); ltrb: (N, R, 4); quality: (N, R, 1).
        """
        gt_labels = gt_labels.flatten()
        fg = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_fg = int(fg.sum())
        normalizer = self.normalizer(num_fg)
        loss_cls = self.focal_classification_loss(
            logits.reshape(-1, self.num_classes), gt_labels, normalizer
        )

        fg_points = points.reshape(-1, 2)[fg]
        fg_gt_boxes = gt_boxes.reshape(-1, 4)[fg]
        fg_pred_boxes = self.decode(ltrb.reshape(-1, 4)[fg], fg_points)
        ctr_target = centerness_targets(self.box_coder.get_deltas(fg_points, fg_gt_boxes))
        # The box loss is a centerness-weighted mean: normalised by the (rank-averaged) sum of
        # the weights rather than by num_fg, as in cvpods' FCOS.
        ctr_sum = self.normalizer(float(ctr_target.sum()), min_value=1e-6)
        loss_box_reg = (
            self.reg_weight
            * iou_loss(
                fg_pred_boxes,
                fg_gt_boxes,
                weight=ctr_target,
                loss_type=self.iou_loss_type,
                reduction="sum",
            )
            / ctr_sum
        )
        loss_centerness = (
            F.binary_cross_entropy_with_logits(
                quality.reshape(-1)[fg], ctr_target, reduction="sum"
            )
            / normalizer
        )
        return {
            "loss_cls": loss_cls,
            "loss_box_reg": loss_box_reg,
            "loss_centerness": loss_centerness,
        }

    # -------------------------------------------------------------- inference
    def forward_inference(self, image_sizes, features, predictions) -> List[Instances]:
        points_per_level = self.shift_generator(features)
        logits, ltrb, quality = self.flatten_predictions(predictions)
        return self.split_and_infer(points_per_level, image_sizes, logits, ltrb, quality)
