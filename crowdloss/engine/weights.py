"""The one weight-loading path: file -> format -> our names -> the model's keys -> the model.

Every load goes through :func:`load_weights` (``MODEL.WEIGHTS``, ``pods_test``) or
:func:`load_state` (``--resume``, whose file the checkpointer has already read):

1. **read** (``weight_files.read_weights_file``, after ``resolve_weights_path`` for URLs):
   ``.pkl`` / ``.pickle`` through an unpickler that only rebuilds numpy arrays and plain
   containers; anything else with ``torch.load(weights_only=True)``. Neither runs code from
   the file.
2. **unwrap** (:func:`split_checkpoint`): ``{"model": ...}``, ``{"blobs": ...}`` (Caffe2) and
   ``{"state_dict": ...}`` wrappers go, DDP's ``module.`` prefixes go, numpy arrays become
   tensors; the rest of a training checkpoint (``iteration``, ``meta``...) is kept aside, and
   its ``meta`` is compared with the loading run's (``engine.provenance``). Of a
   ``SOLVER.EMA`` checkpoint ``model`` (the weight average) is taken, or with
   ``ema_weights=False`` (``TEST.EMA_WEIGHTS``) its ``ema["trained"]``.
3. **detect** (:func:`detect_weight_format`): every registered format's ``detect`` looks at the
   key names; exactly one may claim the dict, none means our own names ("crowdloss": this
   project, cvpods and detectron2 share them).
4. **convert**: the claiming format's ``convert`` renames to our names; with a class remap
   (``MODEL.WEIGHTS_CLASSES``, ``engine.class_remap``) the classifier channels are then
   re-ordered to the model's classes by name.
5. **align** (:func:`align_to_model`): exact names first, then each remaining model key takes
   the longest checkpoint key that is a dotted suffix of it (``res2.0.conv1.weight`` ->
   ``backbone.bottom_up.res2.0.conv1.weight``); ambiguous and wrongly shaped entries are skipped.
6. **summarise, check, load**: the :class:`LoadSummary` is logged, always, as two lines::

       Loaded weights from /path/R-50.pkl (format msra)
       Weights: 265/316 model tensors matched (73.2% of values), 51 missing, 0 skipped (shape), 0 unexpected

   then the coverage rule: a file that fills less than ``min_coverage`` of the model's values
   (parameters and buffers, BN step counters aside) raises :class:`WeightsError` and nothing
   is loaded. Training from ``MODEL.WEIGHTS`` needs ``MODEL.WEIGHTS_MIN_COVERAGE.TRAIN`` (0.5:
   an ImageNet backbone fills 73-89% of our detectors, another model's checkpoint ~0%);
   evaluation needs ``.TEST`` (1.0: a random head scores garbage); resuming needs all of the
   model. Then ``load_state_dict(strict=False)``.

Foreign formats (MSRA, torchvision, pytorch-retinanet, ssd.pytorch) and how to add one:
``engine.weight_formats``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from crowdloss.modeling.backbone import weights as resnet_weights

from .class_remap import ClassRemap, remap_class_channels
from .provenance import warn_provenance
from .weight_files import (UnreadableWeightsError, WeightsError, load_pkl_safely,
                           read_weights_file, resolve_weights_path)
from .weight_formats import (NATIVE_FORMAT, WeightFormat, convert_weights, detect_weight_format,
                             input_convention, register_weight_format, weight_formats)

__all__ = [
    "WeightFormat", "register_weight_format", "weight_formats", "detect_weight_format",
    "convert_weights", "read_weights_file", "load_pkl_safely", "split_checkpoint",
    "MatchReport", "align_to_model", "LoadSummary", "load_state", "load_weights",
    "WeightsError", "UnreadableWeightsError", "NATIVE_FORMAT",
]

logger = logging.getLogger("crowdloss.engine")

# Step counters of BatchNorm: absent from most pretrained files and of no consequence.
_IGNORED_SUFFIX = "num_batches_tracked"


# ----------------------------------------------------------------------------- unwrapping
def split_checkpoint(data: Any, *, source: str, ema_weights: bool = True
                     ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Step 2: ``(state dict of tensors, everything else)`` from what a file held."""
    if not isinstance(data, Mapping):
        raise WeightsError(f"{source}: expected a state dict or {{'model': state_dict}}, got "
                           f"{type(data).__name__}")
    ema = data.get("ema")
    if not ema_weights and isinstance(ema, Mapping) and isinstance(ema.get("trained"), Mapping):
        data = {**data, "model": ema["trained"]}
    extras: Dict[str, Any] = {}
    for key in ("model", "blobs", "state_dict"):
        if isinstance(data.get(key), Mapping):
            extras = {k: v for k, v in data.items() if k != key}
            data = data[key]
            break
    state: Dict[str, torch.Tensor] = {}
    for key, value in data.items():
        name = str(key)
        while name.startswith("module."):
            name = name[len("module."):]
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.array(value))  # copy: pickled arrays may be read-only
        if isinstance(value, torch.Tensor):
            state[name] = value
        else:
            extras.setdefault("non_tensor_entries", []).append(name)
    return state, extras


