"""Plumbing shared by the one-stage detectors (FCOS, ATSS, RetinaNet, LLA).

A subclass provides the head, how to decode its box output (``decode``) and the training
losses (``forward_training``); this base does the rest: pixel normalisation and padding,
train/eval dispatch, flattening the per-level outputs, the num_fg normaliser, and inference
(per-level top-k above a score threshold, decode, clip to the input, class-aware NMS, top
detections, rescale to the original image).

Shape vocabulary: N images, R points/anchors of one image (all levels concatenated, level
order, row-major inside a level, anchor fastest), R_l those of level l, K classes, A anchors per
location, D detections.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from crowdloss.modeling.losses import sigmoid_focal_loss
from crowdloss.ops import batched_nms, clip_boxes, nonempty_boxes
from crowdloss.structures import Instances, ShapeSpec
from crowdloss.utils import comm

from ..postprocess import detector_postprocess

__all__ = ["DenseDetector", "permute_to_N_R_K", "cfg_get", "build_backbone_from_cfg"]


def cfg_get(node, key: str, default):
    """``node[key]`` if the config node has it, else ``default`` (for keys newer than the
    config class, e.g. ``HEAD_CHANNELS``)."""
    try:
        return node[key]
    except (KeyError, AttributeError, TypeError):
        return getattr(node, key, default)


def build_backbone_from_cfg(cfg) -> nn.Module:
    """``cfg.build_backbone(cfg, input_shape)`` as attached by an experiment's net.py (cvpods
    convention); the ResNet-FPN-P7 backbone when net.py attached none."""
    builder = cfg_get(cfg, "build_backbone", None)
    if builder is None:
        from crowdloss.modeling.backbone import build_resnet_fpn_p7_backbone as builder
    return builder(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))


def permute_to_N_R_K(tensor: torch.Tensor, K: int) -> torch.Tensor:
    """(N, A*K, H, W) -> (N, H*W*A, K): the layout the points/anchors are generated in."""
    n, _, h, w = tensor.shape
    return tensor.view(n, -1, K, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, K)


class DenseDetector(nn.Module):
    """Base class of the dense detectors.

    Args:
        backbone: module with ``forward(x) -> {name: (N, C, H_l, W_l)}`` and
            ``size_divisibility``.
        head: module mapping the list of ``head_in_features`` maps to a tuple of per-level lists.
        head_in_features: backbone outputs fed to the head, in level order.
        pixel_mean, pixel_std: per-channel normalisation of the input (its channel order).
        num_classes: K.
        score_thresh_test: class probability a candidate must exceed at inference.
        topk_candidates_test: candidates kept per level before NMS.
        nms_thresh_test: IoU threshold of the class-aware NMS.
        max_detections_per_image: detections kept per image after NMS.
        norm_sync: average num_fg over ranks (the loss normaliser) instead of the local count.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        head_in_features: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        num_classes: int,
        score_thresh_test: float = 0.05,
        topk_candidates_test: int = 1000,
        nms_thresh_test: float = 0.6,
        max_detections_per_image: int = 100,
        norm_sync: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.head_in_features = list(head_in_features)
        missing = set(self.head_in_features) - set(backbone.output_shape())
        if missing:
            raise ValueError(
                f"IN_FEATURES {sorted(missing)} are not backbone outputs "
                f"{sorted(backbone.output_shape())}"
            )
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(
                f"MODEL.PIXEL_MEAN has {len(pixel_mean)} values but MODEL.PIXEL_STD "
                f"{len(pixel_std)}"
            )
        self.num_classes = int(num_classes)
        self.score_thresh_test = float(score_thresh_test)
        self.topk_candidates_test = int(topk_candidates_test)
        self.nms_thresh_test = float(nms_thresh_test)
        self.max_detections_per_image = int(max_detections_per_image)
        self.norm_sync = bool(norm_sync)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ input
    def preprocess_image(self, batched_inputs: List[dict]) -> Tuple[torch.Tensor, List[Tuple]]:
        """Normalise each image and pad the batch (bottom/right, zeros after normalisation) to
        a common size divisible by ``backbone.size_divisibility``.

        Returns:
            images (N, 3, H, W) and the unpadded (h, w) of each image.
        """
        images = []
        for i, x in enumerate(batched_inputs):
            image = x.get("image") if isinstance(x, dict) else None
            if not isinstance(image, torch.Tensor) or image.dim() != 3:
                raise ValueError(
                    f"input {i}: 'image' must be a (C, H, W) tensor, got "
                    f"{type(image).__name__}{tuple(getattr(image, 'shape', ()))}"
                )
            if image.shape[0] != self.pixel_mean.shape[0]:
                raise ValueError(
                    f"input {i}: image has {image.shape[0]} channels, MODEL.PIXEL_MEAN has "
                    f"{self.pixel_mean.shape[0]}"
                )
            image = image.to(self.device, non_blocking=True).float()
            images.append((image - self.pixel_mean) / self.pixel_std)
        image_sizes = [tuple(im.shape[-2:]) for im in images]
        div = int(getattr(self.backbone, "size_divisibility", 0) or 0)
        max_h = max(s[0] for s in image_sizes)
        max_w = max(s[1] for s in image_sizes)
        if div > 1:
            max_h = (max_h + div - 1) // div * div
            max_w = (max_w + div - 1) // div * div
        batch = images[0].new_zeros((len(images), images[0].shape[0], max_h, max_w))
        for im, pad in zip(images, batch):
            pad[:, : im.shape[1], : im.shape[2]].copy_(im)
        return batch, image_sizes

    # ---------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[dict]):
        """Training: dict of scalar ``loss_*``. Eval: ``[{"instances": Instances}]`` in
        original-image coordinates (the dict's height/width, else the input size)."""
        images, image_sizes = self.preprocess_image(batched_inputs)
        features = self.backbone(images)
        features = [features[f] for f in self.head_in_features]
        predictions = self.head(features)
        if self.training:
            gt_instances = []
            for i, x in enumerate(batched_inputs):
                if "instances" not in x:
                    raise ValueError(f"input {i} has no 'instances': training needs targets")
                gt_instances.append(x["instances"].to(self.device))
            return self.forward_training(images, image_sizes, features, predictions, gt_instances)
        results = self.forward_inference(image_sizes, features, predictions)
        processed = []
        for result, x, size in zip(results, batched_inputs, image_sizes):
            height = x.get("height", size[0])
            width = x.get("width", size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    def forward_training(self, images, image_sizes, features, predictions, gt_instances):
        raise NotImplementedError

    def forward_inference(self, image_sizes, features, predictions) -> List[Instances]:
        raise NotImplementedError

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(R, 4) box output + (R, 2) points or (R, 4) anchors -> (R, 4) xyxy boxes."""
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def transpose_dense_predictions(
        predictions: Sequence[List[torch.Tensor]], dims_per_anchor: Sequence[int]
    ) -> List[torch.Tensor]:
        """Per-level (N, A*D, H_l, W_l) lists -> (N, R, D) float32 with levels concatenated
        (float32 so that losses and the LLA cost stay exact under AMP)."""
        return [
            torch.cat([permute_to_N_R_K(x, d) for x in per_level], dim=1).float()
            for per_level, d in zip(predictions, dims_per_anchor)
        ]

    def normalizer(self, num_fg: float, min_value: float = 1.0) -> float:
        """Loss normaliser ``max(num_fg averaged over ranks, min_value)`` (NORM_SYNC) or the
        local ``max(num_fg, min_value)``. Averaging makes the DDP gradient (mean over ranks)
        equal to that of one process on the whole batch."""
        value = torch.as_tensor(float(num_fg), dtype=torch.float32, device=self.device)
        if self.norm_sync:
            value = comm.all_reduce_mean(value)
        return max(float(value.item()), float(min_value))

    def focal_classification_loss(
        self, logits: torch.Tensor, gt_labels: torch.Tensor, normalizer: float
    ) -> torch.Tensor:
        """Sigmoid focal loss (arXiv 1708.02002) summed over every non-ignored point / anchor.

        Args:
            logits: (N * R, K) class logits; gt_labels: (N * R,) with a class in [0, K) for
                positives, K for background and -1 for points excluded from the loss.
            normalizer: the divisor (``self.normalizer(num_fg)``).

        Subclasses set ``focal_loss_alpha`` / ``focal_loss_gamma`` (their config's values).
        """
        valid = gt_labels >= 0
        fg = valid & (gt_labels != self.num_classes)
        targets = torch.zeros_like(logits)
        targets[fg, gt_labels[fg]] = 1.0
        loss = sigmoid_focal_loss(logits[valid], targets[valid], alpha=self.focal_loss_alpha,
                                  gamma=self.focal_loss_gamma, reduction="sum")
        return loss / normalizer

    def inference_single_image(
        self,
        anchors_per_level: List[torch.Tensor],
        logits_per_level: List[torch.Tensor],
        deltas_per_level: List[torch.Tensor],
        quality_per_level: Optional[List[torch.Tensor]],
        image_size: Tuple[int, int],
    ) -> Instances:
        """Detections of one image.

        Args:
            anchors_per_level: (R_l, 2) points or (R_l, 4) anchors.
            logits_per_level: (R_l, K) class logits.
            deltas_per_level: (R_l, 4) box outputs.
            quality_per_level: (R_l, 1) quality logits or None; the score becomes
                sqrt(prob * sigmoid(quality)) (applied after the threshold, as in cvpods).
            image_size: (h, w) of the network input.
        """
        boxes_all, scores_all, classes_all = [], [], []
        for level, (anchors, logits, deltas) in enumerate(
            zip(anchors_per_level, logits_per_level, deltas_per_level)
        ):
            prob = logits.sigmoid().flatten()  # (R_l * K,)
            candidates = torch.nonzero(prob > self.score_thresh_test).squeeze(1)
            prob = prob[candidates]
            num_topk = min(self.topk_candidates_test, candidates.numel())
            prob, order = prob.topk(num_topk)
            candidates = candidates[order]
            anchor_idxs = candidates // self.num_classes
            classes = candidates % self.num_classes
            boxes = self.decode(deltas[anchor_idxs], anchors[anchor_idxs])
            if quality_per_level is not None:
                quality = quality_per_level[level][anchor_idxs, 0].sigmoid()
                prob = torch.sqrt(prob * quality)
            boxes_all.append(boxes)
            scores_all.append(prob)
            classes_all.append(classes)
        boxes = clip_boxes(torch.cat(boxes_all), image_size)
        scores = torch.cat(scores_all)
        classes = torch.cat(classes_all)
        # Clip to the unpadded input before NMS (as mmdetection's decoders do) so that boxes
        # of points in the padding, empty once clipped, never take a place of the top D.
        nonempty = nonempty_boxes(boxes)
        boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
        keep = batched_nms(boxes, scores, classes, self.nms_thresh_test)
        keep = keep[: self.max_detections_per_image]
        return Instances(
            image_size, pred_boxes=boxes[keep], scores=scores[keep], pred_classes=classes[keep]
        )

    def split_and_infer(
        self,
        anchors_per_level: List[torch.Tensor],
        image_sizes: List[Tuple[int, int]],
        logits: torch.Tensor,
        deltas: torch.Tensor,
        quality: Optional[torch.Tensor],
    ) -> List[Instances]:
        """Inference over a batch from the concatenated (N, R, *) outputs."""
        sizes = [len(a) for a in anchors_per_level]
        results = []
        for i, image_size in enumerate(image_sizes):
            results.append(
                self.inference_single_image(
                    anchors_per_level,
                    list(logits[i].split(sizes)),
                    list(deltas[i].split(sizes)),
                    None if quality is None else list(quality[i].split(sizes)),
                    image_size,
                )
            )
        return results
