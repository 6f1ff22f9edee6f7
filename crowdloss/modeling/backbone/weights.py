"""ResNet weights from elsewhere: MSRA Caffe2 ``.pkl`` and torchvision ``.pth`` -> our names.

Our names are detectron2/cvpods names (``stem.conv1.weight``, ``res2.0.conv1.norm.bias``,
``res2.0.shortcut.weight``), so cvpods/detectron2 checkpoints need no renaming. The two
renamers and their detectors are registered as weight formats "msra" and "torchvision" by
``crowdloss.engine.weight_formats``; ``crowdloss.engine.weights`` owns the rest of the loading
path (reading, aligning to the model's keys, the load summary and the coverage rule).

Each source also fixes the input convention its weights were trained with
(``PRETRAINED_PIXEL_STATS``); ``check_config_for_weights`` warns when the config disagrees.
"""
from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from crowdloss.config.access import cfg_get

__all__ = [
    "PRETRAINED_PIXEL_STATS",
    "looks_msra",
    "looks_torchvision",
    "convert_msra_names",
    "convert_torchvision_names",
    "check_weights_config",
    "check_config_for_weights",
]

logger = logging.getLogger(__name__)

# The input each family of ImageNet weights was trained on; a mismatch silently costs accuracy.
PRETRAINED_PIXEL_STATS: Dict[str, Dict[str, Any]] = {
    "msra": {"format": "BGR", "pixel_mean": [103.530, 116.280, 123.675],
             "pixel_std": [1.0, 1.0, 1.0], "stride_in_1x1": True},
    "torchvision": {"format": "RGB", "pixel_mean": [123.675, 116.280, 103.530],
                    "pixel_std": [58.395, 57.120, 57.375], "stride_in_1x1": False},
}

# ----------------------------------------------------------------------------- name conversion

_C2_SUFFIX = {"w": "weight", "b": "bias", "bn_s": "norm.weight", "bn_b": "norm.bias",
              "bn_rm": "norm.running_mean", "bn_riv": "norm.running_var"}
_C2_BRANCH = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}
_C2_BLOCK = re.compile(r"^res(\d+)_(\d+)_branch(1|2[abc])_(w|b|bn_s|bn_b|bn_rm|bn_riv)$")
_C2_STEM = re.compile(r"^(?:conv1|res_conv1)_(w|b|bn_s|bn_b|bn_rm|bn_riv)$")
_C2_CLASSIFIER = re.compile(r"^(fc1000|pred)_[wb]$")

_TV_STEM = re.compile(r"^(conv1|bn1)\.(\w+)$")
_TV_CONV = re.compile(r"^layer(\d)\.(\d+)\.conv(\d)\.(\w+)$")
_TV_BN = re.compile(r"^layer(\d)\.(\d+)\.bn(\d)\.(\w+)$")
_TV_DOWN = re.compile(r"^layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)$")


def _to_tensor(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))  # copy: pickled arrays may be read-only
    return value


