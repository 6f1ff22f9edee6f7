"""PNG plots of a CrowdHuman evaluation: miss rate vs FPPI and precision vs recall.

matplotlib is imported only inside these functions (with the non-interactive Agg backend),
so importing crowdloss never pulls it in.
"""
from __future__ import annotations

import math
import os
from typing import List

__all__ = ["plot_mr_fppi", "plot_precision_recall", "plot_crowdhuman"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _pct(v: float) -> str:
    return "nan" if v is None or math.isnan(v) else f"{100 * v:.2f}%"


def plot_mr_fppi(result, path: str, *, label: str = "detector") -> str:
    """Log-log miss rate vs false positives per image, MR^-2 in the legend and the nine
    anchor points marked."""
    plt = _pyplot()
    c = result.curves
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    fppi, miss = c["fppi"], c["miss_rate"]
    # Log axes: points with no FP yet (fppi 0) or no miss left (miss 0) have no place on
    # them; an untrained or a perfect detector may leave nothing to draw, which is fine.
    keep = (fppi > 0) & (miss > 0)
    ax.plot(fppi[keep], miss[keep], lw=1.5,
            label=f"{label} (MR$^{{-2}}$ {_pct(result.metrics['mMR'])})")
    anchors = [p for p in result.mr_points or [] if p["fppi"] > 0 and p["miss_rate"] > 0]
    if anchors:
        ax.scatter([p["fppi"] for p in anchors], [p["miss_rate"] for p in anchors], s=12,
                   color="k", zorder=3, label="MR$^{-2}$ anchors")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-3, 1e2)
    ax.set_ylim(1e-3, 1.0)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("miss rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, plt, path)


def plot_precision_recall(result, path: str, *, label: str = "detector") -> str:
    """Precision vs recall with AP and Recall in the legend."""
    plt = _pyplot()
    c = result.curves
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot(c["recall"], c["precision"], lw=1.5,
            label=f"{label} (AP {_pct(result.metrics['AP'])}, "
                  f"Recall {_pct(result.metrics['Recall'])})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, plt, path)


def plot_crowdhuman(result, output_dir: str, *, label: str = "detector") -> List[str]:
    """Both plots as ``mr_fppi.png`` and ``precision_recall.png`` under ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    return [plot_mr_fppi(result, os.path.join(output_dir, "mr_fppi.png"), label=label),
            plot_precision_recall(result, os.path.join(output_dir, "precision_recall.png"),
                                  label=label)]


def _save(fig, plt, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
