"""The benchmark's results: one run's metrics (``collect_results``) and the report over all runs
(``write_report``: ``report.md``, ``results.json``, and the plots of ``bench_plots``).

A run's metrics are those its evaluator wrote for the final checkpoint
(``OUTPUT_DIR/inference/<dataset>/metrics.json``, newer than ``model_final.pth``), and the
per-class AP beside them (``per_class_ap.json``, TEST.PER_CLASS_AP) and COCO AP / oLRP of an
odgt dataset (``coco_metrics.json``, TEST.COCO_METRICS), each as a table of its own. For a
CrowdHuman-type dataset the run also keeps its MR-FPPI curve (thinned to <= ~200 points) and
the val-sampling spread of AP / MR^-2 from a bootstrap over the val images and its scores on
random halves of them, so the report never reads a dataset again. Seeds are summarised as mean
and sample std (ddof 1).

How much of a seed std is the val set's: every seed is scored on the same random halves of
the val set. If the val set adds b / n to the variance between seeds at n images, the
variance is a + 2b / N on a half and a + b / N on the whole, so var(half) - var(whole)
estimates the val set's share and 2 var(whole) - var(half) the seeds' own (a). The report
gives that std and the share; it is an estimate from few seeds, and the 1 / n law is checked
on synthcrowd (docs/benchmark.md), not assumed everywhere.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np

from crowdloss.utils.io import atomic_write

from .bench_plots import plot_summary

__all__ = ["collect_results", "summarize", "format_markdown", "expected_results", "write_report",
           "seed_std_without_val"]

# CrowdHuman metrics in the README's order: (key in the evaluator's results, column title).
CROWDHUMAN_COLUMNS = (("AP", "AP50"), ("mMR", "MR^-2"), ("Recall", "Recall"), ("JI", "JI"))
# COCO's AP and the optimal LRP with its components (TEST.COCO_METRICS on an odgt dataset, or a
# COCO dataset); the other COCO numbers stay in the run's files.
COCO_COLUMNS = (("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("moLRP", "oLRP"),
                ("moLRP_loc", "oLRP loc"), ("moLRP_FP", "oLRP FP"), ("moLRP_FN", "oLRP FN"))
# Columns where lower is better, said in the table's heading.
_LOWER_IS_BETTER = {"mMR": "MR^-2", "moLRP": "oLRP"}
_TASKS = {"crowdhuman": "crowdhuman", "coco": "bbox"}
_BOOTSTRAP_SAMPLES = 200
_HALVINGS = 20


def _thin_curve(fppi: np.ndarray, miss: np.ndarray, points: int = 200) -> dict:
    keep = (fppi > 0) & (miss > 0)
    fppi, miss = fppi[keep], miss[keep]
    if fppi.size > points:
        idx = np.unique(np.searchsorted(fppi, np.logspace(-3, 2, points)).clip(0, fppi.size - 1))
        fppi, miss = fppi[idx], miss[idx]
    return {"fppi": [float(x) for x in fppi], "miss_rate": [float(x) for x in miss]}


def collect_results(run, final_checkpoint: str) -> Optional[Dict[str, dict]]:
    """``{dataset: {"task", "metrics"[, "curve", "val_bootstrap", "val_halves"]}}`` of ``run`` (a
    ``benchmark.Run``), or None when some test set has no evaluation of ``final_checkpoint``."""
    from crowdloss.evaluation.bootstrap import bootstrap_metrics, split_halves
    from crowdloss.evaluation.crowdhuman import evaluate_crowdhuman

    out: Dict[str, dict] = {}
    newest = os.stat(final_checkpoint).st_mtime_ns
    stem = os.path.splitext(os.path.basename(final_checkpoint))[0]
    for name, gt_file, kind, box_key in run.test_sets:
        # pods_test writes inference/<checkpoint>/<dataset>/, an evaluation at the end of
        # training inference/<dataset>/: either counts if it is newer than the checkpoint.
        fresh = [f for f in (os.path.join(run.out, "inference", stem, name),
                             os.path.join(run.out, "inference", name))
                 if os.path.isfile(os.path.join(f, "metrics.json"))
                 and os.stat(os.path.join(f, "metrics.json")).st_mtime_ns >= newest]
        if not fresh:
            return None
        folder = fresh[0]
        path = os.path.join(folder, "metrics.json")
        with open(path) as f:
            saved = json.load(f)
        metrics = {k: v for k, v in saved.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        entry = {"task": _TASKS.get(kind, kind), "metrics": metrics}
        dt = os.path.join(folder, "crowdhuman_results.odgt")
        gt_file = saved.get("gt_file") or gt_file  # what the run was scored against
        if kind == "crowdhuman" and gt_file and os.path.isfile(gt_file) and os.path.isfile(dt):
            with warnings.catch_warnings():  # the evaluator already warned about NaNs
                warnings.simplefilter("ignore", RuntimeWarning)
                result = evaluate_crowdhuman(gt_file, dt, box_key=box_key)
            entry["curve"] = _thin_curve(result.curves["fppi"], result.curves["miss_rate"])
            entry["val_bootstrap"] = {
                "images": result.counts["images"], "samples": _BOOTSTRAP_SAMPLES,
                "std": {k: v["std"] for k, v in
                        bootstrap_metrics(result, num_samples=_BOOTSTRAP_SAMPLES).items()}}
            entry["val_halves"] = split_halves(result, num_splits=_HALVINGS)
        out[name] = entry
        per_class = _per_class_ap(_fresh_json(os.path.join(folder, "per_class_ap.json"), newest))
        if per_class is not None:  # TEST.PER_CLASS_AP beside the dataset's own evaluator
            out[f"{name} per-class AP"] = {"dataset": name, "task": "per_class_ap",
                                           "metrics": per_class}
        coco = _fresh_json(os.path.join(folder, "coco_metrics.json"), newest)
        if kind == "crowdhuman" and coco is not None:  # TEST.COCO_METRICS on the odgt
            out[f"{name} COCO"] = {"dataset": name, "task": "bbox", "metrics": {
                k: float("nan") if v is None else float(v) for k, v in coco.items()}}
    return out


def _fresh_json(path: str, newest: int) -> Optional[dict]:
    """The content of ``path`` if it was written after the final checkpoint, else None."""
    if not os.path.isfile(path) or os.stat(path).st_mtime_ns < newest:
        return None
    with open(path) as f:
        return json.load(f)


def _per_class_ap(saved: Optional[dict]) -> Optional[Dict[str, float]]:
    """``{"mAP", "AP-<class>"}`` (classes with GT) of a ``per_class_ap.json``'s content:
    ``APResult.metrics()`` read back, the keys pods_test reports under the task
    "per_class_ap"."""
    if saved is None:
        return None
    metrics = {"mAP": saved["mAP"]}
    metrics.update({f"AP-{name}": c["ap"] for name, c in saved["classes"].items()
                    if c.get("num_gt", 0) > 0})
    return {k: float("nan") if v is None else float(v) for k, v in metrics.items()}


def _stats(values: List[float]) -> dict:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], float)
    std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return {"mean": float(arr.mean()) if arr.size else float("nan"), "std": std,
            "n": int(arr.size), "values": [float(v) for v in values]}


def _columns(task: str, metrics: Sequence[dict]) -> List[tuple]:
    if task == "crowdhuman":
        return list(CROWDHUMAN_COLUMNS)
    if task == "bbox":
        return [c for c in COCO_COLUMNS if any(c[0] in m for m in metrics)]
    keys = sorted({k for m in metrics for k in m})
    return [(k, k) for k in keys]


def seed_std_without_val(whole: Sequence[float], halves: Sequence) -> Optional[dict]:
    """The split-half estimate (module docstring) for one metric of S >= 2 seeds.

    Args:
        whole: the S seeds' metric on the whole val set.
        halves: per seed, H x 2 values on the same halvings (``split_halves``).

    Returns:
        ``{"std": seed std with the val set's share taken out, "val_share": that share of the
        seed variance on the whole set, in [0, 1]}``, or None (fewer than 2 seeds, no spread).
    """
    whole = np.asarray(whole, float)
    halves = np.asarray(halves, float)  # S x H x 2
    if whole.size < 2 or halves.shape[:1] != whole.shape or np.isnan(whole).any():
        return None
    var_whole = float(whole.var(ddof=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a half where some seed has NaN
        var_half = float(np.nanmean(halves.reshape(whole.size, -1).var(axis=0, ddof=1)))
    if not var_whole > 1e-12 or math.isnan(var_half):  # (1e-12: rounding, not a spread)
        return None
    return {"std": math.sqrt(max(2 * var_whole - var_half, 0.0)),
            "val_share": min(max((var_half - var_whole) / var_whole, 0.0), 1.0)}


def summarize(records: Sequence[dict], labels: Sequence[str]) -> Dict[str, dict]:
    """Per label: its runs (by seed), and per dataset the stats of every metric column, the
    times and the mean val-sampling std."""
    summary: Dict[str, dict] = {}
    for label in labels:
        runs = sorted((r for r in records if r["label"] == label), key=lambda r: r["seed"])
        if not runs:
            continue
        entry = {"experiment": runs[0]["experiment"], "overrides": runs[0]["overrides"],
                 "seeds": [r["seed"] for r in runs], "datasets": {}, "time": {}}
        trainers = sorted({os.path.basename(os.path.dirname(r["trained_by"]))
                           for r in runs if r.get("trained_by")})
        if trainers:  # scores other runs' models (same training, other test-time settings)
            entry["scores_models_of"] = trainers
        for stage in ("train", "test"):
            for unit in ("wall_s", "cpu_s"):
                entry["time"][f"{stage}_{unit}"] = _stats(
                    [r.get(stage, {}).get(unit, float("nan")) for r in runs])
        for name in runs[0]["results"]:
            per_run = [r["results"].get(name, {}) for r in runs]
            task = per_run[0].get("task", "")
            cols = _columns(task, [p.get("metrics", {}) for p in per_run])
            ds = {"dataset": per_run[0].get("dataset", name), "task": task, "columns": cols,
                  "metrics": {}, "val_bootstrap_std": {}}
            for key, _ in cols:
                ds["metrics"][key] = _stats([p.get("metrics", {}).get(key, float("nan"))
                                             for p in per_run])
                boot = [p["val_bootstrap"]["std"].get(key) for p in per_run
                        if "val_bootstrap" in p and key in p["val_bootstrap"]["std"]]
                boot = [b for b in boot if b is not None and not math.isnan(b)]  # (undefined)
                if boot:
                    ds["val_bootstrap_std"][key] = float(np.mean(boot))
                halves = [p.get("val_halves") for p in per_run]
                if all(h and key in h and h["images"] == halves[0]["images"]  # same halvings
                       and len(h[key]) == len(halves[0][key]) for h in halves):
                    est = seed_std_without_val([p["metrics"][key] for p in per_run],
                                               [h[key] for h in halves])
                    if est is not None:
                        ds.setdefault("seed_std_without_val", {})[key] = est
            if any("curve" in p for p in per_run) and "mMR" in ds["metrics"]:
                # The curve of the seed whose MR^-2 is closest to the mean.
                mean = ds["metrics"]["mMR"]["mean"]
                best = min((i for i, p in enumerate(per_run) if "curve" in p),
                           key=lambda i: abs(per_run[i]["metrics"].get("mMR", math.inf) - mean))
                ds["curve"] = dict(per_run[best]["curve"], seed=runs[best]["seed"])
            entry["datasets"][name] = ds
        summary[label] = entry
    return summary


def _pct(stats: dict, key: str) -> str:
    v = stats[key]
    return "-" if v is None or math.isnan(v) else f"{100 * v:.2f}"


def _minutes(seconds: float) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds / 60:.1f} min"


def _mean_std_cell(stats: dict) -> str:
    """"mean +- std", and how many seeds it is over when some seed has no value (a metric its
    evaluation could not compute, e.g. MR^-2 of a run without detections): never silently."""
    cell = f"{_pct(stats, 'mean')} +- {_pct(stats, 'std')}"
    runs = len(stats["values"])
    return cell if stats["n"] == runs else f"{cell} ({stats['n']} of {runs} seeds)"


def format_markdown(summary: Dict[str, dict], command: str) -> str:
    """The report: per dataset, a mean +- std table and a per-seed table (metrics in %)."""
    lines = [f"Command: `{command}`", ""]
    datasets = sorted({d for e in summary.values() for d in e["datasets"]})
    for name in datasets:
        labels = [lb for lb in summary if name in summary[lb]["datasets"]]
        cols = summary[labels[0]]["datasets"][name]["columns"]
        lower = "".join(f"; {_LOWER_IS_BETTER[k]}: lower is better" for k, _ in cols
                        if k in _LOWER_IS_BETTER)
        lines += [f"**{name}** (mean +- std over seeds, %{lower})", ""]
        lines.append("| experiment | seeds | " + " | ".join(t for _, t in cols)
                     + " | train time / run |")
        lines.append("|---|---:|" + "---:|" * len(cols) + "---:|")
        for lb in labels:
            e, ds = summary[lb], summary[lb]["datasets"][name]
            cells = [_mean_std_cell(ds["metrics"][k]) for k, _ in cols]
            t = e["time"]
            lines.append(f"| {lb} | {len(e['seeds'])} | " + " | ".join(cells) +
                         f" | {_minutes(t['train_wall_s']['mean'])} (CPU "
                         f"{_minutes(t['train_cpu_s']['mean'])}) |")
        lines += ["", "Per seed (%):", ""]
        lines.append("| experiment | seed | " + " | ".join(t for _, t in cols)
                     + " | train wall | train CPU |")
        lines.append("|---|---:|" + "---:|" * len(cols) + "---:|---:|")
        for lb in labels:
            e, ds = summary[lb], summary[lb]["datasets"][name]
            for i, seed in enumerate(e["seeds"]):
                vals = [ds["metrics"][k]["values"][i] for k, _ in cols]
                cells = ["-" if math.isnan(v) else f"{100 * v:.2f}" for v in vals]
                lines.append(f"| {lb} | {seed} | " + " | ".join(cells) + f" | "
                             f"{_minutes(e['time']['train_wall_s']['values'][i])} | "
                             f"{_minutes(e['time']['train_cpu_s']['values'][i])} |")
        undefined = [f"{lb} seed {seed} {t}" for lb in labels
                     for i, seed in enumerate(summary[lb]["seeds"]) for k, t in cols
                     if math.isnan(summary[lb]["datasets"][name]["metrics"][k]["values"][i])]
        if undefined:
            lines += ["", "Not computable, so left out of the mean +- std above ('-'): "
                      + ", ".join(undefined) + "."]
        boot = [(lb, summary[lb]["datasets"][name]["val_bootstrap_std"]) for lb in labels]
        boot = [(lb, b) for lb, b in boot if b]
        if boot:
            lines += ["", "Val-sampling std of one model (bootstrap over the val images, mean "
                      "over seeds, %): " + "; ".join(
                          f"{lb}: " + ", ".join(f"{t} {100 * b[k]:.2f}" for k, t in cols if k in b)
                          for lb, b in boot)]
        split = [(lb, summary[lb]["datasets"][name].get("seed_std_without_val")) for lb in labels]
        split = [(lb, e) for lb, e in split if e]
        if split:
            lines += ["", "Seed std with the val set's share taken out (split-half estimate, %; "
                      "in brackets that share of the seed variance): " + "; ".join(
                          f"{lb}: " + ", ".join(f"{t} {100 * e[k]['std']:.2f} "
                                                f"({100 * e[k]['val_share']:.0f} %)"
                                                for k, t in cols if k in e)
                          for lb, e in split)]
        lines.append("")
    shared = [f"{lb} scores the models trained by {', '.join(e['scores_models_of'])}"
              for lb, e in summary.items() if e.get("scores_models_of")]
    if shared:
        lines += ["Same training, other test-time settings (its training time is theirs): "
                  + "; ".join(shared) + ".", ""]
    return "\n".join(lines)


def expected_results(summary: Dict[str, dict], *, k: float = 3.0,
                     floor: float = 0.01) -> Dict[str, list]:
    """Per label, ``TEST.EXPECTED_RESULTS`` entries ``[dataset, task, metric, mean, tol]`` with
    tol = max(k x seed std, floor) (fractions, as the evaluators report them)."""
    out: Dict[str, list] = {}
    for lb, e in summary.items():
        entries = []
        for ds in e["datasets"].values():
            for key, _ in ds["columns"]:
                s = ds["metrics"][key]
                if math.isnan(s["mean"]):
                    continue
                tol = floor if math.isnan(s["std"]) else max(k * s["std"], floor)
                entries.append([ds["dataset"], ds["task"], key, round(s["mean"], 4),
                                round(tol, 4)])
        out[lb] = entries
    return out


def write_report(records: Sequence[dict], runs: Sequence, output: str, *, command: str,
                 band_k: float = 3.0, failed: Optional[Dict[str, str]] = None) -> List[str]:
    """Write ``report.md``, ``results.json`` and the plots under ``output``; returns the paths.
    ``failed``: run name -> why it failed, for runs without results that failed (a failed
    seed is named with its reason, not averaged around silently)."""
    labels = list(dict.fromkeys(r.label for r in runs))
    summary = summarize(records, labels)
    missing = [f"{r.label} seed {r.seed}" for r in runs
               if not any(x["label"] == r.label and x["seed"] == r.seed for x in records)]
    failed = {m: (failed or {})[m] for m in missing if m in (failed or {})}
    md = format_markdown(summary, command) if summary else f"Command: `{command}`\n\nNo run finished.\n"
    if len(failed) < len(missing):
        md += ("\nNot finished (left out above): "
               + ", ".join(m for m in missing if m not in failed) + "\n")
    for name, why in failed.items():
        md += f"\nFailed (left out above): {name}: {why}\n"
    bands = expected_results(summary, k=band_k)
    payload = {"command": command, "experiments": summary, "missing": missing, "failed": failed,
               "expected_results": bands, "band_k": band_k,
               "runs": sorted(records, key=lambda r: (r["label"], r["seed"]))}
    os.makedirs(output, exist_ok=True)
    written = [atomic_write(os.path.join(output, "report.md"), md),
               atomic_write(os.path.join(output, "results.json"),
                            json.dumps(payload, indent=1, allow_nan=True))]
    if summary:
        written += plot_summary(summary, output)
    return written
