"""CrowdHuman (arXiv 1805.00123) AP, MR^-2, Recall and JI (CrowdDet, arXiv 2003.09163),
numerically identical to the public toolkits.

The rules (docs/metrics.md) are those of CrowdDet's ``lib/evaluate`` / cvpods' crowdhumantools:
boxes clipped with W - 1 / W, IoU with +1e-6 in the union, IoA relative to the detection,
greedy Caltech matching with strict > 0.5, curves over the score-sorted detections of all
images, MR^-2 at nine rounded FPPI anchors. Those toolkits loop over every detection and GT
in Python; here each image is a few numpy calls and the only Python loop runs over the
(detection, GT) pairs with IoU > 0.5, which is what makes the val set take seconds.

Standalone::

    python -m crowdloss.evaluation.crowdhuman --gt annotation_val.odgt --dt results.odgt \
        [--plot DIR] [--json PATH] [--image-root DIR] [--ji-matching cardinality]

Shapes: N images, V valid GTs / G ignore regions / D detections of one image, T JI thresholds.
numpy + scipy only (no torch), so the command starts fast.
"""
from __future__ import annotations

import argparse
import math
import os
import warnings
from typing import Collection, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .ji import (JI_MATCHINGS, JI_THRESHOLDS, dataset_ji, image_ji_counts,
                 image_ji_counts_mmdet)
from .results_io import (DTImage, GTImage, SizeSource, Source, load_dt, load_gt,
                         resolve_image_size, write_json)

__all__ = ["MR_ANCHORS", "CrowdHumanResult", "evaluate_crowdhuman", "clip_xywh_to_xyxy",
           "pairwise_iou", "pairwise_ioa", "format_results", "main"]

# Rounded FPPI anchors of the reference (not np.logspace(-2, 0, 9), which differs at 1e-5).
MR_ANCHORS = (0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000)
_THRESH = 0.5
_EPS = 1e-6


def clip_xywh_to_xyxy(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, 4) xywh -> xyxy (x2 = x + w), clipped as the reference does: the first corner to
    [0, W - 1] x [0, H - 1], the second to [0, W] x [0, H]."""
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    return np.stack([np.minimum(np.maximum(x1, 0), width - 1),
                     np.minimum(np.maximum(y1, 0), height - 1),
                     np.maximum(np.minimum(x2, width), 0),
                     np.maximum(np.minimum(y2, height), 0)], axis=1)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.maximum(0, iw) * np.maximum(0, ih)


def _area(a: np.ndarray) -> np.ndarray:
    return (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) inter / (area_a + area_b - inter + 1e-6), operations in the reference's order."""
    inter = _intersection(a, b)
    return inter / (_area(a)[:, None] + _area(b)[None, :] - inter + _EPS)


