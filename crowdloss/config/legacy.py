"""Legacy (detectron2 / early cvpods) config names and where they live now.

Old playground configs write ``SOLVER.BASE_LR``, ``SOLVER.STEPS`` or ``INPUT.MIN_SIZE_TRAIN``;
cvpods moved these into ``SOLVER.OPTIMIZER``, ``SOLVER.LR_SCHEDULER`` and the kwargs of the
``("ResizeShortestEdge", {...})`` entries of ``INPUT.AUG.{TRAIN,TEST}_PIPELINES``. cvpods migrated
them in config dicts only; here the same table also serves command-line overrides, so
``pods_train SOLVER.BASE_LR 0.02`` works. ``MODEL.LLA.TopK`` (the spelling of the LLA release)
is an alias of ``MODEL.LLA.TOPK``, and cvpods' ``MODEL.FPN.BLOCK_IN_FEATURES`` (the input of
P6/P7) of ``MODEL.FPN.TOP_BLOCK_IN_FEATURE``. Every migration is logged.

Both tables are the single source of truth for legacy names; ``ConfigDict.merge_from_list`` and
``BaseConfig.merge`` only call the two functions below.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["KEY_ALIASES", "SOLVER_KEYS", "INPUT_KEYS", "canonical_key", "migrate",
           "resolve_legacy_key"]

logger = logging.getLogger(__name__)

# Other spellings of a key -> the canonical key.
KEY_ALIASES: Dict[str, str] = {
    "MODEL.LLA.TopK": "MODEL.LLA.TOPK",
    "MODEL.FPN.BLOCK_IN_FEATURES": "MODEL.FPN.TOP_BLOCK_IN_FEATURE",
}

# Flat solver keys -> their nested home.
SOLVER_KEYS: Dict[str, str] = {
    **{f"SOLVER.{k}": f"SOLVER.OPTIMIZER.{k}"
       for k in ("BASE_LR", "WEIGHT_DECAY", "WEIGHT_DECAY_NORM", "MOMENTUM", "BIAS_LR_FACTOR")},
    **{f"SOLVER.{k}": f"SOLVER.LR_SCHEDULER.{k}"
       for k in ("MAX_ITER", "STEPS", "WARMUP_FACTOR", "WARMUP_ITERS", "WARMUP_METHOD", "GAMMA")},
    "SOLVER.LR_SCHEDULER_NAME": "SOLVER.LR_SCHEDULER.NAME",
}

# Flat input keys -> (pipeline list, kwarg of its ResizeShortestEdge entry).
_RESIZE = "ResizeShortestEdge"
INPUT_KEYS: Dict[str, Tuple[str, str]] = {
    "INPUT.MIN_SIZE_TRAIN": ("INPUT.AUG.TRAIN_PIPELINES", "short_edge_length"),
    "INPUT.MAX_SIZE_TRAIN": ("INPUT.AUG.TRAIN_PIPELINES", "max_size"),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": ("INPUT.AUG.TRAIN_PIPELINES", "sample_style"),
    "INPUT.MIN_SIZE_TEST": ("INPUT.AUG.TEST_PIPELINES", "short_edge_length"),
    "INPUT.MAX_SIZE_TEST": ("INPUT.AUG.TEST_PIPELINES", "max_size"),
}


def canonical_key(full_key: str) -> str:
    """An alias (``MODEL.LLA.TopK``) -> its canonical key (``MODEL.LLA.TOPK``); others unchanged."""
    if full_key in KEY_ALIASES:
        logger.info("config key %s is an alias of %s", full_key, KEY_ALIASES[full_key])
        return KEY_ALIASES[full_key]
    return full_key


def _walk(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _resize_index(pipelines: Any, pipelines_key: str, legacy_key: str) -> int:
    """Index of the ResizeShortestEdge entry, or a ValueError saying why there is none."""
    if isinstance(pipelines, (list, tuple)):
        for i, entry in enumerate(pipelines):
            if (isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] == _RESIZE
                    and isinstance(entry[1], Mapping)):
                return i
    raise ValueError(f"legacy config key {legacy_key} needs a ({_RESIZE!r}, {{...}}) entry in "
                     f"{pipelines_key} to move into, but {pipelines_key} is {pipelines!r}")


def _copy_dicts(tree: Any) -> Any:
    # Copy the dict skeleton so popping legacy keys never edits the caller's dict.
    if isinstance(tree, Mapping):
        return {k: _copy_dicts(v) for k, v in tree.items()}
    return tree


def _pop(tree: Dict, dotted: str) -> Tuple[bool, Any]:
    parent_key, _, leaf = dotted.rpartition(".")
    parent = _walk(tree, parent_key)
    if isinstance(parent, dict) and leaf in parent:
        return True, parent.pop(leaf)
    return False, None


def _parent_of(tree: Dict, dotted: str) -> Tuple[Dict, str]:
    """The (created if missing) dict holding ``dotted``'s leaf in a copied dict skeleton."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(tree.get(part), dict):
            tree[part] = {}
        tree = tree[part]
    return tree, leaf