# ----------------------------------------------------------------------------- aligning
class MatchReport(NamedTuple):
    """Outcome of aligning checkpoint names to model names."""

    matched: Dict[str, str]                    # model key -> checkpoint key
    unmatched_model_keys: List[str]            # model keys that received nothing
    unused_checkpoint_keys: List[str]          # checkpoint keys loaded nowhere
    ambiguous: Dict[str, List[str]]            # checkpoint key -> the model keys it fits
    shape_mismatch: List[Tuple[str, str, tuple, tuple]]  # (model key, ckpt key, model, ckpt)


def align_to_model(checkpoint: Mapping[str, Any], model_state: Mapping[str, Any]
                   ) -> Tuple[Dict[str, Any], MatchReport]:
    """Step 5: rename checkpoint entries to the model keys they fit (see the module docstring).

    ``model_state`` maps model keys to tensors (or shapes); a plain key list skips shape checks.
    """
    if isinstance(model_state, Mapping):
        shapes = {k: tuple(getattr(v, "shape", v)) for k, v in model_state.items()}
    else:
        shapes = {k: None for k in model_state}
    best = {k: k for k in shapes if k in checkpoint}  # exact names reserve their entry
    taken = set(best.values())
    for mkey in shapes:
        if mkey in best:
            continue
        parts = mkey.split(".")
        for i in range(1, len(parts)):  # longest proper suffix first
            candidate = ".".join(parts[i:])
            if candidate in checkpoint and candidate not in taken:
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
        if shapes[mkey] is not None and tuple(value.shape) != shapes[mkey]:
            mismatch.append((mkey, ckey, shapes[mkey], tuple(value.shape)))
            continue
        aligned[mkey] = value
        matched[mkey] = ckey
    used = set(matched.values())
    report = MatchReport(
        matched=matched,
        unmatched_model_keys=[k for k in shapes if k not in matched],
        unused_checkpoint_keys=[k for k in checkpoint if k not in used],
        ambiguous=ambiguous,
        shape_mismatch=mismatch,
    )
    return aligned, report


# ----------------------------------------------------------------------------- loading
class LoadSummary(NamedTuple):
    """What one load did; counts leave BN step counters out."""

    source: str
    weight_format: str
    matched: int              # model tensors filled
    total: int                # model tensors
    coverage: float           # fraction of the model's values filled
    missing: List[str]        # model keys nothing in the file fits
    shape_skipped: List[Tuple[str, str, tuple, tuple]]
    ambiguous: Dict[str, List[str]]
    unexpected: List[str]     # file entries (after conversion) that fit no model key
    dropped: List[str]        # entries the converter dropped on purpose (classifiers...)
    extras: Dict[str, Any]    # the rest of the file: iteration, meta, optimizer...
    partial: Dict[str, float] = {}  # model key -> fraction filled (class remap)

    def lines(self) -> Tuple[str, str]:
        where = f"Loaded weights from {self.source} (format {self.weight_format})"
        counts = (f"Weights: {self.matched}/{self.total} model tensors matched "
                  f"({100 * self.coverage:.1f}% of values), {len(self.missing)} missing, "
                  f"{len(self.shape_skipped)} skipped (shape), {len(self.unexpected)} unexpected")
        if self.partial:
            counts += f", {len(self.partial)} partly filled (classes remapped)"
        if self.ambiguous:
            counts += f", {len(self.ambiguous)} ambiguous"
        return where, counts


