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

from crowdloss.cli.common import parse_args, run_cli, setup

__all__ = ["main", "run", "train_worker"]


def train_worker(args: argparse.Namespace) -> Any:
    """One rank: set up, build the runner, resume or load weights, train; returns the results."""
    from crowdloss.engine.runner import DefaultRunner

    cfg, build_model = setup(args)
    runner = DefaultRunner(cfg, build_model)
    runner.resume_or_load(resume=args.resume)
    return runner.train()


def run(argv: Optional[Sequence[str]] = None) -> Any:
    """``pods_train`` as a function: returns rank 0's results (dataset -> task -> metrics)."""
    return run_cli(parse_args("pods_train", argv), train_worker)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point. Returns the exit status: setuptools' wrapper passes it to
    ``sys.exit``, which would turn a results dict into status 1 (failures exit 1 from
    ``run_cli`` already)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