def convert_msra_names(blobs: Mapping) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename Caffe2 blobs (``res2_0_branch2a_bn_s``) to ours (``res2.0.conv1.norm.weight``).

    Caffe2 folded the BN statistics into scale/shift, so every norm without them gets
    ``running_mean`` 0 and ``running_var`` 1 (what FrozenBatchNorm2d then applies, as in
    detectron2's loader).

    Returns:
        (converted state dict, dropped names: classifier weights and ``_momentum`` blobs).
        Names that are not ResNet blobs are kept unchanged (suffix matching reports them).
    """
    out: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    for name, value in blobs.items():
        if name.endswith("_momentum") or _C2_CLASSIFIER.match(name):
            dropped.append(name)
            continue
        m_block, m_stem = _C2_BLOCK.match(name), _C2_STEM.match(name)
        if m_block:
            stage, block, branch, suffix = m_block.groups()
            new = f"res{stage}.{block}.{_C2_BRANCH[branch]}.{_C2_SUFFIX[suffix]}"
        elif m_stem:
            new = f"stem.conv1.{_C2_SUFFIX[m_stem.group(1)]}"
        else:
            new = name
        out[new] = _to_tensor(value)
    for name in [k for k in out if k.endswith("norm.weight")]:
        prefix = name[: -len("weight")]
        channels = out[name].shape[0]
        out.setdefault(prefix + "running_mean", torch.zeros(channels))
        out.setdefault(prefix + "running_var", torch.ones(channels))
    return out, dropped


def convert_torchvision_names(state_dict: Mapping) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename torchvision ResNet/ResNeXt keys (``layer1.0.bn1.weight``) to ours.

    Returns:
        (converted state dict, dropped names: the ``fc.*`` classifier). Unknown keys are kept.
    """
    out: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    for name, value in state_dict.items():
        if name.startswith("fc."):
            dropped.append(name)
            continue
        if m := _TV_STEM.match(name):
            layer, attr = m.groups()
            new = f"stem.conv1.{attr}" if layer == "conv1" else f"stem.conv1.norm.{attr}"
        elif m := _TV_CONV.match(name):
            stage, block, k, attr = m.groups()
            new = f"res{int(stage) + 1}.{block}.conv{k}.{attr}"
        elif m := _TV_BN.match(name):
            stage, block, k, attr = m.groups()
            new = f"res{int(stage) + 1}.{block}.conv{k}.norm.{attr}"
        elif m := _TV_DOWN.match(name):
            stage, block, idx, attr = m.groups()
            norm = "" if idx == "0" else "norm."
            new = f"res{int(stage) + 1}.{block}.shortcut.{norm}{attr}"
        else:
            new = name
        out[new] = _to_tensor(value)
    return out, dropped


def looks_msra(state_dict: Mapping) -> bool:
    """Caffe2 blob names: no dots anywhere, and ResNet stem / block blobs among them."""
    keys = [str(k) for k in state_dict]
    return (not any("." in k for k in keys)
            and any(_C2_BLOCK.match(k) or _C2_STEM.match(k) for k in keys))


_TV_ANY = re.compile(r"^(conv1|bn1|layer[1-4]|fc)\.")


def looks_torchvision(state_dict: Mapping) -> bool:
    """torchvision ResNet / ResNeXt keys and nothing else (a detector built on one, such as
    pytorch-retinanet, has more modules and is a format of its own)."""
    keys = [str(k) for k in state_dict]
    return ("conv1.weight" in keys and any(k.startswith("layer1.") for k in keys)
            and all(_TV_ANY.match(k) for k in keys))


# ----------------------------------------------------------------------------- config checks

def check_weights_config(source: str, *, pixel_mean: Optional[Sequence[float]] = None,
                         pixel_std: Optional[Sequence[float]] = None,
                         input_format: Optional[str] = None,
                         stride_in_1x1: Optional[bool] = None,
                         expected: Optional[Dict[str, Any]] = None) -> List[str]:
    """Warn (``UserWarning`` + log) where the input convention disagrees with the weights.

    Args:
        source: the weights' format name, for messages (and the ``PRETRAINED_PIXEL_STATS``
            entry when ``expected`` is None).
        expected: the convention (keys among ``format``, ``pixel_mean``, ``pixel_std``,
            ``stride_in_1x1``); a key it lacks, or a value passed as None, is not checked.

    Returns:
        The warning messages (empty when consistent, or for sources with no convention).
    """
    expected = PRETRAINED_PIXEL_STATS.get(source) if expected is None else expected
    if not expected:
        return []
    problems = []
    if input_format is not None and "format" in expected \
            and str(input_format).upper() != expected["format"]:
        problems.append(f"INPUT.FORMAT is {input_format!r} but {source} weights expect "
                        f"{expected['format']!r}")
    for key, got in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
        if got is None or key not in expected:
            continue
        want = expected[key]
        got = [float(v) for v in np.asarray(got, dtype=float).reshape(-1)]
        if len(got) != len(want) or not np.allclose(got, want, atol=1e-2):
            problems.append(f"MODEL.{key.upper()} is {got} but {source} weights expect {want}")
    if stride_in_1x1 is not None and "stride_in_1x1" in expected \
            and bool(stride_in_1x1) != expected["stride_in_1x1"]:
        problems.append(f"MODEL.RESNETS.STRIDE_IN_1X1 is {bool(stride_in_1x1)} but {source} "
                        f"weights were trained with {expected['stride_in_1x1']}")
    for msg in problems:
        logger.warning(msg)
        warnings.warn(msg, stacklevel=2)
    return problems


def check_config_for_weights(cfg, source: str,
                             expected: Optional[Dict[str, Any]] = None) -> List[str]:
    """``check_weights_config`` with the values read from a config; keys the config does not
    have (a VGG model has no ``MODEL.RESNETS``) are not checked, rather than given a value."""
    def present(key: str):
        try:
            return cfg_get(cfg, key)
        except KeyError:
            return None

    return check_weights_config(
        source,
        pixel_mean=present("MODEL.PIXEL_MEAN"),
        pixel_std=present("MODEL.PIXEL_STD"),
        input_format=present("INPUT.FORMAT"),
        stride_in_1x1=present("MODEL.RESNETS.STRIDE_IN_1X1"),
        expected=expected,
    )
