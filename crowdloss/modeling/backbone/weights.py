"""Pretrained-weight conversion: MSRA Caffe2 ``.pkl`` and torchvision ``.pth`` -> our names.

Our names are detectron2/cvpods names (``stem.conv1.weight``, ``res2.0.conv1.norm.bias``,
``res2.0.shortcut.weight``), so cvpods/detectron2 checkpoints need no renaming ("crowdloss").
The engine's checkpointer calls ``convert_weights(state_dict, model_keys=model.state_dict())``;
with ``model_keys`` the converted names are aligned to the model's by suffix matching (a
backbone checkpoint's ``res2.0.conv1.weight`` lands on ``backbone.bottom_up.res2.0.conv1.weight``).

Each source also fixes the input convention its weights were trained with
(``PRETRAINED_PIXEL_STATS``); ``check_config_for_weights`` warns when the config disagrees.
"""
from __future__ import annotations

import logging
import pickle
import re
import warnings
from collections.abc import Mapping
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from crowdloss.config.access import cfg_get

__all__ = [
    "PRETRAINED_PIXEL_STATS",
    "MatchReport",
    "load_pkl_safely",
    "detect_weight_format",
    "convert_msra_names",
    "convert_torchvision_names",
    "align_to_model",
    "convert_weights",
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

# ----------------------------------------------------------------------------- safe unpickling

# (module, name) pairs a numpy-array pickle needs; everything else is refused. numpy 1.x
# pickles name numpy.core.*, numpy 2 renamed it numpy._core (the old path still imports, with
# a deprecation warning), so both spellings are accepted and resolved to the new one.
_SAFE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol-2 pickles written by py3 rebuild bytes with it
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, *, source: str):
        super().__init__(file, encoding="latin1")  # py2 pickles store array bytes as str
        self._source = source

    def find_class(self, module: str, name: str):
        resolved = re.sub(r"^numpy\.core(?=\.|$)", "numpy._core", module)
        if (resolved, name) in _SAFE_GLOBALS:
            if resolved.startswith("numpy._core") and not hasattr(np, "_core"):
                resolved = module  # numpy < 2 has only numpy.core
            return super().find_class(resolved, name)
        if resolved.startswith("numpy.dtypes") and name.endswith("DType"):
            return super().find_class(resolved, name)  # numpy >= 1.25 dtype classes
        raise pickle.UnpicklingError(
            f"{self._source}: refusing to unpickle global '{module}.{name}': only numpy arrays "
            f"and dicts are allowed in a weights .pkl (a pickle can run arbitrary code)")


def load_pkl_safely(path: str) -> Any:
    """Load a weights pickle that may contain only dicts/lists/numbers/strings/numpy arrays.

    Raises:
        pickle.UnpicklingError: naming the file and the refused global for anything else.
    """
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f, source=str(path)).load()


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


def detect_weight_format(state_dict: Mapping) -> str:
    """"msra" (Caffe2 blob names), "torchvision" or "crowdloss" (detectron2/cvpods/ours).

    Raises:
        ValueError: listing a few keys when no format fits.
    """
    keys = [str(k) for k in state_dict]
    if any(k.endswith("_momentum") or _C2_BLOCK.match(k) or _C2_STEM.match(k) for k in keys):
        return "msra"
    if "conv1.weight" in state_dict and any(k.startswith("layer1.") for k in keys):
        return "torchvision"
    if any(re.search(r"(^|\.)(stem\.conv1|res[2-5]\.\d+|fpn_lateral\d|top_block)\.", k)
           for k in keys):
        return "crowdloss"
    raise ValueError(f"cannot tell the weight format (MSRA Caffe2, torchvision or crowdloss) "
                     f"from keys like {keys[:5]}")


# ----------------------------------------------------------------------------- suffix matching

class MatchReport(NamedTuple):
    """Outcome of aligning checkpoint names to model names."""

    matched: Dict[str, str]                    # model key -> checkpoint key
    unmatched_model_keys: List[str]            # model keys that received nothing
    unused_checkpoint_keys: List[str]          # checkpoint keys loaded nowhere
    ambiguous: Dict[str, List[str]]            # checkpoint key -> the model keys it fits
    shape_mismatch: List[Tuple[str, str, tuple, tuple]]  # (model key, ckpt key, model, ckpt)


def align_to_model(checkpoint: Mapping[str, Any],
                   model_keys: Union[Mapping[str, Any], Sequence[str]]
                   ) -> Tuple[Dict[str, Any], MatchReport]:
    """Rename checkpoint entries to the model keys they are a dotted suffix of.

    Each model key takes the longest checkpoint key equal to it or ending it after a ".";
    a checkpoint key that is the best match of several model keys is ambiguous and loaded
    into none of them. With ``model_keys`` a mapping to tensors/shapes, shape mismatches are
    skipped too.
    """
    shapes = None
    if isinstance(model_keys, Mapping):
        shapes = {k: tuple(getattr(v, "shape", v)) for k, v in model_keys.items()}
    model_list = list(model_keys)
    best: Dict[str, str] = {}
    for mkey in model_list:
        parts = mkey.split(".")
        for i in range(len(parts)):  # longest suffix first
            candidate = ".".join(parts[i:])
            if candidate in checkpoint:
                best[mkey] = candidate
                break
    claimed: Dict[str, List[str]] = {}
    for mkey, ckey in best.items():
        claimed.setdefault(ckey, []).append(mkey)
    ambiguous = {c: ms for c, ms in claimed.items() if len(ms) > 1}
    aligned: Dict[str, Any] = {}
    matched: Dict[str, str] = {}
    mismatch = []
    for mkey, ckey in best.items():
        if ckey in ambiguous:
            continue
        value = checkpoint[ckey]
        if shapes is not None and tuple(value.shape) != shapes[mkey]:
            mismatch.append((mkey, ckey, shapes[mkey], tuple(value.shape)))
            continue
        aligned[mkey] = value
        matched[mkey] = ckey
    used = set(matched.values())
    report = MatchReport(
        matched=matched,
        unmatched_model_keys=[k for k in model_list if k not in matched],
        unused_checkpoint_keys=[k for k in checkpoint if k not in used],
        ambiguous=ambiguous,
        shape_mismatch=mismatch,
    )
    return aligned, report


