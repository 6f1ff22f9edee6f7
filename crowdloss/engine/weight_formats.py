"""Steps 3 and 4 of weight loading: which format a state dict is in, and renaming it to our names.

A format is a ``detect(state_dict) -> bool`` that recognises its own files from the key names and
a ``convert(state_dict)`` that renames them; exactly one registered format may claim a dict,
none means our own names ("crowdloss": this project, cvpods and detectron2 share them).
The rest of the loading path is ``crowdloss.engine.weights``.

Built in: "msra" and "torchvision" ResNets (``modeling/backbone/weights.py``), yhenon's
pytorch-retinanet (``modeling/pytorch_retinanet.py``), amdegroot's ssd.pytorch VGG backbone and
whole SSD300 (``modeling/ssd_weights.py``). Adding one is a function plus a registration::

    def convert_my_detector(state_dict):           # {their name: tensor}
        return {our_name(k): v for k, v in state_dict.items() if keep(k)}
        # or (renamed dict, [names dropped on purpose]) to have the drops logged

    register_weight_format("my_detector", detect=lambda sd: "my_head.cls.weight" in sd,
                           convert=convert_my_detector,
                           input_convention=PRETRAINED_PIXEL_STATS["torchvision"])

``register_weight_format(name, detect, convert, *, input_convention=None)``: ``detect(state_dict)
-> bool`` must recognise its own files only (two formats claiming one file is an error);
``input_convention`` (keys among ``format``, ``pixel_mean``, ``pixel_std``,
``stride_in_1x1``) makes a config that disagrees with the weights' training input warn.
Built-in formats are registered at the end of this module; a user's ``net.py`` may register
more.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from crowdloss.modeling import ssd_weights
from crowdloss.modeling.backbone import weights as resnet_weights
from crowdloss.modeling.pytorch_retinanet import (convert_pytorch_retinanet_names,
                                                  looks_pytorch_retinanet)

from .weight_files import WeightsError

__all__ = ["NATIVE_FORMAT", "WeightFormat", "register_weight_format", "weight_formats",
           "detect_weight_format", "convert_weights", "input_convention"]

NATIVE_FORMAT = "crowdloss"


class WeightFormat(NamedTuple):
    """A registered foreign format (see ``register_weight_format``)."""

    name: str
    detect: Callable[[Mapping], bool]
    convert: Callable[[Mapping], Any]
    input_convention: Optional[Dict[str, Any]]


_FORMATS: Dict[str, WeightFormat] = {}


def register_weight_format(name: str, detect: Callable[[Mapping], bool],
                           convert: Callable[[Mapping], Any], *,
                           input_convention: Optional[Dict[str, Any]] = None) -> WeightFormat:
    """Add a foreign weight format (see the module docstring).

    Raises:
        ValueError: ``name`` is taken by other functions (the same functions, by module and
            name, replace the entry, so a ``net.py`` executed twice is fine).
    """
    fmt = WeightFormat(name, detect, convert, input_convention)
    old = _FORMATS.get(name)
    if name == NATIVE_FORMAT or (old is not None and _identity(old) != _identity(fmt)):
        raise ValueError(f"weight format {name!r} is already registered (by "
                         f"{old.convert.__module__ if old else 'crowdloss'})")
    _FORMATS[name] = fmt
    return fmt


def _identity(fmt: WeightFormat) -> Tuple[str, ...]:
    # By name, not object: a net.py executed again defines new but identical functions.
    return tuple(f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', repr(f))}"
                 for f in (fmt.detect, fmt.convert))


def weight_formats() -> List[str]:
    """Registered foreign formats, in registration order."""
    return list(_FORMATS)


def detect_weight_format(state_dict: Mapping) -> str:
    """The one registered format whose ``detect`` claims ``state_dict``, else "crowdloss".

    Raises:
        WeightsError: several formats claim it (their ``detect`` functions are too loose).
    """
    claims = [f.name for f in _FORMATS.values() if f.detect(state_dict)]
    if len(claims) > 1:
        raise WeightsError(f"weight formats {claims} all claim a state dict with keys like "
                           f"{list(state_dict)[:5]}; each format's detect() must be specific")
    return claims[0] if claims else NATIVE_FORMAT


def convert_weights(state_dict: Mapping, weight_format: str = "auto"
                    ) -> Tuple[Dict[str, torch.Tensor], str, List[str]]:
    """Rename ``state_dict`` to our names: ``(converted, format name, names dropped)``."""
    if weight_format == "auto":
        weight_format = detect_weight_format(state_dict)
    if weight_format == NATIVE_FORMAT:
        return dict(state_dict), weight_format, []
    if weight_format not in _FORMATS:
        raise WeightsError(f"unknown weight format {weight_format!r}; known: "
                           f"{[NATIVE_FORMAT] + weight_formats()}")
    out = _FORMATS[weight_format].convert(state_dict)
    converted, dropped = out if isinstance(out, tuple) else (out, [])
    return {k: torch.as_tensor(v) for k, v in converted.items()}, weight_format, list(dropped)


def input_convention(weight_format: str) -> Optional[Dict[str, Any]]:
    """The input (pixel stats, channel order...) a registered format's weights were trained on."""
    fmt = _FORMATS.get(weight_format)
    return fmt.input_convention if fmt is not None else None


# ----------------------------------------------------------------------------- built-ins
register_weight_format("msra", resnet_weights.looks_msra, resnet_weights.convert_msra_names,
                       input_convention=resnet_weights.PRETRAINED_PIXEL_STATS["msra"])
register_weight_format("torchvision", resnet_weights.looks_torchvision,
                       resnet_weights.convert_torchvision_names,
                       input_convention=resnet_weights.PRETRAINED_PIXEL_STATS["torchvision"])
register_weight_format("ssd_pytorch_vgg", ssd_weights.looks_ssd_pytorch_vgg,
                       ssd_weights.convert_ssd_pytorch_vgg,
                       input_convention=ssd_weights.SSD_PYTORCH_VGG_CONVENTION)
register_weight_format("ssd_pytorch", ssd_weights.looks_ssd_pytorch,
                       ssd_weights.convert_ssd_pytorch,
                       input_convention=ssd_weights.SSD_PYTORCH_CONVENTION)
register_weight_format("pytorch_retinanet", looks_pytorch_retinanet,
                       convert_pytorch_retinanet_names,
                       input_convention=resnet_weights.PRETRAINED_PIXEL_STATS["torchvision"])
