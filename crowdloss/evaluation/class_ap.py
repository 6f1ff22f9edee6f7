"""Per-class AP evaluators: ``VOCEvaluator`` (evaluator_type "voc") and ``PerClassAPEvaluator``
(evaluator_type "per_class_ap", or beside any dataset's own evaluator with ``TEST.PER_CLASS_AP``).

The metric is ``crowdloss.evaluation.voc.evaluate_ap`` (rules: docs/metrics.md "PASCAL VOC").
GT comes from the dataset's dicts as the test loader sees them (continuous xyxy boxes, the
``difficult`` flag, class -1 ignore regions); "voc_devkit" scores boxes in the devkit's
1-based inclusive pixels (``to_devkit_boxes``), "retinanet_csv" scores them as they are.

Files under ``output_dir``: ``VOCEvaluator`` writes the devkit's per-class results files
``comp4_det_<split>_<class>.txt`` (``<image id> <score> <x1> <y1> <x2> <y2>`` in devkit pixels,
every number exactly the float it was scored with, so the official devkit run on them
reproduces our numbers) and ``metrics.json``; ``PerClassAPEvaluator`` writes
``per_class_ap.json``.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable, Dict, List, Optional

import numpy as np

from crowdloss.config.access import cfg_get
from crowdloss.data.catalog import DatasetCatalog, MetadataCatalog
from crowdloss.utils.io import atomic_write

from .evaluator import DatasetEvaluator, DatasetEvaluators, _gather_to_main, _predictions
from .registry import register_evaluator_type
from .voc import (CONVENTIONS, APResult, ImageDets, ImageGT, crowd_image_ids, evaluate_ap,
                  format_ap_table, to_devkit_boxes)

__all__ = ["PerClassAPEvaluator", "VOCEvaluator", "gt_from_dataset_dicts", "add_per_class_ap",
           "build_voc_evaluator", "build_per_class_ap_evaluator"]

logger = logging.getLogger(__name__)


def gt_from_dataset_dicts(dicts: List[dict]) -> List[ImageGT]:
    """Dataset dicts -> ``ImageGT`` per image (boxes as stored: continuous xyxy)."""
    out, seen = [], set()
    for d in dicts:
        if d["image_id"] in seen:
            raise ValueError(f"image_id {d['image_id']!r} appears twice in the dataset")
        seen.add(d["image_id"])
        annos = d["annotations"]
        out.append(ImageGT(d["image_id"],
                           np.array([a["bbox"] for a in annos], np.float64).reshape(-1, 4),
                           np.array([a["category_id"] for a in annos], np.int64),
                           np.array([bool(a.get("difficult", False)) for a in annos], bool)))
    return out


def _to_devkit(gt: List[ImageGT]) -> List[ImageGT]:
    return [g._replace(boxes=to_devkit_boxes(g.boxes)) for g in gt]


class PerClassAPEvaluator(DatasetEvaluator):
    """Per-class AP and mAP of any dataset whose metadata has ``thing_classes``.

    Args:
        convention: "voc_devkit" or "retinanet_csv" (docs/metrics.md).
        iou_threshold: the match threshold (0.5).
        use_07_metric: 11-point AP; None = the metadata's ``use_07_metric`` (VOC2007) for
            "voc_devkit", False otherwise.
        score_threshold, max_detections: per-image filters; None = the convention's.
        crowd_iou: also score the crowd subset (``crowd_image_ids`` at this IoU); None = no.
        gt_loader: zero-argument callable returning the dataset dicts (default: the catalog).
    """

    TASK = "per_class_ap"
    METRICS_FILE = "per_class_ap.json"

    def __init__(self, dataset_name: str, *, output_dir: Optional[str] = None,
                 distributed: bool = True, convention: str = "voc_devkit",
                 iou_threshold: float = 0.5, use_07_metric: Optional[bool] = None,
                 score_threshold: Optional[float] = None, max_detections: Optional[int] = None,
                 crowd_iou: Optional[float] = None,
                 gt_loader: Optional[Callable[[], List[dict]]] = None):
        meta = MetadataCatalog.get(dataset_name)
        if not meta.get("thing_classes"):
            raise KeyError(f"MetadataCatalog['{dataset_name}'] has no 'thing_classes' (the "
                           "class names per-class AP reports)")
        if convention not in CONVENTIONS:
            raise ValueError(f"AP convention must be one of {sorted(CONVENTIONS)}, got "
                             f"{convention!r}")
        if use_07_metric is None:
            use_07_metric = convention == "voc_devkit" and bool(meta.get("use_07_metric"))
        self._name, self._classes = dataset_name, list(meta["thing_classes"])
        self._split = meta.get("split", "test")
        self._output_dir, self._distributed = output_dir, distributed
        self._kwargs = dict(convention=convention, iou_threshold=float(iou_threshold),
                            use_07_metric=bool(use_07_metric), score_threshold=score_threshold,
                            max_detections=max_detections)
        self._crowd_iou = crowd_iou
        self._gt_loader = gt_loader or (lambda: DatasetCatalog.get(dataset_name))
        self.reset()

    def reset(self) -> None:
        self._records: List[tuple] = []
        self.result: Optional[APResult] = None  # the last results, on rank 0
        self.crowd_result: Optional[APResult] = None
        self.crowd_image_ids: List = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            boxes, scores, classes = _predictions(out)
            self._records.append((inp["image_id"], boxes, scores, classes.astype(np.int64)))

    def _detections(self, records: List[tuple], devkit: bool) -> Dict:
        dets = {}
        for image_id, boxes, scores, classes in records:
            if image_id in dets:
                raise ValueError(f"{self._name}: image {image_id!r} was predicted twice")
            dets[image_id] = ImageDets(to_devkit_boxes(boxes) if devkit else boxes, scores,
                                       classes)
        return dets

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        records = _gather_to_main(self._records, self._distributed)
        if records is None:
            return {}
        gt = gt_from_dataset_dicts(self._gt_loader())
        devkit = self._kwargs["convention"] == "voc_devkit"
        dets = self._detections(records, devkit)
        scored_gt = _to_devkit(gt) if devkit else gt
        result = evaluate_ap(scored_gt, dets, num_classes=len(self._classes),
                             class_names=self._classes, **self._kwargs)
        crowd = None
        if self._crowd_iou is not None:
            self.crowd_image_ids = crowd_image_ids(gt, iou_threshold=self._crowd_iou)
            crowd = evaluate_ap(scored_gt, dets, num_classes=len(self._classes),
                                class_names=self._classes, image_ids=self.crowd_image_ids,
                                **self._kwargs)
        missing = len(gt) - len(dets)
        if missing:
            logger.warning("%s: %d of %d images were not predicted (they count as images "
                           "without detections)", self._name, missing, len(gt))
        logger.info("Per-class AP on %s:\n%s", self._name, format_ap_table(result, crowd))
        self.result, self.crowd_result = result, crowd
        if self._output_dir:
            self._write(records, result, crowd)
        metrics = result.metrics()
        if crowd is not None:  # right after mAP: the two headline numbers first
            metrics = {"mAP": metrics.pop("mAP"), "mAP_crowd": crowd.mAP, **metrics}
        return {self.TASK: metrics}

    def _write(self, records, result: APResult, crowd: Optional[APResult]) -> None:
        summary = result.to_dict()
        if crowd is not None:
            summary["crowd"] = dict(crowd.to_dict(), iou_threshold=self._crowd_iou,
                                    rule="two GT boxes of one class with IoU > iou_threshold, "
                                         "difficult boxes not counted",
                                    match_iou_threshold=crowd.iou_threshold)
        atomic_write(os.path.join(self._output_dir, self.METRICS_FILE),
                     json.dumps(summary, indent=1, allow_nan=False) + "\n")


class VOCEvaluator(PerClassAPEvaluator):
    """PASCAL VOC: per-class AP, mAP and the crowd-subset mAP (``crowd_iou`` 0.3), the devkit's
    results files and ``metrics.json``; task "voc"."""

    TASK = "voc"
    METRICS_FILE = "metrics.json"

    def __init__(self, dataset_name: str, *, crowd_iou: Optional[float] = 0.3, **kwargs):
        super().__init__(dataset_name, crowd_iou=crowd_iou, **kwargs)

    def _write(self, records, result, crowd) -> None:
        per_class: List[List[str]] = [[] for _ in self._classes]
        for image_id, boxes, scores, classes in records:  # image order, then detector order
            for box, score, k in zip(to_devkit_boxes(boxes).tolist(), scores.tolist(),
                                     classes.tolist()):
                per_class[k].append(f"{image_id} {score!r} " + " ".join(map(repr, box)))
        for name, lines in zip(self._classes, per_class):
            atomic_write(os.path.join(self._output_dir, f"comp4_det_{self._split}_{name}.txt"),
                         "".join(line + "\n" for line in lines))
        super()._write(records, result, crowd)


def _gt_loader(cfg, dataset_name: str) -> Callable[[], List[dict]]:
    def load():
        from crowdloss.data.build import get_dataset_dicts  # the test loader's view

        return get_dataset_dicts([dataset_name], cfg)
    return load


def build_voc_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None):
    """evaluator_type "voc": ``VOCEvaluator`` with the metadata's ``ap_convention``
    (default "voc_devkit") and TEST.AP_IOU_THRESHOLD / TEST.VOC_CROWD_IOU."""
    meta = MetadataCatalog.get(dataset_name)
    return VOCEvaluator(dataset_name, output_dir=output_dir,
                        convention=meta.get("ap_convention", "voc_devkit"),
                        iou_threshold=float(cfg_get(cfg, "TEST.AP_IOU_THRESHOLD")),
                        crowd_iou=float(cfg_get(cfg, "TEST.VOC_CROWD_IOU")),
                        gt_loader=_gt_loader(cfg, dataset_name))


def build_per_class_ap_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None,
                                 convention: Optional[str] = None):
    """evaluator_type "per_class_ap" (e.g. CSV datasets: metadata ``ap_convention``
    "retinanet_csv"), or ``convention`` given (TEST.PER_CLASS_AP)."""
    if convention is None:
        convention = MetadataCatalog.get(dataset_name).get("ap_convention", "voc_devkit")
    return PerClassAPEvaluator(dataset_name, output_dir=output_dir, convention=convention,
                               iou_threshold=float(cfg_get(cfg, "TEST.AP_IOU_THRESHOLD")),
                               gt_loader=_gt_loader(cfg, dataset_name))


def add_per_class_ap(cfg, dataset_name: str, output_dir: Optional[str], evaluator):
    """``evaluator`` plus a ``PerClassAPEvaluator`` when TEST.PER_CLASS_AP names a convention.

    "" (the default) returns ``evaluator`` unchanged, so outputs stay as they were.
    """
    convention = cfg_get(cfg, "TEST.PER_CLASS_AP")
    if not convention:
        return evaluator
    extra = build_per_class_ap_evaluator(cfg, dataset_name, output_dir, convention=convention)
    return DatasetEvaluators([evaluator, extra])


register_evaluator_type("voc", build_voc_evaluator)
register_evaluator_type("per_class_ap", build_per_class_ap_evaluator)
