"""ROI heads of Faster R-CNN with FPN (arXiv 1506.01497, 1612.03144), ignore-aware, with the
Repulsion Loss (arXiv 1711.07752) as an option; detectron2 / cvpods ``StandardROIHeads``
semantics for the box branch.

Training, per image: the valid GT boxes join the proposals; a ``MaxIoUAssigner`` labels each
proposal (IoU >= 0.5 foreground of its best GT, below background, no low-quality matches);
proposals covered by an ignore region (IoA > 0.5) that are not foreground are excluded, so they
are never sampled as background; 512 are sampled, at most 25 % foreground. Their features are
pooled from P2-P5 (level by box size, RoIAlign 7 x 7), go through the box head and the
predictor, and give ``loss_cls`` / ``loss_box_reg`` (+ ``loss_repgt`` / ``loss_repbox``).
Inference: the same on every proposal, then ``fast_rcnn_inference_single_image``.

Shape vocabulary: N images, M gts of one image (ignore regions included), R proposals of one
image (GT boxes appended in training), S sampled ROIs of one image, B = sum S over the batch,
K classes, J = K or 1 box outputs per ROI.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from crowdloss.structures import Instances, ShapeSpec

from ..assigners import MaxIoUAssigner
from ..box_coder import Box2BoxTransform
from ..poolers import ROIPooler
from ..priors import Priors
from ..sampling import subsample_labels
from .fast_rcnn import (FastRCNNConvFCHead, FastRCNNOutputLayers,
                        fast_rcnn_inference_single_image, fast_rcnn_losses)
from .repulsion import ROIRepulsion

__all__ = ["StandardROIHeads"]

_POOLER_TYPES = {"ROIAlignV2": True, "ROIAlign": False}  # name -> aligned


class StandardROIHeads(nn.Module):
    """The box branch of Faster R-CNN.

    Args:
        in_features: backbone maps pooled from, finest first (p2-p5).
        box_pooler: ``ROIPooler`` over those maps.
        box_head: pooled features -> (B, F) (``FastRCNNConvFCHead``).
        box_predictor: ``FastRCNNOutputLayers``.
        proposal_matcher: labels proposals against the GTs (``MaxIoUAssigner``).
        box2box_transform: proposal deltas (weights 10, 10, 5, 5).
        num_classes: K.
        batch_size_per_image: ROIs sampled per image (512).
        positive_fraction: the largest foreground share of them (0.25).
        proposal_append_gt: add the valid GT boxes to the proposals in training.
        smooth_l1_beta: transition point of the box loss (0 = L1).
        score_thresh_test, nms_thresh_test, detections_per_image: inference (0.05, 0.5, 100).
        repulsion: an ``ROIRepulsion`` whose terms are added to the losses, or None.
    """

    def __init__(self, *, in_features: Sequence[str], box_pooler: ROIPooler,
                 box_head: nn.Module, box_predictor: FastRCNNOutputLayers, proposal_matcher,
                 box2box_transform, num_classes: int, batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, proposal_append_gt: bool = True,
                 smooth_l1_beta: float = 0.0, score_thresh_test: float = 0.05,
                 nms_thresh_test: float = 0.5, detections_per_image: int = 100,
                 repulsion: Optional[ROIRepulsion] = None):
        super().__init__()
        if batch_size_per_image < 1 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE must be >= 1 and "
                             f"POSITIVE_FRACTION in [0, 1], got {batch_size_per_image}, "
                             f"{positive_fraction}")
        self.in_features = list(in_features)
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.proposal_matcher = proposal_matcher
        self.box2box_transform = box2box_transform
        self.num_classes = int(num_classes)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.proposal_append_gt = bool(proposal_append_gt)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.score_thresh_test = float(score_thresh_test)
        self.nms_thresh_test = float(nms_thresh_test)
        self.detections_per_image = int(detections_per_image)
        self.repulsion = repulsion

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> "StandardROIHeads":
        """From ``MODEL.ROI_HEADS.*``, ``MODEL.ROI_BOX_HEAD.*``, ``MODEL.REPULSION.*`` and
        ``TEST.DETECTIONS_PER_IMAGE``."""
        r, b = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD
        missing = [f for f in r.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES {missing} are not backbone outputs "
                             f"{sorted(input_shape)}")
        shapes = [input_shape[f] for f in r.IN_FEATURES]
        if len({s.channels for s in shapes}) != 1:
            raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES must have equal channels, got "
                             f"{[s.channels for s in shapes]}")
        if len(r.IOU_THRESHOLDS) != 1 or list(r.IOU_LABELS) != [0, 1]:
            raise ValueError("MODEL.ROI_HEADS.IOU_THRESHOLDS must be one threshold with "
                             f"IOU_LABELS [0, 1], got {list(r.IOU_THRESHOLDS)} and "
                             f"{list(r.IOU_LABELS)}")
        if b.POOLER_TYPE not in _POOLER_TYPES:
            raise ValueError(f"MODEL.ROI_BOX_HEAD.POOLER_TYPE must be one of "
                             f"{sorted(_POOLER_TYPES)}, got {b.POOLER_TYPE!r}")
        pooler = ROIPooler(output_size=b.POOLER_RESOLUTION,
                           scales=[1.0 / s.stride for s in shapes],
                           sampling_ratio=b.POOLER_SAMPLING_RATIO,
                           aligned=_POOLER_TYPES[b.POOLER_TYPE])
        head = FastRCNNConvFCHead(in_channels=shapes[0].channels,
                                  pooler_resolution=b.POOLER_RESOLUTION,
                                  conv_dims=[b.CONV_DIM] * b.NUM_CONV,
                                  fc_dims=[b.FC_DIM] * b.NUM_FC, norm=b.NORM)
        box2box = Box2BoxTransform(weights=b.BBOX_REG_WEIGHTS)
        threshold = float(r.IOU_THRESHOLDS[0])
        return cls(
            in_features=r.IN_FEATURES,
            box_pooler=pooler,
            box_head=head,
            box_predictor=FastRCNNOutputLayers(input_size=head.output_size,
                                               num_classes=r.NUM_CLASSES,
                                               cls_agnostic_bbox_reg=b.CLS_AGNOSTIC_BBOX_REG),
            proposal_matcher=MaxIoUAssigner(pos_iou_thresh=threshold, neg_iou_thresh=threshold,
                                            allow_low_quality_matches=False,
                                            ignore_ioa_thresh=r.IGNORE_IOA_THRESH),
            box2box_transform=box2box,
            num_classes=r.NUM_CLASSES,
            batch_size_per_image=r.BATCH_SIZE_PER_IMAGE,
            positive_fraction=r.POSITIVE_FRACTION,
            proposal_append_gt=r.PROPOSAL_APPEND_GT,
            smooth_l1_beta=b.SMOOTH_L1_BETA,
            score_thresh_test=r.SCORE_THRESH_TEST,
            nms_thresh_test=r.NMS_THRESH_TEST,
            detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            repulsion=ROIRepulsion.from_config(cfg, box2box),
        )

    # ---------------------------------------------------------------- forward
    def forward(self, features: Dict[str, Tensor], proposals: List[Instances],
                gt_instances: Optional[List[Instances]] = None
                ) -> Union[Dict[str, Tensor], List[Instances]]:
        """Training: the losses (needs ``gt_instances``). Eval: N ``Instances`` of detections
        at the network-input size."""
        if self.training:
            if gt_instances is None:
                raise ValueError("StandardROIHeads: training needs gt_instances")
            proposals = self.label_and_sample_proposals(proposals, gt_instances)
        logits, deltas = self._box_outputs(features, [p.proposal_boxes for p in proposals])
        if not self.training:
            return self.inference(logits, deltas, proposals)
        cat = {k: torch.cat([p.get(k) for p in proposals]) for k in
               ("proposal_boxes", "gt_classes", "gt_boxes")}
        losses = fast_rcnn_losses(logits, deltas, cat["proposal_boxes"], cat["gt_classes"],
                                  cat["gt_boxes"], box2box_transform=self.box2box_transform,
                                  smooth_l1_beta=self.smooth_l1_beta)
        if self.repulsion is not None:
            losses.update(self.repulsion(deltas, proposals, gt_instances))
        return losses

    def _box_outputs(self, features: Dict[str, Tensor], boxes: List[Tensor]):
        """Pool, box head, predictor: (B, K + 1) logits and (B, J * 4) deltas, float32."""
        pooled = self.box_pooler([features[f] for f in self.in_features], boxes)
        logits, deltas = self.box_predictor(self.box_head(pooled))
        return logits.float(), deltas.float()

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances],
                                   gt_instances: List[Instances]) -> List[Instances]:
        """The sampled ROIs of every image.

        Returns:
            N ``Instances`` of S ROIs (foreground first) with ``proposal_boxes`` (S, 4),
            ``gt_classes`` (S,) (the GT class, K for background), ``gt_boxes`` (S, 4) (the
            matched GT, zeros for background) and ``gt_inds`` (S,) (index of the matched GT
            among all M of the image, -1 for background).
        """
        sampled = []
        for props, gt in zip(proposals, gt_instances):
            boxes = props.proposal_boxes
            if self.proposal_append_gt:
                valid = gt.gt_boxes[gt.gt_classes >= 0].to(boxes.dtype)
                boxes = torch.cat([boxes, valid])
            # The proposals of one image are a single-level prior set (the stride is unused).
            result = self.proposal_matcher.assign(Priors(boxes, [len(boxes)], [1]),
                                                  gt.gt_boxes, gt.gt_classes)
            labels = result.labels(gt.gt_classes, self.num_classes)  # class / K / -1
            fg, bg = subsample_labels(labels, self.batch_size_per_image,
                                      self.positive_fraction, self.num_classes)
            idx = torch.cat([fg, bg])
            gt_inds = result.gt_inds[idx]
            gt_inds[len(fg):] = -1
            gt_boxes = boxes.new_zeros((len(idx), 4))
            if len(fg):
                gt_boxes[: len(fg)] = gt.gt_boxes[gt_inds[: len(fg)]].to(boxes.dtype)
            sampled.append(Instances(props.image_size, proposal_boxes=boxes[idx],
                                     gt_classes=labels[idx], gt_boxes=gt_boxes,
                                     gt_inds=gt_inds))
        return sampled

    @torch.no_grad()
    def inference(self, logits: Tensor, deltas: Tensor,
                  proposals: List[Instances]) -> List[Instances]:
        """Per image: softmax scores, every class's box decoded from the proposal, then
        ``fast_rcnn_inference_single_image``."""
        counts = [len(p) for p in proposals]
        results = []
        for p, lg, dl in zip(proposals, logits.split(counts), deltas.split(counts)):
            boxes = self.box2box_transform.apply_deltas(dl, p.proposal_boxes)
            results.append(fast_rcnn_inference_single_image(
                boxes, lg.softmax(dim=-1), p.image_size, score_thresh=self.score_thresh_test,
                nms_thresh=self.nms_thresh_test, topk_per_image=self.detections_per_image))
        return results
