"""Per-process setup of ``pods_train`` / ``pods_test``: what every rank does with its
config before it builds anything.

``setup`` resolves the config (overrides, validation, world-size rescaling, the device
``run_cli`` decided), takes OUTPUT_DIR and its lock, sets threads, logging and seeds, and
writes ``config.yaml`` / ``config_diff.yaml`` on rank 0. The CLI process has already loaded
the experiment to check it (``common.run_cli``); rank 0 of a single-process run reuses that
load so that a net.py with import-time side effects runs once.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from typing import Any, List, Optional

import torch

from .common import _PRELOADED, Setup, load_experiment

__all__ = ["setup", "register_config_datasets", "cpu_threads_per_process"]

logger = logging.getLogger(__name__)


def setup(args: argparse.Namespace) -> Setup:
    """Per-process setup; returns ``Setup(cfg, build_model, report)``.

    Overrides, validation (``validate_config``: bad numbers end the run here, before anything
    is built), world-size rescaling, the device run_cli decided (CUDA -> CPU fallback),
    ``CUDNN_BENCHMARK``, OUTPUT_DIR and its lock, logging (rank-aware), environment + config
    diff in the log, ``config.yaml`` / ``config_diff.yaml`` / the ``log`` link on rank 0, and
    seeding (``SEED -1`` = one random seed shared by every rank). pods_test writes its log and
    config under ``OUTPUT_DIR/inference/`` instead and leaves the run's files and link alone.
    ``report`` has started tracking config reads (before setup's own reads: rescaling uses
    IMS_PER_BATCH, the device, seed and output dir are used here).
    """
    from crowdloss.config import (UnreadKeyReport, config_diff, dump_config, link_log,
                                  validate_config)
    from crowdloss.utils import comm

    # The CLI process already loaded the experiment to check the overrides; reuse it so a
    # net.py with import-time side effects (dataset registration) runs once per process.
    exp = _PRELOADED.pop(args.dir, None) or load_experiment(args.dir)
    cfg = exp.config
    overrides = cfg.apply_overrides(list(args.opts))
    config_warnings = validate_config(cfg)
    # What the experiment set, taken before setup itself changes values (rescaling, device...).
    report = UnreadKeyReport.for_config(cfg, [k for o in overrides for k in o.leaf_keys]).start()
    try:
        report.action = cfg.UNREAD_KEYS  # validated above
        register_config_datasets(cfg)
        testing = bool(getattr(args, "test", False))
        write_dir = _setup_process(cfg, args, exp.dir, [o.message for o in overrides],
                                   config_warnings)
        if comm.is_main_process():
            diff = dump_config(cfg, write_dir)
            if not testing:
                link_log(exp.dir, cfg.OUTPUT_DIR)
        else:
            diff = config_diff(cfg)
        logger.info("Config differs from its parent class in:\n%s", _format_diff(diff))
    except BaseException:
        report.stop()
        raise
    return Setup(cfg, exp.build_model, report)


def register_config_datasets(cfg) -> List[str]:
    """Register the datasets a config declares by key (``DATASETS.CSV``: ``csv_train`` /
    ``csv_val``), after the overrides, so that a run's files may come from overrides alone.
    Called wherever an experiment's config is resolved: the CLI process (before the dataset
    check), every rank's ``setup``, the predictor."""
    from crowdloss.data.csv import register_csv_from_config

    return register_csv_from_config(cfg)


def _setup_process(cfg, args: argparse.Namespace, exp_dir: str, notes: List[str],
                   config_warnings: List[str]) -> str:
    """Rescaling, device, output dir + lock, threads, cudnn, logging, seeding (see ``setup``);
    returns the folder this process writes its log and config to."""
    from crowdloss.config import default_output_dir, rescale_for_world_size
    from crowdloss.utils import comm
    from crowdloss.utils.env import seed_all_rng
    from crowdloss.utils.lock import lock_for_run
    from crowdloss.utils.logger import setup_logger

    rank, world_size = comm.get_rank(), comm.get_world_size()
    notes = notes + rescale_for_world_size(cfg, world_size)
    device_warning = device_note = None
    plan = getattr(args, "device_plan", None)
    if plan is not None:  # run_cli decided it (preflight.plan_device)
        cfg.MODEL.DEVICE = plan.model_device
        device_warning, device_note = plan.warning, plan.note
    elif str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        device_warning = f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available; using cpu"
        cfg.MODEL.DEVICE = "cpu"
    if not cfg.OUTPUT_DIR:
        cfg.OUTPUT_DIR = default_output_dir(exp_dir)
    testing = bool(getattr(args, "test", False))
    write_dir = os.path.join(cfg.OUTPUT_DIR, "inference") if testing else cfg.OUTPUT_DIR
    os.makedirs(write_dir, exist_ok=True)
    lock_for_run(write_dir, purpose=args.prog)  # rank 0, before anything is written there
    threads = cpu_threads_per_process() if cfg.MODEL.DEVICE == "cpu" else None
    if threads:
        torch.set_num_threads(threads)
    # Autotuned convolutions: faster for fixed input sizes, not bit-reproducible.
    torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)

    setup_logger(write_dir, distributed_rank=rank)
    if device_warning:
        logger.warning(device_warning)
    if device_note:
        logger.info(device_note)
    logger.info("Rank %d of %d; python %s, torch %s, CUDA %s (%d devices), %s",
                rank, world_size, platform.python_version(), torch.__version__,
                torch.version.cuda or "none", torch.cuda.device_count(), platform.platform())
    logger.info("Command line: %s", " ".join(sys.argv))
    device = str(cfg.MODEL.DEVICE)
    if device == "cuda" and comm.is_dist():  # launch gave this rank the GPU of its local rank
        device = f"cuda:{comm.get_local_rank()}"
    logger.info("Device: %s", device)
    if threads:
        logger.info("CPU worker: %d intra-op thread(s) (OMP_NUM_THREADS overrides)", threads)
    logger.info("Experiment %s -> OUTPUT_DIR %s", exp_dir, cfg.OUTPUT_DIR)
    for note in notes:
        logger.info("Config: %s", note)
    for warning in config_warnings:
        logger.warning("Config: %s", warning)
    if torch.backends.cudnn.benchmark:
        logger.info("CUDNN_BENCHMARK: cudnn autotuning on")

    if cfg.SEED < 0:
        cfg.SEED = comm.shared_random_seed()  # a collective: every rank must reach it
        logger.info("SEED -1: drew the shared seed %d", cfg.SEED)
    # Rank offset: augmentations differ per rank; the sampler uses the shared cfg.SEED.
    seed_all_rng(cfg.SEED + rank)
    return write_dir


def cpu_threads_per_process() -> Optional[int]:
    """Intra-op threads for one CPU worker: this machine's cores shared among its processes.

    torch starts one thread per core in every process, so P CPU workers on C cores run P x C
    threads, and OpenMP's spin-waiting barriers then stall each other (measured here: a
    training step 7x slower with 2 threads beside one busy process than with 1 thread).
    Returns None when ``OMP_NUM_THREADS`` is set: the user's choice wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    from crowdloss.utils import comm

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // comm.get_local_size())


def _format_diff(diff: Any, indent: str = "  ") -> str:
    if not isinstance(diff, dict) or not diff:
        return f"{indent}{diff if diff else '(nothing)'}"
    lines = []
    for key, value in diff.items():
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{key}:")
            lines.append(_format_diff(value, indent + "  "))
        else:
            lines.append(f"{indent}{key}: {value!r}")
    return "\n".join(lines)
