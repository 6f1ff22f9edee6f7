"""Region Proposal Network (Faster R-CNN, arXiv 1506.01497) on FPN levels (arXiv 1612.03144),
ignore-aware, detectron2 / cvpods semantics.

The RPN is a dense head with one class (object or not), so it reuses the dense detectors'
pieces: an ``AnchorGenerator`` (``Priors``, A anchors per cell on every level), the
``MaxIoUAssigner`` (IoU 0.7 / 0.3, every GT also takes its best anchors, ignore regions by
IoA), the ``Box2BoxTransform`` and the (N, A*K, H, W) -> (N, R, K) layout of
``permute_to_N_R_K``. What it adds is the anchor sampling (256 per image, at most half
positive), the losses and the proposal selection (``find_top_rpn_proposals``).

Shape vocabulary: N images, L levels, A anchors per cell, R anchors of one image (all levels,
level order, then row, column, anchor), R_l those of level l, k_l = min(pre-NMS top-k, R_l)
candidates kept on level l, M gts of one image (ignore regions included), P proposals of one
image.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crowdloss.ops import batched_nms, clip_boxes, nonempty_boxes
from crowdloss.structures import Instances, ShapeSpec

from ..anchors import AnchorGenerator
from ..assigners import MaxIoUAssigner
from ..box_coder import Box2BoxTransform
from ..dense_outputs import permute_to_N_R_K
from ..losses import smooth_l1_loss
from ..priors import Priors
from ..sampling import subsample_labels

__all__ = ["StandardRPNHead", "RPN", "find_top_rpn_proposals"]


@torch.no_grad()
def find_top_rpn_proposals(
    proposals: Sequence[Tensor],
    pred_objectness_logits: Sequence[Tensor],
    image_sizes: Sequence[Tuple[int, int]],
    *,
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> List[Instances]:
    """The proposals of each image.

    1. On every level, the ``pre_nms_topk`` anchors of highest objectness (per image; a level
       with fewer anchors keeps them all).
    2. Per image, over the candidates of all levels: drop non-finite boxes or scores (an error
       in training, where it means the run has diverged), clip the boxes to the image's
       unpadded size, drop those whose width or height is not above ``min_box_size``.
    3. NMS at ``nms_thresh`` within each level (boxes of different levels never suppress each
       other), then the ``post_nms_topk`` best of all levels together, per image.

    Args:
        proposals: L tensors (N, R_l, 4), the decoded boxes of every anchor.
        pred_objectness_logits: L tensors (N, R_l).
        image_sizes: N unpadded (h, w).
        nms_thresh, pre_nms_topk, post_nms_topk, min_box_size: see above.
        training: whether non-finite predictions raise (True) or are dropped (False).

    Returns:
        N ``Instances`` with ``proposal_boxes`` (P, 4) and ``objectness_logits`` (P,), sorted
        by objectness, highest first.
    """
    if len(proposals) != len(pred_objectness_logits) or not proposals:
        raise ValueError(f"find_top_rpn_proposals: need one box and one logit tensor per level, "
                         f"got {len(proposals)} and {len(pred_objectness_logits)}")
    num_images = len(image_sizes)
    device = proposals[0].device
    batch_idx = torch.arange(num_images, device=device)
    top_scores, top_boxes, level_ids = [], [], []
    for level, (boxes, logits) in enumerate(zip(proposals, pred_objectness_logits)):
        if boxes.shape[:2] != logits.shape or boxes.shape[0] != num_images:
            raise ValueError(f"find_top_rpn_proposals: level {level} has boxes "
                             f"{tuple(boxes.shape)} and logits {tuple(logits.shape)} for "
                             f"{num_images} images")
        k = min(int(pre_nms_topk), logits.shape[1])
        scores, idx = logits.topk(k, dim=1)  # (N, k_l), sorted
        top_scores.append(scores)
        top_boxes.append(boxes[batch_idx[:, None], idx])  # (N, k_l, 4)
        level_ids.append(torch.full((k,), level, dtype=torch.long, device=device))
    top_scores = torch.cat(top_scores, dim=1)
    top_boxes = torch.cat(top_boxes, dim=1)
    level_ids = torch.cat(level_ids)

    results = []
    for n, image_size in enumerate(image_sizes):
        boxes, scores, levels = top_boxes[n], top_scores[n], level_ids
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if not bool(finite.all()):
            if training:
                raise FloatingPointError(
                    "RPN: predicted proposal boxes or objectness logits contain Inf/NaN in "
                    "training: the run has diverged (lower SOLVER.OPTIMIZER.BASE_LR or lengthen "
                    "the warm-up)")
            boxes, scores, levels = boxes[finite], scores[finite], levels[finite]
        boxes = clip_boxes(boxes, image_size)
        keep = nonempty_boxes(boxes, threshold=min_box_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, nms_thresh)[: int(post_nms_topk)]
        results.append(Instances(tuple(image_size), proposal_boxes=boxes[keep],
                                 objectness_logits=scores[keep]))
    return results


class StandardRPNHead(nn.Module):
    """One 3x3 conv + ReLU shared by both outputs, then a 1x1 conv to A objectness logits and
    one to A x 4 anchor deltas; the same weights on every level. Weights N(0, 0.01), biases 0.

    Args:
        in_channels: channels of every input level (the FPN width).
        num_anchors: A.
        box_dim: 4 (dx, dy, dw, dh).
    """

    def __init__(self, *, in_channels: int, num_anchors: int, box_dim: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * box_dim, kernel_size=1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """L maps (N, C, H_l, W_l) -> L logits (N, A, H_l, W_l) and L deltas (N, A*4, ...)."""
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


class RPN(nn.Module):
    """Proposals and the RPN losses.

    Args:
        in_features: backbone maps the RPN runs on, finest first (p2-p6).
        head: ``StandardRPNHead``.
        anchor_generator: one stride per input map, the same A on every level.
        anchor_assigner: labels the anchors of one image (a ``MaxIoUAssigner``).
        box2box_transform: anchor deltas (weights 1, 1, 1, 1).
        batch_size_per_image: anchors sampled per image for the losses (256).
        positive_fraction: the largest positive share of them (0.5).
        pre_nms_topk, post_nms_topk: (train, test) candidates kept per level before NMS, and
            proposals kept per image after it.
        nms_thresh: IoU of the per-level NMS (0.7).
        min_box_size: proposals of width or height not above this (after clipping) are dropped.
        smooth_l1_beta: transition point of the box loss (0 = L1).
        loss_weight: multiplier of both RPN losses.
    """

    def __init__(self, *, in_features: Sequence[str], head: nn.Module,
                 anchor_generator: AnchorGenerator, anchor_assigner, box2box_transform,
                 batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_topk: Tuple[int, int] = (2000, 1000),
                 post_nms_topk: Tuple[int, int] = (1000, 1000), nms_thresh: float = 0.7,
                 min_box_size: float = 0.0, smooth_l1_beta: float = 0.0,
                 loss_weight: float = 1.0):
        super().__init__()
        if len(in_features) != len(anchor_generator.strides):
            raise ValueError(f"RPN: {len(in_features)} input maps {list(in_features)} but the "
                             f"anchor generator has {len(anchor_generator.strides)} levels "
                             "(MODEL.ANCHOR_GENERATOR.SIZES needs one list per level)")
        if batch_size_per_image < 1 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"MODEL.RPN.BATCH_SIZE_PER_IMAGE must be >= 1 and POSITIVE_FRACTION "
                             f"in [0, 1], got {batch_size_per_image}, {positive_fraction}")
        if min(*pre_nms_topk, *post_nms_topk) < 1:
            raise ValueError(f"MODEL.RPN.PRE/POST_NMS_TOPK_TRAIN/TEST must be >= 1, got "
                             f"{pre_nms_topk}, {post_nms_topk}")
        self.in_features = list(in_features)
        self.rpn_head = head
        self.anchor_generator = anchor_generator
        self.anchor_assigner = anchor_assigner
        self.box2box_transform = box2box_transform
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.pre_nms_topk = {True: int(pre_nms_topk[0]), False: int(pre_nms_topk[1])}
        self.post_nms_topk = {True: int(post_nms_topk[0]), False: int(post_nms_topk[1])}
        self.nms_thresh = float(nms_thresh)
        self.min_box_size = float(min_box_size)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.loss_weight = float(loss_weight)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> "RPN":
        """From ``MODEL.RPN.*``, ``MODEL.ANCHOR_GENERATOR.*``, ``MODEL.PROPOSAL_GENERATOR.*``."""
        r = cfg.MODEL.RPN
        missing = [f for f in r.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.RPN.IN_FEATURES {missing} are not backbone outputs "
                             f"{sorted(input_shape)}")
        shapes = [input_shape[f] for f in r.IN_FEATURES]
        if len({s.channels for s in shapes}) != 1:
            raise ValueError(f"RPN: MODEL.RPN.IN_FEATURES {list(r.IN_FEATURES)} must have equal "
                             f"channels (one head for all levels), got {[s.channels for s in shapes]}")
        thresholds, labels = list(r.IOU_THRESHOLDS), list(r.IOU_LABELS)
        if len(thresholds) != 2 or labels != [0, -1, 1]:
            raise ValueError("MODEL.RPN.IOU_THRESHOLDS must be [neg, pos] with IOU_LABELS "
                             f"[0, -1, 1], got {thresholds} and {labels}")
        g = cfg.MODEL.ANCHOR_GENERATOR
        anchors = AnchorGenerator(sizes=g.SIZES, aspect_ratios=g.ASPECT_RATIOS,
                                  strides=[s.stride for s in shapes], offset=g.OFFSET)
        return cls(
            in_features=r.IN_FEATURES,
            head=StandardRPNHead(in_channels=shapes[0].channels, num_anchors=anchors.num_anchors),
            anchor_generator=anchors,
            anchor_assigner=MaxIoUAssigner(neg_iou_thresh=thresholds[0],
                                           pos_iou_thresh=thresholds[1],
                                           allow_low_quality_matches=True,
                                           ignore_ioa_thresh=r.IGNORE_IOA_THRESH),
            box2box_transform=Box2BoxTransform(weights=r.BBOX_REG_WEIGHTS),
            batch_size_per_image=r.BATCH_SIZE_PER_IMAGE,
            positive_fraction=r.POSITIVE_FRACTION,
            pre_nms_topk=(r.PRE_NMS_TOPK_TRAIN, r.PRE_NMS_TOPK_TEST),
            post_nms_topk=(r.POST_NMS_TOPK_TRAIN, r.POST_NMS_TOPK_TEST),
            nms_thresh=r.NMS_THRESH,
            min_box_size=cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
            smooth_l1_beta=r.SMOOTH_L1_BETA,
            loss_weight=r.LOSS_WEIGHT,
        )

    # ---------------------------------------------------------------- forward
    def forward(self, features: Dict[str, Tensor], image_sizes: Sequence[Tuple[int, int]],
                gt_instances: Optional[List[Instances]] = None
                ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """Proposals of every image, and the losses in training.

        Args:
            features: backbone outputs by name.
            image_sizes: N unpadded (h, w).
            gt_instances: N ``Instances`` with ``gt_boxes`` / ``gt_classes`` (-1 = ignore
                region); needed in training.

        Returns:
            N ``Instances`` (``proposal_boxes`` (P, 4), ``objectness_logits`` (P,)), detached,
            and ``{"loss_rpn_cls", "loss_rpn_loc"}`` (empty at inference).
        """
        maps = [features[f] for f in self.in_features]
        logits, deltas = self.rpn_head(maps)
        priors = self.anchor_generator(maps)
        # float32 so that the losses and the NMS stay exact under AMP.
        logits = [permute_to_N_R_K(x, 1).squeeze(2).float() for x in logits]  # L x (N, R_l)
        deltas = [permute_to_N_R_K(x, 4).float() for x in deltas]  # L x (N, R_l, 4)
        losses = {}
        if self.training:
            if gt_instances is None:
                raise ValueError("RPN: training needs gt_instances")
            labels, matched = self.label_and_sample_anchors(priors, gt_instances)
            losses = self.losses(priors, torch.cat(logits, 1), torch.cat(deltas, 1), labels,
                                 matched)
        with torch.no_grad():
            # The proposals are constants for the ROI heads (approximate joint training).
            boxes = [self.box2box_transform.apply_deltas(d.detach(), a)
                     for d, a in zip(deltas, priors.per_level())]
            proposals = find_top_rpn_proposals(
                boxes, [x.detach() for x in logits], image_sizes,
                nms_thresh=self.nms_thresh, pre_nms_topk=self.pre_nms_topk[self.training],
                post_nms_topk=self.post_nms_topk[self.training],
                min_box_size=self.min_box_size, training=self.training)
        return proposals, losses

    @torch.no_grad()
    def label_and_sample_anchors(self, priors: Priors, gt_instances: List[Instances]
                                 ) -> Tuple[Tensor, Tensor]:
        """Assign the anchors of every image and sample the ones the losses see.

        Returns:
            labels (N, R): 1 sampled positive, 0 sampled negative, -1 not sampled (grey zone,
            covered by an ignore region, or left out by the sampling); matched (N, R, 4): the
            GT box of each positive (zeros elsewhere).
        """
        all_labels, all_matched = [], []
        for gt in gt_instances:
            result = self.anchor_assigner.assign(priors, gt.gt_boxes, gt.gt_classes)
            labels = torch.zeros_like(result.gt_inds)
            labels[result.ignored] = -1
            positive = result.positive
            labels[positive] = 1
            pos, neg = subsample_labels(labels, self.batch_size_per_image,
                                        self.positive_fraction, 0)
            labels.fill_(-1)
            labels[pos] = 1
            labels[neg] = 0
            matched = priors.tensor.new_zeros((len(priors), 4))
            if bool(positive.any()):
                matched[positive] = gt.gt_boxes[result.gt_inds[positive]].to(matched.dtype)
            all_labels.append(labels)
            all_matched.append(matched)
        return torch.stack(all_labels), torch.stack(all_matched)

    def losses(self, priors: Priors, logits: Tensor, deltas: Tensor, labels: Tensor,
               matched: Tensor) -> Dict[str, Tensor]:
        """Binary cross-entropy over the sampled anchors and smooth L1 over the sampled
        positives' deltas, both summed and divided by ``batch_size_per_image`` x N (as
        detectron2: a fixed normaliser, whatever the number actually sampled), times
        ``loss_weight``.

        Args:
            logits: (N, R); deltas: (N, R, 4); labels, matched: see ``label_and_sample_anchors``.
        """
        valid = labels >= 0
        pos = labels == 1
        loss_cls = F.binary_cross_entropy_with_logits(logits[valid], labels[valid].to(logits.dtype),
                                                      reduction="sum")
        anchors = priors.tensor.expand(labels.shape[0], -1, -1)
        target = self.box2box_transform.get_deltas(anchors[pos], matched[pos])
        loss_loc = smooth_l1_loss(deltas[pos], target, beta=self.smooth_l1_beta, reduction="sum")
        normalizer = self.loss_weight / (self.batch_size_per_image * labels.shape[0])
        return {"loss_rpn_cls": loss_cls * normalizer, "loss_rpn_loc": loss_loc * normalizer}
