"""COCO bbox evaluation through pycocotools (faster-coco-eval when installed: same numbers).

Results are fractions (AP 1.0 = perfect), like the CrowdHuman metrics; tables print percent.
``max_dets`` replaces COCO's 100 as the last ``maxDets`` entry, which the AP numbers and the
last AR use: crowds need 300+. Next to AP, the optimal LRP (moLRP and its components, IoU 0.5,
all areas, lower is better; see ``crowdloss.evaluation.lrp``) is computed from the same matching.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import zipfile
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from crowdloss.utils.io import atomic_write

from .lrp import LRP_MODES, olrp_from_cocoeval

__all__ = ["COCO_METRIC_NAMES", "coco_metric_names", "evaluate_coco", "evaluate_coco_on_odgt",
           "instances_to_coco", "write_coco_submission", "check_submission_name"]

logger = logging.getLogger(__name__)


def coco_metric_names(max_dets: int = 100) -> List[str]:
    """Names of COCOeval.stats in order, with the last AR named after ``max_dets``."""
    return ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", f"AR{max_dets}",
            "ARs", "ARm", "ARl"]


COCO_METRIC_NAMES = coco_metric_names(100)


def _coco_backend():
    """(COCO, COCOeval) classes: faster-coco-eval's C++ evaluator when installed (set
    CROWDLOSS_COCO_BACKEND=pycocotools to force the reference), else pycocotools."""
    if os.environ.get("CROWDLOSS_COCO_BACKEND", "") != "pycocotools":
        try:
            from faster_coco_eval import COCO, COCOeval_faster

            return COCO, COCOeval_faster
        except ImportError:
            pass
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def instances_to_coco(image_id, boxes_xyxy: np.ndarray, scores: np.ndarray,
                      category_ids: Sequence[int]) -> List[dict]:
    """COCO results entries ``{image_id, category_id, bbox xywh, score}`` of one image."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).round(2).tolist()
    return [{"image_id": image_id, "category_id": int(c), "bbox": box, "score": float(s)}
            for box, s, c in zip(xywh, np.asarray(scores).tolist(), category_ids)]


_SUBMISSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")


def check_submission_name(name: str, key: str = "TEST.COCO_SUBMISSION_NAME") -> str:
    """The algorithm part of ``detections_<split>_<name>_results.json``: letters, digits,
    ``.+-`` (no ``_``, which separates the fields of the name the COCO server reads)."""
    if not isinstance(name, str) or not _SUBMISSION_NAME.match(name):
        raise ValueError(f"{key} = {name!r}; expected letters, digits, '.', '+' or '-' "
                         "(no '_' or '/': the COCO server reads detections_<split>_<name>_"
                         "results.json), e.g. 'aLRPLoss'")
    return name


