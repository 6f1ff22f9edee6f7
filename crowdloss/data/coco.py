"""COCO-format json -> dataset dicts (docs/internals.md), for COCO 2017 and any custom json.

COCO category ids are sparse (1..90 for COCO 2017); models want contiguous 0..K-1, so the
maps between the two are stored in the metadata for the evaluator to map predictions back.
Values are checked as the odgt loader checks them (4 finite numbers, no negative size, sizes
that agree with the image), naming ``file images[k]`` / ``file annotations[k]``; images get
the same load-time check (``image_io``) and the same ``skip_bad_images`` treatment.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
from typing import List, Optional

import numpy as np

from .boxes import DroppedBoxes, clip_and_drop
from .catalog import CONFIGURABLE_LOADERS, DatasetCatalog, MetadataCatalog
from .image_io import BadImageError, ImageCheckCache

__all__ = ["load_coco_json", "register_coco_instances", "COCO_CLASSES", "COCO_DARKNET_ALIASES"]

logger = logging.getLogger(__name__)

# The 80 COCO 2017 classes in category-id order: contiguous id k is the k-th of the sorted
# category ids 1..90, as detectron2, pytorch-retinanet (its COCO checkpoint's channels) and
# the seed's class-names file number them.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)
# darknet's coco.names (and so the CrowdHuman seed's class-names file) spells six classes
# otherwise: its name -> COCO's.
COCO_DARKNET_ALIASES = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch",
                        "pottedplant": "potted plant", "diningtable": "dining table",
                        "tvmonitor": "tv"}


def _require(obj: dict, key: str, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{where}: missing key '{key}'")
    return obj[key]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _flag(ann: dict, key: str, where: str) -> bool:
    v = ann.get(key, 0)
    if v not in (0, 1):
        raise ValueError(f"{where}: '{key}' = {v!r}; expected 0 or 1")
    return bool(v)


def _bbox(ann: dict, where: str) -> List[float]:
    box = _require(ann, "bbox", where)
    if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
        raise ValueError(f"{where}: 'bbox' = {box!r}; expected 4 finite numbers [x, y, w, h]")
    if box[2] < 0 or box[3] < 0:
        raise ValueError(f"{where}: 'bbox' = {box!r}; negative width or height")
    return [float(v) for v in box]


def _size(img: dict, where: str):
    h, w = _require(img, "height", where), _require(img, "width", where)
    for name, v in (("height", h), ("width", w)):
        if not _number(v) or v <= 0 or v != int(v):
            raise ValueError(f"{where}: '{name}' = {v!r}; expected a positive integer")
    return int(h), int(w)


def load_coco_json(json_file: str, image_root: str, *, dataset_name: Optional[str] = None,
                   skip_bad_images: bool = False) -> List[dict]:
    """Load COCO instances annotations.

    Args:
        json_file: a COCO instances json (``images``, ``annotations``, ``categories``).
        image_root: directory the images' ``file_name`` is relative to.
        dataset_name: if given, ``thing_classes`` and the id maps are set in its metadata.
        skip_bad_images: skip (and log) missing / truncated / unreadable images.

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
    # Every annotation is checked, also those of images skipped below.
    annos_per_image = {}
    for k, ann in enumerate(data.get("annotations", [])):
        where = f"{json_file} annotations[{k}]"
        box = _bbox(ann, where)
        cat = _require(ann, "category_id", where)
        if cat not in id_map:
            raise ValueError(f"{where}: category_id {cat} is not in 'categories'")
        crowd = _flag(ann, "iscrowd", where) or _flag(ann, "ignore", where)
        annos_per_image.setdefault(_require(ann, "image_id", where), []).append(
            (where, box, -1 if crowd else id_map[cat]))

    cache = ImageCheckCache(json_file, image_root)
    drops = DroppedBoxes(json_file)
    dataset_dicts, num_skipped = [], 0
    for k, img in enumerate(images):
        where = f"{json_file} images[{k}]"
        image_id = _require(img, "id", where)
        h, w = _size(img, where)
        file_name = _require(img, "file_name", where)
        try:
            path, real = cache.check(file_name, os.path.join(image_root, file_name))
        except BadImageError as e:
            if not skip_bad_images:
                raise
            num_skipped += 1
            logger.warning("skipping image %r (%s): %s", image_id, where, e)
            continue
        if real != (h, w):
            raise ValueError(f"{where}: image {image_id!r} is {h}x{w} (height x width) in the "
                             f"json but {real[0]}x{real[1]} in {path}")
        items = annos_per_image.get(image_id, [])
        xyxy = np.array([b for _, b, _ in items], dtype=np.float64).reshape(-1, 4)
        xyxy[:, 2:] += xyxy[:, :2]
        boxes, kept_items, num_dropped = clip_and_drop(xyxy, h, w, items, where=where)
        if num_dropped:
            kept_where = {w_ for w_, _, _ in kept_items}
            for j, (w_, _, _) in enumerate(items):
                if w_ not in kept_where:
                    drops.add(w_, xyxy[j])
        classes = [c for _, _, c in kept_items]
        dataset_dicts.append({
            "file_name": os.path.abspath(path), "image_id": image_id, "height": h, "width": w,
            "annotations": [{"bbox": b, "category_id": c}
                            for b, c in zip(boxes.tolist(), classes)]})
    cache.save()
    drops.report(logger)
    if num_skipped:
        logger.warning("%s: skipped %d bad images (DATASETS.SKIP_BAD_IMAGES)", json_file,
                       num_skipped)
    logger.info("loaded %d images from %s", len(dataset_dicts), json_file)
    return dataset_dicts


def _coco_loader(json_file: str, image_root: str, name: str, *, skip_bad_images: bool = False,
                 box_type: str = "fbox", tag_map=None) -> List[dict]:
    # box_type / tag_map are odgt options (CONFIGURABLE_LOADERS passes every option).
    return load_coco_json(json_file, image_root, dataset_name=name,
                          skip_bad_images=skip_bad_images)


def register_coco_instances(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format dataset under ``name`` (lazy: nothing is read now); it honours
    ``DATASETS.SKIP_BAD_IMAGES``."""
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    loader = functools.partial(_coco_loader, json_file, image_root, name)
    DatasetCatalog.register(name, loader)
    CONFIGURABLE_LOADERS[name] = loader
    MetadataCatalog.set(name, evaluator_type="coco", gt_file=json_file, image_root=image_root,
                        json_file=json_file)
