"""RetinaNet: focal loss for dense object detection (arXiv 1708.02002).

A anchors per location on P3-P7, towers without norm, K sigmoid outputs per anchor, max-IoU
matching with ignore regions (IoA), focal loss / num_pos and smooth L1 (beta 0.1) on
``Box2BoxTransform`` deltas, or GIoU on the decoded boxes (``BBOX_REG_LOSS_TYPE``).

Shape vocabulary: N images, M gts of one image (ignore regions included), R anchors of one
image (all levels, H_l * W_l * A each), A anchors per location, K classes, P positives.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

from crowdloss.modeling.anchors import AnchorGenerator
from crowdloss.modeling.assigners import MaxIoUAssigner
from crowdloss.modeling.box_coder import Box2BoxTransform
from crowdloss.modeling.heads import RetinaNetHead
from crowdloss.modeling.losses import iou_loss, smooth_l1_loss
from crowdloss.structures import Instances

from .dense_detector import DenseDetector, build_backbone_from_cfg, cfg_get
from .fcos import matched_targets

__all__ = ["RetinaNet"]

_REG_LOSS_TYPES = ("smooth_l1", "giou")


class RetinaNet(DenseDetector):
    """RetinaNet detector.

    Args:
        backbone, head_in_features, pixel_mean, pixel_std, num_classes, score_thresh_test,
            topk_candidates_test, nms_thresh_test, max_detections_per_image, norm_sync:
            see ``DenseDetector``.
        head: a ``RetinaNetHead`` returning (logits, deltas[, quality]) per level.
        anchor_generator: per-level anchors, ``num_anchors`` A per location.
        box_coder: ``Box2BoxTransform`` between anchors and boxes.
        assigner: object with ``assign(anchors, gt_boxes, gt_classes)``.
        focal_loss_alpha, focal_loss_gamma: focal loss parameters.
        smooth_l1_beta: smooth L1 transition point (0 = L1).
        bbox_reg_loss_type: "smooth_l1" on deltas or "giou" on decoded boxes.
    """

    with_quality = False  # an IoU branch on the box tower (LLARetinaNet sets it)

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        head_in_features: Sequence[str],
        anchor_generator: AnchorGenerator,
        box_coder: Box2BoxTransform,
        assigner,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        smooth_l1_beta: float = 0.1,
        bbox_reg_loss_type: str = "smooth_l1",
        score_thresh_test: float = 0.05,
        topk_candidates_test: int = 1000,
        nms_thresh_test: float = 0.5,
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
        if bbox_reg_loss_type not in _REG_LOSS_TYPES:
            raise ValueError(
                f"MODEL.RETINANET.BBOX_REG_LOSS_TYPE must be one of {_REG_LOSS_TYPES}, got "
                f"{bbox_reg_loss_type!r}"
            )
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.assigner = assigner
        self.focal_loss_alpha = float(focal_loss_alpha)
        self.focal_loss_gamma = float(focal_loss_gamma)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.bbox_reg_loss_type = bbox_reg_loss_type

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
            ignore_ioa_thresh=cfg_get(r, "IGNORE_IOA_THRESH", 0.5),
        )

    @classmethod
    def build_head(cls, cfg, input_shape, num_anchors: int) -> nn.Module:
        r = cfg.MODEL.RETINANET
        return RetinaNetHead(
            input_shape=input_shape,
            num_classes=r.NUM_CLASSES,
            num_anchors=num_anchors,
            num_convs=r.NUM_CONVS,
            head_channels=cfg_get(r, "HEAD_CHANNELS", None),
            prior_prob=r.PRIOR_PROB,
            norm=cfg_get(r, "NORM", ""),
            with_quality=cls.with_quality,
        )

    @classmethod
    def from_config_kwargs(cls, cfg) -> dict:
        """Constructor arguments from ``MODEL.RETINANET.*`` / ``MODEL.ANCHOR_GENERATOR.*``
        (shared with ``LLARetinaNet``)."""
        r = cfg.MODEL.RETINANET
        backbone = build_backbone_from_cfg(cfg)
        shapes = backbone.output_shape()
        missing = [name for name in r.IN_FEATURES if name not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.RETINANET.IN_FEATURES {missing} are not backbone outputs {sorted(shapes)}"
            )
        input_shape = [shapes[name] for name in r.IN_FEATURES]
        g = cfg.MODEL.ANCHOR_GENERATOR
        anchor_generator = AnchorGenerator(
            sizes=g.SIZES,
            aspect_ratios=g.ASPECT_RATIOS,
            strides=[s.stride for s in input_shape],
            offset=cfg_get(g, "OFFSET", 0.0),
        )
        return dict(
            backbone=backbone,
            head=cls.build_head(cfg, input_shape, anchor_generator.num_anchors),
            head_in_features=r.IN_FEATURES,
            anchor_generator=anchor_generator,
            box_coder=Box2BoxTransform(weights=r.BBOX_REG_WEIGHTS),
            assigner=cls.build_assigner(cfg),
            num_classes=r.NUM_CLASSES,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            focal_loss_alpha=r.FOCAL_LOSS_ALPHA,
            focal_loss_gamma=r.FOCAL_LOSS_GAMMA,
            score_thresh_test=r.SCORE_THRESH_TEST,
            topk_candidates_test=r.TOPK_CANDIDATES_TEST,
            nms_thresh_test=r.NMS_THRESH_TEST,
            max_detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            norm_sync=cfg_get(r, "NORM_SYNC", True),
        )

    @classmethod
    def from_config(cls, cfg):
        """Build from a config with ``MODEL.RETINANET.*`` (RetinaNetConfig)."""
        r = cfg.MODEL.RETINANET
        return cls(
            smooth_l1_beta=r.SMOOTH_L1_LOSS_BETA,
            bbox_reg_loss_type=cfg_get(r, "BBOX_REG_LOSS_TYPE", "smooth_l1"),
            **cls.from_config_kwargs(cfg),
        )

    # --------------------------------------------------------------- training
    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return self.box_coder.apply_deltas(deltas, anchors)

    def forward_training(self, images, image_sizes, features, predictions, gt_instances):
        anchors = torch.cat(self.anchor_generator(features))
        logits, deltas = self.transpose_dense_predictions(predictions[:2], [self.num_classes, 4])
        labels, boxes = [], []
        with torch.no_grad():
            for gt in gt_instances:
                result = self.assigner.assign(anchors, gt.gt_boxes, gt.gt_classes)
                labels_i, boxes_i = matched_targets(result, gt, self.num_classes, len(anchors))
                labels.append(labels_i)
                boxes.append(boxes_i)
        return self.losses(anchors, torch.stack(labels), torch.stack(boxes), logits, deltas)

    def losses(self, anchors, gt_labels, gt_boxes, logits, deltas) -> Dict[str, torch.Tensor]:
        """Focal loss over non-ignored anchors and box loss over positives, both / num_pos.

        Args:
            anchors: (R, 4); gt_labels: (N, R); gt_boxes: (N, R, 4);
            logits: (N, R, K); deltas: (N, R, 4).
        """
        n = gt_labels.shape[0]
        gt_labels = gt_labels.flatten()
        fg = (gt_labels >= 0) & (gt_labels != self.num_classes)
        normalizer = self.normalizer(int(fg.sum()))
        loss_cls = self.focal_classification_loss(
            logits.reshape(-1, self.num_classes), gt_labels, normalizer
        )

        fg_anchors = anchors.expand(n, -1, -1).reshape(-1, 4)[fg]
        fg_gt_boxes = gt_boxes.reshape(-1, 4)[fg]
        fg_deltas = deltas.reshape(-1, 4)[fg]
        if self.bbox_reg_loss_type == "smooth_l1":
            loss_box_reg = smooth_l1_loss(
                fg_deltas,
                self.box_coder.get_deltas(fg_anchors, fg_gt_boxes),
                beta=self.smooth_l1_beta,
                reduction="sum",
            )
        else:
            loss_box_reg = iou_loss(
                self.decode(fg_deltas, fg_anchors), fg_gt_boxes, loss_type="giou", reduction="sum"
            )
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg / normalizer}

    # -------------------------------------------------------------- inference
    def forward_inference(self, image_sizes, features, predictions) -> List[Instances]:
        anchors_per_level = self.anchor_generator(features)
        flat = self.transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1][: len(predictions)]
        )
        quality = flat[2] if len(flat) > 2 else None
        return self.split_and_infer(anchors_per_level, image_sizes, flat[0], flat[1], quality)
