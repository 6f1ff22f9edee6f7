"""``DenseDetector``: the plumbing of the one-stage detectors (FCOS, ATSS, RetinaNet, LLA, SSD).

A dense detector is a backbone, a head that predicts at every prior of every level, a prior
generator (points or anchors), a box coder, one assigner and its losses. This base does the
shared part; a subclass writes ``losses(outputs, targets)`` (the small functions of
``modeling/losses`` it combines) and its ``from_config``:

    features -> head -> ``DenseOutputs`` (``modeling/dense_outputs.py``: priors + flattened
               predictions, boxes decoded on demand)
    training:  ``label_batch`` (the assigner on every image) -> ``BatchTargets``
               -> ``losses`` + any ``extra_losses`` (e.g. repulsion terms switched on by config)
    inference: per image, scores (sigmoid, or softmax with a background class) -> candidates
               above a threshold (top-k per level, or per class; k <= 0: all of them)
               -> decode -> clip -> NMS -> top D (SSD: NMS on the raw boxes, then clip)

Shape vocabulary: N images, R priors of one image (all levels concatenated, level order,
row-major inside a level, anchors of a location fastest), R_l those of level l, K classes,
C = K (sigmoid scoring) or K + 1 (softmax; background is the last column), D detections.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from crowdloss.ops import batched_nms, clip_boxes, nonempty_boxes
from crowdloss.structures import Instances
from crowdloss.utils import comm

from ..losses.repulsion import build_repulsion_losses
from ..dense_outputs import DenseOutputs, permute_to_N_R_K
from ..targets import BatchTargets, ImageTargets
from .base import Detector, build_backbone_from_cfg

if TYPE_CHECKING:  # for the annotation only; the code imports it where it is used
    from crowdloss.engine.class_remap import ClassChannels

__all__ = ["DenseDetector", "DenseOutputs", "permute_to_N_R_K", "dense_config_kwargs",
           "clip_to_padded", "TEST_CLIPS"]

_SCORINGS = ("sigmoid", "softmax")
_CANDIDATES = ("level", "class")
# "image": clip to the unpadded input and drop boxes left empty (mmdetection, cvpods);
# "padded": pytorch-retinanet's ClipBoxes, x1, y1 >= 0 and x2 <= W, y2 <= H of the PADDED
# batch, nothing dropped (the final rescale to the original image clips and drops anyway).
TEST_CLIPS = ("image", "padded")


def clip_to_padded(boxes: torch.Tensor, padded_size: Tuple[int, int]) -> torch.Tensor:
    """pytorch-retinanet's test-time clip: x1, y1 >= 0 and x2 <= W, y2 <= H (the padded batch's
    size); the other two bounds are left open, so a box wholly outside stays inverted."""
    h, w = padded_size
    return torch.stack([boxes[:, 0].clamp(min=0), boxes[:, 1].clamp(min=0),
                        boxes[:, 2].clamp(max=w), boxes[:, 3].clamp(max=h)], dim=1)


def dense_config_kwargs(cfg, node, key: str) -> Tuple[dict, list]:
    """Constructor arguments every dense detector reads the same way from its head's config
    node (``cfg.MODEL.FCOS``, ``cfg.MODEL.RETINANET``, ... named ``key`` in errors), and the
    ``ShapeSpec`` of each of the head's input levels. The repulsion terms that
    ``MODEL.REPULSION`` enables become ``extra_losses``."""
    backbone = build_backbone_from_cfg(cfg)
    shapes = backbone.output_shape()
    missing = [name for name in node.IN_FEATURES if name not in shapes]
    if missing:
        raise ValueError(f"{key}.IN_FEATURES {missing} are not backbone outputs {sorted(shapes)}")
    return dict(
        backbone=backbone,
        head_in_features=node.IN_FEATURES,
        num_classes=node.NUM_CLASSES,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        score_thresh_test=node.SCORE_THRESH_TEST,
        topk_candidates_test=node.TOPK_CANDIDATES_TEST,
        nms_thresh_test=node.NMS_THRESH_TEST,
        max_detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        norm_sync=node.NORM_SYNC,
        extra_losses=build_repulsion_losses(cfg),
        pad_mode=cfg.MODEL.PAD_MODE,
    ), [shapes[name] for name in node.IN_FEATURES]


class DenseDetector(Detector):
    """Base class of the dense (one-stage) detectors.

    Args:
        backbone, pixel_mean, pixel_std: see ``Detector``.
        head: module mapping the list of ``head_in_features`` maps to a tuple of per-level lists
            ``(logits (N, A_l*C, H_l, W_l), deltas (N, A_l*4, ...)[, quality (N, A_l, ...)])``.
        head_in_features: backbone outputs fed to the head, in level order.
        prior_generator: ``features -> Priors`` (``ShiftGenerator`` / ``AnchorGenerator``).
        box_coder: object with ``apply_deltas(deltas, priors)`` / ``get_deltas(priors, boxes)``.
        assigner: a ``BaseAssigner``; prediction-aware ones get the detached logits and boxes.
        num_classes: K.
        scoring: "sigmoid" (K independent logits) or "softmax" (K + 1, background last).
        score_thresh_test: class probability a candidate must exceed at inference.
        topk_candidates_test: candidates kept before NMS, per level or per class; <= 0 keeps
            every candidate above the threshold (pytorch-retinanet).
        candidates_per: "level" (top-k over a level's R_l x K scores: FCOS, RetinaNet) or
            "class" (top-k of each class over all priors: SSD).
        nms_thresh_test: IoU threshold of the class-aware NMS.
        max_detections_per_image: detections kept per image after NMS.
        norm_sync: average the loss normaliser over ranks instead of the local count.
        extra_losses: callables ``(outputs, targets, normalizer) -> {name: loss}`` added to the
            detector's own losses (terms switched on by config, e.g. repulsion).
        clip_before_nms: clip the decoded boxes to the input before NMS (True) or NMS the
            raw boxes and clip the survivors (False: SSD, whose fixed square input has no
            padding, as ssd.pytorch's ``Detect``).
        test_clip: "image" or "padded" (``TEST_CLIPS``).
        pad_mode: see ``Detector``.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        head_in_features: Sequence[str],
        prior_generator: nn.Module,
        box_coder,
        assigner,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        scoring: str = "sigmoid",
        score_thresh_test: float = 0.05,
        topk_candidates_test: int = 1000,
        candidates_per: str = "level",
        nms_thresh_test: float = 0.6,
        max_detections_per_image: int = 100,
        norm_sync: bool = True,
        extra_losses: Sequence[Callable] = (),
        clip_before_nms: bool = True,
        test_clip: str = "image",
        pad_mode: str = "ceil",
    ):
        super().__init__(backbone=backbone, pixel_mean=pixel_mean, pixel_std=pixel_std,
                         pad_mode=pad_mode)
        if scoring not in _SCORINGS or candidates_per not in _CANDIDATES:
            raise ValueError(f"DenseDetector: scoring must be one of {_SCORINGS} and "
                             f"candidates_per one of {_CANDIDATES}, got {scoring!r}, "
                             f"{candidates_per!r}")
        if test_clip not in TEST_CLIPS:
            raise ValueError(f"DenseDetector: test_clip must be one of {TEST_CLIPS}, got "
                             f"{test_clip!r}")
        self.test_clip = test_clip
        self.head = head
        self.head_in_features = list(head_in_features)
        self.check_in_features(self.head_in_features, "head IN_FEATURES")
        self.prior_generator = prior_generator
        self.box_coder = box_coder
        self.assigner = assigner
        self.num_classes = int(num_classes)
        self.scoring = scoring
        self.score_thresh_test = float(score_thresh_test)
        self.topk_candidates_test = int(topk_candidates_test)
        self.candidates_per = candidates_per
        self.nms_thresh_test = float(nms_thresh_test)
        self.max_detections_per_image = int(max_detections_per_image)
        self.norm_sync = bool(norm_sync)
        self.extra_losses = list(extra_losses)
        self.clip_before_nms = bool(clip_before_nms)

    @property
    def num_logits(self) -> int:
        """C: class outputs per prior (K, or K + 1 with a softmax background)."""
        return self.num_classes + (self.scoring == "softmax")

    def class_channel_layout(self) -> Dict[str, ClassChannels]:
        """State-dict key -> ``ClassChannels`` (A anchors x C logits) of every classifier
        tensor: the head's ``cls_score`` conv, or one per level (``PerLevelHead``). The
        weight loader re-orders them by class name for ``MODEL.WEIGHTS_CLASSES``."""
        from crowdloss.engine.class_remap import ClassChannels

        convs = getattr(self.head, "cls_score", None)
        if isinstance(convs, nn.Conv2d):
            named = [("head.cls_score", convs)]
        elif isinstance(convs, nn.ModuleList):
            named = [(f"head.cls_score.{i}", c) for i, c in enumerate(convs)]
        else:
            return {}
        layout = {}
        for prefix, conv in named:
            spec = ClassChannels(conv.out_channels // self.num_logits, self.num_classes,
                                 self.scoring == "softmax")
            for attr in ("weight", "bias"):
                if getattr(conv, attr, None) is not None:
                    layout[f"{prefix}.{attr}"] = spec
        return layout
    def set_iteration(self, iteration: int) -> None:
        """The training iteration about to run (the engine calls it before every step); passed
        on to an assigner whose rule changes during training (``WarmupAssigner``)."""
        setter = getattr(self.assigner, "set_iteration", None)
        if callable(setter):
            setter(int(iteration))

    # ---------------------------------------------------------------- outputs
    def dense_outputs(self, images: torch.Tensor) -> DenseOutputs:
        """Backbone + head + priors for a padded batch."""
        features = self.backbone(images)
        features = [features[f] for f in self.head_in_features]
        predictions = self.head(features)
        priors = self.prior_generator(features)
        dims = [self.num_logits, 4, 1][: len(predictions)]
        # float32 so that losses and prediction-aware assignment stay exact under AMP.
        flat = [torch.cat([permute_to_N_R_K(x, d) for x in per_level], dim=1).float()
                for per_level, d in zip(predictions, dims)]
        quality = flat[2] if len(flat) > 2 else None
        return DenseOutputs(priors, flat[0], flat[1], quality, self.box_coder.apply_deltas)

    # --------------------------------------------------------------- training
    def forward_train(self, images, image_sizes, gt_instances) -> Dict[str, torch.Tensor]:
        outputs = self.dense_outputs(images)
        targets = self.label_batch(outputs, gt_instances)
        losses = self.losses(outputs, targets)
        if self.extra_losses:
            normalizer = self.normalizer(targets.num_pos)
            for term in self.extra_losses:
                losses.update(term(outputs, targets, normalizer))
        return losses

    @torch.no_grad()
    def label_batch(self, outputs: DenseOutputs, gt_instances: List[Instances]) -> BatchTargets:
        """Run the assigner on every image; prediction-aware assigners get that image's
        detached logits and decoded boxes."""
        images = []
        for i, gt in enumerate(gt_instances):
            preds = {}
            if getattr(self.assigner, "uses_predictions", False):
                preds = dict(pred_logits=outputs.logits[i].detach(),
                             pred_boxes=outputs.pred_boxes[i].detach())
            result = self.assigner.assign(outputs.priors, gt.gt_boxes, gt.gt_classes, **preds)
            images.append(ImageTargets.from_assignment(result, gt.gt_boxes, gt.gt_classes,
                                                       self.num_classes))
        return BatchTargets(images, self.num_classes)

    def losses(self, outputs: DenseOutputs, targets: BatchTargets) -> Dict[str, torch.Tensor]:
        """The detector's own losses (flat dict of ``loss_*`` scalars)."""
        raise NotImplementedError

    def normalizer(self, num_fg: float, min_value: float = 1.0) -> float:
        """Loss normaliser ``max(num_fg averaged over ranks, min_value)`` (NORM_SYNC) or the
        local ``max(num_fg, min_value)``. Averaging makes the DDP gradient (mean over ranks)
        equal to that of one process on the whole batch."""
        value = torch.as_tensor(float(num_fg), dtype=torch.float32, device=self.device)
        if self.norm_sync:
            value = comm.all_reduce_mean(value)
        return max(float(value.item()), float(min_value))

    # -------------------------------------------------------------- inference
    def forward_test(self, images, image_sizes) -> List[Instances]:
        outputs = self.dense_outputs(images)
        padded = tuple(images.shape[-2:])
        return [self.inference_single_image(outputs, i, size, padded_size=padded)
                for i, size in enumerate(image_sizes)]

    def class_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, C) logits -> (R, K) class probabilities (background column dropped)."""
        if self.scoring == "softmax":
            return logits.softmax(dim=-1)[:, : self.num_classes]
        return logits.sigmoid()

    def inference_single_image(self, outputs: DenseOutputs, i: int,
                               image_size: Tuple[int, int],
                               padded_size: Optional[Tuple[int, int]] = None) -> Instances:
        """Detections of image ``i`` at its network-input size ``image_size`` (h, w);
        ``padded_size`` is the batch's (h, w), used by ``test_clip`` "padded".

        With a quality branch the score becomes sqrt(prob x sigmoid(quality)), applied after
        the threshold (cvpods).
        """
        sizes = outputs.priors.num_per_level
        scores = self.class_scores(outputs.logits[i])
        deltas = outputs.deltas[i]
        quality = None if outputs.quality is None else outputs.quality[i, :, 0].sigmoid()
        if self.candidates_per == "level":
            chunks = list(zip(scores.split(sizes), torch.arange(len(scores), device=scores.device)
                              .split(sizes)))
        else:
            chunks = [(scores, torch.arange(len(scores), device=scores.device))]
        boxes_all, scores_all, classes_all = [], [], []
        for chunk_scores, prior_ids in chunks:
            prob, prior_idx, classes = self._top_candidates(chunk_scores)
            prior_idx = prior_ids[prior_idx]
            prior = outputs.priors.tensor[prior_idx]
            boxes_all.append(self.box_coder.apply_deltas(deltas[prior_idx], prior))
            if quality is not None:
                prob = torch.sqrt(prob * quality[prior_idx])
            scores_all.append(prob)
            classes_all.append(classes)
        boxes = torch.cat(boxes_all)
        scores = torch.cat(scores_all)
        classes = torch.cat(classes_all)
        if self.test_clip == "padded":
            boxes = clip_to_padded(boxes, padded_size or image_size)
        elif self.clip_before_nms:
            # Clip to the unpadded input before NMS (as mmdetection's decoders do) so that
            # boxes of priors in the padding, empty once clipped, never take a place of the
            # top D.
            boxes = clip_boxes(boxes, image_size)
            nonempty = nonempty_boxes(boxes)
            boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
        keep = batched_nms(boxes, scores, classes, self.nms_thresh_test)
        keep = keep[: self.max_detections_per_image]
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        if not self.clip_before_nms:
            boxes = clip_boxes(boxes, image_size)
            nonempty = nonempty_boxes(boxes)
            boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
        return Instances(image_size, pred_boxes=boxes, scores=scores, pred_classes=classes)

    def _top_candidates(self, scores: torch.Tensor):
        """(P, K) probabilities -> (prob, prior index, class) of the candidates above the
        threshold: the top-k of all P x K entries ("level") or of each class ("class")."""
        k = self.num_classes
        topk = self.topk_candidates_test
        if self.candidates_per == "level":
            prob = scores.flatten()
            candidates = torch.nonzero(prob > self.score_thresh_test).squeeze(1)
            if topk > 0:
                prob, order = prob[candidates].topk(min(topk, candidates.numel()))
                candidates = candidates[order]
            else:
                prob = prob[candidates]
            return prob, candidates // k, candidates % k
        num = min(topk, scores.shape[0]) if topk > 0 else scores.shape[0]
        prob, prior_idx = scores.topk(num, dim=0)  # (num, K), per class
        classes = torch.arange(k, device=scores.device).expand_as(prob)
        keep = prob > self.score_thresh_test
        return prob[keep], prior_idx[keep], classes[keep]
