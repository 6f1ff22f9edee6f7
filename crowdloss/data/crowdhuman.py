"""CrowdHuman ``.odgt`` annotations -> dataset dicts (docs/internals.md).

Parsing and the ignore rule are ``crowdloss.data.odgt``'s (shared with the evaluator); this
module adds the images: each one is checked at load time (``image_io.check_image_file``: it
exists, its header gives the size, it is not truncated), with the results cached in
``<odgt>.sizes.json`` so that a second load of 15k images costs one ``stat`` per image. The
official files carry no image size (cvpods rejects them); when a line does give one, it must
agree with the image.
"""
from __future__ import annotations

import logging
import os
from typing import List, Mapping, Optional

import numpy as np

from .boxes import DroppedBoxes, clip_and_drop
from .image_io import BadImageError, ImageCheckCache
from .odgt import BOX_TYPES, load_odgt

__all__ = ["load_crowdhuman_odgt", "BOX_TYPES"]

logger = logging.getLogger(__name__)


def load_crowdhuman_odgt(odgt_file: str, image_root: str, *, box_type: str = "fbox",
                         skip_bad_images: bool = False,
                         tag_map: Optional[Mapping[str, str]] = None) -> List[dict]:
    """Load a CrowdHuman odgt file.

    Args:
        odgt_file: path of the ``.odgt`` file.
        image_root: directory holding ``<ID>.jpg`` (or ``.png`` / ``.jpeg``).
        box_type: which box trains the detector: "fbox" (full body), "vbox" (visible) or
            "hbox" (head). Ignore regions without that key use their "fbox".
        skip_bad_images: skip (and log, with the path) images that are missing, truncated or
            unreadable instead of raising.
        tag_map: tags other than "person" / "mask" -> "person" or "mask"
            (``DATASETS.TAG_MAP``); an unmapped unknown tag is an error.

    Returns:
        Dataset dicts with xyxy boxes clipped to the image; ignore regions have
        ``category_id`` -1, persons 0. Boxes with no area left are dropped and logged.

    Raises:
        ValueError: a malformed line, naming ``file:line`` (and ``gtboxes[j]``).
        BadImageError: a bad image (without ``skip_bad_images``), naming its path.
    """
    if box_type not in BOX_TYPES:
        raise ValueError(f"box_type must be one of {BOX_TYPES}, got {box_type!r}")
    odgt_file, image_root = os.fspath(odgt_file), os.fspath(image_root)
    if not os.path.isfile(odgt_file):
        raise FileNotFoundError(f"odgt file not found: {odgt_file}")
    # Parse everything first: a malformed line fails in a second, before any image I/O.
    parsed = load_odgt(odgt_file, box_type=box_type, tag_map=tag_map)
    cache = ImageCheckCache(odgt_file, image_root)
    drops = DroppedBoxes(odgt_file)
    dataset_dicts: List[dict] = []
    num_skipped = 0
    for img in parsed:
        try:
            path, (h, w) = cache.check(img.image_id)
        except BadImageError as e:  # MissingImageError included
            if not skip_bad_images:
                raise
            num_skipped += 1
            logger.warning("skipping image '%s' (%s): %s", img.image_id, img.where, e)
            continue
        if img.height is not None and (img.height, img.width) != (h, w):
            raise ValueError(f"{img.where}: image '{img.image_id}' is {img.height}x{img.width} "
                             f"(height x width) in the odgt but {h}x{w} in {path}")
        xyxy = img.boxes.copy()
        xyxy[:, 2:] += xyxy[:, :2]
        boxes, valid, kept, num_dropped = clip_and_drop(xyxy, h, w, img.valid,
                                                        np.arange(len(xyxy)), where=img.where)
        if num_dropped:
            for j in np.setdiff1d(np.arange(len(xyxy)), kept):
                drops.add(f"{img.where} gtboxes[{j}]", xyxy[j])
        classes = np.where(valid, 0, -1).tolist()
        annos = [{"bbox": b, "category_id": c} for b, c in zip(boxes.tolist(), classes)]
        dataset_dicts.append({"file_name": os.path.abspath(path), "image_id": img.image_id,
                              "height": h, "width": w, "annotations": annos})
    cache.save()
    drops.report(logger)
    if num_skipped:
        logger.warning("%s: skipped %d bad images (DATASETS.SKIP_BAD_IMAGES)", odgt_file,
                       num_skipped)
    logger.info("loaded %d images from %s (%s)", len(dataset_dicts), odgt_file, box_type)
    return dataset_dicts
