"""CrowdHuman ``.odgt`` GT files: the one parser, used by the data loader and the evaluator.

One JSON object per line::

    {"ID": "273271,c9db000d5146c15", "gtboxes": [{"tag": "person" | "mask",
      "fbox": [x, y, w, h], "vbox": [...], "hbox": [...], "extra": {"ignore": 0, "occ": 1}}],
     "height": 600, "width": 800}          # height/width optional (absent in the official files)

The ignore rule, written once here: a box is a valid person when its tag is "person" and
``extra.ignore`` is 0 or absent; every other box ("mask" crowd regions, ignored persons) is an
ignore region. Any other tag is an error, because a typo ("persn") would otherwise silently
become an ignore region; ``tag_map`` (``DATASETS.TAG_MAP``) maps extra tags to "person" or
"mask" explicitly, and each mapping used is logged with its count. An ignore region without
the requested box type (a "mask" given only as ``fbox``, say) uses its ``fbox``; a valid person
without it is an error.

A box must be 4 finite numbers with width and height >= 0; anything else, NaN and Infinity
included (Python's json reads them), is an error naming ``file:line gtboxes[j]``. Boxes are
kept in file order, unclipped: the loader clips and drops, the evaluator clips its own way.

Shapes: M boxes of one image. numpy only (the evaluation command does not import torch).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from typing import Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np

__all__ = ["BOX_TYPES", "ODGT_TAGS", "OdgtImage", "Source", "iter_odgt", "parse_odgt_image",
           "load_odgt", "check_tag_map", "parse_image_size"]

logger = logging.getLogger(__name__)

BOX_TYPES = ("fbox", "vbox", "hbox")
ODGT_TAGS = ("person", "mask")

Source = Union[str, os.PathLike, Iterable[dict]]


class OdgtImage(NamedTuple):
    """One GT line. ``boxes`` (M, 4) xywh float64 and ``valid`` bool (M,), in file order."""

    image_id: str
    where: str
    height: Optional[int]
    width: Optional[int]
    boxes: np.ndarray
    valid: np.ndarray


def iter_odgt(source: Source) -> Iterator[Tuple[str, dict]]:
    """``(where, record)`` for each non-blank line of a file (``where`` = "file:line"), or
    for each dict of an iterable (``where`` = "<records>[i]")."""
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


def check_tag_map(tag_map: Optional[Mapping[str, str]]) -> Dict[str, str]:
    """Validate ``DATASETS.TAG_MAP``: {tag in the file: "person" | "mask"}."""
    out = dict(tag_map or {})
    for tag, target in out.items():
        if target not in ODGT_TAGS:
            raise ValueError(f"DATASETS.TAG_MAP['{tag}'] = {target!r}; expected 'person' (a "
                             "valid box) or 'mask' (an ignore region)")
    return out


def parse_image_size(record: dict, where: str) -> Tuple[Optional[int], Optional[int]]:
    """(height, width) of a line, (None, None) when it has neither; positive integers."""
    if "height" not in record and "width" not in record:
        return None, None
    h, w = record.get("height"), record.get("width")
    for name, v in (("height", h), ("width", w)):
        if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                or v <= 0 or v != int(v)):
            raise ValueError(f"{where}: '{name}' = {v!r}; expected a positive integer "
                             "(give both height and width, or neither)")
    return int(h), int(w)


_JSON_NUMBERS = frozenset((int, float))  # bool is a subclass of int, not int itself


def _real(v) -> bool:
    """An int or float (numpy's too), not a bool; finiteness is checked on the array."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def parse_odgt_image(record: dict, where: str, *, box_type: str = "fbox",
                     tag_map: Optional[Mapping[str, str]] = None,
                     stats: Optional[Counter] = None) -> OdgtImage:
    """One GT line -> :class:`OdgtImage` (the rules are in the module docstring).

    Args:
        tag_map: extra tags -> "person" / "mask" (validated by the caller with
            :func:`check_tag_map`).
        stats: if given, counts ``("tag", tag)`` for mapped tags and ``"fbox_fallback"``.
    """
    if "ID" not in record:
        raise ValueError(f"{where}: missing key 'ID'")
    image_id = record["ID"]
    if isinstance(image_id, bool) or not isinstance(image_id, (str, int)):
        raise ValueError(f"{where}: 'ID' = {image_id!r}; expected a string")
    gtboxes = record.get("gtboxes")
    if not isinstance(gtboxes, list):
        raise ValueError(f"{where}: 'gtboxes' = {gtboxes!r}; expected a list of boxes")
    tag_map = tag_map or {}
    boxes, keys, valid = [], [], []
    for j, gt in enumerate(gtboxes):
        gwhere = f"{where} gtboxes[{j}]"
        if not isinstance(gt, dict) or "tag" not in gt:
            raise ValueError(f"{gwhere}: expected an object with a 'tag', got {gt!r:.80}")
        tag = gt["tag"]
        if tag not in ODGT_TAGS:
            if not isinstance(tag, str) or tag not in tag_map:
                raise ValueError(f"{gwhere}: unknown tag {tag!r}; expected 'person' or 'mask' "
                                 "(map other tags with DATASETS.TAG_MAP, e.g. "
                                 f"{{{tag!r}: 'mask'}})")
            if stats is not None:
                stats[("tag", tag)] += 1
            tag = tag_map[tag]
        extra = gt.get("extra")
        if extra is None:
            extra = {}
        if not isinstance(extra, dict):
            raise ValueError(f"{gwhere}: 'extra' = {extra!r}; expected an object")
        flag = extra.get("ignore", 0)
        if flag not in (0, 1):  # also accepts True / False / 0.0 / 1.0
            raise ValueError(f"{gwhere}: extra.ignore = {flag!r}; expected 0 or 1")
        is_valid = tag == "person" and not flag
        key = box_type
        if box_type not in gt and not is_valid and "fbox" in gt:
            key = "fbox"
            if stats is not None:
                stats["fbox_fallback"] += 1
        box = gt.get(key)
        # exact-type test first: this loop runs ~100k times for a CrowdHuman val file
        if not (type(box) in (list, tuple) and len(box) == 4
                and ((type(box[0]) in _JSON_NUMBERS and type(box[1]) in _JSON_NUMBERS
                      and type(box[2]) in _JSON_NUMBERS and type(box[3]) in _JSON_NUMBERS)
                     or all(map(_real, box)))):
            raise ValueError(f"{gwhere}: '{key}' = {box!r}; expected 4 finite numbers "
                             "[x, y, w, h]")
        boxes.append(box)
        keys.append(key)
        valid.append(is_valid)
    arr = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    bad = ~np.isfinite(arr).all(axis=1) | (arr[:, 2] < 0) | (arr[:, 3] < 0)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        problem = ("expected 4 finite numbers [x, y, w, h]" if not np.isfinite(arr[j]).all()
                   else "negative width or height")
        raise ValueError(f"{where} gtboxes[{j}]: '{keys[j]}' = {boxes[j]!r}; {problem}")
    h, w = parse_image_size(record, where)
    return OdgtImage(str(image_id), where, h, w, arr, np.array(valid, dtype=bool))


