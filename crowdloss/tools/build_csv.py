"""Build pytorch-retinanet CSV files: CrowdHuman odgt -> annotations, names -> class map.

The CrowdHuman seed's two scripts (``build_annotations_file.py --dataset crowd_human`` and
``build_class_mapping_file.py``), as one command with three actions::

    python -m crowdloss.tools.build_csv classes --coco darknet --extra head --out classes.csv
    python -m crowdloss.tools.build_csv annotations annotation_val.odgt --image-root Images \\
        --out val.csv
    python -m crowdloss.tools.build_csv crowdhuman --root datasets/crowdhuman   # train + val

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

import argparse
import csv
import io
import logging
import os
import sys
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from crowdloss.data.boxes import clip_and_drop
from crowdloss.data.image_io import ImageCheckCache
from crowdloss.data.odgt import check_tag_map, iter_odgt, parse_odgt_image
from crowdloss.utils.io import atomic_write

__all__ = ["IGNORE_POLICIES", "BuildSummary", "build_crowdhuman_csv", "build_class_map",
           "read_names_file", "coco_names", "main"]

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
    from crowdloss.data.coco import COCO_CLASSES
    from crowdloss.engine.class_remap import COCO_DARKNET_ALIASES

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


def _annotation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--person-box", choices=("fbox", "vbox"), default="fbox",
                   help="box written as 'person' (the seed wrote vbox)")
    p.add_argument("--no-head", dest="heads", action="store_false", help="leave heads out")
    p.add_argument("--ignore", choices=IGNORE_POLICIES, default="drop",
                   help="ignore regions: drop them, write them as the seed did, or as a class")
    p.add_argument("--ignore-class", default="ignore", help="class name of --ignore class")
    p.add_argument("--paths", choices=("relative", "absolute"), default="relative",
                   help="image paths relative to the CSV's folder, or absolute")
    p.add_argument("--delimiter", default=",", help="',' (pytorch-retinanet) or ' ' (the seed)")
    p.add_argument("--integer", action="store_true",
                   help="round coordinates (pytorch-retinanet reads integers only)")


def _options(args) -> dict:
    return dict(person_box=args.person_box, heads=args.heads, ignore=args.ignore,
                ignore_class=args.ignore_class, paths=args.paths, delimiter=args.delimiter,
                integer=args.integer)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crowdloss.tools.build_csv",
                                     description="pytorch-retinanet CSV files from CrowdHuman "
                                                 "odgt and class names")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("classes", help="class map (name,id) from names")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--names", help="names file, one class a line")
    src.add_argument("--coco", choices=("official", "darknet"),
                     help="COCO's 80 classes (darknet: the seed's spelling)")
    p.add_argument("--extra", action="append", default=[],
                   help="class appended after the others (repeatable), e.g. head")
    p.add_argument("--out", required=True)
    p = sub.add_parser("annotations", help="annotations CSV from one odgt file")
    p.add_argument("odgt")
    p.add_argument("--image-root", required=True, help="folder of <ID>.jpg")
    p.add_argument("--out", required=True)
    _annotation_args(p)
    p = sub.add_parser("crowdhuman", help="train + val CSV of a datasets/crowdhuman layout "
                                          "(annotations/annotation_{train,val}.odgt, Images/)")
    p.add_argument("--root", required=True)
    p.add_argument("--out-dir", default=None, help="default: <root>/csv")
    _annotation_args(p)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.action == "classes":
            names = read_names_file(args.names) if args.names else coco_names(args.coco)
            names = build_class_map(names + list(args.extra), args.out)
            print(f"wrote {args.out}: {len(names)} classes ({names[0]} = 0 ... "
                  f"{names[-1]} = {len(names) - 1})")
        elif args.action == "annotations":
            print(build_crowdhuman_csv(args.odgt, args.image_root, args.out,
                                       **_options(args)).text())
        else:
            out_dir = args.out_dir or os.path.join(args.root, "csv")
            for split in ("train", "val"):
                odgt = os.path.join(args.root, "annotations", f"annotation_{split}.odgt")
                print(build_crowdhuman_csv(odgt, os.path.join(args.root, "Images"),
                                           os.path.join(out_dir, f"{split}.csv"),
                                           **_options(args)).text())
    except (ValueError, OSError) as e:
        print(f"build_csv: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
