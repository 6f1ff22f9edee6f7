"""Jaccard index (JI) of CrowdDet (arXiv 2003.09163), per image and over a dataset.

For a score threshold t the detections with score > t are matched one-to-one to the valid
GTs; JI_img = k / (m + n - k + 1e-6) with k matched pairs, n kept detections and m valid GTs,
where unmatched detections / GTs covered by an ignore region (IoA > 0.5) are left out of n / m.
The dataset JI(t) is the mean of JI_img over images with m != 0 or n != 0.

Matching modes:
    "weight" (default, CrowdDet): maximum total IoU over pairs with IoU > 0.5.
    "cardinality" (mmdetection's variant): most pairs with IoU >= 0.5.

Shapes: D detections of one image (score-descending), V valid GTs, P candidate pairs,
T thresholds.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["JI_THRESHOLDS", "JI_MATCHINGS", "match_pairs", "image_ji_counts", "dataset_ji"]

# 0.1 * i as the reference computes it (0.1 * 3 = 0.30000000000000004, which matters for
# the strict "score > t" test).
JI_THRESHOLDS = tuple(0.1 * i for i in range(10))
JI_MATCHINGS = ("weight", "cardinality")
_EPS = 1e-6


def match_pairs(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, *,
                matching: str = "weight") -> Tuple[np.ndarray, np.ndarray]:
    """One-to-one matching on a sparse bipartite graph given as P edges.

    Args:
        rows, cols: (P,) int edge endpoints (detection index, GT index), rows ascending.
        weights: (P,) positive edge weights (IoU).
        matching: "weight" (maximum total weight) or "cardinality" (maximum edge count).

    Returns:
        matched rows and cols, each (k,).
    """
    if rows.size <= 1:
        return rows, cols
    # np.unique sorts and costs ~20 us a call; rows arrive sorted and cols are small ints,
    # so run starts and a bincount give the compressed indices for a fraction of that.
    row_start = np.empty(rows.size, dtype=bool)
    row_start[0] = True
    np.not_equal(rows[1:], rows[:-1], out=row_start[1:])
    col_count = np.bincount(cols)
    # Conflict-free graphs (every node in at most one edge) are their own optimum; in crowds
    # most images at high thresholds are like that, and the solver call is the costly part.
    if row_start.all() and col_count.max() == 1:
        return rows, cols
    ur, ri = rows[row_start], np.cumsum(row_start) - 1
    present = col_count > 0
    uc, ci = np.flatnonzero(present), (np.cumsum(present) - 1)[cols]
    # Dense over the involved nodes only; unit weights make the maximum-weight assignment a
    # maximum-cardinality matching (and the dense solver beats building a scipy.sparse
    # graph per call by ~10x at this size).
    w = np.zeros((ur.size, uc.size))
    w[ri, ci] = weights if matching == "weight" else 1.0
    r, c = linear_sum_assignment(w, maximize=True)
    keep = w[r, c] > 0  # zero entries are non-edges the square-up assignment used
    return ur[r[keep]], uc[c[keep]]


def image_ji_counts(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                    num_kept: np.ndarray, num_gt: int, dt_covered: np.ndarray,
                    gt_covered: np.ndarray, *, matching: str = "weight") -> np.ndarray:
    """(k, m, n) of one image at every threshold.

    Args:
        rows, cols, weights: (P,) candidate pairs (detection, valid GT, IoU), rows ascending;
            detections are indexed in score-descending order.
        num_kept: (T,) number of detections with score > t (a prefix of the sorted list).
        num_gt: V.
        dt_covered: (D,) bool, the detection's largest IoA over ignore regions is > 0.5.
        gt_covered: (V,) bool, the same for valid GTs (IoA relative to the GT's area).

    Returns:
        (T, 3) int64 array of (k, m, n).
    """
    out = np.empty((num_kept.size, 3), dtype=np.int64)
    has_ignore = bool(dt_covered.any() or gt_covered.any())
    if has_ignore:
        covered_prefix = np.concatenate([[0], np.cumsum(dt_covered)])
        gt_covered_total = int(gt_covered.sum())
    num_pairs = np.searchsorted(rows, num_kept, side="left") if rows.size else num_kept * 0
    last_p, mr, mc = -1, None, None
    for t, (n_t, p) in enumerate(zip(num_kept.tolist(), num_pairs.tolist())):
        if p != last_p:  # same candidate set as the previous threshold: same matching
            mr, mc = match_pairs(rows[:p], cols[:p], weights[:p], matching=matching)
            last_p = p
        k = mr.size
        if has_ignore:
            n = n_t - (int(covered_prefix[n_t]) - int(dt_covered[mr].sum()))
            m = num_gt - (gt_covered_total - int(gt_covered[mc].sum()))
        else:
            n, m = n_t, num_gt
        out[t] = (k, m, n)
    return out


def dataset_ji(counts: np.ndarray) -> np.ndarray:
    """JI(t) from per-image counts.

    Args:
        counts: (N, T, 3) int (k, m, n) per image and threshold.

    Returns:
        (T,) float64; NaN where no image has a GT or a detection.
    """
    k, m, n = (counts[..., i].T.astype(np.float64) for i in range(3))  # (T, N) each
    ratio = k / (m + n - k + _EPS)
    counted = ((m != 0) | (n != 0)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, ratio.sum(axis=1) / np.maximum(counted, 1), np.nan)
