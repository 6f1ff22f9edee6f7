"""Per-class AP and mAP, PASCAL VOC style, under two explicit conventions (docs/metrics.md).

- ``"voc_devkit"``: the PASCAL VOC devkit rules as its Python port in py-faster-rcnn
  (``voc_eval.py``) applies them, on boxes in the devkit's 1-based inclusive pixel
  coordinates (:func:`to_devkit_boxes`): +1 in every width and height, a match needs IoU
  strictly above the threshold, a detection whose best GT is difficult is ignored, a second
  detection on a GT already taken is a false positive, AP by VOC2007's 11 points or the area
  under the interpolated curve (VOC2010+).
- ``"retinanet_csv"``: yhenon/pytorch-retinanet's ``csv_eval.py``: no +1, a match needs
  IoU >= the threshold, per image only detections scoring above 0.05 and the 100 best count,
  area AP.

Both conventions share one matching procedure: each detection takes its best-IoU GT of the
same class in its image (ties: the first GT), whether or not that GT is already taken, so
"true positive" means "the first detection, in descending score order, to take its GT" and
the whole dataset vectorises (a Python loop runs over images, not detections).

Edge cases (the references crash or return odd values): a class without detections has
AP 0 here (py-faster-rcnn raises IndexError, ssd.pytorch returns -1); a class without any
non-difficult GT has no AP (``nan``, reported as null) and is left out of the mAP
(py-faster-rcnn and ssd.pytorch return nan, csv_eval 0); the mAP of a set without any GT is 0.
Leading detections on difficult GTs give precision 0, not nan (py-faster-rcnn's 0 / 0).

numpy only. Shapes: N images; M GT boxes / D detections of one image; K classes; n
detections of one class over the dataset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np

__all__ = ["CONVENTIONS", "ImageGT", "ImageDets", "ClassAP", "APResult", "evaluate_ap",
           "voc_ap", "pairwise_iou", "to_devkit_boxes", "crowd_image_ids", "format_ap_table"]

_EPS = np.finfo(np.float64).eps
# The references' 11 recall points: np.arange, so 0.3 is 0.30000000000000004 and a recall of
# exactly 3/10 does NOT reach it. Kept bit for bit.
_ELEVEN_POINTS = np.arange(0.0, 1.1, 0.1)


class _Convention(NamedTuple):
    offset: float  # added to every width / height (the devkit's inclusive pixels)
    strict: bool  # IoU > threshold (else >=)
    score_threshold: Optional[float]  # default: detections must score above this
    max_detections: Optional[int]  # default: best-scoring detections kept per image


CONVENTIONS: Dict[str, _Convention] = {
    "voc_devkit": _Convention(offset=1.0, strict=True, score_threshold=None,
                              max_detections=None),
    "retinanet_csv": _Convention(offset=0.0, strict=False, score_threshold=0.05,
                                 max_detections=100),
}


class ImageGT(NamedTuple):
    """GT of one image: ``boxes`` (M, 4) xyxy float64, ``classes`` (M,) int (-1: an ignore
    region, treated as a difficult box of every class), ``difficult`` (M,) bool."""
    image_id: Any
    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray


class ImageDets(NamedTuple):
    """Detections of one image: ``boxes`` (D, 4), ``scores`` (D,), ``classes`` (D,) 0..K-1."""
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


@dataclass
class ClassAP:
    """One class: ``ap`` is nan without non-difficult GT; ``precision`` / ``recall`` are the
    values after the last detection (precision nan without detections)."""
    ap: float
    num_gt: int
    num_difficult: int
    num_dets: int
    tp: int
    fp: int
    ignored: int
    precision: float
    recall: float
    recall_curve: np.ndarray = field(repr=False)
    precision_curve: np.ndarray = field(repr=False)


@dataclass
class APResult:
    convention: str
    iou_threshold: float
    use_07_metric: bool
    class_names: List[str]
    classes: List[ClassAP]
    num_images: int

    @property
    def mAP(self) -> float:
        """Mean AP over the classes with at least one non-difficult GT (0.0 if none has)."""
        aps = [c.ap for c in self.classes if c.num_gt > 0]
        return float(np.mean(aps)) if aps else 0.0

    def metrics(self, prefix: str = "") -> Dict[str, float]:
        """``{"mAP": .., "AP-<class>": ..}``; classes without GT have no AP and no entry."""
        out = {f"{prefix}mAP": self.mAP}
        for name, c in zip(self.class_names, self.classes):
            if c.num_gt > 0:
                out[f"{prefix}AP-{name}"] = c.ap
        return out

    def to_dict(self) -> dict:
        """JSON-ready (nan -> None)."""
        clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v
        per_class = {name: {k: clean(getattr(c, k)) for k in (
            "ap", "num_gt", "num_difficult", "num_dets", "tp", "fp", "ignored", "precision",
            "recall")} for name, c in zip(self.class_names, self.classes)}
        return {"convention": self.convention, "iou_threshold": self.iou_threshold,
                "use_07_metric": self.use_07_metric, "num_images": self.num_images,
                "mAP": self.mAP, "classes": per_class}


def to_devkit_boxes(boxes: np.ndarray) -> np.ndarray:
    """Continuous xyxy (ours, crowdloss.data.voc) -> the devkit's 1-based inclusive pixels."""
    return np.asarray(boxes, np.float64).reshape(-1, 4) + np.array([1.0, 1.0, 0.0, 0.0])


