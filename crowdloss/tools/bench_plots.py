"""The benchmark report's figures: AP50 / MR^-2 per experiment with their seed spread, and the
MR-FPPI curve of each experiment's most typical seed (the seed closest to its mean MR^-2)."""
from __future__ import annotations

import math
import os
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["plot_summary", "short_labels"]


def short_labels(labels: Sequence[str], *, width: int = 14) -> List[str]:
    """Axis labels: the dotted suffix all labels share dropped ("lla.res18.fpn..." ->
    "lla"; "faster_rcnn.repgt_repbox.res18..." -> "faster_rcnn.repgt_repbox"), then a long
    one cut to its first dotted part, each step only if the labels stay distinct."""
    parts = [lb.split(".") for lb in labels]
    common = 0
    while (all(len(p) > common + 1 for p in parts)
           and len({p[-1 - common] for p in parts}) == 1):
        common += 1
    out = [".".join(p[:len(p) - common]) for p in parts]
    if len(set(out)) != len(set(labels)):
        out = list(labels)
    cut = [lb.split(".")[0] if len(lb) > width else lb for lb in out]
    return cut if len(set(cut)) == len(set(out)) else out


def plot_summary(summary: Dict[str, dict], output: str) -> List[str]:
    """Per CrowdHuman-type dataset of a ``bench_report.summarize`` summary: ``ap_mr.png``
    (AP50 and MR^-2 per experiment, mean +- std with each seed) and ``mr_fppi.png`` (the
    MR-FPPI curve of the seed closest to the mean MR^-2); ``_<dataset>`` suffixed when there
    are several. Returns the paths written."""
    from crowdloss.evaluation.plots import _pyplot, _save

    plt = _pyplot()
    written = []
    # The CrowdHuman tables only: their AP is AP50 and they have MR^-2 and the curves (per-class
    # AP and COCO entries are tables, not plots).
    names = sorted({d for e in summary.values() for d, ds in e["datasets"].items()
                    if ds["task"] == "crowdhuman"})
    for name in names:
        suffix = "" if len(names) == 1 else f"_{name}"
        labels = [lb for lb in summary if name in summary[lb]["datasets"]]
        keys = [k for k in ("AP", "mMR") if k in summary[labels[0]]["datasets"][name]["metrics"]]
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8), dpi=100)
        for ax, key in zip(np.atleast_1d(axes), keys):
            for x, lb in enumerate(labels):
                s = summary[lb]["datasets"][name]["metrics"][key]
                vals = 100 * np.asarray(s["values"], float)
                ax.scatter(np.full(vals.size, x) + 0.12, vals, s=10, color="0.5", zorder=2)
                ax.errorbar([x], [100 * s["mean"]], yerr=[0 if math.isnan(s["std"])
                                                         else 100 * s["std"]],
                            fmt="o", capsize=5, color=f"C{x % 10}", zorder=3)
            ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(short_labels(labels), rotation=20, fontsize=8)
            ax.set_ylabel({"AP": "AP50 (%)", "mMR": "MR$^{-2}$ (%, lower is better)"}[key])
            ax.grid(True, axis="y", alpha=0.3)
        fig.suptitle(f"{name}: mean +- std over seeds (grey: each seed)", fontsize=9)
        written.append(_save(fig, plt, os.path.join(output, f"ap_mr{suffix}.png")))
        curves = [(lb, summary[lb]["datasets"][name].get("curve")) for lb in labels]
        curves = [(lb, c) for lb, c in curves if c]
        if curves:
            fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=100)
            for i, (lb, c) in enumerate(curves):
                mr = summary[lb]["datasets"][name]["metrics"]["mMR"]
                this = mr["values"][summary[lb]["seeds"].index(c["seed"])]
                ax.plot(c["fppi"], c["miss_rate"], lw=1.4, color=f"C{i % 10}",
                        label=f"{lb} seed {c['seed']} (MR$^{{-2}}$ {100 * this:.1f}, "
                              f"mean {100 * mr['mean']:.1f})")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(1e-3, 1e2)
            ax.set_ylim(1e-2, 1.0)
            ax.set_xlabel("false positives per image")
            ax.set_ylabel("miss rate")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(loc="lower left", fontsize=7)
            ax.set_title(f"{name}: the seed closest to the mean MR$^{{-2}}$", fontsize=9)
            written.append(_save(fig, plt, os.path.join(output, f"mr_fppi{suffix}.png")))
    return written