def write_coco_submission(results: List[dict], output_dir: str, split: str,
                          name: str) -> Tuple[str, str]:
    """Write detections for the COCO evaluation server, without scoring them.

    Args:
        results: COCO results entries (integer ``image_id`` / ``category_id``, xywh ``bbox``,
            ``score``) of every image of the split.
        output_dir: where ``detections_<split>_<name>_results.json`` and the ``.zip`` holding
            it (what the server takes) are written.
        split: the server's name of the split, e.g. "test-dev2017".
        name: the algorithm name (``check_submission_name``).

    Returns:
        (json path, zip path).
    """
    check_submission_name(name)
    for i, r in enumerate(results):
        for key in ("image_id", "category_id"):
            value = r.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"COCO submission results[{i}]: {key} = {value!r}; the server "
                                 "needs integer ids (the dataset's own image ids)")
    stem = f"detections_{split}_{name}_results"
    text = json.dumps([dict(r, image_id=int(r["image_id"]), category_id=int(r["category_id"]))
                       for r in results])
    json_path = atomic_write(os.path.join(output_dir, stem + ".json"), text)

    def write_zip(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr(stem + ".json", text)

    zip_path = atomic_write(os.path.join(output_dir, stem + ".zip"), write_zip)
    return json_path, zip_path


def evaluate_coco(gt_json: Union[str, os.PathLike], results: Union[str, List[dict]], *,
                  max_dets: int = 100, lrp_mode: str = "lrp_error") -> Dict[str, float]:
    """COCO bbox metrics of ``results`` (a list or a results json path) against ``gt_json``.

    Args:
        lrp_mode: "lrp_error" (oLRP over every position of the score-sorted list, default) or
            "threshold_scan" (score thresholds 0, 0.01, ..., 1, the 2018 code).

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR<max_dets>", "ARs",
        "ARm", "ARl", "moLRP", "moLRP_loc", "moLRP_FP", "moLRP_FN"} as fractions; NaN where
        COCOeval reports -1 (no GT of that size) and where an LRP component is undefined (no
        GT at all; moLRP_loc / moLRP_FP with no TP). With no detection every AP / AR is 0 and
        moLRP = moLRP_FN = 1.
    """
    if int(max_dets) < 10:
        raise ValueError(f"max_dets = {max_dets}; expected >= 10 (COCO also reports AR1/AR10)")
    if lrp_mode not in LRP_MODES:
        raise ValueError(f"lrp_mode = {lrp_mode!r}; expected one of {LRP_MODES}")
    names = coco_metric_names(int(max_dets))
    gt_json = os.fspath(gt_json)
    if not os.path.isfile(gt_json):
        raise FileNotFoundError(f"COCO GT json not found: {gt_json}")
    if isinstance(results, (str, os.PathLike)):
        import json

        with open(results) as f:
            results = json.load(f)
    COCO, COCOeval = _coco_backend()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        coco_gt = COCO(gt_json)
    known = set(coco_gt.getImgIds())
    for i, r in enumerate(results):
        if r.get("image_id") not in known:
            raise ValueError(f"COCO results[{i}]: image_id {r.get('image_id')!r} is not in "
                             f"{gt_json}")
    if not results:
        logger.warning("COCO evaluation: no detections; every AP / AR is 0, moLRP 1")
        metrics = {k: 0.0 for k in names}
        metrics.update(_olrp(coco_gt, None, int(max_dets), lrp_mode))
        return metrics
    with contextlib.redirect_stdout(log):
        coco_dt = coco_gt.loadRes(list(results))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
    stats = _stats(ev.eval, ev.params)
    metrics = {k: (float("nan") if v < 0 else float(v)) for k, v in zip(names, stats)}
    metrics.update(_olrp(coco_gt, coco_dt, int(max_dets), lrp_mode, ev=ev))
    logger.debug("COCO evaluation (maxDets %d): %s", max_dets,
                 ", ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items()))
    return metrics


def evaluate_coco_on_odgt(gt_images: Sequence, records: Sequence[dict], *,
                          output_dir: Union[str, os.PathLike, None] = None,
                          max_dets: int = 100) -> Dict[str, float]:
    """COCO AP / AR and oLRP of CrowdHuman results ``records`` (odgt lines) against GT odgt
    images (``results_io.load_gt``): the same detections the CrowdHuman metrics score, with
    COCO's rules (ignore regions as ``iscrowd``; ``results_io.odgt_to_coco_gt``).

    With ``output_dir`` the converted GT (``coco_gt.json``) and the metrics
    (``coco_metrics.json``) are written there, so the numbers can be recomputed from the files.
    """
    import tempfile

    from .results_io import (crowdhuman_image_ids, odgt_to_coco_gt, odgt_to_coco_results,
                             write_json)

    image_ids = crowdhuman_image_ids(gt_images)
    results = odgt_to_coco_results(records, image_ids=image_ids)
    gt = odgt_to_coco_gt(gt_images, image_ids)
    if output_dir:
        path = write_json(os.path.join(output_dir, "coco_gt.json"), gt, compact=True)
        metrics = evaluate_coco(path, results, max_dets=max_dets)
        write_json(os.path.join(output_dir, "coco_metrics.json"), metrics)
        return metrics
    with tempfile.TemporaryDirectory() as tmp:
        path = write_json(os.path.join(tmp, "coco_gt.json"), gt, compact=True)
        return evaluate_coco(path, results, max_dets=max_dets)


def _olrp(coco_gt, coco_dt, max_dets: int, mode: str, ev=None) -> Dict[str, float]:
    """moLRP and its components at IoU 0.5 over all areas, from pycocotools' matching.

    Reuses ``ev`` when it is pycocotools' COCOeval (it keeps the per-image matching and IoUs);
    otherwise (faster-coco-eval) runs pycocotools' evaluate() once more. ``coco_dt = None``
    evaluates an empty detection list (which pycocotools' loadRes cannot load).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        if coco_dt is None:
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                               "categories": list(coco_gt.dataset.get("categories", [])),
                               "annotations": []}
            coco_dt.createIndex()
        if type(ev) is not COCOeval:
            ev = COCOeval(coco_gt, coco_dt, "bbox")
            ev.params.maxDets = [1, 10, int(max_dets)]
            ev.evaluate()
    return olrp_from_cocoeval(ev, iou_threshold=0.5, area="all", mode=mode).summary()


def _stats(ev: dict, params) -> List[float]:
    """COCOeval.summarize's 12 numbers, computed from the accumulated arrays.

    summarize() hard-codes maxDets=100 for the first AP, so with maxDets [1, 10, 300] it
    reports -1; here every AP uses the last maxDets entry, like the rest of summarize.
    """
    def mean_valid(a: np.ndarray) -> float:
        a = a[a > -1]
        return float(a.mean()) if a.size else -1.0

    areas = list(params.areaRngLbl)
    last = len(params.maxDets) - 1
    iou = np.asarray(params.iouThrs)
    prec, rec = ev["precision"], ev["recall"]  # (T, R, K, A, M), (T, K, A, M)

    def ap(thr=None, area="all"):
        p = prec[..., areas.index(area), last]
        return mean_valid(p if thr is None else p[np.flatnonzero(np.isclose(iou, thr))])

    def ar(m, area="all"):
        return mean_valid(rec[..., areas.index(area), m])

    return [ap(), ap(0.5), ap(0.75), ap(area="small"), ap(area="medium"), ap(area="large"),
            ar(0), ar(1), ar(last), ar(last, "small"), ar(last, "medium"), ar(last, "large")]
