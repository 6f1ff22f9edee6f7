"""PNG plots of a CrowdHuman evaluation: miss rate vs FPPI and precision vs recall.

Each plot is titled with what was evaluated (dataset, checkpoint, iteration), keeps its legend
below the axes so that it never hides a curve, and fits its y-range to the curve, so that a
weak model (miss rate 0.8-1.0, precision under 0.2) is not a flat line along one border.

matplotlib is imported only inside these functions (with the non-interactive Agg backend),
so importing crowdloss never pulls it in.
"""
from __future__ import annotations

import math
import os
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["plot_mr_fppi", "plot_precision_recall", "plot_crowdhuman"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _pct(v: float) -> str:
    return "nan" if v is None or math.isnan(v) else f"{100 * v:.2f}%"


def _miss_rate_range(miss: np.ndarray) -> Tuple[float, float]:
    """Log-axis y-limits fitted to the curve: from a third under its lowest miss rate (never
    under 1e-3) to just above 1 (points at miss rate 1 stay visible), so a weak model's
    0.8-1.0 fills a third of the height, not 3%."""
    low = float(miss.min()) if miss.size else 0.05
    return max(1e-3, low / 1.5), 1.05


def plot_mr_fppi(result, path: str, *, label: str = "detector",
                 title: Optional[str] = None) -> str:
    """Log-log miss rate vs false positives per image, MR^-2 in the legend and the nine
    anchor points marked."""
    plt = _pyplot()
    c = result.curves
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    fppi, miss = np.asarray(c["fppi"]), np.asarray(c["miss_rate"])
    # Log axes: points with no FP yet (fppi 0) or no miss left (miss 0) have no place on
    # them; an untrained or a perfect detector may leave nothing to draw, which is fine.
    keep = (fppi > 0) & (miss > 0)
    ax.plot(fppi[keep], miss[keep], lw=1.5,
            label=f"{label} (MR$^{{-2}}$ {_pct(result.metrics['mMR'])})")
    anchors = [p for p in result.mr_points or [] if p["fppi"] > 0 and p["miss_rate"] > 0]
    if anchors:
        ax.scatter([p["fppi"] for p in anchors], [p["miss_rate"] for p in anchors], s=12,
                   color="k", zorder=3, label="MR$^{-2}$ anchors (FPPI 0.01 - 1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-3, 1e2)
    visible = miss[keep & (fppi <= 1e2)]
    ax.set_ylim(*_miss_rate_range(visible))
    ticks = [t for t in (1e-3, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.64, 0.8, 1.0)
             if ax.get_ylim()[0] <= t <= 1.0]
    ax.set_yticks(ticks)
    ax.set_yticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("miss rate")
    ax.grid(True, which="both", alpha=0.3)
    _finish(ax, title or label)
    return _save(fig, plt, path)


def plot_precision_recall(result, path: str, *, label: str = "detector",
                          title: Optional[str] = None) -> str:
    """Precision vs recall with AP and Recall in the legend."""
    plt = _pyplot()
    c = result.curves
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    recall, precision = np.asarray(c["recall"]), np.asarray(c["precision"])
    ax.plot(recall, precision, lw=1.5,
            label=f"{label} (AP {_pct(result.metrics['AP'])}, "
                  f"Recall {_pct(result.metrics['Recall'])})")
    ax.set_xlim(0, 1)
    finite = precision[np.isfinite(precision)]
    top = float(finite.max()) if finite.size else 1.0
    # A weak model's precision stays low: zoom in on it (never under 0.05, never over 1.02).
    ax.set_ylim(0, min(1.02, max(0.05, top * 1.1)))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(True, alpha=0.3)
    _finish(ax, title or label)
    return _save(fig, plt, path)


def plot_crowdhuman(result, output_dir: str, *, label: str = "detector",
                    title: Optional[str] = None) -> List[str]:
    """Both plots as ``mr_fppi.png`` and ``precision_recall.png`` under ``output_dir``.

    Args:
        label: the curve's name in the legend (the dataset, for the evaluator).
        title: the plot title (what was evaluated: dataset, checkpoint, iteration).
    """
    os.makedirs(output_dir, exist_ok=True)
    return [plot_mr_fppi(result, os.path.join(output_dir, "mr_fppi.png"), label=label,
                         title=title),
            plot_precision_recall(result, os.path.join(output_dir, "precision_recall.png"),
                                  label=label, title=title)]


def _finish(ax, title: str) -> None:
    ax.set_title(title, fontsize=9)
    # Below the axes: a legend inside would hide whichever part of the curve it sits on.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, frameon=False)


def _save(fig, plt, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
