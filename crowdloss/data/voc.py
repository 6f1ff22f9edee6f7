"""PASCAL VOC xml annotations -> dataset dicts (docs/internals.md), and the difficult-box policy.

One year's folder (``VOCdevkit/VOC2007``, or any VOC-format dataset) holds::

    Annotations/<id>.xml  ImageSets/Main/<split>.txt (one id a line)  JPEGImages/<id>.jpg

Coordinates. VOC boxes are 1-based, inclusive pixel indices: ``xmin = 1, xmax = W`` covers
the whole image. The 1-based pixel i spans [i - 1, i) in continuous coordinates, so the box
covers ``[xmin - 1, xmax] x [ymin - 1, ymax]``, and that is what we store
(``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``). Why: our boxes are continuous
everywhere (COCO's and CrowdHuman's ``x + w``), so a flip (x -> W - x) or a resize is exact
for every dataset alike; and the stored width ``xmax - xmin + 1`` is the devkit's "+1" width,
so the devkit's IoU of two xml boxes equals the plain IoU of ours. The evaluator maps boxes
back with ``(x1 + 1, y1 + 1, x2, y2)`` (``crowdloss.evaluation.voc.to_devkit_boxes``).
ssd.pytorch and py-faster-rcnn subtract 1 from all four numbers instead (a box one pixel
narrower than ours: inclusive 0-based indices used as coordinates); the devkit itself keeps
the xml integers and adds 1 to every width and height.

``xmin == xmax`` is a legal one-pixel box; ``xmax < xmin`` (or y) is an error. Boxes reaching
outside the image are clipped, and boxes left without area dropped, by the shared
:func:`~crowdloss.data.boxes.clip_and_drop` (counted in the log).

Difficult objects keep ``"difficult": True`` in their annotation dict; the evaluator ignores
them, and training applies ``DATASETS.TRAIN_DIFFICULT`` (:func:`apply_difficult_policy`).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Dict, List, Optional, Sequence
from xml.parsers import expat

import numpy as np

from .boxes import clip_and_drop
from .image_io import read_image_size

__all__ = ["VOC_CLASSES", "DIFFICULT_POLICIES", "load_voc_instances", "apply_difficult_policy"]

logger = logging.getLogger(__name__)

# The standard order (devkit, ssd.pytorch, detectron2): contiguous ids 0..19 follow it.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
# What training does with difficult boxes: ssd.pytorch drops them (keep_difficult=False),
# detectron2 trains on them, mmdetection makes them ignore regions.
DIFFICULT_POLICIES = ("drop", "keep", "ignore")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class _Node:
    __slots__ = ("tag", "line", "children", "parts")

    def __init__(self, tag: str, line: int):
        self.tag, self.line, self.children, self.parts = tag, line, [], []

    @property
    def text(self) -> str:
        return "".join(self.parts).strip()

    def find(self, tag: str) -> Optional["_Node"]:
        return next((c for c in self.children if c.tag == tag), None)


def _parse_xml(path: str) -> _Node:
    """A small element tree with line numbers (ElementTree keeps none) from expat."""
    parser = expat.ParserCreate()
    stack: List[_Node] = [_Node("", 0)]

    def start(tag, _attrs):
        node = _Node(tag, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda _tag: stack.pop()
    parser.CharacterDataHandler = lambda data: stack[-1].parts.append(data)
    try:
        with open(path, "rb") as f:
            parser.ParseFile(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC annotation not found: {path}") from None
    except expat.ExpatError as e:
        raise ValueError(f"{path}:{e.lineno}: malformed XML ({expat.ErrorString(e.code)}, "
                         f"column {e.offset})") from None
    return stack[0].children[0]


def _child(node: _Node, tag: str, path: str) -> _Node:
    found = node.find(tag)
    if found is None:
        raise ValueError(f"{path}:{node.line}: <{node.tag}> has no <{tag}>")
    return found


def _number(node: _Node, path: str) -> float:
    try:
        value = float(node.text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{path}:{node.line}: <{node.tag}> must be a finite number, got "
                         f"{node.text!r}")
    return value


def _flag(node: Optional[_Node], path: str) -> bool:
    if node is None:  # optional in the format (absent in some VOC-style datasets): not set
        return False
    if node.text not in ("0", "1"):
        raise ValueError(f"{path}:{node.line}: <{node.tag}> must be 0 or 1, got {node.text!r}")
    return node.text == "1"


def _xml_size(root: _Node, path: str) -> Optional[tuple]:
    size = root.find("size")
    if size is None:
        return None
    h, w = (_number(_child(size, k, path), path) for k in ("height", "width"))
    return (int(h), int(w)) if h > 0 and w > 0 else None  # 0 x 0 is seen in the wild


def _find_image(image_dir: str, image_id: str) -> str:
    for ext in _IMAGE_EXTS:
        path = os.path.join(image_dir, image_id + ext)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"image of '{image_id}' not found: "
                            f"{os.path.join(image_dir, image_id)}{{{','.join(_IMAGE_EXTS)}}}")


def _read_split(dirname: str, split: str) -> List[str]:
    path = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC split file not found: {path} (is {dirname} a VOC year "
                                "folder such as VOCdevkit/VOC2007?)") from None
    # Some split files carry a second column (the per-class lists: "<id> -1"): take the id.
    return [line.split()[0] for line in lines if line.strip()]


def _parse_objects(root: _Node, path: str, class_ids: Dict[str, int]):
    boxes, classes, difficult = [], [], []
    for obj in (c for c in root.children if c.tag == "object"):
        name_node = _child(obj, "name", path)
        if name_node.text not in class_ids:
            raise ValueError(f"{path}:{name_node.line}: unknown class {name_node.text!r} "
                             f"(known: {', '.join(class_ids)})")
        bnd = _child(obj, "bndbox", path)
        xmin, ymin, xmax, ymax = (_number(_child(bnd, k, path), path)
                                  for k in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise ValueError(f"{path}:{bnd.line}: empty box xmin={xmin:g} ymin={ymin:g} "
                             f"xmax={xmax:g} ymax={ymax:g} (need xmax >= xmin, ymax >= ymin)")
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))  # see the module docstring
        classes.append(class_ids[name_node.text])
        difficult.append(_flag(obj.find("difficult"), path))
    return np.asarray(boxes, np.float64).reshape(-1, 4), classes, difficult


def load_voc_instances(dirname: str, split: str, *, class_names: Sequence[str] = VOC_CLASSES,
                       check_image_size: bool = True, skip_bad_images: bool = False
                       ) -> List[dict]:
    """Load one VOC-format split.

    Args:
        dirname: the year folder holding ``Annotations/``, ``ImageSets/Main/``, ``JPEGImages/``.
        split: ``ImageSets/Main/<split>.txt`` ("trainval", "test"...).
        class_names: class names in contiguous-id order (the 20 VOC classes by default); an
            object of any other class is an error.
        check_image_size: read each image's header and require the xml ``<size>`` to match
            (a few hundred bytes per image). Without a usable ``<size>`` the header gives the
            size whatever this says.
        skip_bad_images: skip (and count) images that are missing or unreadable instead of
            raising. Annotation errors always raise.

    Returns:
        Dataset dicts: ``image_id`` is the file stem, boxes continuous xyxy (module
        docstring), every annotation has ``difficult`` (bool).

    Raises:
        FileNotFoundError: the split file, an xml or (without skip_bad_images) an image is
            missing.
        ValueError: malformed xml, a missing field, an unknown class, ``xmax < xmin``, a size
            that disagrees with the image; each names the file and, where known, the line.
    """
    dirname = os.fspath(dirname)
    class_ids = {name: i for i, name in enumerate(class_names)}
    if len(class_ids) != len(class_names):
        raise ValueError(f"class_names has duplicates: {list(class_names)}")
    image_dir = os.path.join(dirname, "JPEGImages")
    dicts, num_dropped, num_skipped, num_header_size = [], 0, 0, 0
    for image_id in _read_split(dirname, split):
        xml_path = os.path.join(dirname, "Annotations", f"{image_id}.xml")
        root = _parse_xml(xml_path)
        boxes, classes, difficult = _parse_objects(root, xml_path, class_ids)
        size = _xml_size(root, xml_path)
        try:
            file_name = _find_image(image_dir, image_id)
            header = read_image_size(file_name) if check_image_size or size is None else None
        except (FileNotFoundError, ValueError) as e:
            if not skip_bad_images:
                raise
            num_skipped += 1
            logger.warning("skipping image %s (%s)", image_id, e)
            continue
        if size is None:
            size, num_header_size = header, num_header_size + 1
        elif header is not None and header != size:
            raise ValueError(f"{xml_path}: <size> says {size[0]}x{size[1]} (HxW) but "
                             f"{file_name} is {header[0]}x{header[1]}")
        h, w = size
        annos = [{"bbox": [], "category_id": c, "difficult": d}
                 for c, d in zip(classes, difficult)]
        boxes, annos, dropped = clip_and_drop(boxes, h, w, annos, where=xml_path)
        for anno, box in zip(annos, boxes.tolist()):
            anno["bbox"] = box
        num_dropped += dropped
        dicts.append({"file_name": os.path.abspath(file_name), "image_id": image_id,
                      "height": h, "width": w, "annotations": annos})
    if num_header_size:
        logger.info("%s/%s: %d images without a usable <size>: size read from the image",
                    dirname, split, num_header_size)
    if num_dropped:
        logger.info("%s/%s: dropped %d boxes outside the image", dirname, split, num_dropped)
    if num_skipped:
        logger.warning("%s/%s: skipped %d bad images", dirname, split, num_skipped)
    logger.info("loaded %d images from %s (%s)", len(dicts), dirname, split)
    return dicts


def apply_difficult_policy(dicts: List[dict], policy: str) -> List[dict]:
    """Apply a training policy to annotations flagged ``difficult`` (VOC).

    Args:
        policy: "drop" (remove them, ssd.pytorch's ``keep_difficult=False``), "keep" (train
            them as ordinary objects, detectron2) or "ignore" (class -1: ignore regions,
            mmdetection).

    Returns:
        ``dicts`` itself for "keep", else new dicts (the input is not modified).
    """
    if policy not in DIFFICULT_POLICIES:
        raise ValueError(f"DATASETS.TRAIN_DIFFICULT must be one of {DIFFICULT_POLICIES}, "
                         f"got {policy!r}")
    if policy == "keep":
        return dicts
    out = []
    for d in dicts:
        annos = d["annotations"]
        if any(a.get("difficult") for a in annos):
            if policy == "drop":
                annos = [a for a in annos if not a.get("difficult")]
            else:
                annos = [dict(a, category_id=-1) if a.get("difficult") else a for a in annos]
            d = dict(d, annotations=annos)
        out.append(d)
    return out