def _unwrap(state_dict: Mapping) -> Mapping:
    # Caffe2 pickles nest blobs under "blobs"; detectron2/cvpods checkpoints under "model".
    for key in ("blobs", "model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            return state_dict[key]
    return state_dict


def convert_weights(state_dict: Mapping, source: str = "auto",
                    model_keys: Optional[Union[Mapping[str, Any], Sequence[str]]] = None, *,
                    return_report: bool = False):
    """Convert a pretrained state dict (or Caffe2 blob dict) into our parameter names.

    Args:
        state_dict: loaded ``.pkl`` / ``.pth`` content; a ``{"blobs": ...}`` or
            ``{"model": ...}`` wrapper and a ``module.`` prefix are removed.
        source: "auto" (``detect_weight_format``), "msra", "torchvision" or "crowdloss".
        model_keys: the model's keys (or its state dict, to also skip shape mismatches);
            given, names are aligned to them by suffix matching and only matched ones kept.
        return_report: also return the ``MatchReport`` (None without ``model_keys``).

    Returns:
        The converted dict of tensors, or ``(dict, report)`` with ``return_report``.
    """
    state_dict = _unwrap(state_dict)
    if state_dict and all(str(k).startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    if source == "auto":
        source = detect_weight_format(state_dict)
    if source == "msra":
        converted, dropped = convert_msra_names(state_dict)
    elif source == "torchvision":
        converted, dropped = convert_torchvision_names(state_dict)
    elif source == "crowdloss":
        converted, dropped = {k: _to_tensor(v) for k, v in state_dict.items()}, []
    else:
        raise ValueError(f"weight source must be 'auto', 'msra', 'torchvision' or 'crowdloss', "
                         f"got {source!r}")
    if dropped:
        logger.info("%s weights: dropped %d entries not used by detection: %s", source,
                    len(dropped), _abbrev(dropped))
    report = None
    if model_keys is not None:
        converted, report = align_to_model(converted, model_keys)
        logger.info("%s weights: %d of %d model keys loaded by suffix matching", source,
                    len(report.matched), len(report.matched) + len(report.unmatched_model_keys))
        if report.unmatched_model_keys:
            logger.info("model keys not in the checkpoint: %s",
                        _abbrev(report.unmatched_model_keys))
        unused = [k for k in report.unused_checkpoint_keys if not k.endswith("num_batches_tracked")]
        if unused:
            logger.warning("checkpoint keys not loaded: %s", _abbrev(unused))
        for ckey, mkeys in report.ambiguous.items():
            logger.warning("checkpoint key '%s' fits several model keys %s; not loaded",
                           ckey, mkeys)
        for mkey, ckey, mshape, cshape in report.shape_mismatch:
            logger.warning("skip '%s' -> '%s': checkpoint shape %s, model shape %s",
                           ckey, mkey, cshape, mshape)
    return (converted, report) if return_report else converted


def _abbrev(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


# ----------------------------------------------------------------------------- config checks

def check_weights_config(source: str, *, pixel_mean: Sequence[float],
                         pixel_std: Sequence[float], input_format: str,
                         stride_in_1x1: bool) -> List[str]:
    """Warn (``UserWarning`` + log) where the input convention disagrees with the weights.

    Returns:
        The warning messages (empty when consistent, or for sources with no convention).
    """
    expected = PRETRAINED_PIXEL_STATS.get(source)
    if expected is None:
        return []
    problems = []
    if str(input_format).upper() != expected["format"]:
        problems.append(f"INPUT.FORMAT is {input_format!r} but {source} weights expect "
                        f"{expected['format']!r}")
    for key, got in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
        want = expected[key]
        got = [float(v) for v in np.asarray(got, dtype=float).reshape(-1)]
        if len(got) != len(want) or not np.allclose(got, want, atol=1e-2):
            problems.append(f"MODEL.{key.upper()} is {got} but {source} weights expect {want}")
    if bool(stride_in_1x1) != expected["stride_in_1x1"]:
        problems.append(f"MODEL.RESNETS.STRIDE_IN_1X1 is {bool(stride_in_1x1)} but {source} "
                        f"weights were trained with {expected['stride_in_1x1']}")
    for msg in problems:
        logger.warning(msg)
        warnings.warn(msg, stacklevel=2)
    return problems


def check_config_for_weights(cfg, source: str) -> List[str]:
    """``check_weights_config`` with the values read from a config."""
    return check_weights_config(
        source,
        pixel_mean=cfg_get(cfg, "MODEL.PIXEL_MEAN"),
        pixel_std=cfg_get(cfg, "MODEL.PIXEL_STD"),
        input_format=cfg_get(cfg, "INPUT.FORMAT"),
        stride_in_1x1=cfg_get(cfg, "MODEL.RESNETS.STRIDE_IN_1X1"),
    )
