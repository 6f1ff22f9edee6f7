"""CrowdHuman ``.odgt`` annotations -> dataset dicts (docs/internals.md).

One JSON object per line::

    {"ID": "273271,c9db000d5146c15", "gtboxes": [{"tag": "person" | "mask",
      "fbox": [x, y, w, h], "vbox": [...], "hbox": [...], "extra": {"ignore": 0, "occ": 1}}],
     "height": 600, "width": 800}          # height/width optional

The official files carry no image size, and cvpods rejects them; we read the size from the
image header instead (JPEG SOF / PNG IHDR, a few hundred bytes instead of a full decode) and
cache it in ``<odgt>.sizes.json`` so a second load of 15k images costs no image I/O at all.
"""
from __future__ import annotations

import json
import logging
import os
import struct
from typing import Dict, List, Optional, Tuple

from ..utils.io import atomic_write

__all__ = ["load_crowdhuman_odgt", "read_image_size", "BOX_TYPES"]

logger = logging.getLogger(__name__)

BOX_TYPES = ("fbox", "vbox", "hbox")
_IMAGE_EXTS = (".jpg", ".png", ".jpeg")
_CACHE_VERSION = 1

# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _jpeg_size(f) -> Optional[Tuple[int, int]]:
    f.seek(2)
    while True:
        byte = f.read(1)
        while byte and byte != b"\xff":  # tolerate padding between segments
            byte = f.read(1)
        while byte == b"\xff":  # a marker may be preceded by any number of fill bytes
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            continue
        raw = f.read(2)
        if len(raw) < 2:
            return None
        (seg_len,) = struct.unpack(">H", raw)
        if marker in _SOF_MARKERS:
            data = f.read(5)
            if len(data) < 5:
                return None
            _, h, w = struct.unpack(">BHH", data)
            return h, w
        if marker == 0xD9 or seg_len < 2:
            return None
        f.seek(seg_len - 2, os.SEEK_CUR)


