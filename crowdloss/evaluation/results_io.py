"""Reading and writing evaluation files: CrowdHuman odgt (GT and results), COCO results json.

GT lines are parsed by ``crowdloss.data.odgt``, the parser (and ignore rule) the data loader
uses too. Every reader validates as it parses and raises ``ValueError("<file>:<line>: ...")``
naming the problem; nothing is silently dropped. Boxes are kept in the file's xywh form here;
the metric code converts (x2 = x + w) and clips.

Shapes: M boxes of one GT image, D detections of one image.
"""
from __future__ import annotations

import json
import math
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np

from crowdloss.data.image_io import find_image, read_image_size
from crowdloss.data.odgt import OdgtImage, Source, iter_odgt, load_odgt, parse_image_size
from crowdloss.utils.io import atomic_write

__all__ = [
    "GTImage",
    "DTImage",
    "iter_odgt",
    "load_gt",
    "load_dt",
    "make_dt_record",
    "write_odgt",
    "odgt_to_coco_results",
    "odgt_to_coco_gt",
    "crowdhuman_image_ids",
    "write_json",
    "resolve_image_size",
]

GTImage = OdgtImage  # one GT odgt line (crowdloss.data.odgt)


class DTImage(NamedTuple):
    """One results line. ``boxes`` (D, 4) xywh float64, ``scores`` (D,) float64, file order."""

    image_id: str
    where: str
    height: Optional[int]
    width: Optional[int]
    boxes: np.ndarray
    scores: np.ndarray


def _box_array(boxes: List, where: str, field: str) -> np.ndarray:
    """(n, 4) float64 from a list of [x, y, w, h]; explains the first bad box otherwise.

    ``field`` names box j when formatted with j, e.g. "dtboxes[{}].box".
    """
    if not boxes:
        return np.zeros((0, 4), dtype=np.float64)
    try:
        arr = np.array(boxes)
    except ValueError:  # ragged
        arr = np.zeros((0,))
    ok = (arr.ndim == 2 and arr.shape[1] == 4 and arr.dtype.kind in "fiu")
    if ok:
        arr = arr.astype(np.float64, copy=False)
        ok = bool(np.isfinite(arr).all() and (arr[:, 2:] >= 0).all())
    if ok:
        return arr
    for j, box in enumerate(boxes):  # slow path: find and name the culprit
        good = (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(v) for v in box))
        if not good:
            raise ValueError(f"{where}: {field.format(j)} = {box!r}; expected 4 finite numbers "
                             "[x, y, w, h]")
        if box[2] < 0 or box[3] < 0:
            raise ValueError(f"{where}: {field.format(j)} = {box!r}; negative width or height")
    raise ValueError(f"{where}: {field.format('*')}: malformed boxes")  # pragma: no cover


def _parse_dt(record: dict, where: str) -> DTImage:
    if "ID" not in record:
        raise ValueError(f"{where}: missing key 'ID'")
    dtboxes = record.get("dtboxes")
    if not isinstance(dtboxes, list):
        raise ValueError(f"{where}: 'dtboxes' = {dtboxes!r}; expected a list")
    try:
        raw = [d["box"] for d in dtboxes]
        scores = [d["score"] for d in dtboxes]
    except (KeyError, TypeError):
        bad = next(j for j, d in enumerate(dtboxes)
                   if not isinstance(d, dict) or "box" not in d or "score" not in d)
        raise ValueError(f"{where}: dtboxes[{bad}] needs keys 'box' and 'score'") from None
    boxes = _box_array(raw, where, "dtboxes[{}].box")
    arr = np.array(scores) if scores else np.zeros(0)
    if arr.dtype.kind not in "fiu" or arr.ndim != 1 or not np.isfinite(arr).all():
        bad = next((j for j, s in enumerate(scores)
                    if isinstance(s, bool) or not isinstance(s, (int, float))
                    or not math.isfinite(s)), 0)
        raise ValueError(f"{where}: dtboxes[{bad}].score = {scores[bad]!r}; expected a "
                         "finite number")
    h, w = parse_image_size(record, where)
    return DTImage(str(record["ID"]), where, h, w, boxes, arr.astype(np.float64, copy=False))


