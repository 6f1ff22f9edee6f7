"""``pods_train``: train the experiment in ``--dir`` (default: the current directory).

Example (from an experiment dir)::

    pods_train --num-gpus 8
    pods_train --num-gpus 2 --resume SOLVER.IMS_PER_BATCH 8 OUTPUT_DIR runs/exp1
    torchrun --nproc-per-node 4 -m crowdloss.cli.train --dir playground/.../fcos.res50...
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

from crowdloss.cli.common import console_entry, parse_args, run_cli
from crowdloss.cli.process import setup

__all__ = ["main", "run", "train_worker"]


def train_worker(args: argparse.Namespace) -> Any:
    """One rank: set up, build the runner, resume or load weights, train; returns the results.

    Config checks around the run: the keys the experiment set under MODEL / SOLVER must have
    been read once the model, optimizer, scheduler and train loader are built (before the
    first iteration); the rest when the run ends, after the final evaluation, which is also
    checked against ``TEST.EXPECTED_RESULTS``.
    """
    from crowdloss.config.tracking import BUILD_TIME_KEYS, EVAL_ONLY_KEYS, TRAIN_ONLY_KEYS
    from crowdloss.engine.runner import DefaultRunner
    from crowdloss.evaluation.expected import verify_expected_results
    from crowdloss.utils import comm

    cfg, build_model, report = setup(args)
    try:
        runner = DefaultRunner(cfg, build_model)
        runner.resume_or_load(resume=args.resume)
        trains = runner.start_iter < runner.max_iter
        if trains:
            _ = runner.data_loader  # build it now (train() reuses it): its keys are read
        # A resumed run with nothing left to train builds no loader and evaluates nothing.
        skip = () if trains else TRAIN_ONLY_KEYS
        report.check("by the model, optimizer, scheduler and train loader", only=BUILD_TIME_KEYS,
                     exclude=skip)
        results = runner.train()
        if comm.is_main_process():  # evaluation results (and their reads) are rank 0's
            verify_expected_results(cfg, results)
            if trains:  # evaluated nothing (TEST.EVAL_PERIOD -1): pods_test checks those
                report.check("in this whole run", exclude=() if results else EVAL_ONLY_KEYS)
        return results
    finally:
        report.stop()


def run(argv: Optional[Sequence[str]] = None) -> Any:
    """``pods_train`` as a function: returns rank 0's results (dataset -> task -> metrics)."""
    return run_cli(parse_args("pods_train", argv), train_worker)


main = console_entry(run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
