"""Evaluator plumbing shared by ``pods_test`` and the eval hook (docs/internals.md); the
loop that feeds an evaluator is ``inference.inference_on_dataset``.

A ``DatasetEvaluator`` collects per-image predictions in ``process``; ``evaluate`` gathers
them to rank 0 (``crowdloss.utils.comm.gather``), which scores them once, writes the result
files under ``output_dir`` and returns ``{task: {metric: value}}``; other ranks return ``{}``.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from crowdloss.config.access import cfg_get
from crowdloss.data.catalog import MetadataCatalog
from crowdloss.utils import comm

from .coco import (check_submission_name, evaluate_coco, evaluate_coco_on_odgt,
                   instances_to_coco, write_coco_submission)
from .crowdhuman import evaluate_crowdhuman
from .registry import evaluator_builder, registered_evaluator_types
from .results_io import (crowdhuman_image_ids, load_dt, load_gt, make_dt_record,
                         odgt_to_coco_results, write_json, write_odgt)

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "CrowdHumanEvaluator", "COCOEvaluator",
           "crowdhuman_class_id", "build_evaluator"]

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Base class: ``reset()``, then ``process(inputs, outputs)`` per batch, then
    ``evaluate()``. ``source`` says what is evaluated (checkpoint, iteration); the runner sets
    it, evaluators may label their outputs with it."""

    source: str = ""

    def reset(self) -> None:
        pass

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        pass

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        return {}


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators run side by side; their result dicts are merged."""

    def __init__(self, evaluators: Sequence[DatasetEvaluator]):
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for e in self._evaluators:
            e.reset()

    def process(self, inputs, outputs) -> None:
        for e in self._evaluators:
            e.process(inputs, outputs)

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        results: Dict[str, Dict[str, float]] = {}
        for e in self._evaluators:
            for task, metrics in (e.evaluate() or {}).items():
                if task in results:
                    raise KeyError(f"two evaluators both report task '{task}'")
                results[task] = metrics
        return results


def _predictions(output: dict) -> tuple:
    inst = output["instances"]
    boxes = inst.pred_boxes.detach().to("cpu", torch.float64).numpy().reshape(-1, 4)
    scores = inst.scores.detach().to("cpu", torch.float64).numpy().reshape(-1)
    classes = inst.pred_classes.detach().cpu().numpy().reshape(-1)
    return boxes, scores, classes


def _gather_to_main(items: list, distributed: bool) -> Optional[list]:
    """All ranks' items on rank 0 (rank order), None on the other ranks."""
    if not distributed or comm.get_world_size() == 1:
        return items
    comm.synchronize()
    parts = comm.gather(items, dst=0)
    if not comm.is_main_process():
        return None
    return list(itertools.chain(*parts))