def load_gt(source: Source, *, box_key: str = "fbox",
            tag_map: Optional[Mapping[str, str]] = None) -> List[GTImage]:
    """GT images in file order. ``box_key``: "fbox" (full body, the "box" mode), "vbox"...;
    ``tag_map``: extra tags -> "person" / "mask" (``DATASETS.TAG_MAP``)."""
    return load_odgt(source, box_type=box_key, tag_map=tag_map)


def load_dt(source: Source) -> Dict[str, DTImage]:
    """Results by ID. CrowdDet-style lines (extra ``gtboxes`` etc.) are accepted; extra keys
    are ignored."""
    out: Dict[str, DTImage] = {}
    for where, record in iter_odgt(source):
        img = _parse_dt(record, where)
        if img.image_id in out:
            raise ValueError(f"{where}: duplicated ID '{img.image_id}' (first at "
                             f"{out[img.image_id].where})")
        out[img.image_id] = img
    return out


def make_dt_record(image_id, height: int, width: int, boxes_xyxy: np.ndarray,
                   scores: np.ndarray) -> dict:
    """One CrowdHuman results line from xyxy detections (original image coordinates).

    Boxes are rounded to 0.01 px so that files stay small; the evaluator scores exactly
    these records, so scoring the written file gives the same numbers.
    """
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    xywh = np.round(np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1), 2)
    xywh[:, 2:] = np.maximum(xywh[:, 2:], 0.0)  # rounding must not create a negative size
    s = np.asarray(scores, dtype=np.float64).reshape(-1).tolist()
    return {"ID": str(image_id), "height": int(height), "width": int(width),
            "dtboxes": [{"box": box, "score": sc, "tag": 1}
                        for box, sc in zip(xywh.tolist(), s)]}


def write_odgt(path: str, records: Iterable[dict]) -> str:
    """One JSON object per line (the format the public CrowdHuman toolkits read)."""
    return atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))


def odgt_to_coco_results(records: Iterable[dict], *, category_id: int = 1,
                         image_ids: Optional[Mapping[str, int]] = None) -> List[dict]:
    """COCO results list ``[{image_id, category_id, bbox xywh, score}]`` from odgt records.

    Args:
        image_ids: CrowdHuman ``ID`` -> integer COCO ``image_id`` (COCO tools expect ints);
            without it the string IDs are kept.

    Raises:
        KeyError: a record's ID is missing from ``image_ids``.
    """
    def image_id(record: dict):
        if image_ids is None:
            return record["ID"]
        try:
            return image_ids[str(record["ID"])]
        except KeyError:
            raise KeyError(f"results ID '{record['ID']}' has no integer COCO image id (it is "
                           "not an image of the GT file)") from None

    return [{"image_id": image_id(r), "category_id": category_id, "bbox": d["box"],
             "score": d["score"]} for r in records for d in r["dtboxes"]]


def odgt_to_coco_gt(gt_images: Iterable[GTImage], image_ids: Mapping[str, int], *,
                    category: str = "person") -> dict:
    """A COCO GT dataset (one category, id 1) from GT odgt images, for COCO AP and oLRP.

    Valid boxes become annotations; ignore regions (``mask`` and other ignored tags) become
    ``iscrowd`` annotations, which pycocotools treats close to CrowdHuman's rule: an unmatched
    detection whose IoA with one (its share inside it) reaches the IoU threshold is neither TP
    nor FP (CrowdHuman: IoA > 0.5 at any threshold).
    Boxes stay as in the file (unclipped xywh), ``area`` = w x h; sizes missing from the odgt
    are 0 (bbox evaluation does not use them).
    """
    images, annotations = [], []
    for g in gt_images:
        image_id = image_ids[g.image_id]
        images.append({"id": image_id, "file_name": g.image_id, "height": int(g.height or 0),
                       "width": int(g.width or 0)})
        for box, valid in zip(np.asarray(g.boxes, np.float64).reshape(-1, 4), g.valid):
            w, h = float(box[2]), float(box[3])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": 1, "bbox": [float(box[0]), float(box[1]), w, h],
                                "area": w * h, "iscrowd": 0 if valid else 1})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": category}]}


