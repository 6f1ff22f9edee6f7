"""``pods_test``: evaluate checkpoints of the experiment in ``--dir``.

Which weights (first match):

- ``--start-iter A`` / ``--end-iter B``: every checkpoint in OUTPUT_DIR with
  A <= iterations done <= B, one result row each, each checkpoint's result files in
  ``inference/<checkpoint name>/<dataset>/``;
- ``MODEL.WEIGHTS path`` on the command line: that file (with ``MODEL.WEIGHTS_CLASSES``
  applied: a checkpoint of other classes is scored on this experiment's classes);
- else the newest checkpoint of OUTPUT_DIR (``last_checkpoint``, else the most iterations).
  A ``MODEL.WEIGHTS`` set in config.py is where training starts (ImageNet backbone, a COCO
  detector), not what pods_test scores; it is used only when OUTPUT_DIR has no checkpoint.

Iteration numbers are iterations done, read from each file (``model_iter_0005000.pth`` and
``model_final.pth`` of a 30000-iteration run are 5000 and 30000). Each checkpoint must fill
``MODEL.WEIGHTS_MIN_COVERAGE.TEST`` of the model (all of it by default). The rows (checkpoint,
iteration, every metric; CrowdHuman and COCO metrics in percent) are printed together at the
end, including those of checkpoints that failed; any failure makes the exit status non-zero.

pods_test writes only under ``OUTPUT_DIR/inference/``: its log (``inference/log.txt``), the
config it ran with (``inference/config.yaml``; the training run's ``config.yaml`` is left
alone), and one results folder per checkpoint and dataset
(``inference/<checkpoint name>/<dataset>/``), so that evaluating several checkpoints, or
evaluating while the run still trains, overwrites nothing. That folder is locked while pods_test
runs (a second pods_test on the same OUTPUT_DIR stops with the holder's pid).

After the table, the newest checkpoint's results are checked against ``TEST.EXPECTED_RESULTS``
(one line per entry: inside or outside its band, and by how much; see docs/config.md).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from crowdloss.cli.common import CLIError, console_entry, parse_args, run_cli
from crowdloss.cli.process import setup

__all__ = ["main", "run", "eval_worker", "select_checkpoints", "format_rows", "NoCheckpointError"]

logger = logging.getLogger(__name__)


class NoCheckpointError(CLIError, FileNotFoundError):
    """Nothing to evaluate."""


def select_checkpoints(cfg, finder, start_iter: Optional[int] = None,
                       end_iter: Optional[int] = None, *, weights_given: bool = True
                       ) -> List[Tuple[Optional[int], str]]:
    """``[(iterations done or None, path)]`` to evaluate, oldest first (see the module docstring).

    Args:
        finder: a ``Checkpointer`` over OUTPUT_DIR (its ``get_all_checkpoint_files`` /
            ``get_checkpoint_file`` do the listing).
        weights_given: ``MODEL.WEIGHTS`` came from the command line; otherwise it is the
            experiment's training start, used only when OUTPUT_DIR has no checkpoint.

    Raises:
        NoCheckpointError: nothing to evaluate, naming the directory and what was looked for.
    """
    from crowdloss.engine.checkpoint import checkpoint_iteration

    out = cfg.OUTPUT_DIR
    weights = cfg.MODEL.WEIGHTS
    if start_iter is not None or end_iter is not None:
        if weights:
            logger.info("--start-iter / --end-iter evaluate the checkpoints of %s; MODEL.WEIGHTS "
                        "%s is not used", out, weights)
        lo = -math.inf if start_iter is None else start_iter
        hi = math.inf if end_iter is None else end_iter
        found = []
        for path in finder.get_all_checkpoint_files():
            it = checkpoint_iteration(path)
            if it is not None and lo <= it <= hi:
                found.append((it, path))
        if not found:
            raise NoCheckpointError(
                f"no checkpoint in {out} with {start_iter} <= iterations done <= {end_iter} "
                f"(looked at every *.pth: model_iter_0005000.pth is iteration 5000)")
        return sorted(found)
    if weights and weights_given:
        return [(checkpoint_iteration(weights), weights)]
    newest = finder.get_checkpoint_file()
    if newest is None and weights:
        logger.info("%s has no checkpoint: evaluating the experiment's MODEL.WEIGHTS %s", out,
                    weights)
        return [(checkpoint_iteration(weights), weights)]
    if newest is None:
        raise NoCheckpointError(
            f"no checkpoint to evaluate: {out} has no last_checkpoint file and no model_*.pth; "
            f"train first or pass MODEL.WEIGHTS /path/to/model.pth")
    return [(checkpoint_iteration(newest), newest)]


def _flatten(results: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(results, dict):
        return {prefix: results}
    flat: Dict[str, Any] = {}
    for key, value in results.items():
        flat.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    return flat


Row = Tuple[Optional[int], str, Union[Dict[str, Any], BaseException]]


def format_rows(rows: List[Row]) -> str:
    """A text table: one row per checkpoint, columns ``checkpoint iter <dataset/task/metric>...``
    (CrowdHuman and COCO metrics in percent, as the README tables); a checkpoint that failed gets
    ``FAILED`` cells and its error on a line below the table."""
    from crowdloss.evaluation.inference import format_metric

    flats = [_flatten(r) if not isinstance(r, BaseException) else None for _, _, r in rows]
    columns = sorted({key for flat in flats if flat for key in flat})
    header = ["checkpoint", "iter"] + (columns or ["result"])
    table = [header]
    notes = []
    for (iteration, path, result), flat in zip(rows, flats):
        cells = [os.path.basename(path), "-" if iteration is None else str(iteration)]
        if flat is None:
            cells += ["FAILED"] * (len(header) - 2)
            notes.append(f"FAILED {os.path.basename(path)}: {type(result).__name__}: {result}")
        else:
            for col in header[2:]:
                parts = col.split("/")
                value = flat.get(col, "")
                cells.append(format_metric(parts[-2] if len(parts) >= 2 else "", value)
                             if value != "" else "")
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    return "\n".join(lines + notes)


# Failures of loading are the same on every rank (same file, same model), so the others may
# go on; a failure inside distributed inference is not, and ends the run (ranks would wait).
_LOAD_ERRORS = (FileNotFoundError, ValueError, RuntimeError, pickle.UnpicklingError)


def eval_worker(args: argparse.Namespace) -> List[Row]:
    """One rank: build the model once, then load + evaluate each selected checkpoint.

    Afterwards (rank 0) the newest checkpoint's results are checked against
    ``TEST.EXPECTED_RESULTS`` and the keys the experiment set are checked for reads (training
    keys excepted: evaluating does not read them).
    """
    from crowdloss.config.access import cfg_get
    from crowdloss.config.tracking import TRAIN_ONLY_KEYS
    from crowdloss.engine.checkpoint import DetectionCheckpointer
    from crowdloss.engine.class_remap import class_remap_from_config
    from crowdloss.engine.provenance import run_provenance
    from crowdloss.evaluation.expected import verify_expected_results
    from crowdloss.modeling.meta_arch import place_model
    from crowdloss.utils import comm

    cfg, build_model, report = setup(args)
    try:
        model = place_model(build_model(cfg), cfg)
        model.eval()
        checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR,
                                             provenance=run_provenance(cfg, model, build_model))
        coverage_key = "MODEL.WEIGHTS_MIN_COVERAGE.TEST"
        min_coverage = float(cfg_get(cfg, coverage_key))
        selected = select_checkpoints(cfg, checkpointer, args.start_iter, args.end_iter,
                                      weights_given="MODEL.WEIGHTS" in args.opts[0::2])
        # MODEL.WEIGHTS_CLASSES describes the MODEL.WEIGHTS file only (read with it).
        remap = (class_remap_from_config(cfg, "DATASETS.TEST")
                 if cfg.MODEL.WEIGHTS_CLASSES and cfg.MODEL.WEIGHTS else None)
        report.check("by the model", only=("MODEL",), exclude=TRAIN_ONLY_KEYS)
        rows: List[Row] = []
        for iteration, path in selected:
            logger.info("Evaluating %s (iteration %s)", path, iteration)
            rows.append((iteration, path, _evaluate_one(
                cfg, model, checkpointer, path, iteration, coverage_key, min_coverage,
                class_remap=remap if path == cfg.MODEL.WEIGHTS else None)))
        failed = [(path, r) for _, path, r in rows if isinstance(r, BaseException)]
        if comm.is_main_process():
            # The rank-0 console handler prints it too (and log.txt keeps it): no extra print.
            logger.info("Results per checkpoint, CrowdHuman and COCO metrics in percent:\n%s",
                        format_rows(rows))
            newest = rows[-1]
            if not isinstance(newest[2], BaseException):
                if len(rows) > 1:
                    logger.info("TEST.EXPECTED_RESULTS are checked against the newest: %s",
                                os.path.basename(newest[1]))
                verify_expected_results(cfg, newest[2])
            report.check("by this evaluation", exclude=TRAIN_ONLY_KEYS)
        if failed:
            raise CLIError(f"{len(failed)} of {len(rows)} checkpoint(s) could not be evaluated: "
                           + "; ".join(f"{os.path.basename(p)}: {e}" for p, e in failed))
        return rows
    finally:
        report.stop()


def _evaluate_one(cfg, model, checkpointer, path: str, iteration, coverage_key: str,
                  min_coverage: float, class_remap=None):
    """Load one checkpoint and evaluate it; a loading failure (or, on one process, an
    evaluation failure) is returned as the exception, so the other checkpoints still run."""
    from crowdloss.engine.runner import DefaultRunner
    from crowdloss.utils import comm

    average = bool(cfg.TEST.EMA_WEIGHTS)  # of a SOLVER.EMA checkpoint: the average or not
    try:
        # SOLVER keys are rescaled by the world size and unused by inference.
        summary = checkpointer.load_model_weights(
            path, min_coverage=min_coverage, cfg=cfg,
            requirement=f"{coverage_key} = {min_coverage:g}", ignore_config=("SOLVER.",),
            class_remap=class_remap, ema_weights=average)
    except _LOAD_ERRORS as exc:
        logger.error("Cannot evaluate %s: %s", path, exc)
        return exc
    name = os.path.basename(path)
    out = os.path.join(cfg.OUTPUT_DIR, "inference", os.path.splitext(name)[0])
    source = name if iteration is None else f"{name}, iteration {iteration}"
    ema = summary.extras.get("ema")
    if isinstance(ema, dict):  # SOLVER.EMA: the file's model is the average (engine.ema)
        logger.info("%s holds the moving average of the weights (SOLVER.EMA, decay %g over %s "
                    "updates) and the trained weights: the %s are scored (TEST.EMA_WEIGHTS %s)",
                    name, ema.get("decay"), ema.get("updates"),
                    "average" if average else "trained weights", average)
        source += " (EMA weights)" if average else " (trained weights, not the EMA)"
    try:
        return DefaultRunner.test(cfg, model, output_dir=out, source=source, print_results=False)
    except Exception as exc:
        if comm.get_world_size() > 1:
            raise
        logger.exception("Evaluating %s failed", path)
        return exc


def run(argv: Optional[Sequence[str]] = None) -> Any:
    """``pods_test`` as a function: returns rank 0's results (dataset -> task -> metrics)."""
    return run_cli(parse_args("pods_test", argv, test=True), eval_worker)


main = console_entry(run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
