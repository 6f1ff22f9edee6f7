"""``pods_test``: evaluate checkpoints of the experiment in ``--dir``.

Which weights (first match):

- ``--start-iter A`` / ``--end-iter B``: every ``model_iter_XXXXXXX.pth`` in OUTPUT_DIR with
  A <= iteration <= B (``model_final.pth`` counts as ``MAX_ITER``), one result row each;
- ``MODEL.WEIGHTS path``: that file;
- else the newest checkpoint of OUTPUT_DIR (``last_checkpoint``, else the newest ``.pth``).

The rows (checkpoint, iteration, every metric) are printed together at the end; then the
newest checkpoint's results are checked against ``TEST.EXPECTED_RESULTS`` (one line per entry:
inside or outside its band, and by how much; see docs/config.md).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from crowdloss.cli.common import CLIError, parse_args, run_cli, setup

__all__ = ["main", "run", "eval_worker", "select_checkpoints", "format_rows", "NoCheckpointError"]

logger = logging.getLogger(__name__)

class NoCheckpointError(CLIError, FileNotFoundError):
    """Nothing to evaluate."""


_ITER_NAME = re.compile(r"model_iter_(\d+)\.pth$")


def checkpoint_iteration(path: str, max_iter: int) -> Optional[int]:
    """Iteration a checkpoint name encodes; else None.

    ``model_final.pth`` -> the number of iterations it was trained for, read from the file
    (its 0-based ``iteration`` + 1), because a config override of ``MAX_ITER`` at train time
    is not in the config pods_test sees; ``max_iter`` only when the file does not say.
    """
    name = os.path.basename(path)
    if name == "model_final.pth":
        try:
            # mmap: only the small "iteration" entry is read, not the weights
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return int(data["iteration"]) + 1
        except Exception:  # a bare state dict, or not readable here (load reports that)
            return max_iter
    match = _ITER_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def select_checkpoints(cfg, finder, start_iter: Optional[int] = None,
                       end_iter: Optional[int] = None) -> List[Tuple[Optional[int], str]]:
    """``[(iteration or None, path)]`` to evaluate, oldest first (see the module docstring).

    Args:
        finder: a ``Checkpointer`` over OUTPUT_DIR (its ``get_all_checkpoint_files`` /
            ``get_checkpoint_file`` do the listing).

    Raises:
        NoCheckpointError: nothing to evaluate, naming the directory and what was looked for.
    """
    out = cfg.OUTPUT_DIR
    max_iter = int(cfg.SOLVER.LR_SCHEDULER.MAX_ITER)
    weights = cfg.MODEL.WEIGHTS
    if start_iter is not None or end_iter is not None:
        if weights:
            logger.info("--start-iter / --end-iter evaluate the checkpoints of %s; MODEL.WEIGHTS "
                        "%s is not used", out, weights)
        lo = -math.inf if start_iter is None else start_iter
        hi = math.inf if end_iter is None else end_iter
        found = []
        for path in finder.get_all_checkpoint_files():
            it = checkpoint_iteration(path, max_iter)
            if it is not None and lo <= it <= hi:
                found.append((it, path))
        if not found:
            raise NoCheckpointError(
                f"no checkpoint in {out} with {start_iter} <= iteration <= {end_iter} "
                f"(looked for model_iter_XXXXXXX.pth and model_final.pth = iteration {max_iter})")
        return sorted(found)
    if weights:
        return [(checkpoint_iteration(weights, max_iter), weights)]
    newest = finder.get_checkpoint_file()
    if newest is None:
        raise NoCheckpointError(
            f"no checkpoint to evaluate: {out} has no last_checkpoint file and no model_*.pth; "
            f"train first or pass MODEL.WEIGHTS /path/to/model.pth")
    return [(checkpoint_iteration(newest, max_iter), newest)]


def _flatten(results: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(results, dict):
        return {prefix: results}
    flat: Dict[str, Any] = {}
    for key, value in results.items():
        flat.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    return flat


def format_rows(rows: List[Tuple[Optional[int], str, Dict[str, Any]]]) -> str:
    """A text table: one row per checkpoint, columns ``checkpoint iter <dataset/task/metric>...``."""
    flats = [_flatten(results) for _, _, results in rows]
    columns = sorted({key for flat in flats for key in flat})
    header = ["checkpoint", "iter"] + columns
    table = [header]
    for (iteration, path, _), flat in zip(rows, flats):
        cells = [os.path.basename(path), "-" if iteration is None else str(iteration)]
        for col in columns:
            value = flat.get(col, "")
            cells.append(f"{value:.4f}" if isinstance(value, float) else str(value))
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def eval_worker(args: argparse.Namespace) -> List[Tuple[Optional[int], str, Dict[str, Any]]]:
    """One rank: build the model once, then load + evaluate each selected checkpoint.

    Afterwards (rank 0) the newest checkpoint's results are checked against
    ``TEST.EXPECTED_RESULTS`` and the keys the experiment set are checked for reads (training
    keys excepted: evaluating does not read them).
    """
    from crowdloss.config.tracking import TRAIN_ONLY_KEYS
    from crowdloss.engine.checkpoint import DetectionCheckpointer
    from crowdloss.engine.runner import DefaultRunner
    from crowdloss.evaluation.expected import verify_expected_results
    from crowdloss.utils import comm

    cfg, build_model, report = setup(args)
    try:
        model = build_model(cfg).to(cfg.MODEL.DEVICE)
        model.eval()
        checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR)
        selected = select_checkpoints(cfg, checkpointer, args.start_iter, args.end_iter)
        report.check("by the model", only=("MODEL",), exclude=TRAIN_ONLY_KEYS)
        rows = []
        for iteration, path in selected:
            logger.info("Evaluating %s (iteration %s)", path, iteration)
            checkpointer.load_model_weights(path)
            rows.append((iteration, path, DefaultRunner.test(cfg, model)))
        if comm.is_main_process():
            table = format_rows(rows)
            # The rank-0 console handler prints it too (and log.txt keeps it): no extra print.
            logger.info("Results per checkpoint:\n%s", table)
            if len(rows) > 1:
                logger.info("TEST.EXPECTED_RESULTS are checked against the newest: %s",
                            os.path.basename(rows[-1][1]))
            verify_expected_results(cfg, rows[-1][2])
            report.check("by this evaluation", exclude=TRAIN_ONLY_KEYS)
        return rows
    finally:
        report.stop()


def run(argv: Optional[Sequence[str]] = None) -> Any:
    """``pods_test`` as a function: returns rank 0's results (dataset -> task -> metrics)."""
    return run_cli(parse_args("pods_test", argv, test=True), eval_worker)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point. Returns the exit status: setuptools' wrapper passes it to
    ``sys.exit``, which would turn a results dict into status 1 (failures exit 1 from
    ``run_cli`` already)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