def crowdhuman_image_ids(gt_images: Iterable[GTImage]) -> Dict[str, int]:
    """CrowdHuman ``ID`` -> COCO ``image_id``: the image's 1-based position in the GT odgt.

    The GT file order is the one stable numbering every tool can reproduce from the odgt
    alone; the evaluator also writes the mapping itself beside the COCO results.
    """
    return {g.image_id: k for k, g in enumerate(gt_images, 1)}


def write_json(path: str, obj, *, compact: bool = False) -> str:
    """JSON to ``path`` atomically; ``compact`` drops indentation and spaces (result files with
    tens of thousands of boxes: about half the size)."""
    if compact:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=True)
    else:
        text = json.dumps(obj, indent=1, allow_nan=True)
    return atomic_write(path, text + "\n")


SizeSource = Union[Mapping[str, Tuple[int, int]], Callable[[str], Tuple[int, int]], None]


def resolve_image_size(gt: GTImage, dt: Optional[DTImage], image_sizes: SizeSource,
                       image_root: Optional[str], *, skipped: bool = False
                       ) -> Tuple[float, float]:
    """(height, width) of a GT image, for clipping.

    The GT file's size wins; without one, the image's: ``image_sizes`` (a mapping: the sizes
    the data loader read from the image headers), else the header under ``image_root``, else
    a callable ``image_sizes``. Only when none of those exists is the detections record's size
    used. Any two sizes that disagree are an error naming the ID: a results file written for
    other images must not change the metrics silently.

    Args:
        skipped: the run could not read this image (its GT counts as missed): if no size is
            known, (inf, inf) is returned, i.e. its boxes are only clipped at 0.
    """
    known, source = None, None
    if gt.height is not None:
        known, source = (gt.height, gt.width), f"the GT file ({gt.where})"
    if isinstance(image_sizes, Mapping) and gt.image_id in image_sizes:
        size = tuple(int(v) for v in image_sizes[gt.image_id])
        if known is None:
            known, source = size, "the image (as the data loader read it)"
        elif size != known:
            raise ValueError(f"image '{gt.image_id}': {size[0]}x{size[1]} (height x width) as "
                             f"the data loader read it but {known[0]}x{known[1]} in {source}")
    if known is None and image_root is not None:
        try:
            known, source = _read_size_from_root(image_root, gt.image_id)
        except (OSError, ValueError):
            if not skipped:
                raise
    if known is None and callable(image_sizes):
        known, source = tuple(int(v) for v in image_sizes(gt.image_id)), "the image"
    if dt is not None and dt.height is not None:
        if known is None:
            return dt.height, dt.width
        if (dt.height, dt.width) != tuple(known):
            raise ValueError(f"{dt.where}: image '{gt.image_id}' is {dt.height}x{dt.width} "
                             f"(height x width) in the detections record but "
                             f"{known[0]}x{known[1]} in {source}")
    if known is not None:
        return known
    if skipped:
        return math.inf, math.inf
    raise ValueError(f"{gt.where}: image '{gt.image_id}' has no height/width in the GT file "
                     "nor in its detections record; pass --image-root to read them from the "
                     "image files")


def _read_size_from_root(image_root: str, image_id: str) -> Tuple[Tuple[int, int], str]:
    """((height, width), path) from the header of ``<image_root>/<image_id>.{jpg,png,jpeg}``."""
    path = find_image(image_root, image_id)
    return read_image_size(path), path
