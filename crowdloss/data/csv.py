"""pytorch-retinanet's CSV datasets -> dataset dicts (docs/internals.md), and their registration.

Two files, as yhenon/pytorch-retinanet reads them:

- annotations, one box a row: ``path,x1,y1,x2,y2,class_name``; an image without objects is the
  row ``path,,,,,``; several rows name the same image for its boxes (images keep the order of
  their first row);
- class map, one class a row: ``class_name,id``. Ids must be 0..K-1, each once: they are the
  model's channels (pytorch-retinanet itself allows gaps, which leave unused channels).

**Coordinates.** pytorch-retinanet uses the numbers as continuous coordinates: its widths are
``x2 - x1`` (no +1), its horizontal flip maps ``x1 -> W - x2`` and its csv_eval IoU has no +1.
So ``x2`` is the right EDGE of the box, exclusive as a pixel index (a box covering pixel
columns 10..19 is ``x1 = 10, x2 = 20``), which is exactly our convention (COCO / CrowdHuman
``x + w``): the numbers are used as they are. It requires integers; we also accept decimals
(synthcrowd's boxes are), so a file of integers reads the same in both. Like it, ``x2 <= x1``
or ``y2 <= y1`` is an error. Unlike it, boxes reaching outside the image are clipped to it, and
boxes left without area dropped (logged), by the ``clip_and_drop`` every loader shares.

**Paths.** A relative path resolves against ``image_root`` (default: the CSV file's folder).
pytorch-retinanet opens paths relative to its working directory instead: the seed's files
(``data/CrowdHuman/CrowdHuman_train01/Images/...``, relative to where it ran) need
``image_root`` = the seed's root.

**Errors** name ``file:line``: a wrong column count, a non-numeric coordinate, ``x2 <= x1``,
an unknown class, an image that does not exist or cannot be read (``DATASETS.SKIP_BAD_IMAGES``
skips those instead); in the class map a wrong column count, a non-integer id, a duplicated
name or id, ids that are not 0..K-1.

**Ignore regions.** pytorch-retinanet has none. With ``ignore_class`` (e.g. "ignore", what
``crowdloss.tools.build_csv --ignore class`` writes for CrowdHuman's crowd regions) rows of that
class become ignore regions (``category_id`` -1); the class map must not list it.
"""
from __future__ import annotations

import csv
import functools
import logging
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .boxes import DroppedBoxes, clip_and_drop
from .catalog import CONFIGURABLE_LOADERS, DatasetCatalog, MetadataCatalog, datasets_root
from .image_io import BadImageError, ImageCheckCache

__all__ = ["load_csv_classes", "load_csv_annotations", "register_csv_instances",
           "register_csv_from_config", "CSV_CONFIG_NAMES"]

logger = logging.getLogger(__name__)

# DATASETS.CSV.TRAIN / VAL register these names (pytorch-retinanet's --csv_train / --csv_val).
CSV_CONFIG_NAMES = {"TRAIN": "csv_train", "VAL": "csv_val"}
_COLUMNS = "path,x1,y1,x2,y2,class_name (or path,,,,, for an image without objects)"