def _set_new(tree: Dict, dotted: str, value: Any, legacy_key: str) -> None:
    parent, leaf = _parent_of(tree, dotted)
    if leaf in parent and parent[leaf] != value:
        raise ValueError(f"config sets both {legacy_key} (legacy name) = {value!r} and "
                         f"{dotted} = {parent[leaf]!r}; keep only {dotted}")
    parent[leaf] = value


def migrate(config: Mapping, current: Mapping) -> Tuple[Dict[str, Any], List[str]]:
    """Rewrite the legacy keys of a nested config dict to their current homes.

    Args:
        config: the dict about to be merged (not modified).
        current: the config it will be merged into; the pipelines come from here when
            ``config`` sets ``INPUT.MIN_SIZE_*`` without restating the pipelines.

    Returns:
        (migrated copy of ``config``, one log message per moved key).

    Raises:
        ValueError: a legacy key and its new name both given with different values, or an
            ``INPUT.*_SIZE_*`` key with no ResizeShortestEdge entry to receive it.
    """
    out = _copy_dicts(config)
    messages = []
    for old, new in {**KEY_ALIASES, **SOLVER_KEYS}.items():
        found, value = _pop(out, old)
        if found:
            _set_new(out, new, value, old)
            messages.append(f"legacy config key {old} -> {new}")
    for old, (pipelines_key, kwarg) in INPUT_KEYS.items():
        found, value = _pop(out, old)
        if not found:
            continue
        pipelines = _walk(out, pipelines_key)
        if pipelines is None:
            pipelines = copy.deepcopy(_walk(current, pipelines_key))
        idx = _resize_index(pipelines, pipelines_key, old)
        entries = list(pipelines)
        name, kwargs = entries[idx]
        entries[idx] = type(entries[idx])((name, {**kwargs, kwarg: value}))
        parent, leaf = _parent_of(out, pipelines_key)
        parent[leaf] = type(pipelines)(entries)
        messages.append(f"legacy config key {old} -> {pipelines_key}[{idx}] "
                        f"{_RESIZE}.{kwarg} = {value!r}")
    for m in messages:
        logger.warning(m)
    return out, messages


def resolve_legacy_key(cfg: Mapping, full_key: str) -> Optional[Tuple[Any, str, str]]:
    """Where an override with a legacy name should write: (container, leaf key, new name).

    Returns None when ``full_key`` is not a legacy name (or its new home does not exist).
    """
    if full_key in SOLVER_KEYS:
        new = SOLVER_KEYS[full_key]
        parent_key, _, leaf = new.rpartition(".")
        parent = _walk(cfg, parent_key)
        if isinstance(parent, Mapping) and leaf in parent:
            logger.warning("override %s is the legacy name of %s", full_key, new)
            return parent, leaf, new
        return None
    if full_key in INPUT_KEYS:
        pipelines_key, kwarg = INPUT_KEYS[full_key]
        pipelines = _walk(cfg, pipelines_key)
        idx = _resize_index(pipelines, pipelines_key, full_key)
        new = f"{pipelines_key}[{idx}].{kwarg}"
        logger.warning("override %s is the legacy name of %s", full_key, new)
        # The kwargs dict lives inside a list, which configs treat as a leaf: edit it in place.
        return pipelines[idx][1], kwarg, new
    return None
