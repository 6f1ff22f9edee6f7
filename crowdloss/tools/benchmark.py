"""``python -m crowdloss.tools.benchmark``: train and evaluate experiments over several seeds.

Every (experiment, seed) is one ``pods_train --resume`` (which evaluates after its last
iteration) in its own ``OUTPUT_DIR`` = ``<output>/<label>/seed<k>``, run as a subprocess with
one torch thread, ``--jobs`` of them at a time; ``pods_test`` runs only when the training left
no evaluation of its final checkpoint. Re-running the same command reuses finished runs and
resumes half-finished ones (``pods_train --resume`` continues bit for bit from the newest
checkpoint); a run dir made from another config is an error, never reused. A run whose config
differs from another run's only in test-time keys (score threshold, NMS, test pipeline, ...)
trains nothing: it scores that run's final checkpoint (``bench_fingerprint``). The report
(``report.md``, ``results.json``, ``ap_mr.png``, ``mr_fppi.png`` under ``<output>``) gives
mean +- std over seeds, every seed's values and the time per run: ``crowdloss.tools.bench_report``.

Example (the standard synthcrowd comparison, docs/benchmark.md)::

    python -m crowdloss.tools.benchmark --output output/bench --seeds 0 1 2 \\
        playground/detection/synthcrowd/{lla,fcos,atss}.res18.fpn.synthcrowd.*
    # a variant of one experiment, under its own label:
    python -m crowdloss.tools.benchmark --output output/bench \\
        lla_wu=playground/detection/synthcrowd/lla.res18... --exp-opts lla_wu MODEL.LLA.WARMUP_ITERS 500
    # lla's trained models scored again at another score threshold (no training):
    python -m crowdloss.tools.benchmark --output output/bench lla=DIR thr0=DIR \\
        --exp-opts thr0 MODEL.FCOS.SCORE_THRESH_TEST 0.0
    # which seed matters: the initialisation alone, then the data stream alone
    python -m crowdloss.tools.benchmark --output output/bench init=DIR data=DIR \\
        --exp-opts init DATALOADER.SEED 0 --exp-opts data SEED 0 DATALOADER.SEED {seed}

Each run sets ``SEED <k>`` before the overrides, so an override may fix ``SEED``; ``{seed}`` in
an override's value stands for the run's seed ``k``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import copy
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from crowdloss.utils.io import atomic_write

from .bench_fingerprint import (config_fingerprint, config_fingerprints, link_trainings,
                                training_fingerprint)
from .bench_fingerprint import final_checkpoint as _final_checkpoint
from .bench_fingerprint import read_json as _read_json
from .bench_stages import add_time, failure_reason, timed

__all__ = ["Run", "plan_runs", "prepare_runs", "config_fingerprint", "config_fingerprints",
           "execute_run", "main"]

RECORD = "benchmark_run.json"
_print_lock = threading.Lock()


def _say(msg: str) -> None:
    with _print_lock:
        print(msg, flush=True)


@dataclass
class Run:
    """One (experiment, seed): its label, experiment dir, OUTPUT_DIR and config overrides."""
    label: str
    exp_dir: str
    seed: int
    out: str
    overrides: List[str] = field(default_factory=list)
    #: filled by ``prepare_runs`` (in the main thread: loading an experiment is not thread-safe)
    fingerprint: str = ""
    #: the fingerprints a run recorded before ``config.tracking.ADDED_KEYS`` existed would have
    earlier_fingerprints: List[str] = field(default_factory=list)
    #: (dataset name, GT file or None, evaluator type, GT box key) of each of DATASETS.TEST
    test_sets: List[tuple] = field(default_factory=list)
    #: the config without its test-time keys (``bench_fingerprint.training_fingerprint``)
    train_fingerprint: str = ""
    #: the out dir of the run that trains this run's model (same training, other test-time
    #: settings); None: this run trains (``bench_fingerprint.link_trainings``)
    trained_by: Optional[str] = None

    def made_by(self, record: dict) -> bool:
        """Whether ``record`` (a run dir's record) is a run of this config."""
        return record.get("fingerprint") in [self.fingerprint, *self.earlier_fingerprints]

    @property
    def name(self) -> str:
        return f"{self.label} seed {self.seed}"

    def config_overrides(self) -> List[str]:
        """``SEED <k>``, then the overrides (which may fix SEED and vary another key)."""
        return ["SEED", str(self.seed), *self.overrides]

    def cli_args(self) -> List[str]:
        return ["--dir", self.exp_dir, "OUTPUT_DIR", self.out, *self.config_overrides()]


def parse_experiment(spec: str) -> tuple:
    """``DIR`` or ``LABEL=DIR`` -> (label, absolute dir); the label defaults to the basename."""
    label, sep, path = spec.partition("=")
    if not sep:
        label, path = "", spec
    path = os.path.abspath(os.path.expanduser(path))
    label = label or os.path.basename(path.rstrip(os.sep))
    if not os.path.isfile(os.path.join(path, "config.py")):
        raise SystemExit(f"benchmark: error: {spec!r}: {path} holds no config.py (not an "
                         f"experiment dir)")
    return label, path


def plan_runs(experiments: Sequence[str], seeds: Sequence[int], output: str,
              opts: Sequence[str] = (), exp_opts: Sequence[Sequence[str]] = (),
              exp_seeds: Sequence[Sequence[str]] = ()) -> List[Run]:
    """The runs, seed-major (every experiment's seed 0 first: partial results cover them all).
    ``exp_seeds`` items are ``[LABEL, seed, ...]``: that experiment's seeds instead of
    ``seeds`` (a method whose std is near a target gets more seeds than the others)."""
    parsed = [parse_experiment(s) for s in experiments]
    labels = [label for label, _ in parsed]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise SystemExit(f"benchmark: error: label(s) {dupes} used twice; name them LABEL=DIR")
    per_label: Dict[str, List[str]] = {}
    for item in exp_opts:
        label, pairs = item[0], list(item[1:])
        if label not in labels:
            raise SystemExit(f"benchmark: error: --exp-opts {label}: no experiment has that "
                             f"label (labels: {labels})")
        if not pairs or len(pairs) % 2:
            raise SystemExit(f"benchmark: error: --exp-opts {label}: expected KEY VALUE pairs, "
                             f"got {pairs}")
        per_label.setdefault(label, []).extend(pairs)
    if len(seeds) != len(set(seeds)) or not seeds:
        raise SystemExit(f"benchmark: error: --seeds must be distinct, got {list(seeds)}")
    seeds_of = {label: list(seeds) for label in labels}
    for label, *values in exp_seeds:
        if label not in labels:
            raise SystemExit(f"benchmark: error: --exp-seeds {label}: no experiment has that "
                             f"label (labels: {labels})")
        try:
            these = [int(v) for v in values]
        except ValueError:
            these = []
        if not these or len(set(these)) != len(these):
            raise SystemExit(f"benchmark: error: --exp-seeds {label}: expected distinct "
                             f"integer seeds, got {values}")
        seeds_of[label] = these
    pairs = {label: list(opts) + per_label.get(label, []) for label in labels}
    for label, kv in pairs.items():
        if "SEED" in kv[::2] and not any("{seed}" in str(v) for v in kv[1::2]):
            raise SystemExit(f"benchmark: error: {label}: the overrides fix SEED and no value "
                             "uses {seed}: every seed would train the same run")
    output = os.path.abspath(output)
    every_seed = dict.fromkeys([*seeds, *(k for label in labels for k in seeds_of[label])])
    return [Run(label, path, int(seed), os.path.join(output, label, f"seed{seed}"),
                [str(v).replace("{seed}", str(seed)) for v in pairs[label]])
            for seed in every_seed for label, path in parsed if seed in seeds_of[label]]


def prepare_runs(runs: Sequence[Run]) -> None:
    """Load each experiment with its run's overrides: fingerprint and test sets (a bad override
    fails here, before anything trains)."""
    from crowdloss.cli.common import load_experiment
    from crowdloss.data import MetadataCatalog

    for run in runs:
        cfg = copy.deepcopy(load_experiment(run.exp_dir).config)
        try:
            cfg.merge_from_list(run.config_overrides())
        except (KeyError, ValueError) as exc:
            raise SystemExit(f"benchmark: error: {run.name}: {exc}") from None
        run.fingerprint, *run.earlier_fingerprints = config_fingerprints(cfg)
        run.train_fingerprint = training_fingerprint(cfg)
        run.test_sets = []
        for name in cfg.DATASETS.TEST:
            meta = MetadataCatalog.get(name)
            run.test_sets.append((name, meta.get("gt_file"), meta.get("evaluator_type"),
                                  cfg.DATASETS.BOX_TYPE))


def _fail(run: Run, record: dict, path: str, stage: str, rc: int, log: str) -> None:
    """Keep why the run failed in its record (the report names it), then raise."""
    record["failed"] = failure_reason(f"{stage} exit {rc}", log)
    atomic_write(path, json.dumps(record, indent=1))
    raise RuntimeError(f"{stage} failed for {run.name} (exit {rc}): see {log}")


def _use_training(run: Run, record: dict) -> None:
    """Point ``run.out`` at the final checkpoint of the run that trains its model (a symlink and
    ``last_checkpoint``, after the record that says so); the record takes that run's training
    time and names it."""
    src = _final_checkpoint(run.trained_by)
    if src is None:
        raise RuntimeError(f"{run.name} scores the model of {run.trained_by}, which has no "
                           f"final checkpoint")
    trainer = _read_json(os.path.join(run.trained_by, RECORD)) or {}
    record.update(trained_by=run.trained_by, train=trainer.get("train", {}))
    atomic_write(os.path.join(run.out, RECORD), json.dumps(record, indent=1))
    link = os.path.join(run.out, "model_final.pth")
    if os.path.realpath(link) != os.path.realpath(src):
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.abspath(src), link)
    atomic_write(os.path.join(run.out, "last_checkpoint"), "model_final.pth")