def _rows(path: str, delimiter: str):
    """``(line number, row)`` of the non-blank rows; csv handles quoted fields."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter)
        for row in reader:
            if row and any(cell.strip() for cell in row):
                yield reader.line_num, row


def load_csv_classes(path: str, *, delimiter: str = ",") -> List[str]:
    """Class names of a ``class_name,id`` file, in id order.

    Raises:
        ValueError: naming ``file:line`` (see the module docstring).
    """
    path = os.fspath(path)
    by_id: Dict[int, str] = {}
    line_of: Dict[str, int] = {}
    for line, row in _rows(path, delimiter):
        where = f"{path}:{line}"
        if len(row) != 2:
            raise ValueError(f"{where}: expected 2 columns class_name,id, got {len(row)}: {row}")
        name, raw = row[0].strip(), row[1].strip()
        try:
            class_id = int(raw)
        except ValueError:
            raise ValueError(f"{where}: class id {raw!r} is not an integer") from None
        if not name:
            raise ValueError(f"{where}: empty class name")
        if name in line_of:
            raise ValueError(f"{where}: duplicate class name {name!r} (first at line "
                             f"{line_of[name]})")
        if class_id in by_id:
            raise ValueError(f"{where}: duplicate class id {class_id} ({by_id[class_id]!r} has "
                             f"it at line {line_of[by_id[class_id]]})")
        by_id[class_id] = name
        line_of[name] = line
    if not by_id:
        raise ValueError(f"{path}: no classes")
    missing = sorted(set(range(len(by_id))) - set(by_id))
    if missing:
        raise ValueError(f"{path}: class ids must be 0..{len(by_id) - 1} (the model's "
                         f"channels), but {missing[:10]} are missing (ids given: "
                         f"{sorted(by_id)[:10]}...)")
    return [by_id[i] for i in range(len(by_id))]


def _coordinate(raw: str, column: str, where: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{where}: {column} = {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {column} = {raw!r} is not a finite number")
    return value


def _column_hint(row: Sequence[str], delimiter: str) -> str:
    if delimiter == "," and len(row) == 1 and len(row[0].split()) in (2, 6):
        return ("; the line looks space-separated, as the CrowdHuman seed's "
                "build_annotations_file.py writes it: set the delimiter to ' ' "
                "(DATASETS.CSV.DELIMITER, or delimiter=' ')")
    return ""


def load_csv_annotations(annotations_csv: str, class_names: Sequence[str], *,
                         image_root: Optional[str] = None, delimiter: str = ",",
                         ignore_class: Optional[str] = None, skip_bad_images: bool = False,
                         image_id: str = "path") -> List[dict]:
    """Read an annotations CSV into dataset dicts (rules in the module docstring).

    Args:
        class_names: the class map's names in id order (``load_csv_classes``).
        image_root: folder relative paths resolve against (default: the CSV's folder).
        delimiter: "," (pytorch-retinanet) or " " (the CrowdHuman seed's files).
        ignore_class: a class name whose rows become ignore regions (category -1).
        skip_bad_images: skip (and log) missing / unreadable images instead of raising.
        image_id: "path" (the path as written in the CSV, csv_eval's key) or "stem" (the file
            name without extension, a CrowdHuman ID; must be unique).

    Returns:
        Dataset dicts, boxes clipped to their image.
    """
    path = os.fspath(annotations_csv)
    root = os.fspath(image_root) if image_root else os.path.dirname(os.path.abspath(path))
    if image_id not in ("path", "stem"):
        raise ValueError(f"image_id must be 'path' or 'stem', got {image_id!r}")
    index = {name: i for i, name in enumerate(class_names)}
    if ignore_class is not None and ignore_class in index:
        raise ValueError(f"ignore class {ignore_class!r} is also a class of the class map")
    images: Dict[str, dict] = {}  # path as written -> {first line, boxes, classes, wheres}
    for line, row in _rows(path, delimiter):
        where = f"{path}:{line}"
        if len(row) != 6:
            raise ValueError(f"{where}: expected 6 columns {_COLUMNS}, got {len(row)}: "
                             f"{row[:8]}{_column_hint(row, delimiter)}")
        file_name = row[0].strip()
        if not file_name:
            raise ValueError(f"{where}: empty image path")
        entry = images.setdefault(file_name, {"line": where, "boxes": [], "classes": [],
                                              "wheres": []})
        rest = [cell.strip() for cell in row[1:]]
        if rest == [""] * 5:
            continue  # an image without objects
        x1, y1, x2, y2 = (_coordinate(v, c, where) for v, c in zip(rest[:4], ("x1", "y1", "x2",
                                                                              "y2")))
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"{where}: x2 > x1 and y2 > y1 are required, got "
                             f"({x1:g}, {y1:g}, {x2:g}, {y2:g})")
        name = rest[4]
        if name == ignore_class and ignore_class is not None:
            cls = -1
        elif name in index:
            cls = index[name]
        else:
            raise ValueError(f"{where}: unknown class {name!r}; the class map has "
                             f"{list(class_names)[:10]}{' ...' if len(class_names) > 10 else ''}"
                             + (f" (ignore regions: {ignore_class!r})" if ignore_class else ""))
        entry["boxes"].append([x1, y1, x2, y2])
        entry["classes"].append(cls)
        entry["wheres"].append(where)
    if not images:
        raise ValueError(f"{path}: no rows")

    cache = ImageCheckCache(path, root)
    drops = DroppedBoxes(path)
    dicts, skipped, stems = [], 0, {}
    for file_name, entry in images.items():
        full = file_name if os.path.isabs(file_name) else os.path.join(root, file_name)
        try:
            real, (h, w) = cache.check(file_name, full)
        except BadImageError as e:
            if not skip_bad_images:
                raise type(e)(f"{entry['line']}: {e} (relative paths resolve against "
                              f"{root})", getattr(e, "path", full)) from None
            skipped += 1
            logger.warning("skipping image %s (%s): %s", file_name, entry["line"], e)
            continue
        boxes = np.array(entry["boxes"], dtype=np.float64).reshape(-1, 4)
        kept, classes, wheres, num_dropped = clip_and_drop(boxes, h, w, entry["classes"],
                                                           entry["wheres"], where=entry["line"])
        if num_dropped:
            for b, wh in zip(boxes.tolist(), entry["wheres"]):
                if wh not in wheres:
                    drops.add(wh, b)
        key = file_name
        if image_id == "stem":
            key = os.path.splitext(os.path.basename(file_name))[0]
            if key in stems:
                raise ValueError(f"{entry['line']}: image ID {key!r} (the file name without "
                                 f"extension) is also the ID of {stems[key]}")
            stems[key] = file_name
        dicts.append({"file_name": os.path.abspath(real), "image_id": key, "height": h,
                      "width": w, "annotations": [{"bbox": b, "category_id": c}
                                                  for b, c in zip(kept.tolist(), classes)]})
    cache.save()
    drops.report(logger)
    if skipped:
        logger.warning("%s: skipped %d bad images (DATASETS.SKIP_BAD_IMAGES)", path, skipped)
    num_boxes = sum(len(d["annotations"]) for d in dicts)
    logger.info("loaded %d images, %d boxes from %s", len(dicts), num_boxes, path)
    return dicts


def _csv_loader(annotations_csv, classes_csv, image_root, delimiter, ignore_class, image_id, *,
                skip_bad_images=False, **_other_options):
    # CONFIGURABLE_LOADERS pass every dataset option (box_type...); CSV uses this one only.
    names = load_csv_classes(classes_csv)
    return load_csv_annotations(annotations_csv, names, image_root=image_root,
                                delimiter=delimiter, ignore_class=ignore_class,
                                skip_bad_images=skip_bad_images, image_id=image_id)


def register_csv_instances(name: str, annotations_csv: str, classes_csv: str, *,
                           image_root: Optional[str] = None, delimiter: str = ",",
                           ignore_class: Optional[str] = None, odgt_file: Optional[str] = None,
                           replace: bool = False) -> None:
    """Register a pytorch-retinanet CSV dataset (callable from an experiment's net.py).

    The class map is read now (the names are the metadata's ``thing_classes``); annotations
    and images when the name is first used. Registering a name again with the same arguments
    does nothing; with others it is an error, unless ``replace``.

    Args:
        annotations_csv, classes_csv: the two files (module docstring).
        image_root, delimiter, ignore_class: see ``load_csv_annotations``.
        odgt_file: the CrowdHuman odgt the CSV was built from: the dataset is then scored with
            the CrowdHuman metrics on the class named "person" (image IDs are the file names'
            stems); otherwise with per-class AP as pytorch-retinanet's csv_eval computes it
            (evaluator_type "per_class_ap", convention "retinanet_csv"). Either way
            ``TEST.PER_CLASS_AP`` adds the per-class table beside.
    """
    annotations_csv, classes_csv = os.fspath(annotations_csv), os.fspath(classes_csv)
    classes = load_csv_classes(classes_csv)
    args = dict(gt_file=os.fspath(odgt_file) if odgt_file else annotations_csv,
                classes_file=classes_csv, csv_image_root=image_root, delimiter=delimiter,
                ignore_class=ignore_class, thing_classes=classes)
    if name in DatasetCatalog:
        old = MetadataCatalog.get(name)
        if {k: old.get(k) for k in args} == args:
            return
        if not replace:
            raise KeyError(f"dataset '{name}' is already registered with other arguments "
                           f"({ {k: old.get(k) for k in args} })")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    loader = functools.partial(_csv_loader, annotations_csv, classes_csv,
                               os.fspath(image_root) if image_root else None, delimiter,
                               ignore_class, "stem" if odgt_file else "path")
    DatasetCatalog.register(name, loader)
    CONFIGURABLE_LOADERS[name] = loader
    meta = dict(evaluator_type="crowdhuman" if odgt_file else "per_class_ap",
                ap_convention="retinanet_csv", annotations_csv=annotations_csv, **args)
    if image_root:
        meta["image_root"] = os.fspath(image_root)  # what the pre-run dataset check looks for
    MetadataCatalog.set(name, **meta)


def _resolve(path: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else str(datasets_root() / path)


def register_csv_from_config(cfg) -> List[str]:
    """Register ``csv_train`` / ``csv_val`` from ``DATASETS.CSV`` (pytorch-retinanet's
    ``--csv_train`` / ``--csv_val`` / ``--csv_classes`` as config keys, so that a run takes
    its files from overrides alone); relative paths resolve against the datasets root. The
    names are replaced on every call (the config owns them). Returns the names registered.

    Raises:
        ValueError: TRAIN or VAL is set without CLASSES.
    """
    from crowdloss.config.access import cfg_get

    files = {key: cfg_get(cfg, f"DATASETS.CSV.{key}") for key in CSV_CONFIG_NAMES}
    if not any(files.values()):
        return []
    classes = cfg_get(cfg, "DATASETS.CSV.CLASSES")
    if not classes:
        raise ValueError("DATASETS.CSV.TRAIN / VAL are set but DATASETS.CSV.CLASSES (the "
                         "class_name,id file) is not")
    root = cfg_get(cfg, "DATASETS.CSV.IMAGE_ROOT")
    common = dict(image_root=_resolve(root) if root else None,
                  delimiter=cfg_get(cfg, "DATASETS.CSV.DELIMITER"),
                  ignore_class=cfg_get(cfg, "DATASETS.CSV.IGNORE_CLASS") or None, replace=True)
    odgt = cfg_get(cfg, "DATASETS.CSV.VAL_ODGT")
    names = []
    for key, path in files.items():
        if not path:
            continue
        name = CSV_CONFIG_NAMES[key]
        register_csv_instances(name, _resolve(path), _resolve(classes),
                               odgt_file=_resolve(odgt) if (odgt and key == "VAL") else None,
                               **common)
        names.append(name)
    return names