def read_image_size(path: str) -> Tuple[int, int]:
    """(height, width) of a JPEG or PNG from its header; decodes with cv2 only as a fallback.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is neither a parsable JPEG/PNG header nor decodable.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            size = None
            if head[:8] == _PNG_MAGIC and head[12:16] == b"IHDR":
                w, h = struct.unpack(">II", head[16:24])
                size = (h, w)
            elif head[:2] == b"\xff\xd8":
                size = _jpeg_size(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    if size is not None and size[0] > 0 and size[1] > 0:
        return int(size[0]), int(size[1])
    import cv2  # fallback for other formats / odd JPEGs (e.g. size given in a DNL segment)

    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read image size of {path}: not a readable image")
    return int(img.shape[0]), int(img.shape[1])


def _resolve_image(image_root: str, image_id: str) -> str:
    for ext in _IMAGE_EXTS:
        path = os.path.join(image_root, image_id + ext)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"image for ID '{image_id}' not found: {os.path.join(image_root, image_id)}"
        f"{{{','.join(_IMAGE_EXTS)}}}"
    )


def _cache_path(odgt_file: str) -> str:
    return odgt_file + ".sizes.json"


def _odgt_stamp(odgt_file: str, image_root: str) -> dict:
    st = os.stat(odgt_file)
    return {"version": _CACHE_VERSION, "mtime_ns": st.st_mtime_ns, "size": st.st_size,
            "image_root": os.path.abspath(image_root)}


def _load_size_cache(odgt_file: str, stamp: dict) -> Dict[str, list]:
    try:
        with open(_cache_path(odgt_file)) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict) or cache.get("stamp") != stamp:
        return {}  # the odgt (or where its images live) changed: every entry is suspect
    return cache.get("sizes", {})


def _save_size_cache(odgt_file: str, stamp: dict, sizes: Dict[str, list]) -> None:
    # Write-then-rename so a concurrent reader (other ranks) never sees half a file.
    path = _cache_path(odgt_file)
    try:
        atomic_write(path, json.dumps({"stamp": stamp, "sizes": sizes}))
    except OSError as e:  # read-only dataset dirs are common; the cache is only a speed-up
        logger.warning("could not write image-size cache %s: %s", path, e)


def _parse_box(obj: dict, key: str, where: str) -> List[float]:
    box = obj.get(key)
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        raise ValueError(f"{where}: '{key}' must be a list of 4 numbers [x, y, w, h], got {box!r}")
    return [float(v) for v in box]


def _parse_line(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "ID" not in record:
        raise ValueError(f"{where}: missing key 'ID'")
    if not isinstance(record.get("gtboxes"), list):
        raise ValueError(f"{where}: missing key 'gtboxes' (a list of boxes)")
    return record


def load_crowdhuman_odgt(odgt_file: str, image_root: str, *, box_type: str = "fbox",
                         skip_bad_images: bool = False) -> List[dict]:
    """Load a CrowdHuman odgt file.

    Args:
        odgt_file: path of the ``.odgt`` file.
        image_root: directory holding ``<ID>.jpg`` (or ``.png``).
        box_type: which box trains the detector: "fbox" (full body), "vbox" (visible) or
            "hbox" (head). Ignore regions (tag "mask") without that key fall back to "fbox".
        skip_bad_images: skip (and log) images that are missing or unreadable instead of
            raising.

    Returns:
        Dataset dicts with xyxy boxes clipped to the image; ignore regions (``extra.ignore``
        != 0 or tag != "person") have ``category_id`` -1, persons 0.
    """
    if box_type not in BOX_TYPES:
        raise ValueError(f"box_type must be one of {BOX_TYPES}, got {box_type!r}")
    odgt_file = os.fspath(odgt_file)
    image_root = os.fspath(image_root)
    if not os.path.isfile(odgt_file):
        raise FileNotFoundError(f"odgt file not found: {odgt_file}")
    stamp = _odgt_stamp(odgt_file, image_root)
    cache = _load_size_cache(odgt_file, stamp)
    new_cache: Dict[str, list] = {}
    dataset_dicts: List[dict] = []
    num_dropped = num_skipped = 0
    with open(odgt_file) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{odgt_file}:{lineno}"
            record = _parse_line(line, where)
            image_id = str(record["ID"])
            cached = cache.get(image_id)
            try:
                if cached is not None:
                    h, w, name = cached
                    file_name = os.path.join(image_root, name)
                else:
                    file_name = _resolve_image(image_root, image_id)
                    if "height" in record and "width" in record:
                        h, w = int(record["height"]), int(record["width"])
                    else:
                        h, w = read_image_size(file_name)
            except (FileNotFoundError, ValueError) as e:
                if not skip_bad_images:
                    raise
                num_skipped += 1
                logger.warning("skipping image %s (%s)", image_id, e)
                continue
            new_cache[image_id] = [h, w, os.path.basename(file_name)]
            annos = []
            for k, gt in enumerate(record["gtboxes"]):
                gwhere = f"{where} gtboxes[{k}]"
                if not isinstance(gt, dict):
                    raise ValueError(f"{gwhere}: expected an object, got {gt!r}")
                extra = gt.get("extra") or {}
                ignore = gt.get("tag") != "person" or int(extra.get("ignore", 0)) != 0
                key = box_type if (box_type in gt or not ignore) else "fbox"
                x, y, bw, bh = _parse_box(gt, key, gwhere)
                x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
                x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
                if x2 - x1 <= 0 or y2 - y1 <= 0:
                    num_dropped += 1
                    continue
                annos.append({"bbox": [x1, y1, x2, y2], "category_id": -1 if ignore else 0})
            dataset_dicts.append({"file_name": os.path.abspath(file_name), "image_id": image_id,
                                  "height": h, "width": w, "annotations": annos})
    if new_cache != cache:
        _save_size_cache(odgt_file, stamp, new_cache)
    if num_dropped:
        logger.info("%s: dropped %d empty boxes (zero width/height after clipping)",
                    odgt_file, num_dropped)
    if num_skipped:
        logger.warning("%s: skipped %d bad images", odgt_file, num_skipped)
    logger.info("loaded %d images from %s (%s)", len(dataset_dicts), odgt_file, box_type)
    return dataset_dicts