def pairwise_iou(a: np.ndarray, b: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """(D, 4) x (M, 4) -> (D, M) IoU, ``offset`` added to widths / heights (1: the devkit).

    Same operations in the same order as the references, so the values are bit-identical;
    the union is floored at float64 eps (csv_eval's guard; the devkit never divides by 0).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2])
                    - np.maximum(a[:, None, 0], b[None, :, 0]) + offset, 0.0)
    ih = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3])
                    - np.maximum(a[:, None, 1], b[None, :, 1]) + offset, 0.0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + offset) * (a[:, 3] - a[:, 1] + offset)
    area_b = (b[:, 2] - b[:, 0] + offset) * (b[:, 3] - b[:, 1] + offset)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, _EPS)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from the score-ordered recall / precision points.

    11-point (VOC2007): mean over t in {0, 0.1, ..., 1} of the best precision at recall >= t
    (0 where none). Area (VOC2010+): precision made monotone from the right (the envelope),
    summed over the recall steps, with a point (0, 0) in front and (1, 0) behind.
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        ap = 0.0
        for t in _ELEVEN_POINTS:  # summed one by one, as the references do
            reached = recall >= t
            ap += (precision[reached].max() if reached.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([0.0], precision, [0.0]))[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _select(dets: ImageDets, score_threshold: Optional[float], max_detections: Optional[int]
            ) -> ImageDets:
    boxes = np.asarray(dets.boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(dets.scores, np.float64).reshape(-1)
    classes = np.asarray(dets.classes).reshape(-1).astype(np.int64)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(f"detections: {len(boxes)} boxes, {len(scores)} scores, "
                         f"{len(classes)} classes")
    keep = np.arange(len(scores))
    if score_threshold is not None:
        keep = keep[scores > score_threshold]
    if max_detections is not None:
        keep = keep[np.argsort(-scores[keep], kind="stable")[:max_detections]]
    return ImageDets(boxes[keep], scores[keep], classes[keep])


def _match(gt: ImageGT, dets: ImageDets, conv: _Convention, thr: float):
    """Per detection: matched (IoU passes), on a difficult GT, and the GT index taken."""
    num = len(dets.scores)
    if len(gt.boxes) == 0 or num == 0:
        return np.zeros(num, bool), np.zeros(num, bool), np.zeros(num, np.int64)
    classes = np.asarray(gt.classes)
    iou = pairwise_iou(dets.boxes, gt.boxes, conv.offset)
    same = (dets.classes[:, None] == classes[None, :]) | (classes[None, :] < 0)
    iou = np.where(same, iou, -np.inf)
    best = np.argmax(iou, axis=1)  # the first GT of the highest IoU
    ovmax = iou[np.arange(num), best]
    matched = ovmax > thr if conv.strict else ovmax >= thr
    on_difficult = matched & (np.asarray(gt.difficult, bool)[best] | (classes[best] < 0))
    return matched, on_difficult, best


def evaluate_ap(gt: Sequence[ImageGT], dets: Mapping[Any, ImageDets], *, num_classes: int,
                class_names: Optional[Sequence[str]] = None, convention: str = "voc_devkit",
                iou_threshold: float = 0.5, use_07_metric: bool = False,
                score_threshold: Optional[float] = None, max_detections: Optional[int] = None,
                image_ids: Optional[Sequence[Any]] = None) -> APResult:
    """Per-class AP of ``dets`` against ``gt`` (see the module docstring for the rules).

    Args:
        gt: every image of the set (images without GT included), boxes in the convention's
            coordinates (``to_devkit_boxes`` of ours for "voc_devkit").
        dets: image_id -> detections; images missing here have none.
        convention: "voc_devkit" or "retinanet_csv".
        use_07_metric: 11-point AP (only for "voc_devkit"; csv_eval has area AP only).
        score_threshold, max_detections: per-image filters; None = the convention's default
            (csv_eval: > 0.05 and the best 100; the devkit: none).
        image_ids: score only these images (e.g. :func:`crowd_image_ids`).

    Raises:
        ValueError: unknown convention, a detection on an image not in ``gt``, or a
            detection class outside 0..K-1.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown AP convention {convention!r}; expected one of "
                         f"{sorted(CONVENTIONS)}")
    conv = CONVENTIONS[convention]
    if use_07_metric and convention != "voc_devkit":
        raise ValueError(f"use_07_metric (11-point AP) is a devkit rule, not {convention!r}'s")
    score_threshold = conv.score_threshold if score_threshold is None else score_threshold
    max_detections = conv.max_detections if max_detections is None else max_detections
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    known = {g.image_id for g in gt}
    unknown = [i for i in dets if i not in known]
    if unknown:
        raise ValueError(f"detections for {len(unknown)} images that are not in the GT "
                         f"(first: {unknown[0]!r})")
    if image_ids is not None:
        wanted = set(image_ids)
        gt = [g for g in gt if g.image_id in wanted]

    parts = {k: [] for k in ("score", "cls", "matched", "difficult", "key")}
    num_gt, num_difficult = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    gt_offset = 0
    for g in gt:
        classes, difficult = np.asarray(g.classes), np.asarray(g.difficult, bool)
        counted = classes >= 0
        num_gt += np.bincount(classes[counted & ~difficult], minlength=num_classes)
        num_difficult += np.bincount(classes[counted & difficult], minlength=num_classes)
        if g.image_id in dets:
            d = _select(dets[g.image_id], score_threshold, max_detections)
            if len(d.classes) and (d.classes.min() < 0 or d.classes.max() >= num_classes):
                raise ValueError(f"image {g.image_id!r}: detection classes must lie in "
                                 f"0..{num_classes - 1}, got {sorted(set(d.classes.tolist()))}")
            matched, on_difficult, best = _match(g, d, conv, iou_threshold)
            for k, v in zip(parts, (d.scores, d.classes, matched, on_difficult,
                                    best + gt_offset)):
                parts[k].append(v)
        gt_offset += len(classes)
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    per_class = [_class_ap(cat, k, int(num_gt[k]), int(num_difficult[k]), use_07_metric)
                 for k in range(num_classes)]
    return APResult(convention, float(iou_threshold), bool(use_07_metric), names, per_class,
                    len(gt))


