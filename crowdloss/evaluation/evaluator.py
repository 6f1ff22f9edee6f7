"""Evaluator plumbing shared by ``pods_test`` and the eval hook (docs/internals.md).

A ``DatasetEvaluator`` collects per-image predictions in ``process``; ``evaluate`` gathers
them to rank 0 (``crowdloss.utils.comm.gather``), which scores them once, writes the result
files under ``output_dir`` and returns ``{task: {metric: value}}``; other ranks return ``{}``.
"""
from __future__ import annotations

import datetime
import itertools
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from crowdloss.config.access import cfg_get
from crowdloss.data.catalog import MetadataCatalog
from crowdloss.utils import comm

from .coco import evaluate_coco, instances_to_coco
from .crowdhuman import evaluate_crowdhuman, format_results
from .results_io import load_dt, make_dt_record, odgt_to_coco_results, write_json, write_odgt

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "CrowdHumanEvaluator", "COCOEvaluator",
           "build_evaluator", "inference_on_dataset", "print_csv_format"]

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Base class: ``reset()``, then ``process(inputs, outputs)`` per batch, then
    ``evaluate()``."""

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
    toolkits), ``coco_instances_results.json``, ``metrics.json`` and, with ``plot``,
    ``mr_fppi.png`` / ``precision_recall.png``.
    """

    def __init__(self, dataset_name: str, *, output_dir: Optional[str] = None,
                 distributed: bool = True, ji_matching: str = "weight", plot: bool = True,
                 box_key: str = "fbox"):
        meta = MetadataCatalog.get(dataset_name)
        if not meta.get("gt_file"):
            raise KeyError(f"MetadataCatalog['{dataset_name}'] has no 'gt_file' (the GT odgt "
                           "the CrowdHuman evaluator scores against)")
        self._name, self._gt_file = dataset_name, meta["gt_file"]
        # GT images the run did not predict (skipped as unreadable, say) still need a size
        # when the odgt has none: their headers under image_root give it.
        self._image_root = meta.get("image_root")
        self._output_dir, self._distributed = output_dir, distributed
        self._ji_matching, self._plot, self._box_key = ji_matching, plot, box_key
        self.reset()

    def reset(self) -> None:
        self._records: List[dict] = []
        self.result = None  # the last CrowdHumanResult (counts, curves) on rank 0

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            boxes, scores, _ = _predictions(out)
            self._records.append(make_dt_record(inp["image_id"], inp["height"], inp["width"],
                                                boxes, scores))

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        records = _gather_to_main(self._records, self._distributed)
        if records is None:
            return {}
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            write_odgt(os.path.join(self._output_dir, "crowdhuman_results.odgt"), records)
            write_json(os.path.join(self._output_dir, "coco_instances_results.json"),
                       odgt_to_coco_results(records))
        # The inputs' sizes come second after the GT file's (docs/metrics.md "Inputs").
        sizes = {r["ID"]: (r["height"], r["width"]) for r in records}
        result = evaluate_crowdhuman(self._gt_file, load_dt(records), box_key=self._box_key,
                                     ji_matching=self._ji_matching, image_sizes=sizes,
                                     image_root=self._image_root)
        if len(records) != result.counts["images"]:
            logger.warning("%s: %d images predicted, the GT file has %d (the rest count as "
                           "images without detections)", self._name, len(records),
                           result.counts["images"])
        logger.info("Evaluation results for %s:\n%s", self._name, format_results(result))
        if self._output_dir:
            # The GT file goes along, so that the scores can be recomputed from these files
            # alone (e.g. by the benchmark's bootstrap) whatever the environment is later.
            write_json(os.path.join(self._output_dir, "metrics.json"),
                       {**result.to_dict(), "gt_file": os.fspath(self._gt_file)})
            if self._plot:
                from .plots import plot_crowdhuman

                plot_crowdhuman(result, self._output_dir, label=self._name)
        self.result = result
        return {"crowdhuman": dict(result.metrics)}


