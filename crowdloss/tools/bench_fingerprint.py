"""Which benchmark runs are the same: config fingerprints, and runs that share one training.

A run dir is reused only by the config that made it (``config_fingerprint``: the whole config
but OUTPUT_DIR and the expected-results band; ``config_fingerprints`` adds what the fingerprint
was before each of ``config.tracking.ADDED_KEYS`` existed).

A run whose config differs from another's only in test-time keys (score threshold, NMS, test
pipeline, detections per image, COCO metrics: ``config.tracking.is_test_time_key``) would train
the same model from the same seed, so it is not trained again: it scores that run's final
checkpoint (``training_fingerprint`` decides; ``link_trainings`` finds the run that trains,
in the same command or finished earlier under the same output). Also the two readers of a run
dir both sides use: ``final_checkpoint`` and ``read_json``.
"""
from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["config_fingerprint", "config_fingerprints", "training_fingerprint",
           "link_trainings", "final_checkpoint", "read_json"]


def config_fingerprint(cfg) -> str:
    """sha256 of a run's config, so that a changed config.py or override list is never mistaken
    for the finished run. Left out: OUTPUT_DIR and the expected-results band (pasting the
    report's band into the config must not orphan the runs that produced it)."""
    cfg = copy.deepcopy(cfg)
    cfg.OUTPUT_DIR = ""
    cfg.TEST.EXPECTED_RESULTS = []
    return hashlib.sha256(cfg.dump().encode("utf-8")).hexdigest()


def config_fingerprints(cfg) -> List[str]:
    """The fingerprint, then those the same config had before each key of
    ``config.tracking.ADDED_KEYS`` existed, newest key first: a run recorded before a key was
    added matches a config that has it at its neutral value (adding an option must not orphan
    every finished run; a config that sets it otherwise is another config)."""
    from crowdloss.config.tracking import ADDED_KEYS

    out = [config_fingerprint(cfg)]
    cfg = copy.deepcopy(cfg)
    for key, neutral in reversed(ADDED_KEYS.items()):
        *parents, leaf = key.split(".")
        chain = [cfg]
        for name in parents:
            chain.append(chain[-1].get(name) if isinstance(chain[-1], dict) else None)
        node = chain[-1]
        if not isinstance(node, dict) or leaf not in node:
            continue  # a config without the key: as before it existed
        if node[leaf] != neutral:
            break
        del node[leaf]
        # A section that came with its keys (SOLVER.EMA) goes with the last of them.
        for parent, name, child in reversed(list(zip(chain, parents, chain[1:]))):
            if child:
                break
            del parent[name]
        out.append(config_fingerprint(cfg))
    return out


def _leaf_paths(node, prefix: str = "") -> List[Tuple[str, dict, str]]:
    """(dotted key, parent dict, leaf name) of every leaf of a nested config."""
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        out += _leaf_paths(v, key + ".") if isinstance(v, dict) else [(key, node, k)]
    return out


def training_fingerprint(cfg) -> str:
    """sha256 of what a run's final weights depend on besides the code and the seed: the config
    without its test-time keys and OUTPUT_DIR. A config that evaluates during training
    (``TEST.EVAL_PERIOD > 0``) keeps every key: building its test loader draws from the
    training's random streams, so its test settings are part of its training."""
    from crowdloss.config.tracking import is_test_time_key

    cfg = copy.deepcopy(cfg)
    cfg.OUTPUT_DIR = ""
    if int(cfg.TEST.EVAL_PERIOD) <= 0:
        for key, parent, leaf in _leaf_paths(cfg):
            if is_test_time_key(key):
                del parent[leaf]
    return hashlib.sha256(("train:" + cfg.dump()).encode("utf-8")).hexdigest()


def read_json(path: str) -> Optional[dict]:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def final_checkpoint(out: str) -> Optional[str]:
    """``model_final.pth`` if ``last_checkpoint`` names it (training reached MAX_ITER)."""
    try:
        with open(os.path.join(out, "last_checkpoint")) as f:
            name = f.read().strip()
    except OSError:
        return None
    path = os.path.join(out, name)
    return path if name == "model_final.pth" and os.path.isfile(path) else None


def link_trainings(runs: Sequence, output: str, record_name: str) -> None:
    """Set ``run.trained_by`` (the out dir of the run whose training it scores, or None).

    A run trains itself unless an earlier run of ``runs`` (the first with its training
    fingerprint and seed; the plan is seed-major) or a finished run under ``output`` whose
    record names the same training fingerprint and seed trains the same model. A run dir that
    already holds its own final checkpoint keeps it.
    """
    first: Dict[Tuple[str, int], object] = {}
    done: Dict[Tuple[str, int], str] = {}
    for path in sorted(glob.glob(os.path.join(output, "*", "seed*", record_name))):
        rec, out = read_json(path) or {}, os.path.dirname(path)
        if rec.get("train_fingerprint") and not rec.get("trained_by") and final_checkpoint(out):
            done.setdefault((rec["train_fingerprint"], int(rec.get("seed", -1))), out)
    for run in runs:
        key = (run.train_fingerprint, run.seed)
        trainer: Optional[str] = None
        own = final_checkpoint(run.out)
        if own is None or os.path.islink(own):
            if key in first:
                trainer = first[key].out
            elif done.get(key) not in (None, run.out):
                trainer = done[key]
        if trainer is None:
            first.setdefault(key, run)
        run.trained_by = trainer
