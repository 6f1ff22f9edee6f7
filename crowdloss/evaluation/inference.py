"""Running a model over a test loader into an evaluator (``inference_on_dataset``), and the
copy-paste lines its results are printed as (``print_csv_format``), as in detectron2's
``evaluation.evaluator`` / ``evaluation.testing``.
"""
from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Dict

import numpy as np
import torch

from crowdloss.utils import comm

from .evaluator import DatasetEvaluators

__all__ = ["inference_on_dataset", "print_csv_format", "format_metric", "PERCENT_TASKS"]

logger = logging.getLogger(__name__)


def inference_on_dataset(model: torch.nn.Module, data_loader, evaluator) -> dict:
    """Run ``model`` in eval mode over ``data_loader`` feeding ``evaluator``; returns its
    results (``{}`` on ranks other than 0). The model's training flag is restored."""
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, (list, tuple)):
        evaluator = DatasetEvaluators(evaluator)
    try:
        total = len(data_loader)
    except TypeError:
        total = None
    logger.info("Start inference on %s batches", total if total is not None else "?")
    evaluator.reset()
    num_warmup = min(5, total - 1) if total else 0
    start = time.perf_counter()
    compute_time, counted, last_log = 0.0, 0, start
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for idx, inputs in enumerate(data_loader):
                if idx == num_warmup:  # the first batches pay for allocator/cudnn warm-up
                    start, compute_time, counted = time.perf_counter(), 0.0, 0
                if not inputs:  # every image of the batch skipped as bad (SKIP_BAD_IMAGES)
                    continue
                tic = time.perf_counter()
                outputs = model(inputs)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                compute_time += time.perf_counter() - tic
                counted += 1
                evaluator.process(inputs, outputs)
                now = time.perf_counter()
                if now - last_log > 10 and total:
                    eta = (now - start) / max(counted, 1) * (total - idx - 1)
                    logger.info("Inference done %d/%d. %.4f s / batch. ETA=%s", idx + 1,
                                total, compute_time / max(counted, 1),
                                datetime.timedelta(seconds=int(eta)))
                    last_log = now
    finally:
        model.train(training)
    wall = time.perf_counter() - start
    logger.info("Total inference time: %s (%.6f s / batch per device, on %d devices); pure "
                "compute %.6f s / batch", datetime.timedelta(seconds=int(wall)),
                wall / max(counted, 1), comm.get_world_size(), compute_time / max(counted, 1))
    results = evaluator.evaluate()
    return results if results is not None else {}


# Tasks whose metrics are fractions, printed in percent (as the README tables).
PERCENT_TASKS = ("crowdhuman", "bbox")


def format_metric(task: str, value: Any) -> str:
    """``value`` as printed: percent with 2 decimals for :data:`PERCENT_TASKS`, else 4
    significant digits (an evaluator's own units: counts, errors...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return str(value)
    value = float(value)
    if task in PERCENT_TASKS:
        return "nan" if np.isnan(value) else f"{100 * value:.2f}"
    return f"{value:.4g}"


def print_csv_format(results: Dict[str, Dict[str, float]]) -> str:
    """Log (and return) the copy-paste lines: per task, the metric names then the values, in
    percent for the CrowdHuman and COCO tasks (the task line says so)."""
    lines = []
    for task, metrics in results.items():
        if not isinstance(metrics, dict):
            continue
        unit = " (percent)" if task in PERCENT_TASKS else ""
        lines.append(f"copypaste: Task: {task}{unit}")
        lines.append("copypaste: " + ",".join(metrics))
        lines.append("copypaste: " + ",".join(format_metric(task, v) for v in metrics.values()))
    text = "\n".join(lines)
    if text:
        logger.info("\n%s", text)
    return text
