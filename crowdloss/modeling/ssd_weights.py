"""amdegroot/ssd.pytorch weights -> our SSD names (registered as weight formats by
``crowdloss.engine.weight_formats``).

Two files:

- ``vgg16_reducedfc.pth``, the backbone ssd.pytorch (and the Repulsion-SSD seed) train from:
  the state dict of its ``nn.ModuleList`` VGG, keys ``"<i>.weight"`` / ``"<i>.bias"`` for the 15
  convs at list positions 0, 2, 5, ..., 31 (fc6), 33 (fc7) (ReLUs and pools sit in between).
  Format ``"ssd_pytorch_vgg"``.
- whole SSD300 checkpoints (``ssd300_mAP_77.43_v2.pth``): ``vgg.<i>.*`` as above,
  ``L2Norm.weight``, ``extras.<k>.*`` (the eight / ten extra convs in order), ``loc.<l>.*`` and
  ``conf.<l>.*`` (box and class convs per source). Format ``"ssd_pytorch"``.

Renaming: ``vgg.<i>`` -> ``backbone.<Caffe name>`` (conv1_1 ... fc7), ``L2Norm`` ->
``backbone.conv4_3_norm``, ``extras.<k>`` -> ``backbone.conv6_1`` ..., ``loc.<l>`` ->
``head.bbox_pred.<l>``, ``conf.<l>`` -> ``head.cls_score.<l>``. ssd.pytorch's class 0 is the
background and ours is the last, so each conf conv's output channels, A_l groups of C, are
permuted per anchor to (1, ..., C - 1, 0); the anchor order and the box channels are already
ours.

Input conventions (checked against ``INPUT.FORMAT`` / ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``): the
VGG file is Caffe's VGG16 (BGR, mean (104, 117, 123) in BGR order, no std); ssd.pytorch's data
loader subtracts that mean from the BGR image and then swaps the channels to RGB, so its SSD
checkpoints expect RGB with the mean (123, 117, 104) (see docs/ssd.md).

Shape vocabulary: A_l default boxes per location of source l, C = K + 1 classes.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Dict, List, Tuple

import torch

__all__ = ["VGG_CONV_INDICES", "SSD_PYTORCH_VGG_CONVENTION", "SSD_PYTORCH_CONVENTION",
           "looks_ssd_pytorch_vgg", "convert_ssd_pytorch_vgg", "looks_ssd_pytorch",
           "convert_ssd_pytorch", "background_last"]

# Position of each conv in ssd.pytorch's VGG ModuleList -> our (Caffe) layer name.
VGG_CONV_INDICES: Dict[int, str] = {
    0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2", 10: "conv3_1", 12: "conv3_2",
    14: "conv3_3", 17: "conv4_1", 19: "conv4_2", 21: "conv4_3", 24: "conv5_1", 26: "conv5_2",
    28: "conv5_3", 31: "fc6", 33: "fc7",
}
_EXTRA_NAMES = ("conv6_1", "conv6_2", "conv7_1", "conv7_2", "conv8_1", "conv8_2", "conv9_1",
                "conv9_2", "conv10_1", "conv10_2")
_VGG_KEYS = {f"{i}.{p}" for i in VGG_CONV_INDICES for p in ("weight", "bias")}
_SSD_KEY = re.compile(r"^(vgg|extras|loc|conf)\.(\d+)\.(weight|bias)$")

SSD_PYTORCH_VGG_CONVENTION = {"format": "BGR", "pixel_mean": [104.0, 117.0, 123.0],
                              "pixel_std": [1.0, 1.0, 1.0]}
SSD_PYTORCH_CONVENTION = {"format": "RGB", "pixel_mean": [123.0, 117.0, 104.0],
                          "pixel_std": [1.0, 1.0, 1.0]}


def looks_ssd_pytorch_vgg(state_dict: Mapping) -> bool:
    """Exactly the 30 conv tensors of ssd.pytorch's reduced-fc VGG16, conv1_1 taking 3 channels."""
    keys = {str(k) for k in state_dict}
    if keys != _VGG_KEYS:
        return False
    first = state_dict["0.weight"]
    return tuple(getattr(first, "shape", ()))[1:] == (3, 3, 3)


def convert_ssd_pytorch_vgg(state_dict: Mapping) -> Dict[str, torch.Tensor]:
    """``"<i>.weight"`` -> ``"backbone.<name>.weight"``."""
    out = {}
    for key, value in state_dict.items():
        index, param = str(key).split(".")
        out[f"backbone.{VGG_CONV_INDICES[int(index)]}.{param}"] = torch.as_tensor(value)
    return out


def looks_ssd_pytorch(state_dict: Mapping) -> bool:
    """An ssd.pytorch SSD: ``L2Norm.weight``, ``vgg.0.weight``, ``loc.0`` / ``conf.0`` and no key
    outside those modules."""
    keys = [str(k) for k in state_dict]
    required = ("L2Norm.weight", "vgg.0.weight", "loc.0.weight", "conf.0.weight")
    return (all(k in state_dict for k in required)
            and all(k == "L2Norm.weight" or _SSD_KEY.match(k) for k in keys))


def background_last(tensor: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """Class conv weight (A * C, ...) or bias (A * C,) with each anchor's class 0 moved last."""
    total = tensor.shape[0]
    if total % num_anchors:
        raise ValueError(f"ssd.pytorch conf layer: {total} outputs are not {num_anchors} anchors "
                         "x C classes")
    grouped = tensor.reshape(num_anchors, total // num_anchors, *tensor.shape[1:])
    return torch.cat([grouped[:, 1:], grouped[:, :1]], dim=1).reshape(tensor.shape)


def convert_ssd_pytorch(state_dict: Mapping) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename a whole ssd.pytorch SSD checkpoint (module docstring); returns (dict, [])."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key, value = str(key), torch.as_tensor(value)
        if key == "L2Norm.weight":
            out["backbone.conv4_3_norm.weight"] = value
            continue
        module, index, param = _SSD_KEY.match(key).groups()
        index = int(index)
        if module == "vgg":
            if index not in VGG_CONV_INDICES:
                raise ValueError(f"ssd.pytorch checkpoint: {key} is not a conv of the reduced-fc "
                                 f"VGG16 (convs sit at {sorted(VGG_CONV_INDICES)})")
            out[f"backbone.{VGG_CONV_INDICES[index]}.{param}"] = value
        elif module == "extras":
            if index >= len(_EXTRA_NAMES):
                raise ValueError(f"ssd.pytorch checkpoint: {key}: at most {len(_EXTRA_NAMES)} "
                                 "extra convs (SSD300: 8, SSD512: 10)")
            out[f"backbone.{_EXTRA_NAMES[index]}.{param}"] = value
        elif module == "loc":
            out[f"head.bbox_pred.{index}.{param}"] = value
        else:
            loc = state_dict.get(f"loc.{index}.weight")
            if loc is None:
                raise ValueError(f"ssd.pytorch checkpoint: {key} has no loc.{index}.weight to "
                                 "tell its anchors per location")
            num_anchors = torch.as_tensor(loc).shape[0] // 4
            out[f"head.cls_score.{index}.{param}"] = background_last(value, num_anchors)
    return out, []
