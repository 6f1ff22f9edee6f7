"""``python -m crowdloss.tools.build_csv``: pytorch-retinanet CSV files from CrowdHuman odgt
and class names, the CrowdHuman seed's ``build_annotations_file.py --dataset crowd_human`` and
``build_class_mapping_file.py`` as one command with three actions::

    python -m crowdloss.tools.build_csv classes --coco darknet --extra head --out classes.csv
    python -m crowdloss.tools.build_csv annotations annotation_val.odgt --image-root Images \\
        --out val.csv [--person-box vbox] [--no-head] [--ignore drop|seed|class] [--integer]
    python -m crowdloss.tools.build_csv crowdhuman --root datasets/crowdhuman   # train + val

What is written and dropped, and why: ``crowdloss.data.crowdhuman_csv``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from crowdloss.data.crowdhuman_csv import (IGNORE_POLICIES, BuildSummary, build_class_map,
                                           build_crowdhuman_csv, coco_names, read_names_file)

__all__ = ["main", "BuildSummary", "build_crowdhuman_csv", "build_class_map", "coco_names",
           "read_names_file"]


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