def load_odgt(source: Source, *, box_type: str = "fbox",
              tag_map: Optional[Mapping[str, str]] = None) -> List[OdgtImage]:
    """Every GT line of ``source`` in file order; duplicated IDs are an error.

    Logs how many boxes each ``tag_map`` entry mapped and how many ignore regions fell back to
    ``fbox``.
    """
    if box_type not in BOX_TYPES:
        raise ValueError(f"box type must be one of {BOX_TYPES}, got {box_type!r}")
    tag_map = check_tag_map(tag_map)
    stats: Counter = Counter()
    images, seen = [], {}
    for where, record in iter_odgt(source):
        img = parse_odgt_image(record, where, box_type=box_type, tag_map=tag_map, stats=stats)
        if img.image_id in seen:
            raise ValueError(f"{where}: duplicated ID '{img.image_id}' (first at "
                             f"{seen[img.image_id]})")
        seen[img.image_id] = where
        images.append(img)
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<records>"
    for key, n in sorted(stats.items(), key=str):
        if key == "fbox_fallback":
            logger.info("%s: %d ignore regions have no '%s'; their 'fbox' is used", name, n,
                        box_type)
        else:
            logger.info("%s: tag '%s' -> '%s': %d boxes (DATASETS.TAG_MAP)", name, key[1],
                        tag_map[key[1]], n)
    return images
