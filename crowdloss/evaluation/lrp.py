"""Optimal LRP (oLRP; Oksuz et al., arXiv 1807.01696) from a COCO evaluation's matching.

For one class, keeping the detections scored at least s (pooled over images, after COCO's
per-image greedy matching at IoU >= tau, tau = 0.5):

    LRP(s) = (sum_TP (1 - IoU) / (1 - tau) + #FP + #FN) / (#TP + #FP + #FN)

oLRP is the smallest LRP(s); its components at that point are oLRP_loc = mean (1 - IoU) over
the TPs, oLRP_FP = #FP / (#TP + #FP), oLRP_FN = #FN / #GT, and the optimal score threshold
is s. moLRP and its components are means over classes (1 is the worst, 0 perfect).

Two published versions are supported:

- ``mode="lrp_error"`` (default; the later LRP-Error code): s runs over every position of the
  score-sorted detection list (ties in the order COCO accumulates them: stable by image, then
  by score within the image); a class without any TP gets oLRP = 1 (all FN) with
  oLRP_loc = oLRP_FP = threshold = NaN.
- ``mode="threshold_scan"`` (the 2018 code): s runs over 0, 0.01, ..., 1 (the first minimum
  wins), which assumes scores in [0, 1].

Everything follows COCO's matching: crowd GTs and GTs outside the area range are ignored (not
counted as FN), detections matched to them are neither TP nor FP, unmatched detections
outside the area range are ignored, each image keeps its ``maxDets[-1]`` best detections.
Classes without a non-ignored GT are left out of the means (NaN per class). With no detection
at all (both reference codes crash there), every class with GT gets oLRP = 1, oLRP_FN = 1 and
NaN for oLRP_loc / oLRP_FP / threshold (threshold 0 in ``threshold_scan``), so moLRP = 1.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["LRP_MODES", "OLRPResult", "olrp_from_cocoeval", "olrp_of_class"]

LRP_MODES = ("lrp_error", "threshold_scan")


@dataclasses.dataclass
class OLRPResult:
    """Per-class oLRP (K,) arrays in ``category_ids`` order; NaN where undefined."""

    category_ids: List[int]
    olrp: np.ndarray
    olrp_loc: np.ndarray
    olrp_fp: np.ndarray
    olrp_fn: np.ndarray
    threshold: np.ndarray
    mode: str = "lrp_error"

    def summary(self) -> Dict[str, float]:
        """{"moLRP", "moLRP_loc", "moLRP_FP", "moLRP_FN"}: means over the classes where the
        value is defined (NaN when none is)."""
        def mean(a):
            a = a[~np.isnan(a)]
            return float(a.mean()) if a.size else float("nan")

        return {"moLRP": mean(self.olrp), "moLRP_loc": mean(self.olrp_loc),
                "moLRP_FP": mean(self.olrp_fp), "moLRP_FN": mean(self.olrp_fn)}


def olrp_of_class(scores: np.ndarray, is_tp: np.ndarray, is_fp: np.ndarray, iou: np.ndarray,
                  num_gt: int, *, tau: float = 0.5, mode: str = "lrp_error"):
    """(oLRP, oLRP_loc, oLRP_FP, oLRP_FN, threshold) of one class.

    Args:
        scores, is_tp, is_fp, iou: (D,) detections already in COCO's accumulation order
            (descending score, stable); ignored detections have is_tp = is_fp = False; ``iou``
            is the IoU with the matched GT (used where is_tp).
        num_gt: non-ignored GTs of the class (> 0).
        tau: the IoU threshold of the matching.
        mode: "lrp_error" (every position) or "threshold_scan" (0, 0.01, ..., 1).
    """
    if mode not in LRP_MODES:
        raise ValueError(f"oLRP mode = {mode!r}; expected one of {LRP_MODES}")
    nan = float("nan")
    tp = np.cumsum(is_tp, dtype=np.float64)
    fp = np.cumsum(is_fp, dtype=np.float64)
    loc = tp - np.cumsum(np.where(is_tp, iou, 0.0))  # sum of (1 - IoU) over the TPs so far
    if mode == "threshold_scan":
        thresholds = np.linspace(0.0, 1.0, 101)
        # detections kept at threshold c: those with score >= c, a prefix of the sorted list
        kept = np.searchsorted(-np.asarray(scores, dtype=np.float64), -thresholds,
                               side="right")
        tp, fp, loc = (np.concatenate([[0.0], a])[kept] for a in (tp, fp, loc))
    elif tp.size == 0 or tp[-1] == 0:
        return 1.0, nan, nan, 1.0, nan
    fn = num_gt - tp
    lrp = (loc / (1 - tau) + fp + fn) / (tp + fp + fn)
    k = int(np.argmin(lrp))
    with np.errstate(invalid="ignore", divide="ignore"):
        comp_loc = loc[k] / tp[k] if tp[k] > 0 else nan
        comp_fp = fp[k] / (tp[k] + fp[k]) if tp[k] + fp[k] > 0 else nan
    thr = thresholds[k] if mode == "threshold_scan" else float(scores[k])
    return float(lrp[k]), float(comp_loc), float(comp_fp), float(fn[k] / num_gt), float(thr)


def olrp_from_cocoeval(ev, *, iou_threshold: float = 0.5, area: str = "all",
                       mode: str = "lrp_error") -> OLRPResult:
    """oLRP of every category from a pycocotools ``COCOeval`` after ``evaluate()``.

    Reads its per-image matching (``evalImgs``: dtMatches / dtIgnore / gtIgnore at the IoU
    threshold ``iou_threshold``, which must be one of ``params.iouThrs``) and the IoU of each
    matched pair from ``ious`` (rows: the image's detections in evaluation order; columns:
    its GTs of that category in annotation order).
    """
    p = ev.params
    if not getattr(ev, "evalImgs", None):
        raise ValueError("olrp_from_cocoeval: run COCOeval.evaluate() first (evalImgs is empty)")
    t = np.flatnonzero(np.isclose(p.iouThrs, iou_threshold))
    if t.size != 1:
        raise ValueError(f"olrp_from_cocoeval: iou_threshold {iou_threshold} is not in "
                         f"params.iouThrs {list(np.round(p.iouThrs, 3))}")
    if area not in p.areaRngLbl:
        raise ValueError(f"olrp_from_cocoeval: area {area!r} is not in {p.areaRngLbl}")
    t, a, max_det = int(t[0]), p.areaRngLbl.index(area), p.maxDets[-1]
    cat_ids = list(p.catIds)
    num_img, num_area = len(p.imgIds), len(p.areaRng)
    out = np.full((5, len(cat_ids)), np.nan)
    for k, cat in enumerate(cat_ids):
        # evalImgs is laid out [category][area range][image]
        start = (k * num_area + a) * num_img
        per_image = [e for e in ev.evalImgs[start:start + num_img] if e is not None]
        num_gt = sum(int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)) for e in per_image)
        if num_gt == 0:
            continue  # no GT to find: the class is left out, as COCO does for AP
        scores, tps, fps, ious = _gather(ev, per_image, t, max_det)
        out[:, k] = olrp_of_class(scores, tps, fps, ious, num_gt, tau=float(p.iouThrs[t]),
                                  mode=mode)
    return OLRPResult(cat_ids, *out, mode=mode)


def _gather(ev, per_image: Sequence[dict], t: int, max_det: int):
    """Scores, TP / FP flags and matched IoUs of one class, in COCO's accumulation order."""
    scores, tps, fps, ious = [], [], [], []
    for e in per_image:
        matches = np.asarray(e["dtMatches"])[t, :max_det]
        ignore = np.asarray(e["dtIgnore"])[t, :max_det].astype(bool)
        iou = np.zeros(matches.shape[0])
        tp = (matches > 0) & ~ignore
        if tp.any():
            key = (e["image_id"], e["category_id"])
            col = {g["id"]: j for j, g in enumerate(ev._gts[key])}
            rows = np.flatnonzero(tp)
            iou[rows] = np.asarray(ev.ious[key])[rows, [col[int(m)] for m in matches[rows]]]
        scores.append(np.asarray(e["dtScores"][:max_det], dtype=np.float64))
        tps.append(tp)
        fps.append((matches == 0) & ~ignore)
        ious.append(iou)
    if not scores:
        return (np.zeros(0),) * 4
    scores = np.concatenate(scores)
    order = np.argsort(-scores, kind="mergesort")  # COCO's order: stable on ties
    return (scores[order], np.concatenate(tps)[order], np.concatenate(fps)[order],
            np.concatenate(ious)[order])