def pairwise_ioa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) inter / (area_a + 1e-6): the share of each ``a`` box inside each ``b`` box."""
    return _intersection(a, b) / (_area(a)[:, None] + _EPS)


class CrowdHumanResult:
    """What one evaluation produced.

    Attributes:
        metrics: {"AP", "mMR", "Recall", "JI"} as fractions.
        ji_threshold: the score threshold t of the best JI; ji_per_threshold: JI(t), (T,).
        counts: images, valid_gt, ignore_regions, detections, tp, fp, ignored_dt.
        mr_points: per anchor {"anchor", "index", "fppi", "miss_rate"} (the points MR^-2 used).
        curves: "scores", "recall", "precision", "fppi", "miss_rate" arrays, one entry per
            scored detection in ranking order (for plots).
        per_image: what resampling the images needs (``crowdloss.evaluation.bootstrap``):
            "image" (S,) index of the image of each scored detection, "score" (S,), "tp" (S,)
            bool, in (image, score rank) order, and "valid_gt" (N,) valid GTs per image.
            Matching never crosses images, so an image's TP flags are its own.
    """

    def __init__(self, metrics, ji_threshold, ji_per_threshold, counts, mr_points, curves,
                 ji_matching, per_image=None):
        self.metrics, self.counts, self.mr_points = metrics, counts, mr_points
        self.ji_threshold, self.ji_per_threshold = ji_threshold, ji_per_threshold
        self.curves, self.ji_matching = curves, ji_matching
        self.per_image = per_image

    def to_dict(self) -> dict:
        """Full-precision JSON-able summary (no curves)."""
        return {**self.metrics, "ji_threshold": self.ji_threshold,
                "ji_matching": self.ji_matching,
                "ji_per_threshold": dict(zip([round(t, 1) for t in JI_THRESHOLDS],
                                             self.ji_per_threshold)),
                "counts": dict(self.counts), "mr_points": list(self.mr_points)}


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    # Plain trapezoid between consecutive points; cumsum is a sequential sum like the
    # reference's loop (np.sum would sum pairwise and differ in the last bits).
    if recall.size < 2:
        return 0.0
    terms = (recall[1:] - recall[:-1]) * ((precision[:-1] + precision[1:]) / 2)
    return float(np.cumsum(terms)[-1])


def _mr2(fppi: np.ndarray, miss: np.ndarray) -> Tuple[float, List[dict]]:
    idx = np.searchsorted(fppi, MR_ANCHORS, side="left")  # first k with fppi_k >= anchor
    idx = np.minimum(idx, fppi.size - 1)
    picked = miss[idx]
    points = [{"anchor": a, "index": int(i), "fppi": float(fppi[i]), "miss_rate": float(m)}
              for a, i, m in zip(MR_ANCHORS, idx, picked)]
    if (picked <= 0).any():  # log(0): the geometric mean is 0
        return 0.0, points
    return float(np.exp(np.log(picked).mean())), points


def evaluate_crowdhuman(gt: Union[Source, Sequence[GTImage]],
                        dt: Union[Source, Mapping[str, DTImage]], *,
                        box_key: str = "fbox", ji_matching: str = "weight",
                        image_sizes: SizeSource = None,
                        image_root: Optional[str] = None,
                        tag_map: Optional[Mapping[str, str]] = None,
                        skipped_images: Collection[str] = ()) -> CrowdHumanResult:
    """Score detections against a CrowdHuman GT.

    Args:
        gt: GT odgt path, or its records, or ``load_gt`` output. Its image order is the
            ranking tie-break and its image count the FPPI denominator.
        dt: results odgt path, or records, or ``load_dt`` output. Every ID must be in the GT;
            GT images without a record have no detections.
        box_key: GT box field ("fbox" = the full-body "box" mode).
        ji_matching: "weight" (CrowdDet) or "cardinality" (mmdetection).
        image_sizes: ID -> (height, width) of the images (the data loader's), used when the
            GT file has none; must agree with it otherwise.
        image_root: image directory, read for sizes when the GT file and ``image_sizes``
            have none (before the detections record's size, which must agree).
        tag_map: GT tags other than "person" / "mask" -> one of those (else an error).
        skipped_images: IDs of GT images the run could not read (bad image files): they have
            no detections, their GT counts as missed, and without a known size their boxes
            are only clipped at 0.
    """
    if ji_matching not in JI_MATCHINGS:
        raise ValueError(f"ji_matching = {ji_matching!r}; expected one of {JI_MATCHINGS}")
    gt_images = gt if _is_parsed(gt, GTImage) else load_gt(gt, box_key=box_key,
                                                            tag_map=tag_map)
    if not gt_images:
        raise ValueError(f"the GT ({gt if isinstance(gt, (str, os.PathLike)) else 'records'}) "
                         "has no images")
    dt_by_id = dt if isinstance(dt, Mapping) else load_dt(dt)
    gt_ids = {g.image_id for g in gt_images}
    for image_id, d in dt_by_id.items():
        if image_id not in gt_ids:
            raise ValueError(f"{d.where}: ID '{image_id}' is not in the GT file")
    skipped = set(skipped_images)
    both = sorted(skipped & set(dt_by_id))
    if both:
        raise ValueError(f"images {both[:5]} are listed as skipped but have detections")

    thresholds = np.array(JI_THRESHOLDS)
    scores_all, covered_all, pair_d, pair_g, pair_w, ji_counts = [], [], [], [], [], []
    dets_per_image, valid_per_image = [], []
    det_off = gt_off = num_valid = num_ignore = 0
    for g in gt_images:
        d = dt_by_id.get(g.image_id)
        h, w = resolve_image_size(g, d, image_sizes, image_root,
                                  skipped=g.image_id in skipped)
        gboxes = clip_xywh_to_xyxy(g.boxes, h, w)
        valid_gt, ignore = gboxes[g.valid], gboxes[~g.valid]
        if d is not None and d.scores.size:
            order = np.argsort(-d.scores, kind="stable")  # score-descending, stable
            scores = d.scores[order]
            dboxes = clip_xywh_to_xyxy(d.boxes[order], h, w)
        else:
            scores, dboxes, order = np.zeros(0), np.zeros((0, 4)), np.zeros(0, np.int64)
        n_dt, n_gt = scores.size, valid_gt.shape[0]
        if n_dt and n_gt:
            iou = pairwise_iou(dboxes, valid_gt)
            r, c = np.nonzero(iou > _THRESH)
            wts = iou[r, c]
        else:
            iou, r, c, wts = None, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        if ignore.shape[0]:
            dt_cov = pairwise_ioa(dboxes, ignore).max(axis=1) > _THRESH if n_dt else \
                np.zeros(0, bool)
            gt_cov = pairwise_ioa(valid_gt, ignore).max(axis=1) > _THRESH if n_gt else \
                np.zeros(0, bool)
        else:
            dt_cov, gt_cov = np.zeros(n_dt, bool), np.zeros(n_gt, bool)
        if ji_matching == "weight":
            # detections with score > t are a prefix of the score-sorted list
            num_kept = np.searchsorted(-scores, -thresholds, side="left")
            ji_counts.append(image_ji_counts(r, c, wts, num_kept, n_gt, dt_cov, gt_cov))
        else:  # mmdetection's own overlaps and matching order: detections in file order
            file_boxes, file_scores = np.empty_like(dboxes), np.empty_like(scores)
            file_boxes[order], file_scores[order] = dboxes, scores
            ji_counts.append(image_ji_counts_mmdet(file_boxes, file_scores, valid_gt, ignore,
                                                   thresholds))
        pair_d.append(r + det_off)
        pair_g.append(c + gt_off)
        pair_w.append(wts)
        scores_all.append(scores)
        covered_all.append(dt_cov)
        det_off += n_dt
        gt_off += n_gt
        dets_per_image.append(n_dt)
        valid_per_image.append(n_gt)
        num_valid += n_gt
        num_ignore += ignore.shape[0]

    tp = _greedy_match(np.concatenate(pair_d), np.concatenate(pair_g),
                       np.concatenate(pair_w), det_off)
    scores = np.concatenate(scores_all)
    # An unmatched detection covered by an ignore region leaves the ranking.
    scored = tp | ~np.concatenate(covered_all)
    counts = {"images": len(gt_images), "valid_gt": num_valid, "ignore_regions": num_ignore,
              "detections": int(det_off), "tp": int(tp.sum()),
              "fp": int((scored & ~tp).sum()), "ignored_dt": int((~scored).sum())}
    metrics, mr_points, curves = _curve_metrics(scores[scored], tp[scored], num_valid,
                                                len(gt_images))
    ji_t = dataset_ji(np.stack(ji_counts)) if ji_counts else np.full(len(JI_THRESHOLDS), np.nan)
    if np.isnan(ji_t).all():
        best_t, ji = float("nan"), float("nan")
    else:
        best = int(np.nanargmax(ji_t))
        best_t, ji = JI_THRESHOLDS[best], float(ji_t[best])
    metrics["JI"] = ji
    image_of = np.repeat(np.arange(len(gt_images)), dets_per_image)
    per_image = {"image": image_of[scored], "score": scores[scored], "tp": tp[scored],
                 "valid_gt": np.asarray(valid_per_image, dtype=np.int64)}
    return CrowdHumanResult(metrics, best_t, ji_t.tolist(), counts, mr_points, curves,
                            ji_matching, per_image)


def _is_parsed(obj, kind) -> bool:
    return isinstance(obj, (list, tuple)) and len(obj) > 0 and isinstance(obj[0], kind)


def _greedy_match(det: np.ndarray, gt: np.ndarray, iou: np.ndarray, num_det: int) -> np.ndarray:
    """Caltech greedy matching over all images at once; returns tp (num_det,) bool.

    Detections are globally numbered in (image, score rank) order and GTs in (image, file
    order), so visiting the IoU > 0.5 pairs sorted by (detection, IoU descending, GT index)
    and taking the first pair whose detection and GT are both free gives, for each
    detection in turn, the unmatched GT of largest IoU with ties to the earliest.
    """
    order = np.lexsort((gt, -iou, det))
    det_l, gt_l = det[order].tolist(), gt[order].tolist()
    done = bytearray(num_det)
    used = bytearray(int(gt.max()) + 1 if gt.size else 0)
    for d, g in zip(det_l, gt_l):
        if done[d] or used[g]:
            continue
        done[d] = 1
        used[g] = 1
    return np.frombuffer(bytes(done), dtype=np.uint8).astype(bool)


def _curve_metrics(scores: np.ndarray, is_tp: np.ndarray, num_valid: int, num_images: int):
    order = np.argsort(-scores, kind="stable")  # ties keep GT-file image order
    is_tp = is_tp[order]
    tp = np.cumsum(is_tp, dtype=np.float64)
    k = np.arange(1, tp.size + 1, dtype=np.float64)
    fp = k - tp
    nan = float("nan")
    if num_valid == 0:
        warnings.warn("CrowdHuman evaluation: the GT has no valid box; AP, mMR and Recall "
                      "are NaN", RuntimeWarning, stacklevel=3)
        recall = np.full(tp.size, nan)
    else:
        recall = tp / num_valid
    precision = tp / k
    fppi = fp / num_images
    miss = 1.0 - recall
    curves = {"scores": scores[order], "recall": recall, "precision": precision,
              "fppi": fppi, "miss_rate": miss}
    if tp.size == 0:
        warnings.warn("CrowdHuman evaluation: no scored detections; mMR is NaN",
                      RuntimeWarning, stacklevel=3)
        ap_recall = nan if num_valid == 0 else 0.0
        return {"AP": ap_recall, "mMR": nan, "Recall": ap_recall}, [], curves
    if num_valid == 0:
        return {"AP": nan, "mMR": nan, "Recall": nan}, [], curves
    mmr, points = _mr2(fppi, miss)
    return ({"AP": _average_precision(recall, precision), "mMR": mmr,
             "Recall": float(recall[-1])}, points, curves)


def format_results(result: CrowdHumanResult) -> str:
    """A percent table (README order) plus a copy-paste line of the four metrics."""
    m, c = result.metrics, result.counts
    cols = ["mMR", "AP", "Recall", "JI"]
    vals = ["nan" if math.isnan(m[k]) else f"{100 * m[k]:.2f}" for k in cols]
    lines = [
        f"CrowdHuman evaluation: {c['images']} images, {c['valid_gt']} valid GT, "
        f"{c['ignore_regions']} ignore regions, {c['detections']} detections "
        f"(TP {c['tp']}, FP {c['fp']}, ignored {c['ignored_dt']}); JI best at score > "
        f"{result.ji_threshold:.1f} ({result.ji_matching} matching)",
        "| " + " | ".join(f"{k:>6s}" for k in cols) + " |",
        "|" + "|".join([":------:"] * len(cols)) + "|",
        "| " + " | ".join(f"{v:>6s}" for v in vals) + " |",
        "copypaste: " + ",".join(cols),
        "copypaste: " + ",".join(vals),
    ]
    return "\n".join(lines)


def _parse_tag_map(parser: argparse.ArgumentParser, text: Optional[str]) -> Dict[str, str]:
    out = {}
    for item in filter(None, (text or "").split(",")):
        tag, sep, target = item.partition("=")
        if not sep or not tag:
            parser.error(f"--tag-map: {item!r} is not TAG=person or TAG=mask")
        out[tag] = target
    return out


def main(argv: Optional[Sequence[str]] = None) -> CrowdHumanResult:
    parser = argparse.ArgumentParser(
        prog="python -m crowdloss.evaluation.crowdhuman",
        description="Score a CrowdHuman results odgt (AP, MR^-2, Recall, JI) without a model.")
    parser.add_argument("--gt", required=True, help="GT odgt (annotation_val.odgt)")
    parser.add_argument("--dt", required=True, help="results odgt (ours or CrowdDet's)")
    parser.add_argument("--box-key", default="fbox", help="GT box field (default fbox)")
    parser.add_argument("--ji-matching", default="weight", choices=JI_MATCHINGS)
    parser.add_argument("--tag-map", default=None, metavar="TAG=person|mask,...",
                        help="GT tags other than person / mask and what they are "
                             "(otherwise an unknown tag is an error)")
    parser.add_argument("--image-root", default=None,
                        help="read image sizes from these images when the files have none")
    parser.add_argument("--plot", default=None, metavar="DIR", help="write PNG plots here")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="write the full-precision results as JSON")
    args = parser.parse_args(argv)
    result = evaluate_crowdhuman(args.gt, args.dt, box_key=args.box_key,
                                 ji_matching=args.ji_matching, image_root=args.image_root,
                                 tag_map=_parse_tag_map(parser, args.tag_map))
    print(format_results(result))
    if args.json:
        write_json(args.json, result.to_dict())
    if args.plot:
        from .plots import plot_crowdhuman

        for path in plot_crowdhuman(result, args.plot):
            print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