class COCOEvaluator(DatasetEvaluator):
    """COCO bbox AP/AR via pycocotools against the dataset's GT json (``gt_file``)."""

    def __init__(self, dataset_name: str, *, output_dir: Optional[str] = None,
                 max_dets: int = 100, distributed: bool = True):
        meta = MetadataCatalog.get(dataset_name)
        if not meta.get("gt_file"):
            raise KeyError(f"MetadataCatalog['{dataset_name}'] has no 'gt_file' (the COCO "
                           "json the evaluator scores against)")
        self._name, self._gt_file = dataset_name, meta["gt_file"]
        self._id_map = meta.get("contiguous_id_to_thing_dataset_id")
        self._output_dir, self._max_dets, self._distributed = output_dir, max_dets, distributed
        self.reset()

    def reset(self) -> None:
        self._results: List[dict] = []

    def _category_ids(self, classes: np.ndarray) -> List[int]:
        if self._id_map is None:  # read the map from the GT once: sorted ids -> 0..K-1
            import json

            with open(self._gt_file) as f:
                cats = sorted(c["id"] for c in json.load(f)["categories"])
            self._id_map = dict(enumerate(cats))
        try:
            return [self._id_map[int(c)] for c in classes]
        except KeyError as e:
            raise KeyError(f"{self._name}: predicted class {e.args[0]} has no COCO category "
                           f"(known contiguous ids: {sorted(self._id_map)})") from None

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            boxes, scores, classes = _predictions(out)
            self._results.extend(instances_to_coco(inp["image_id"], boxes, scores,
                                                   self._category_ids(classes)))

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        results = _gather_to_main(self._results, self._distributed)
        if results is None:
            return {}
        if self._output_dir:
            write_json(os.path.join(self._output_dir, "coco_instances_results.json"), results)
        metrics = evaluate_coco(self._gt_file, results, max_dets=self._max_dets)
        if self._output_dir:
            write_json(os.path.join(self._output_dir, "metrics.json"), metrics)
        return {"bbox": metrics}


def build_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None
                    ) -> DatasetEvaluator:
    """The evaluator named by ``MetadataCatalog.get(dataset_name)["evaluator_type"]``."""
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if kind == "crowdhuman":
        return CrowdHumanEvaluator(
            dataset_name, output_dir=output_dir,
            ji_matching=cfg_get(cfg, "TEST.JI_MATCHING", "weight"),
            plot=bool(cfg_get(cfg, "TEST.PLOT", True)),
            box_key=cfg_get(cfg, "DATASETS.BOX_TYPE", "fbox"))
    if kind == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_dir,
                             max_dets=int(cfg_get(cfg, "TEST.COCO_MAX_DETS", 100)))
    raise ValueError(f"dataset '{dataset_name}': evaluator_type = {kind!r}; expected "
                     "'crowdhuman' or 'coco' (set it with MetadataCatalog.set)")


def inference_on_dataset(model: torch.nn.Module, data_loader, evaluator) -> dict:
    """Run ``model`` in eval mode over ``data_loader`` feeding ``evaluator``; returns its
    results (``{}`` on ranks other than 0). The model's training flag is restored."""
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, (list, tuple)):
        evaluator = DatasetEvaluators(evaluator)
    try:
        total = len(data_loader)
    except TypeError:
        total = None
    logger.info("Start inference on %s batches", total if total is not None else "?")
    evaluator.reset()
    num_warmup = min(5, total - 1) if total else 0
    start = time.perf_counter()
    compute_time, counted, last_log = 0.0, 0, start
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for idx, inputs in enumerate(data_loader):
                if idx == num_warmup:  # the first batches pay for allocator/cudnn warm-up
                    start, compute_time, counted = time.perf_counter(), 0.0, 0
                tic = time.perf_counter()
                outputs = model(inputs)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                compute_time += time.perf_counter() - tic
                counted += 1
                evaluator.process(inputs, outputs)
                now = time.perf_counter()
                if now - last_log > 10 and total:
                    eta = (now - start) / max(counted, 1) * (total - idx - 1)
                    logger.info("Inference done %d/%d. %.4f s / batch. ETA=%s", idx + 1,
                                total, compute_time / max(counted, 1),
                                datetime.timedelta(seconds=int(eta)))
                    last_log = now
    finally:
        model.train(training)
    wall = time.perf_counter() - start
    logger.info("Total inference time: %s (%.6f s / batch per device, on %d devices); pure "
                "compute %.6f s / batch", datetime.timedelta(seconds=int(wall)),
                wall / max(counted, 1), comm.get_world_size(), compute_time / max(counted, 1))
    results = evaluator.evaluate()
    return results if results is not None else {}


def print_csv_format(results: Dict[str, Dict[str, float]]) -> str:
    """Log (and return) the copy-paste lines: per task, the metric names then the values."""
    lines = []
    for task, metrics in results.items():
        if not isinstance(metrics, dict):
            continue
        lines.append(f"copypaste: Task: {task}")
        lines.append("copypaste: " + ",".join(metrics))
        lines.append("copypaste: " + ",".join(f"{float(v):.4f}" for v in metrics.values()))
    text = "\n".join(lines)
    if text:
        logger.info("\n%s", text)
    return text
