"""``Detector``: what every meta-architecture shares, one-stage or two-stage.

Pixel normalisation, padding and batching of the inputs; the train / eval split; mapping the
detections back to the original image (rescale, clip, drop empty boxes). A subclass writes
``forward_train`` (losses) and ``forward_test`` (detections at the network's input size) and
nothing else: a dense detector adds priors, a dense head and dense inference
(``DenseDetector``); a two-stage detector adds proposals and ROI heads without inheriting any
of that.

Shape vocabulary: N images, C channels, H x W the padded batch size, D detections.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from crowdloss.structures import Instances, ShapeSpec

from ..postprocess import detector_postprocess

__all__ = ["Detector", "build_backbone_from_cfg", "place_model", "PAD_MODES", "padded_size"]

# "ceil": up to the next multiple of the backbone's size divisibility (detectron2, cvpods);
# "always": n + d - n % d, a whole extra block when n is already a multiple (pytorch-retinanet's
# Resizer, so 608 -> 640): border outputs depend on it, so a converted model needs its own.
PAD_MODES = ("ceil", "always")


def padded_size(n: int, divisibility: int, mode: str = "ceil") -> int:
    """The padded length of a side of ``n`` pixels under ``mode`` (see ``PAD_MODES``)."""
    if mode not in PAD_MODES:
        raise ValueError(f"MODEL.PAD_MODE must be one of {PAD_MODES}, got {mode!r}")
    if divisibility <= 1:
        return n
    if mode == "always":
        return n + divisibility - n % divisibility
    return (n + divisibility - 1) // divisibility * divisibility


def build_backbone_from_cfg(cfg, default=None) -> nn.Module:
    """``cfg.build_backbone(cfg, input_shape)`` as attached by an experiment's net.py (cvpods
    convention); when net.py attached none, ``default`` (a builder of the same signature), else
    the ResNet-FPN-P7 backbone of the one-stage detectors."""
    # An attribute net.py may attach, not a config key: absent means the default backbone.
    builder = cfg.get("build_backbone") if isinstance(cfg, dict) else getattr(cfg, "build_backbone", None)
    if builder is None:
        builder = default
    if builder is None:
        from crowdloss.modeling.backbone import build_resnet_fpn_p7_backbone as builder
    return builder(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))


def place_model(model: nn.Module, cfg) -> nn.Module:
    """``model`` on ``MODEL.DEVICE``; with ``MODEL.CHANNELS_LAST`` its 4-D parameters and
    buffers in NHWC order (``nn.Module.to(memory_format=...)``, in place).

    Only the weights change layout: a convolution runs channels-last when its input or its
    weight is, so the activations follow from the first conv on, and the inputs, the heads'
    flattening (``permute_to_N_R_K``) and the checkpoints need no change.
    """
    device = torch.device(cfg.MODEL.DEVICE)
    if cfg.MODEL.CHANNELS_LAST:
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


class Detector(nn.Module):
    """Base class of the meta-architectures.

    Args:
        backbone: module with ``forward(x) -> {name: (N, C_l, H_l, W_l)}``,
            ``output_shape()`` and ``size_divisibility``.
        pixel_mean, pixel_std: per-channel normalisation of the input (its channel order).
        pad_mode: how far the batch is padded (``PAD_MODES``).
    """

    def __init__(self, *, backbone: nn.Module, pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], pad_mode: str = "ceil"):
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"MODEL.PAD_MODE must be one of {PAD_MODES}, got {pad_mode!r}")
        self.pad_mode = pad_mode
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(
                f"MODEL.PIXEL_MEAN has {len(pixel_mean)} values but MODEL.PIXEL_STD "
                f"{len(pixel_std)}"
            )
        self.backbone = backbone
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def check_in_features(self, in_features: Sequence[str], key: str) -> None:
        """Clear error when ``in_features`` (config ``key``) names no backbone output."""
        shapes = self.backbone.output_shape()
        missing = [name for name in in_features if name not in shapes]
        if missing:
            raise ValueError(f"{key} {missing} are not backbone outputs {sorted(shapes)}")

    # ------------------------------------------------------------------ input
    def preprocess_image(self, batched_inputs: List[dict]) -> Tuple[torch.Tensor, List[Tuple]]:
        """Normalise each image and pad the batch (bottom/right, zeros after normalisation) to
        a common size divisible by ``backbone.size_divisibility`` (``pad_mode``).

        Returns:
            images (N, C, H, W) and the unpadded (h, w) of each image.
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
        max_h = padded_size(max_h, div, self.pad_mode)
        max_w = padded_size(max_w, div, self.pad_mode)
        batch = images[0].new_zeros((len(images), images[0].shape[0], max_h, max_w))
        for im, pad in zip(images, batch):
            pad[:, : im.shape[1], : im.shape[2]].copy_(im)
        return batch, image_sizes

    # ---------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[dict]):
        """Training: dict of scalar ``loss_*`` (plus any scalars to log only). Eval:
        ``[{"instances": Instances}]`` in original-image coordinates (the dict's height/width,
        else the input size)."""
        images, image_sizes = self.preprocess_image(batched_inputs)
        if self.training:
            gt_instances = []
            for i, x in enumerate(batched_inputs):
                if "instances" not in x:
                    raise ValueError(f"input {i} has no 'instances': training needs targets")
                gt_instances.append(x["instances"].to(self.device))
            return self.forward_train(images, image_sizes, gt_instances)
        results = self.forward_test(images, image_sizes)
        return self.postprocess(results, batched_inputs, image_sizes)

    def forward_train(self, images: torch.Tensor, image_sizes: List[Tuple[int, int]],
                      gt_instances: List[Instances]) -> Dict[str, torch.Tensor]:
        """Losses of a padded batch (N, C, H, W) with per-image GT ``Instances``."""
        raise NotImplementedError

    def forward_test(self, images: torch.Tensor,
                     image_sizes: List[Tuple[int, int]]) -> List[Instances]:
        """Detections (``pred_boxes``, ``scores``, ``pred_classes``) of each image at its
        network-input size (``Instances.image_size`` = the unpadded (h, w))."""
        raise NotImplementedError

    @staticmethod
    def postprocess(results: List[Instances], batched_inputs: List[dict],
                    image_sizes: List[Tuple[int, int]]) -> List[Dict[str, Instances]]:
        """Rescale each image's detections to its original size, clip, drop empty boxes."""
        processed = []
        for result, x, size in zip(results, batched_inputs, image_sizes):
            height = x.get("height", size[0])
            width = x.get("width", size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed
