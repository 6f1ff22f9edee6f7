"""Jaccard index (JI) of CrowdDet (arXiv 2003.09163), per image and over a dataset.

For a score threshold t the detections with score > t are matched one-to-one to the valid
GTs; JI_img = k / (m + n - k + 1e-6) with k matched pairs, n kept detections and m valid GTs,
where unmatched detections / GTs covered by an ignore region (IoA > 0.5) are left out of n / m.
The dataset JI(t) is the mean of JI_img over images with m != 0 or n != 0.

Matching modes:
    "weight" (default, CrowdDet): maximum total IoU over pairs with IoU > 0.5.
    "cardinality" (mmdetection's variant): most pairs with IoU >= 0.5, reproduced as
        mmdetection computes it: float32 overlaps with eps as a floor of the denominator
        (not added), and scipy's Hopcroft-Karp on the kept detections in file order, so
        that the same maximum matching, hence the same unmatched boxes, comes out.

Shapes: D detections of one image (score-descending), V valid GTs, P candidate pairs,
T thresholds.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

__all__ = ["JI_THRESHOLDS", "JI_MATCHINGS", "match_pairs", "image_ji_counts",
           "image_ji_counts_mmdet", "dataset_ji"]

# 0.1 * i as the reference computes it (0.1 * 3 = 0.30000000000000004, which matters for
# the strict "score > t" test).
JI_THRESHOLDS = tuple(0.1 * i for i in range(10))
JI_MATCHINGS = ("weight", "cardinality")
_EPS = 1e-6


def match_pairs(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, *,
                matching: str = "weight") -> Tuple[np.ndarray, np.ndarray]:
    """Maximum-weight one-to-one matching on a sparse bipartite graph given as P edges.

    Args:
        rows, cols: (P,) int edge endpoints (detection index, GT index), rows ascending.
        weights: (P,) positive edge weights (IoU).
        matching: "weight" (maximum total weight) or "cardinality" (maximum edge count,
            some maximum matching; ``image_ji_counts_mmdet`` picks mmdetection's).

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
    # Dense over the involved nodes only (the solver call costs ~4 us at this size; a
    # scipy.sparse graph costs ~80 us to build); unit weights give a maximum cardinality.
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


def _overlaps_mmdet(a: np.ndarray, b: np.ndarray, *, iof: bool) -> np.ndarray:
    """(A, B) IoU (or intersection / area of ``a``) as mmdetection's bbox_overlaps: float32,
    denominator floored at 1e-6."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    if iof:
        den = np.broadcast_to(area_a[:, None], inter.shape)
    else:
        den = area_a[:, None] + ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :] - inter
    return inter / np.maximum(den, np.float32(_EPS))


def _covered_mmdet(boxes: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    if not (boxes.shape[0] and ignore.shape[0]):
        return np.zeros(boxes.shape[0], dtype=bool)
    return _overlaps_mmdet(boxes, ignore, iof=True).max(axis=1) > 0.5


def _hopcroft_karp_as_mmdet(r: np.ndarray, c: np.ndarray, num_rows: int, num_cols: int):
    # The graph mmdetection hands to scipy (kept detections x valid GTs, row-major CSR), so
    # Hopcroft-Karp returns the same maximum matching, hence the same unmatched boxes.
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=num_rows))])
    graph = csr_matrix((np.ones(r.size), c, indptr), shape=(num_rows, num_cols))
    col_of_row = maximum_bipartite_matching(graph, perm_type="column")
    rows = np.flatnonzero(col_of_row >= 0)
    return rows, col_of_row[rows]


def image_ji_counts_mmdet(dt_boxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray,
                          ignore: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(k, m, n) of one image at every threshold, mmdetection's "cardinality" JI.

    Args:
        dt_boxes: (D, 4) clipped xyxy in file order; scores: (D,).
        gt_boxes: (V, 4) valid GTs; ignore: (G, 4) ignore regions; thresholds: (T,).

    Returns:
        (T, 3) int64 array of (k, m, n).
    """
    num_gt = gt_boxes.shape[0]
    dt_cov, gt_cov = _covered_mmdet(dt_boxes, ignore), _covered_mmdet(gt_boxes, ignore)
    if dt_boxes.shape[0] and num_gt:
        rows, cols = np.nonzero(_overlaps_mmdet(dt_boxes, gt_boxes, iof=False) >= 0.5)
    else:
        rows = cols = np.zeros(0, dtype=np.int64)
    out = np.empty((len(thresholds), 3), dtype=np.int64)
    for t, thr in enumerate(thresholds):
        kept = scores > thr
        kept_idx = np.flatnonzero(kept)
        sel = kept[rows]
        r, c = (np.cumsum(kept) - 1)[rows[sel]], cols[sel]  # rows among the kept, in order
        if r.size and ((r[1:] == r[:-1]).any() or np.bincount(c).max() > 1):
            if dt_cov[kept_idx[r]].any() or gt_cov[c].any():
                r, c = _hopcroft_karp_as_mmdet(r, c, kept_idx.size, num_gt)
            else:
                # No contested box lies in an ignore region: every maximum matching gives
                # the same (k, m, n), and the dense solve is ~20x cheaper than scipy.sparse.
                r, c = match_pairs(r, c, np.ones(r.size), matching="cardinality")
        k = r.size
        n = kept_idx.size - (int(dt_cov[kept_idx].sum()) - int(dt_cov[kept_idx[r]].sum()))
        m = num_gt - (int(gt_cov.sum()) - int(gt_cov[c].sum()))
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
