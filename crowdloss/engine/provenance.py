"""Which experiment and config wrote a checkpoint, and what differs from the run loading it.

Every checkpoint carries ``meta = run_provenance(cfg, model, build_model)``::

    {"experiment": dir of net.py, "output_dir": ..., "model_class": "LLAFCOS (crowdloss...)",
     "config_hash": sha256 of the config below, "config": {"MODEL.FCOS.NUM_CLASSES": "1", ...},
     "crowdloss_version": ..., "torch_version": ..., "run_started": UTC ISO time}

(plain strings only, so ``torch.load(weights_only=True)`` reads it). Loading a checkpoint logs
a warning for each difference with the loading run: another experiment, model class, crowdloss
version, or config values (the differing keys are listed). Keys that say where or how a run
executes, not what it computes, are left out of the config record: ``OUTPUT_DIR``,
``MODEL.WEIGHTS*``, ``MODEL.DEVICE``, ``MODEL.CHANNELS_LAST``, ``SEED``, ``DATALOADER.SEED``.
Callables attached to the config by ``net.py`` are code, not config, and are left out too.
A key added to the config classes after a checkpoint was written
(``config.tracking.ADDED_KEYS``) is absent from its record and compares as its neutral value.
"""
from __future__ import annotations

import datetime
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from crowdloss.config.tracking import ADDED_KEYS

__all__ = ["run_provenance", "provenance_differences", "warn_provenance"]

logger = logging.getLogger("crowdloss.engine")

_VOLATILE = ("OUTPUT_DIR", "MODEL.WEIGHTS", "MODEL.DEVICE", "MODEL.CHANNELS_LAST", "SEED",
             "DATALOADER.SEED")


def _flat_config(cfg: Any, prefix: str = "") -> Dict[str, str]:
    out: Dict[str, str] = {}
    items = cfg.items() if isinstance(cfg, Mapping) else vars(cfg).items()
    for key, value in items:
        name = f"{prefix}{key}"
        if any(name == v or name.startswith(v + ".") or name.startswith(v + "_")
               for v in _VOLATILE):
            continue
        if isinstance(value, Mapping):
            out.update(_flat_config(value, name + "."))
        elif not callable(value):
            out[name] = json.dumps(value, sort_keys=True, default=repr)
    return out


def _experiment_dir(build_model: Optional[Callable]) -> str:
    try:
        return os.path.dirname(os.path.abspath(inspect.getsourcefile(build_model)))
    except TypeError:  # None, a builtin or a C extension
        return ""


def run_provenance(cfg: Any, model: nn.Module, build_model: Optional[Callable] = None
                   ) -> Dict[str, Any]:
    """What this run would record in its checkpoints (see the module docstring)."""
    import crowdloss

    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    config = _flat_config(cfg)
    blob = json.dumps(config, sort_keys=True).encode("utf-8")
    klass = type(model)
    module = klass.__module__
    if module.startswith("crowdloss_exp_"):  # an experiment's net.py, loaded under a hash name
        module = "<experiment>." + module.split(".", 1)[-1]
    output_dir = getattr(cfg, "OUTPUT_DIR", None) if not isinstance(cfg, Mapping) \
        else cfg.get("OUTPUT_DIR")
    return {
        "experiment": _experiment_dir(build_model),
        "output_dir": os.path.abspath(output_dir) if output_dir else "",
        "model_class": f"{klass.__qualname__} ({module})",
        "config_hash": hashlib.sha256(blob).hexdigest(),
        "config": config,
        "crowdloss_version": str(getattr(crowdloss, "__version__", "unknown")),
        "torch_version": str(torch.__version__),
        "run_started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def provenance_differences(saved: Mapping, current: Mapping, *,
                           ignore_config: Sequence[str] = (), limit: int = 8) -> List[str]:
    """One message per difference between a checkpoint's ``meta`` and this run's.

    Args:
        ignore_config: config key prefixes not to compare (``pods_test`` ignores ``SOLVER.``,
            which the world-size rescaling changes and inference does not read).
    """
    problems = []
    for key, what in (("experiment", "experiment"), ("model_class", "model class"),
                      ("crowdloss_version", "crowdloss version")):
        old, new = saved.get(key), current.get(key)
        if old and new and old != new:
            problems.append(f"it was written by {what} {old}, this run has {new}")
    old_cfg, new_cfg = saved.get("config") or {}, current.get("config") or {}
    # A checkpoint from before a key existed: absent there = the key's neutral value.
    added = {k: json.dumps(v) for k, v in ADDED_KEYS.items()}
    old_cfg = {**{k: v for k, v in added.items() if k in new_cfg}, **old_cfg}
    keys = [k for k in sorted(set(old_cfg) | set(new_cfg))
            if not any(k.startswith(p) for p in ignore_config)
            and old_cfg.get(k) != new_cfg.get(k)]
    if keys:
        shown = [f"{k}: {old_cfg.get(k, '(absent)')} -> {new_cfg.get(k, '(absent)')}"
                 for k in keys[:limit]]
        more = f"; ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
        problems.append(f"its config differs in {len(keys)} key(s): " + "; ".join(shown) + more)
    return problems


def warn_provenance(saved: Any, current: Optional[Mapping], *, source: str,
                    ignore_config: Sequence[str] = ()) -> List[str]:
    """Log where ``source`` came from and warn about each difference with ``current``."""
    if not isinstance(saved, Mapping):
        if current is not None:
            logger.info("%s records no experiment / config (not written by crowdloss)", source)
        return []
    logger.info("%s was written by experiment %s (model %s, crowdloss %s, run started %s)",
                source,
                saved.get("experiment") or "?", saved.get("model_class") or "?",
                saved.get("crowdloss_version") or "?", saved.get("run_started") or "?")
    if current is None:
        return []
    problems = provenance_differences(saved, current, ignore_config=ignore_config)
    for msg in problems:
        logger.warning("%s: %s", source, msg)
    return problems