def _add_split_halves(run: Run, record: dict) -> bool:
    """Give a record collected before the split halves existed (the report's split-half
    estimate) its halves, read from the run's saved detections: nothing is scored again, and
    a run whose detections are gone keeps what it has. True if the record was rewritten."""
    from .bench_report import collect_results

    if not any("curve" in r and "val_halves" not in r for r in record["results"].values()):
        return False
    final = _final_checkpoint(run.out)
    fresh = (collect_results(run, final) if final else None) or {}
    if not all("val_halves" in fresh.get(k, {}) for k, r in record["results"].items()
               if "curve" in r):
        return False
    record["results"] = fresh
    atomic_write(os.path.join(run.out, RECORD), json.dumps(record, indent=1))
    return True


def execute_run(run: Run, *, env: dict, python: str = sys.executable,
                always_test: bool = False) -> dict:
    """Train (or resume) and evaluate one run; returns its record (also in ``OUT/RECORD``).

    Raises:
        RuntimeError: the run dir belongs to another config, or a stage failed (naming its log).
    """
    from .bench_report import collect_results

    os.makedirs(run.out, exist_ok=True)
    path = os.path.join(run.out, RECORD)
    fp = run.fingerprint
    record = _read_json(path) or {}
    if record and not run.made_by(record):
        if record.get("train_fingerprint") != run.train_fingerprint:
            raise RuntimeError(f"{run.out} holds a run of another config (its {RECORD} differs "
                               f"in the config fingerprint): use another --output or remove it")
        _say(f"[retest] {run.name}: only test-time keys changed; its model is scored again")
        always_test = True  # the training stands, its scores do not
    if not record and os.path.exists(os.path.join(run.out, "last_checkpoint")):
        raise RuntimeError(f"{run.out} holds checkpoints but no {RECORD}: not a run of this "
                           f"benchmark; use another --output or remove it")
    findable = record.get("train_fingerprint") == run.train_fingerprint
    record.update(label=run.label, experiment=run.exp_dir, seed=run.seed,
                  overrides=run.overrides, fingerprint=fp,
                  train_fingerprint=run.train_fingerprint)
    if run.trained_by is not None:
        _use_training(run, record)
    final = _final_checkpoint(run.out)
    if record.get("results") and final and record.get("final_mtime_ns") == \
            os.stat(final).st_mtime_ns and not always_test:
        rewritten = _add_split_halves(run, record)
        if not findable and not rewritten:  # recorded before training fingerprints: let
            atomic_write(path, json.dumps(record, indent=1))  # later variants find it
        return record  # finished earlier: reused as it is
    atomic_write(path, json.dumps(record, indent=1))
    log = os.path.join(run.out, "benchmark.log")
    if final is None:
        _say(f"[train] {run.name} -> {run.out}")
        t = timed([python, "-m", "crowdloss.cli.train", "--resume", *run.cli_args()], log, env)
        add_time(record, "train", t)
        atomic_write(path, json.dumps(record, indent=1))
        final = _final_checkpoint(run.out)
        if t["rc"] != 0 or final is None:
            _fail(run, record, path, "pods_train", t["rc"], log)
    results = collect_results(run, final)
    if results is None or always_test:
        _say(f"[test] {run.name}")
        t = timed([python, "-m", "crowdloss.cli.test", *run.cli_args()], log, env)
        add_time(record, "test", t)
        results = collect_results(run, final) if t["rc"] == 0 else None
        if results is None:
            _fail(run, record, path, "pods_test", t["rc"], log)
    record.pop("failed", None)
    record.update(results=results, final_mtime_ns=os.stat(final).st_mtime_ns)
    atomic_write(path, json.dumps(record, indent=1))
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crowdloss.tools.benchmark",
        description="Train + evaluate experiment dirs over several seeds (pods_train / "
                    "pods_test, one OUTPUT_DIR per experiment and seed) and report mean +- std.")
    p.add_argument("experiments", nargs="+", metavar="[LABEL=]DIR",
                   help="experiment dirs; LABEL (default: the dir's name) names its runs")
    p.add_argument("--output", required=True, help="root of the run dirs and of the report")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default: 0 1 2")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at a time (default: the CPU cores this process may use)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--exp-opts", nargs="+", action="append", default=[],
                   metavar="LABEL KEY VALUE",
                   help="overrides for one experiment (repeatable; {seed}: the run's seed)")
    p.add_argument("--exp-seeds", nargs="+", action="append", default=[],
                   metavar="LABEL SEED",
                   help="seeds for one experiment instead of --seeds (repeatable)")
    p.add_argument("--always-test", action="store_true",
                   help="run pods_test even when the training evaluated its final checkpoint")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report the runs already finished")
    p.add_argument("--band-k", type=float, default=3.0,
                   help="TEST.EXPECTED_RESULTS tolerance in seed stds (default 3)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="overrides for every run (last on the command line)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .bench_report import write_report

    args = build_parser().parse_args(argv)
    if len(args.opts) % 2:
        raise SystemExit(f"benchmark: error: --opts needs KEY VALUE pairs, got {args.opts}")
    runs = plan_runs(args.experiments, args.seeds, args.output, args.opts, args.exp_opts,
                     args.exp_seeds)
    prepare_runs(runs)
    link_trainings(runs, os.path.abspath(args.output), RECORD)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    jobs = max(1, min(args.jobs or max(1, (cores or 1) // args.threads), len(runs)))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    records, failures = [], []
    if args.report_only:
        for run in runs:
            record = _read_json(os.path.join(run.out, RECORD))
            if record and record.get("results") and run.made_by(record):
                _add_split_halves(run, record)
                records.append(record)
            elif record and record.get("results"):
                _say(f"[skipped] {run.name}: {run.out} was made from another config")
    else:
        _say(f"benchmark: {len(runs)} runs, {jobs} at a time, {args.threads} thread(s) each")
        # A run that scores another run's model starts when that run's training is done.
        waiting: Dict[str, List[Run]] = {}
        ready = []
        for run in runs:
            in_plan = any(r.out == run.trained_by for r in runs)
            (waiting.setdefault(run.trained_by, []) if in_plan else ready).append(run)
        with futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            def submit(batch):
                return {pool.submit(execute_run, r, env=env, always_test=args.always_test): r
                        for r in batch}

            pending = submit(ready)
            while pending:
                done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
                for fut in done:
                    run = pending.pop(fut)
                    followers = waiting.pop(run.out, [])
                    try:
                        records.append(fut.result())
                        _say(f"[done] {run.name}")
                        pending.update(submit(followers))
                    except Exception as exc:  # one failed run must not stop the others
                        failures.append(f"{run.name}: {exc}")
                        _say(f"[FAILED] {run.name}: {exc}")
                        failures += [f"{r.name}: not scored, {run.name} failed" for r in followers]
    command = "python -m crowdloss.tools.benchmark " + " ".join(
        argv if argv is not None else sys.argv[1:])
    failed = {}
    for run in runs:  # why a run without results failed, if it did (this or an earlier call)
        record = _read_json(os.path.join(run.out, RECORD)) or {}
        if record.get("failed") and not record.get("results") and run.made_by(record):
            failed[run.name] = record["failed"]
    written = write_report(records, runs, args.output, command=command, band_k=args.band_k,
                           failed=failed)
    for path in written:
        _say(f"wrote {path}")
    if failures:
        _say("benchmark: {} run(s) failed:\n  {}".format(len(failures), "\n  ".join(failures)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