def _class_ap(cat: dict, k: int, npos: int, ndiff: int, use_07_metric: bool) -> ClassAP:
    sel = np.flatnonzero(cat["cls"] == k)
    # Stable: ties keep image order, then the detector's order (MATLAB's sort does the same
    # on a results file written in that order).
    sel = sel[np.argsort(-cat["score"][sel], kind="stable")]
    matched = cat["matched"][sel].astype(bool)
    eligible = matched & ~cat["difficult"][sel].astype(bool)
    tp = np.zeros(len(sel))
    candidates = np.flatnonzero(eligible)
    _, first = np.unique(cat["key"][sel][candidates], return_index=True)
    tp[candidates[first]] = 1.0  # the first detection to take each GT; later ones are FP
    fp = (~matched | (eligible & (tp == 0))).astype(np.float64)
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(fp)
    precision = tp_sum / np.maximum(tp_sum + fp_sum, _EPS)
    if npos > 0:
        recall = tp_sum / float(npos)
        ap = voc_ap(recall, precision, use_07_metric)
    else:
        recall, ap = np.full(len(sel), math.nan), math.nan
    return ClassAP(ap=ap, num_gt=npos, num_difficult=ndiff, num_dets=len(sel),
                   tp=int(tp.sum()), fp=int(fp.sum()), ignored=int((matched & ~eligible).sum()),
                   precision=float(precision[-1]) if len(sel) else math.nan,
                   recall=float(recall[-1]) if len(sel) else (0.0 if npos else math.nan),
                   recall_curve=recall, precision_curve=precision)