def load_state(model: nn.Module, data: Any, *, source: str, weight_format: str = "auto",
               min_coverage: float = 0.0, requirement: str = "", cfg: Any = None,
               provenance: Optional[Mapping] = None, ignore_config: Sequence[str] = (),
               class_remap: Optional[ClassRemap] = None, ema_weights: bool = True
               ) -> LoadSummary:
    """Steps 2-6 on a file's content ``data`` (see the module docstring).

    Args:
        source: the file, for messages.
        weight_format: "auto" (detect) or a format name.
        min_coverage: least fraction of the model's values the file must fill.
        requirement: what asks for ``min_coverage`` ("MODEL.WEIGHTS_MIN_COVERAGE.TEST = 1"),
            for the error message.
        cfg: when given, its INPUT.FORMAT / PIXEL_MEAN / PIXEL_STD / STRIDE_IN_1X1 are checked
            against the format's input convention (a warning each).
        provenance: this run's ``run_provenance``; a file recording another experiment,
            model class or config gets a warning per difference (``ignore_config``: key
            prefixes not compared).
        class_remap: the file's and the model's class names (``class_remap_from_config``):
            the classifier tensors the model declares (``class_channel_layout()``) are
            re-ordered by name; they count as filled by the fraction of classes kept.
        ema_weights: of a ``SOLVER.EMA`` checkpoint (``engine.ema``), load the weight average
            (its ``model``; True) or the trained weights (its ``ema["trained"]``; False).

    Raises:
        WeightsError: the file fills less than ``min_coverage`` of the model, or a class remap
            is asked of a model that declares no classifier; nothing is loaded.
    """
    state, extras = split_checkpoint(data, source=source, ema_weights=ema_weights)
    warn_provenance(extras.get("meta"), provenance, source=source, ignore_config=ignore_config)
    converted, fmt, dropped = convert_weights(state, weight_format)
    convention = input_convention(fmt)
    if cfg is not None and convention:
        resnet_weights.check_config_for_weights(cfg, fmt, expected=convention)
    own = model.state_dict()
    partial: Dict[str, float] = {}
    if class_remap is not None:
        layout = getattr(model, "class_channel_layout", None)
        if not callable(layout):
            raise WeightsError(f"MODEL.WEIGHTS_CLASSES is set, but {type(model).__name__} "
                               "declares no classifier channels (class_channel_layout)")
        converted, partial = remap_class_channels(converted, own, layout(), class_remap,
                                                  source=source)
    aligned, report = align_to_model(converted, own)
    counted = [k for k in own if not k.endswith(_IGNORED_SUFFIX)]
    # Model keys some entry fitted by name but that were skipped (shape or ambiguity).
    skipped_model_keys = {m for m, *_ in report.shape_mismatch}
    skipped_model_keys.update(m for ms in report.ambiguous.values() for m in ms)
    skipped_entries = set(report.ambiguous) | {c for _, c, _, _ in report.shape_mismatch}
    filled = [k for k in counted if k in aligned]
    values = sum(own[k].numel() for k in counted)
    got = sum(own[k].numel() * partial.get(k, 1.0) for k in filled)
    coverage = got / values if values else 1.0
    summary = LoadSummary(
        source=source, weight_format=fmt, matched=len(filled), total=len(counted),
        coverage=coverage,
        missing=[k for k in report.unmatched_model_keys
                 if not k.endswith(_IGNORED_SUFFIX) and k not in skipped_model_keys],
        shape_skipped=report.shape_mismatch, ambiguous=report.ambiguous,
        unexpected=[k for k in report.unused_checkpoint_keys
                    if not k.endswith(_IGNORED_SUFFIX) and k not in skipped_entries],
        dropped=dropped, extras=extras,
        partial={k: v for k, v in partial.items() if k in aligned})
    for line in summary.lines():
        logger.info(line)
    _log_details(summary)
    if coverage < min_coverage:
        need = f" ({requirement})" if requirement else ""
        raise WeightsError(
            f"{source} fills only {100 * coverage:.1f}% of the model's values "
            f"({summary.matched} of {summary.total} tensors; {len(summary.shape_skipped)} skipped "
            f"for their shape, {len(summary.unexpected)} file entries fit nothing); at least "
            f"{100 * min_coverage:g}% is needed{need}. Is it a checkpoint of another model "
            f"or config? Missing: {_abbrev(summary.missing + [m for m, *_ in summary.shape_skipped])}")
    model.load_state_dict(aligned, strict=False)
    return summary


def load_weights(model: nn.Module, path_or_url: str, **kwargs: Any) -> LoadSummary:
    """Load a weights file or URL into ``model`` (all steps; kwargs as :func:`load_state`)."""
    local = resolve_weights_path(path_or_url)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"MODEL.WEIGHTS = {path_or_url!r}: no such file ({local})")
    return load_state(model, read_weights_file(local), source=local, **kwargs)


def _log_details(s: LoadSummary) -> None:
    if s.dropped:
        logger.info("%s weights: dropped %d entries not used by detection: %s",
                    s.weight_format, len(s.dropped), _abbrev(s.dropped))
    for mkey, ckey, mshape, cshape in s.shape_skipped[:10]:
        logger.warning("Skip loading %s from %s (as %s): shape %s in the file, %s in the model",
                       ckey, s.source, mkey, cshape, mshape)
    if any(".cls_score." in m for m, *_ in s.shape_skipped) and not s.partial:
        logger.warning("The classifier of %s has other classes than the model: set "
                       "MODEL.WEIGHTS_CLASSES to the file's class names to keep the classes "
                       "both share (docs/checkpoints.md)", s.source)
    if len(s.shape_skipped) > 10:
        logger.warning("... and %d more shape mismatches", len(s.shape_skipped) - 10)
    for ckey, mkeys in s.ambiguous.items():
        logger.warning("%s: entry '%s' fits several model keys %s; not loaded", s.source, ckey,
                       mkeys)
    if s.missing:
        logger.info("Keys missing from %s (left as initialised): %s", s.source, _abbrev(s.missing))
    if s.unexpected:
        logger.info("Keys in %s not used by the model: %s", s.source, _abbrev(s.unexpected))


def _abbrev(names: Sequence[str], limit: int = 20) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")
