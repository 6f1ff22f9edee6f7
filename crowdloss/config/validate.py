"""Check a resolved config's numbers and names before anything is built.

``SOLVER.LR_SCHEDULER.MAX_ITER -5`` used to train nothing and exit with status 0; a negative
learning rate or a zero batch failed deep inside torch, after the model was built. The CLI calls
``validate_config`` right after the overrides are applied (and before spawning workers), so
every such mistake ends the run at once with ONE error listing each bad key and its value.

What is an error: a value that cannot work (MAX_ITER < 1, IMS_PER_DEVICE < 1, a learning rate
<= 0, unsorted STEPS, an unknown scheduler name, a malformed TEST.EXPECTED_RESULTS...). What is
only a warning (returned, logged by the caller): a value that works but is probably not meant,
e.g. a STEPS entry >= MAX_ITER, which never takes effect (normal when a smoke test shortens
MAX_ITER alone). Keys that the configured branch does not use are not checked: STEPS under
WarmupCosineLR, CLIP_* with CLIP_GRADIENTS.ENABLED False (the unread-key report flags those if
the experiment set them).

The checks read through ``untracked()``: validating a value is not using it.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, List, NamedTuple, Optional, Sequence

from .access import cfg_get
from .tracking import UNREAD_KEYS_ACTIONS, untracked

__all__ = ["ConfigValueError", "validate_config", "Expectation", "parse_expected_results",
           "OPTIMIZER_NAMES", "LR_SCHEDULER_NAMES", "WARMUP_METHODS", "EXPECTED_RESULTS_MISMATCH"]

OPTIMIZER_NAMES = ("D2SGD", "SGD", "Adam", "AdamW")
LR_SCHEDULER_NAMES = ("WarmupMultiStepLR", "WarmupCosineLR")
WARMUP_METHODS = ("linear", "constant")
EXPECTED_RESULTS_MISMATCH = ("warn", "error")


class ConfigValueError(ValueError):
    """A config value that cannot work; the message names every bad key and its value."""


class Expectation(NamedTuple):
    """One ``TEST.EXPECTED_RESULTS`` entry: ``|result - expected| <= tolerance`` is inside."""
    dataset: str
    task: str
    metric: str
    expected: float
    tolerance: float

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.task}/{self.metric}"


def _is_int(v: Any) -> bool:
    return (isinstance(v, numbers.Integral) and not isinstance(v, bool)) or (
        isinstance(v, float) and v.is_integer())


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def parse_expected_results(entries: Any, test_datasets: Sequence[str],
                           key: str = "TEST.EXPECTED_RESULTS") -> List[Expectation]:
    """Entries ``[dataset, task, metric, expected, tolerance]`` or, when ``DATASETS.TEST`` holds
    one dataset, ``[task, metric, expected, tolerance]``.

    Raises:
        ConfigValueError: naming the entry (``TEST.EXPECTED_RESULTS[i]``) and what is wrong.
    """
    if not isinstance(entries, (list, tuple)):
        raise ConfigValueError(f"{key} = {entries!r}: expected a list of "
                               f"[dataset, task, metric, expected, tolerance] entries")
    datasets = list(test_datasets)
    out, problems = [], []
    for i, entry in enumerate(entries):
        where = f"{key}[{i}] = {entry!r}"
        if not isinstance(entry, (list, tuple)) or len(entry) not in (4, 5):
            problems.append(f"{where}: expected [dataset, task, metric, expected, tolerance]"
                            f" or [task, metric, expected, tolerance]")
            continue
        if len(entry) == 4:
            if len(datasets) != 1:
                problems.append(f"{where}: no dataset, and DATASETS.TEST has {len(datasets)} "
                                f"({datasets}); write [dataset, task, metric, expected, "
                                f"tolerance]")
                continue
            entry = [datasets[0], *entry]
        dataset, task, metric, expected, tolerance = entry
        if not all(isinstance(s, str) and s for s in (dataset, task, metric)):
            problems.append(f"{where}: dataset, task and metric must be non-empty strings")
        elif dataset not in datasets:
            problems.append(f"{where}: dataset {dataset!r} is not evaluated (DATASETS.TEST is "
                            f"{datasets})")
        elif not _is_number(expected):
            problems.append(f"{where}: the expected value must be a finite number")
        elif not _is_number(tolerance) or tolerance < 0:
            problems.append(f"{where}: the tolerance must be a finite number >= 0")
        else:
            out.append(Expectation(dataset, task, metric, float(expected), float(tolerance)))
    if problems:
        raise ConfigValueError("invalid config:\n  " + "\n  ".join(problems))
    return out


class _Checker:
    def __init__(self, cfg):
        self.cfg, self.errors, self.warnings = cfg, [], []

    def get(self, key: str) -> Any:
        return cfg_get(self.cfg, key)

    def fail(self, key: str, value: Any, what: str) -> None:
        self.errors.append(f"{key} = {value!r}: {what}")

    def int_at_least(self, key: str, low: int, what: str = "") -> Optional[int]:
        value = self.get(key)
        if not _is_int(value) or value < low:
            self.fail(key, value, f"must be an integer >= {low}{what}")
            return None
        return int(value)

    def number(self, key: str, *, low: float, low_open: bool = False,
               high: Optional[float] = None, high_open: bool = False) -> None:
        value = self.get(key)
        ok = _is_number(value) and (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
        if not ok:
            lo = f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f" and {'<' if high_open else '<='} {high:g}"
            self.fail(key, value, f"must be a finite number {lo}{hi}")

    def choice(self, key: str, choices: Sequence[str]) -> Any:
        value = self.get(key)
        if value not in choices:
            self.fail(key, value, f"expected one of {', '.join(map(repr, choices))}")
        return value


def validate_config(cfg) -> List[str]:
    """Check the solver, data-loader and test keys of ``cfg``.

    Returns:
        warnings (values that work but are probably not meant), for the caller to log.

    Raises:
        ConfigValueError: one error listing every invalid key as ``KEY = value: what``.
    """
    c = _Checker(cfg)
    with untracked():
        s, sch, opt = "SOLVER.", "SOLVER.LR_SCHEDULER.", "SOLVER.OPTIMIZER."
        max_iter = c.int_at_least(sch + "MAX_ITER", 1, " (iterations to train)")
        name = c.choice(sch + "NAME", LR_SCHEDULER_NAMES)
        if name == "WarmupMultiStepLR":
            steps = c.get(sch + "STEPS")
            if not isinstance(steps, (list, tuple)) or not all(_is_int(x) and x >= 1
                                                               for x in steps):
                c.fail(sch + "STEPS", steps, "must be a list of iterations >= 1")
            elif list(steps) != sorted(steps):
                c.fail(sch + "STEPS", steps, "must be in increasing order")
            elif max_iter is not None and any(x >= max_iter for x in steps):
                late = [x for x in steps if x >= max_iter]
                c.warnings.append(f"{sch}STEPS {list(steps)}: {late} >= MAX_ITER {max_iter} "
                                  f"never take effect")
            c.number(sch + "GAMMA", low=0, low_open=True)
        c.int_at_least(sch + "WARMUP_ITERS", 0)
        c.number(sch + "WARMUP_FACTOR", low=0, high=1)
        c.choice(sch + "WARMUP_METHOD", WARMUP_METHODS)

        optimizer = c.choice(opt + "NAME", OPTIMIZER_NAMES)
        c.number(opt + "BASE_LR", low=0, low_open=True)
        c.number(opt + "WEIGHT_DECAY", low=0)
        if optimizer == "D2SGD":
            c.number(opt + "WEIGHT_DECAY_NORM", low=0)
            c.number(opt + "BIAS_LR_FACTOR", low=0, low_open=True)
        if optimizer in ("D2SGD", "SGD"):
            c.number(opt + "MOMENTUM", low=0, high=1, high_open=True)
        if optimizer in ("Adam", "AdamW"):
            betas = c.get(opt + "BETAS")
            if not (isinstance(betas, (list, tuple)) and len(betas) == 2
                    and all(_is_number(b) and 0 <= b < 1 for b in betas)):
                c.fail(opt + "BETAS", betas, "must be two numbers in [0, 1)")

        c.int_at_least(s + "IMS_PER_DEVICE", 1, " (images per process and step)")
        c.int_at_least(s + "IMS_PER_BATCH", 1)
        c.int_at_least(s + "REFERENCE_WORLD_SIZE", 0, " (0 disables rescaling)")
        c.int_at_least(s + "BATCH_SUBDIVISIONS", 1)
        c.int_at_least(s + "CHECKPOINT_PERIOD", 0, " (0 = only model_final)")
        if c.get(s + "CLIP_GRADIENTS.ENABLED"):
            clip_type = c.choice(s + "CLIP_GRADIENTS.CLIP_TYPE", ("norm", "value"))
            c.number(s + "CLIP_GRADIENTS.CLIP_VALUE", low=0, low_open=True)
            if clip_type == "norm":
                c.number(s + "CLIP_GRADIENTS.NORM_TYPE", low=0, low_open=True)
        c.choice(s + "AMP.DTYPE", ("float16", "bfloat16"))
        if "EMA" in c.cfg.SOLVER and c.get(s + "EMA.ENABLED"):
            c.number(s + "EMA.DECAY", low=0, high=1, high_open=True)

        c.int_at_least("DATALOADER.NUM_WORKERS", 0)
        if not _is_int(c.get("TEST.EVAL_PERIOD")):
            c.fail("TEST.EVAL_PERIOD", c.get("TEST.EVAL_PERIOD"),
                   "must be an integer (> 0 periodic, 0 after training, < 0 never)")
        c.int_at_least("TEST.DETECTIONS_PER_IMAGE", 1)
        if "COCO_METRICS" in c.cfg.TEST and c.get("TEST.COCO_METRICS"):
            # Checked here, not when the evaluator first runs after the whole training.
            c.int_at_least("TEST.COCO_MAX_DETS", 10, " (COCO also reports AR1 and AR10)")
        if not _is_int(c.get("SEED")):
            c.fail("SEED", c.get("SEED"), "must be an integer (< 0 draws one per run)")
        if "SEED" in c.cfg.DATALOADER and not _is_int(c.get("DATALOADER.SEED")):
            c.fail("DATALOADER.SEED", c.get("DATALOADER.SEED"),
                   "must be an integer (< 0: the data stream of SEED)")
        c.choice("UNREAD_KEYS", UNREAD_KEYS_ACTIONS)
        entries = c.get("TEST.EXPECTED_RESULTS")
        if entries:
            c.choice("TEST.EXPECTED_RESULTS_MISMATCH", EXPECTED_RESULTS_MISMATCH)
            try:
                parse_expected_results(entries, list(c.get("DATASETS.TEST")))
            except ConfigValueError as e:
                c.errors += str(e).split("\n  ")[1:]
    if c.errors:
        raise ConfigValueError("invalid config:\n  " + "\n  ".join(c.errors))
    return c.warnings
