"""Writing pytorch-retinanet CSV files: CrowdHuman odgt -> annotations, names -> class map.

What the CrowdHuman seed's ``build_annotations_file.py --dataset crowd_human`` and
``build_class_mapping_file.py`` do, as functions (the command is
``python -m crowdloss.tools.build_csv``; the reader is ``crowdloss.data.csv``).

What the annotations contain (one row per box, ``path,x1,y1,x2,y2,class``):

- ``person``: the full-body box ``fbox`` of every valid person (``--person-box vbox``: the
  visible box, which is what the seed wrote as "person");
- ``head``: the ``hbox`` of every valid person whose ``head_attr.ignore`` is not 1 (``--no-head``
  leaves heads out);
- ignore regions (crowd ``mask`` boxes, persons with ``extra.ignore`` 1, their heads, ignored
  heads), by ``--ignore``: ``drop`` (default; pytorch-retinanet has no ignore regions, so
  they are left out and the model sees them as background), ``seed`` (what the seed did: every
  ``person``-tagged box and its head written as an ordinary object, masks dropped) or ``class``
  (written with the class ``--ignore-class``, default "ignore": crowdloss reads them as ignore
  regions with ``DATASETS.CSV.IGNORE_CLASS``; pytorch-retinanet would need the name in its
  class map and would learn it as a class);
- images without a box get the row ``path,,,,,`` (the seed left them out).

Boxes are clipped to the image (size from the odgt or the image header, cached in
``<odgt>.sizes.json`` as the loader does); boxes with no area left are dropped and counted.
``--integer`` rounds coordinates (pytorch-retinanet's reader accepts only integers; CrowdHuman's
are integers already) and drops boxes rounding to no area. Paths are written relative to the
CSV's folder (what ``DATASETS.CSV`` resolves them against), or absolute with
``--paths absolute`` (what pytorch-retinanet, which opens them from its working directory,
reads from anywhere). A summary of what was written and dropped is printed and returned.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from crowdloss.utils.io import atomic_write

from .boxes import clip_and_drop
from .coco import COCO_CLASSES, COCO_DARKNET_ALIASES
from .image_io import ImageCheckCache
from .odgt import check_tag_map, iter_odgt, parse_odgt_image

__all__ = ["IGNORE_POLICIES", "BuildSummary", "build_crowdhuman_csv", "build_class_map",
           "read_names_file", "coco_names"]

logger = logging.getLogger(__name__)

IGNORE_POLICIES = ("drop", "seed", "class")


class BuildSummary(NamedTuple):
    """What a build wrote and dropped (``dropped`` keys name the reason)."""

    out: str
    images: int
    empty_images: int
    written: Counter    # class name -> rows
    dropped: Counter    # reason -> boxes

    def text(self) -> str:
        written = ", ".join(f"{n} {c}" for c, n in self.written.items()) or "no boxes"
        dropped = ", ".join(f"{n} {r}" for r, n in self.dropped.items()) or "nothing"
        return (f"wrote {self.out}: {self.images} images ({self.empty_images} without objects, "
                f"as 'path,,,,,' rows), {written}; dropped: {dropped}")


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def build_crowdhuman_csv(odgt_file: str, image_root: str, out_csv: str, *,
                         person_box: str = "fbox", heads: bool = True, ignore: str = "drop",
                         ignore_class: str = "ignore", paths: str = "relative",
                         delimiter: str = ",", integer: bool = False,
                         tag_map: Optional[Dict[str, str]] = None) -> BuildSummary:
    """Write the annotations CSV of a CrowdHuman-format odgt (rules in the module docstring).

    Raises:
        ValueError / FileNotFoundError: a malformed odgt line or a missing image, naming the
            odgt line; nothing is written then.
    """
    if person_box not in ("fbox", "vbox"):
        raise ValueError(f"person box must be 'fbox' or 'vbox', got {person_box!r}")
    if ignore not in IGNORE_POLICIES:
        raise ValueError(f"ignore policy must be one of {IGNORE_POLICIES}, got {ignore!r}")
    if paths not in ("relative", "absolute"):
        raise ValueError(f"paths must be 'relative' or 'absolute', got {paths!r}")
    odgt_file, image_root, out_csv = map(os.fspath, (odgt_file, image_root, out_csv))
    tag_map = check_tag_map(tag_map)
    out_dir = os.path.dirname(os.path.abspath(out_csv))
    cache = ImageCheckCache(odgt_file, image_root)
    written: Counter = Counter()
    dropped: Counter = Counter()
    rows: List[List[str]] = []
    images = empty = 0
    for where, record in iter_odgt(odgt_file):
        body = parse_odgt_image(record, where, box_type=person_box, tag_map=tag_map)
        head = parse_odgt_image(record, where, box_type="hbox", tag_map=tag_map) if heads else None
        try:
            path, (h, w) = cache.check(body.image_id)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{where}: {e}") from None
        boxes, names = [], []
        for j, gt in enumerate(record["gtboxes"]):
            tag = tag_map.get(gt["tag"], gt["tag"])
            is_person = tag == "person"
            entries = [(body.boxes[j], "person", bool(body.valid[j]),
                        "ignored persons" if is_person else "crowd (mask) regions")]
            if head is not None and is_person:
                attr = gt.get("head_attr") or {}
                head_ok = bool(head.valid[j]) and attr.get("ignore", 0) in (0, None)
                entries.append((head.boxes[j], "head", head_ok, "ignored heads"))
            for box, name, valid, reason in entries:
                if not valid:
                    if ignore == "drop" or (ignore == "seed" and not is_person):
                        dropped[reason] += 1
                        continue
                    if ignore == "class":
                        name = ignore_class
                boxes.append(box)
                names.append(name)
        xyxy = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        xyxy[:, 2:] += xyxy[:, :2]
        xyxy, names, num_clipped = clip_and_drop(xyxy, h, w, names, where=where)
        if num_clipped:
            dropped["boxes with no area inside the image"] += num_clipped
        if integer:
            xyxy = np.floor(xyxy + 0.5)
            ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
            if not ok.all():
                dropped["boxes rounding to no area (--integer)"] += int((~ok).sum())
                xyxy, names = xyxy[ok], [n for n, k in zip(names, ok) if k]
        shown = os.path.abspath(path) if paths == "absolute" else os.path.relpath(path, out_dir)
        images += 1
        if not len(names):
            empty += 1
            rows.append([shown, "", "", "", "", ""])
        for box, name in zip(xyxy.tolist(), names):
            rows.append([shown, *map(_number, box), name])
            written[name] += 1
    cache.save()
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows(rows)
    atomic_write(out_csv, buf.getvalue())
    summary = BuildSummary(out_csv, images, empty, written, dropped)
    logger.info("%s", summary.text())
    return summary


def read_names_file(path: str) -> List[str]:
    """One class name a line (surrounding blanks and Windows line ends removed; trailing empty
    lines ignored). An empty line inside, or a name given twice, is an error naming the line."""
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f]
    while names and not names[-1]:
        names.pop()
    seen: Dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if not name:
            raise ValueError(f"{path}:{i}: empty line inside the names (ids would shift)")
        if name in seen:
            raise ValueError(f"{path}:{i}: class {name!r} repeats line {seen[name]}")
        seen[name] = i
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def coco_names(spelling: str = "official") -> List[str]:
    """COCO's 80 names in category-id order; "darknet" spells six of them as darknet's
    coco.names (and so the seed's coco_names_with_head.txt) does: motorbike, aeroplane, sofa,
    pottedplant, diningtable, tvmonitor."""

    if spelling == "official":
        return list(COCO_CLASSES)
    if spelling != "darknet":
        raise ValueError(f"COCO spelling must be 'official' or 'darknet', got {spelling!r}")
    darknet = {v: k for k, v in COCO_DARKNET_ALIASES.items()}
    return [darknet.get(n, n) for n in COCO_CLASSES]


def build_class_map(names: Sequence[str], out_csv: str, *, delimiter: str = ",") -> List[str]:
    """Write ``name,id`` rows, ids 0..K-1 in the order given (the seed's builder numbers the
    lines of its names file the same way)."""
    names = list(names)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"class names repeat: {dup}")
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows(
        [name, i] for i, name in enumerate(names))
    atomic_write(out_csv, buf.getvalue())
    return names