def crowd_image_ids(gt: Sequence[ImageGT], *, iou_threshold: float = 0.3,
                    include_difficult: bool = False) -> List[Any]:
    """The "crowd" subset: images holding two GT boxes of one class with IoU > threshold.

    IoU without +1 on the boxes given (continuous boxes: equal to the devkit's +1 IoU of the
    xml boxes). Ignore regions (class -1) never count; difficult boxes count only with
    ``include_difficult`` (by default a pair must be of boxes the metric scores).
    """
    out = []
    for g in gt:
        classes = np.asarray(g.classes)
        keep = classes >= 0
        if not include_difficult:
            keep &= ~np.asarray(g.difficult, bool)
        boxes, classes = np.asarray(g.boxes, np.float64)[keep], classes[keep]
        for c in np.unique(classes):
            b = boxes[classes == c]
            if len(b) > 1 and (np.triu(pairwise_iou(b, b), k=1) > iou_threshold).any():
                out.append(g.image_id)
                break
    return out


def format_ap_table(result: APResult, crowd: Optional[APResult] = None) -> str:
    """Per-class text table (AP, GT counts, detections, final precision / recall) + mAP."""
    pct = lambda v: "-" if math.isnan(v) else f"{100 * v:.2f}"
    head = ["class", "AP", "gt", "difficult", "dets", "tp", "fp", "precision", "recall"]
    rows = [head + (["AP_crowd", "gt_crowd"] if crowd else [])]
    for k, (name, c) in enumerate(zip(result.class_names, result.classes)):
        row = [name, pct(c.ap), str(c.num_gt), str(c.num_difficult), str(c.num_dets),
               str(c.tp), str(c.fp), pct(c.precision), pct(c.recall)]
        if crowd:
            row += [pct(crowd.classes[k].ap), str(crowd.classes[k].num_gt)]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    rule = (f"{result.convention}, IoU {'>' if CONVENTIONS[result.convention].strict else '>='}"
            f" {result.iou_threshold:g}, {'11-point' if result.use_07_metric else 'area'} AP")
    lines.append(f"mAP {100 * result.mAP:.2f} over {sum(c.num_gt > 0 for c in result.classes)}"
                 f" classes with GT, {result.num_images} images ({rule})")
    if crowd:
        lines.append(f"mAP on the crowd subset {100 * crowd.mAP:.2f} ({crowd.num_images} "
                     "images)")
    return "\n".join(lines)
