"""Reading and writing evaluation files: CrowdHuman odgt (GT and results), COCO results json.

Every reader validates as it parses and raises ``ValueError("<file>:<line>: ...")`` naming
the problem; nothing is silently dropped. Boxes are kept in the file's xywh form here; the
metric code converts (x2 = x + w) and clips.

Shapes: M boxes of one GT image, D detections of one image.
"""
from __future__ import annotations

import json
import math
import os
from typing import (Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional,
                    Tuple, Union)

import numpy as np

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
    "crowdhuman_image_ids",
    "write_json",
    "resolve_image_size",
]

Source = Union[str, os.PathLike, Iterable[dict]]


class GTImage(NamedTuple):
    """One GT odgt line. ``boxes`` (M, 4) xywh float64 in file order, ``valid`` bool (M,)."""

    image_id: str
    where: str
    height: Optional[int]
    width: Optional[int]
    boxes: np.ndarray
    valid: np.ndarray


class DTImage(NamedTuple):
    """One results line. ``boxes`` (D, 4) xywh float64, ``scores`` (D,) float64, file order."""

    image_id: str
    where: str
    height: Optional[int]
    width: Optional[int]
    boxes: np.ndarray
    scores: np.ndarray


def iter_odgt(source: Source) -> Iterator[Tuple[str, dict]]:
    """Yield ``(where, record)`` for each non-blank line; ``where`` is ``"file:line"``."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"odgt file not found: {path}")
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not a JSON object ({e.msg} at column "
                                     f"{e.colno})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{where}: expected a JSON object, got "
                                     f"{type(record).__name__}")
                yield where, record
    else:
        for i, record in enumerate(source):
            where = f"<records>[{i}]"
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a dict, got {type(record).__name__}")
            yield where, record


def _image_size(record: dict, where: str) -> Tuple[Optional[int], Optional[int]]:
    if "height" not in record and "width" not in record:
        return None, None
    h, w = record.get("height"), record.get("width")
    for name, v in (("height", h), ("width", w)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{where}: '{name}' = {v!r}; expected a positive number "
                             "(give both height and width, or neither)")
    return int(h), int(w)


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


def _parse_gt(record: dict, where: str, box_key: str) -> GTImage:
    if "ID" not in record:
        raise ValueError(f"{where}: missing key 'ID'")
    gtboxes = record.get("gtboxes")
    if not isinstance(gtboxes, list):
        raise ValueError(f"{where}: 'gtboxes' = {gtboxes!r}; expected a list")
    raw, valid = [], []
    for j, gt in enumerate(gtboxes):
        if not isinstance(gt, dict) or "tag" not in gt or box_key not in gt:
            raise ValueError(f"{where}: gtboxes[{j}] needs keys 'tag' and '{box_key}'")
        extra = gt.get("extra") or {}
        # Valid = a person not flagged ignore; masks and ignored persons are ignore regions.
        valid.append(gt["tag"] == "person" and not extra.get("ignore", 0))
        raw.append(gt[box_key])
    boxes = _box_array(raw, where, "gtboxes[{}]." + box_key)
    h, w = _image_size(record, where)
    return GTImage(str(record["ID"]), where, h, w, boxes, np.array(valid, dtype=bool))


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
    h, w = _image_size(record, where)
    return DTImage(str(record["ID"]), where, h, w, boxes, arr.astype(np.float64, copy=False))


def load_gt(source: Source, *, box_key: str = "fbox") -> List[GTImage]:
    """GT images in file order. ``box_key``: "fbox" (full body, the "box" mode), "vbox"..."""
    images, seen = [], {}
    for where, record in iter_odgt(source):
        img = _parse_gt(record, where, box_key)
        if img.image_id in seen:
            raise ValueError(f"{where}: duplicated ID '{img.image_id}' (first at "
                             f"{seen[img.image_id]})")
        seen[img.image_id] = where
        images.append(img)
    return images


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
                       image_root: Optional[str]) -> Tuple[int, int]:
    """(height, width) of a GT image, for clipping.

    Order: the GT file, ``image_sizes`` (the evaluator's inputs), the detections record,
    the image header under ``image_root``, a callable ``image_sizes``; else an error naming
    the ID.
    """
    if gt.height is not None:
        return gt.height, gt.width
    if isinstance(image_sizes, Mapping) and gt.image_id in image_sizes:
        h, w = image_sizes[gt.image_id]
        return int(h), int(w)
    if dt is not None and dt.height is not None:
        return dt.height, dt.width
    if image_root is not None:
        return _read_size_from_root(image_root, gt.image_id)
    if callable(image_sizes):
        return tuple(int(v) for v in image_sizes(gt.image_id))
    raise ValueError(f"{gt.where}: image '{gt.image_id}' has no height/width in the GT file "
                     "nor in its detections record; pass --image-root to read them from the "
                     "image files")


def _read_size_from_root(image_root: str, image_id: str) -> Tuple[int, int]:
    try:  # the data module's header reader (JPEG SOF / PNG IHDR), when present
        from crowdloss.data.crowdhuman import read_image_size
    except ImportError:  # pragma: no cover - data module not installed
        read_image_size = None
    for ext in (".jpg", ".png", ".jpeg"):
        path = os.path.join(image_root, image_id + ext)
        if os.path.isfile(path):
            if read_image_size is not None:
                return read_image_size(path)
            from PIL import Image  # pragma: no cover

            with Image.open(path) as im:  # pragma: no cover
                return im.height, im.width
    raise FileNotFoundError(f"image '{image_id}' not found under {image_root} "
                            "(tried .jpg, .png, .jpeg)")