class CrowdHumanEvaluator(DatasetEvaluator):
    """AP, MR^-2, Recall and JI against the dataset's GT odgt (docs/metrics.md).

    Files under ``output_dir``: ``crowdhuman_results.odgt`` (readable by the public CrowdHuman
    toolkits), ``coco_instances_results.json`` (compact; integer ``image_id`` = the image's
    1-based position in the GT odgt, mapping in ``coco_image_ids.json``), ``metrics.json`` and,
    with ``plot``, ``mr_fppi.png`` / ``precision_recall.png`` titled with the dataset and
    ``source``. With ``coco_max_dets`` > 0 (``TEST.COCO_METRICS``) the same detections are also
    scored with COCO's AP / AR and oLRP (task "bbox"; ``coco.evaluate_coco_on_odgt``, which
    writes ``coco_gt.json`` and ``coco_metrics.json``).

    GT images that were never predicted are the ones the data loader skipped as bad image
    files (``DATASETS.SKIP_BAD_IMAGES``): their valid GT boxes count as missed, the log says
    so, and ``counts`` has ``skipped_images`` / ``skipped_valid_gt``.

    The odgt scores one class, its persons. A model of several classes (person + head, the
    seed's COCO classes + head) is scored on the detections of its class named "person"
    (``class_id``; ``crowdhuman_class_id`` finds it in the dataset's ``thing_classes``); its
    other classes are not CrowdHuman detections. With one class every detection counts.
    """

    def __init__(self, dataset_name: str, *, output_dir: Optional[str] = None,
                 distributed: bool = True, ji_matching: str = "weight", plot: bool = True,
                 box_key: str = "fbox", tag_map: Optional[Dict[str, str]] = None,
                 class_id: Optional[int] = None, coco_max_dets: int = 0):
        meta = MetadataCatalog.get(dataset_name)
        if not meta.get("gt_file"):
            raise KeyError(f"MetadataCatalog['{dataset_name}'] has no 'gt_file' (the GT odgt "
                           "the CrowdHuman evaluator scores against)")
        self._class_id = class_id
        self._name, self._gt_file = dataset_name, meta["gt_file"]
        # GT images the run did not predict (skipped as unreadable, say) still need a size
        # when the odgt has none: their headers under image_root give it.
        self._image_root = meta.get("image_root")
        self._output_dir, self._distributed = output_dir, distributed
        self._ji_matching, self._plot, self._box_key = ji_matching, plot, box_key
        self._tag_map = dict(tag_map or {})
        self._coco_max_dets = int(coco_max_dets)
        self.reset()

    def reset(self) -> None:
        self._records: List[dict] = []
        self.result = None  # the last CrowdHumanResult (counts, curves) on rank 0

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            boxes, scores, classes = _predictions(out)
            if self._class_id is not None:
                keep = classes == self._class_id
                boxes, scores = boxes[keep], scores[keep]
            self._records.append(make_dt_record(inp["image_id"], inp["height"], inp["width"],
                                                boxes, scores))

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        records = _gather_to_main(self._records, self._distributed)
        if records is None:
            return {}
        out = self._output_dir
        if out:  # first, so that the detections survive whatever happens next
            os.makedirs(out, exist_ok=True)
            write_odgt(os.path.join(out, "crowdhuman_results.odgt"), records)
        gt_images = load_gt(self._gt_file, box_key=self._box_key, tag_map=self._tag_map)
        image_ids = crowdhuman_image_ids(gt_images)
        if out and all(r["ID"] in image_ids for r in records):  # else evaluation says which
            write_json(os.path.join(out, "coco_instances_results.json"),
                       odgt_to_coco_results(records, image_ids=image_ids), compact=True)
            write_json(os.path.join(out, "coco_image_ids.json"), image_ids, compact=True)
        # Without sizes in the GT file, the inputs' (read from the images) are used.
        sizes = {r["ID"]: (r["height"], r["width"]) for r in records}
        skipped = [g for g in gt_images if g.image_id not in sizes]
        result = evaluate_crowdhuman(gt_images, load_dt(records), box_key=self._box_key,
                                     ji_matching=self._ji_matching, image_sizes=sizes,
                                     image_root=self._image_root,
                                     skipped_images=[g.image_id for g in skipped])
        missed = int(sum(int(g.valid.sum()) for g in skipped))
        result.counts.update(skipped_images=len(skipped), skipped_valid_gt=missed)
        if skipped:
            logger.warning("%s: %d of %d GT images were not predicted (bad image files the "
                           "loader skipped, see its warnings; first: %s): their %d valid GT "
                           "boxes count as missed", self._name, len(skipped), len(gt_images),
                           ", ".join(g.image_id for g in skipped[:5]), missed)
        c = result.counts
        # The metrics themselves are printed once, by the caller (print_csv_format).
        logger.info("CrowdHuman evaluation of %s: %d images, %d valid GT, %d ignore regions, "
                    "%d detections (TP %d, FP %d, ignored %d); JI best at score > %.1f (%s "
                    "matching)", self._name, c["images"], c["valid_gt"], c["ignore_regions"],
                    c["detections"], c["tp"], c["fp"], c["ignored_dt"], result.ji_threshold,
                    result.ji_matching)
        if out:
            # The GT file goes along, so that the scores can be recomputed from these files
            # alone (e.g. by the benchmark's bootstrap) whatever the environment is later.
            write_json(os.path.join(out, "metrics.json"),
                       {**result.to_dict(), "gt_file": os.fspath(self._gt_file)})
            if self._plot:
                from .plots import plot_crowdhuman

                title = f"{self._name}: {self.source}" if self.source else self._name
                plot_crowdhuman(result, out, label=self._name, title=title)
        self.result = result
        if not self._coco_max_dets:
            return {"crowdhuman": dict(result.metrics)}
        coco = evaluate_coco_on_odgt(gt_images, records, output_dir=out,
                                     max_dets=self._coco_max_dets)
        return {"crowdhuman": dict(result.metrics), "bbox": coco}


