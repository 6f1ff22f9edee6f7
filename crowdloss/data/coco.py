"""COCO-format json -> dataset dicts (docs/internals.md), for COCO 2017 and any custom json.

COCO category ids are sparse (1..90 for COCO 2017); models want contiguous 0..K-1, so the
maps between the two are stored in the metadata for the evaluator to map predictions back.
"""
from __future__ import annotations

import json
import logging
import os
from typing import List, Optional

from .catalog import DatasetCatalog, MetadataCatalog

__all__ = ["load_coco_json", "register_coco_instances"]

logger = logging.getLogger(__name__)


def _require(obj: dict, key: str, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{where}: missing key '{key}'")
    return obj[key]


def load_coco_json(json_file: str, image_root: str, *,
                   dataset_name: Optional[str] = None) -> List[dict]:
    """Load COCO instances annotations.

    Args:
        json_file: a COCO instances json (``images``, ``annotations``, ``categories``).
        image_root: directory the images' ``file_name`` is relative to.
        dataset_name: if given, ``thing_classes`` and the id maps are set in its metadata.

    Returns:
        Dataset dicts; ``iscrowd`` (or ``ignore``) annotations become category -1 (ignore).
    """
    json_file = os.fspath(json_file)
    try:
        with open(json_file) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"COCO json not found: {json_file}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_file}: invalid JSON ({e.msg} at line {e.lineno})") from None
    cats = sorted(_require(data, "categories", json_file), key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(cats)}
    if dataset_name is not None:
        MetadataCatalog.set(dataset_name, thing_classes=[c["name"] for c in cats],
                            thing_dataset_id_to_contiguous_id=id_map,
                            contiguous_id_to_thing_dataset_id={v: k for k, v in id_map.items()})
    images = _require(data, "images", json_file)
    annos_per_image = {}
    for k, ann in enumerate(data.get("annotations", [])):
        where = f"{json_file} annotations[{k}]"
        annos_per_image.setdefault(_require(ann, "image_id", where), []).append((k, ann))

    dataset_dicts, num_dropped = [], 0
    for k, img in enumerate(images):
        where = f"{json_file} images[{k}]"
        image_id = _require(img, "id", where)
        h, w = int(_require(img, "height", where)), int(_require(img, "width", where))
        annos = []
        for j, ann in annos_per_image.get(image_id, []):
            awhere = f"{json_file} annotations[{j}]"
            box = _require(ann, "bbox", awhere)
            if not (isinstance(box, list) and len(box) == 4):
                raise ValueError(f"{awhere}: 'bbox' must be [x, y, w, h], got {box!r}")
            cat = _require(ann, "category_id", awhere)
            if cat not in id_map:
                raise ValueError(f"{awhere}: category_id {cat} is not in 'categories'")
            x, y, bw, bh = (float(v) for v in box)
            x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
            x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                num_dropped += 1
                continue
            crowd = ann.get("iscrowd", 0) or ann.get("ignore", 0)
            annos.append({"bbox": [x1, y1, x2, y2], "category_id": -1 if crowd else id_map[cat]})
        dataset_dicts.append({
            "file_name": os.path.abspath(os.path.join(image_root, _require(img, "file_name", where))),
            "image_id": image_id, "height": h, "width": w, "annotations": annos})
    if num_dropped:
        logger.info("%s: dropped %d empty boxes", json_file, num_dropped)
    logger.info("loaded %d images from %s", len(dataset_dicts), json_file)
    return dataset_dicts


def register_coco_instances(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format dataset under ``name`` (lazy: nothing is read now)."""
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    DatasetCatalog.register(
        name, lambda: load_coco_json(json_file, image_root, dataset_name=name))
    MetadataCatalog.set(name, evaluator_type="coco", gt_file=json_file, image_root=image_root,
                        json_file=json_file)