class COCOEvaluator(DatasetEvaluator):
    """COCO bbox AP/AR via pycocotools against the dataset's GT json (``gt_file``).

    A split without annotations (metadata ``has_annotations=False``, e.g. ``coco_2017_test-
    dev``: its ``gt_file`` is the image-info json) is not scored: the detections are written
    for the evaluation server as ``detections_<submission_split>_<submission_name>_results``
    ``.json`` / ``.zip`` under ``output_dir``.
    """

    def __init__(self, dataset_name: str, *, output_dir: Optional[str] = None,
                 max_dets: int = 100, distributed: bool = True,
                 submission_name: str = "crowdloss"):
        meta = MetadataCatalog.get(dataset_name)
        if not meta.get("gt_file"):
            raise KeyError(f"MetadataCatalog['{dataset_name}'] has no 'gt_file' (the COCO "
                           "json the evaluator scores against)")
        self._name, self._gt_file = dataset_name, meta["gt_file"]
        self._id_map = meta.get("contiguous_id_to_thing_dataset_id")
        self._output_dir, self._max_dets, self._distributed = output_dir, max_dets, distributed
        self._scored = bool(meta.get("has_annotations", True))
        self._split = meta.get("submission_split", dataset_name)
        if not self._scored:
            self._submission_name = check_submission_name(submission_name)
            if not output_dir:
                raise ValueError(f"{dataset_name} has no annotations: its detections are "
                                 "written for the COCO server, which needs an output_dir")
        self.reset()

    def reset(self) -> None:
        self._results: List[dict] = []
        self._image_ids: List[Any] = []

    def _category_ids(self, classes: np.ndarray) -> List[int]:
        if self._id_map is None:  # read the map from the GT once: sorted ids -> 0..K-1
            with open(self._gt_file) as f:
                cats = sorted(c["id"] for c in json.load(f)["categories"])
            self._id_map = dict(enumerate(cats))
        try:
            return [self._id_map[int(c)] for c in classes]
        except KeyError as e:
            raise KeyError(f"{self._name}: predicted class {e.args[0]} has no COCO category "
                           f"(known contiguous ids: {sorted(self._id_map)})") from None

    def _report_skipped(self, predicted: set) -> None:
        # pycocotools scores unpredicted images as images without detections: their GT is
        # missed. Say so, since here that means bad image files the loader skipped.
        gt_ids = _coco_gt_image_ids(self._gt_file)
        skipped = [i for i in gt_ids if i not in predicted]
        if skipped:
            logger.warning("%s: %d of %d GT images were not predicted (bad image files the "
                           "loader skipped; first: %s): their GT boxes count as missed",
                           self._name, len(skipped), len(gt_ids),
                           ", ".join(map(str, skipped[:5])))

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            boxes, scores, classes = _predictions(out)
            self._image_ids.append(inp["image_id"])
            self._results.extend(instances_to_coco(inp["image_id"], boxes, scores,
                                                   self._category_ids(classes)))

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        results = _gather_to_main(self._results, self._distributed)
        image_ids = _gather_to_main(self._image_ids, self._distributed)
        if results is None:
            return {}
        if not self._scored:
            json_path, zip_path = write_coco_submission(results, self._output_dir, self._split,
                                                        self._submission_name)
            logger.info("%s has no annotations: %d detections NOT scored here; submit %s "
                        "(holding %s) to the COCO evaluation server", self._name, len(results),
                        zip_path, os.path.basename(json_path))
            images = len({r["image_id"] for r in results})
            return {"submission": {"detections": float(len(results)),
                                   "images_with_detections": float(images)}}
        self._report_skipped(set(image_ids))
        if self._output_dir:
            write_json(os.path.join(self._output_dir, "coco_instances_results.json"), results,
                       compact=True)
        metrics = evaluate_coco(self._gt_file, results, max_dets=self._max_dets)
        if self._output_dir:
            write_json(os.path.join(self._output_dir, "metrics.json"), metrics)
        return {"bbox": metrics}


def _coco_gt_image_ids(gt_file: str) -> list:
    with open(gt_file) as f:
        return [img["id"] for img in json.load(f).get("images", [])]


def build_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None
                    ) -> DatasetEvaluator:
    """The evaluator named by ``MetadataCatalog.get(dataset_name)["evaluator_type"]`` (plus a
    per-class AP evaluator beside it when TEST.PER_CLASS_AP is set, see class_ap.py)."""
    from .class_ap import add_per_class_ap

    return add_per_class_ap(cfg, dataset_name, output_dir,
                            _build_dataset_evaluator(cfg, dataset_name, output_dir))


def crowdhuman_class_id(dataset_name: str) -> Optional[int]:
    """The class the CrowdHuman metrics score: None (every detection) for a one-class dataset,
    else the index of "person" in its ``thing_classes``.

    Raises:
        KeyError: several classes and none is "person".
    """
    classes = list(MetadataCatalog.get(dataset_name).get("thing_classes") or [])
    if len(classes) <= 1:
        return None
    names = [str(c).strip().lower() for c in classes]
    if "person" not in names:
        raise KeyError(f"dataset '{dataset_name}' is scored with the CrowdHuman metrics, which "
                       f"need its class 'person', but its classes are {classes[:8]}")
    return names.index("person")


def _build_dataset_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None
                             ) -> DatasetEvaluator:
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if kind == "crowdhuman":
        return CrowdHumanEvaluator(
            dataset_name, output_dir=output_dir,
            ji_matching=cfg_get(cfg, "TEST.JI_MATCHING"),
            plot=bool(cfg_get(cfg, "TEST.PLOT")),
            box_key=cfg_get(cfg, "DATASETS.BOX_TYPE"),
            tag_map=dict(cfg_get(cfg, "DATASETS.TAG_MAP") or {}),
            class_id=crowdhuman_class_id(dataset_name),
            coco_max_dets=int(cfg_get(cfg, "TEST.COCO_MAX_DETS"))
            if cfg_get(cfg, "TEST.COCO_METRICS") else 0)
    if kind == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_dir,
                             max_dets=int(cfg_get(cfg, "TEST.COCO_MAX_DETS")),
                             submission_name=cfg_get(cfg, "TEST.COCO_SUBMISSION_NAME"))
    builder = evaluator_builder(kind) if isinstance(kind, str) else None
    if builder is not None:  # "voc", "per_class_ap", or a type registered by the user
        return builder(cfg, dataset_name, output_dir)
    raise ValueError(f"dataset '{dataset_name}': evaluator_type = {kind!r}; expected "
                     f"'crowdhuman', 'coco' or one of {registered_evaluator_types()} (set it "
                     "with MetadataCatalog.set)")
