"""Fine-tuning across class sets: a checkpoint's classifier channels re-ordered to the model's
classes by name (a step of the weight-loading path, after a format's renaming).

A COCO detector (80 classes) fine-tuned on CrowdHuman as ``person`` + ``head``, or as the
seed's 81 classes (COCO's 80 plus ``head``), shares most of its classes with its new task.
Without this step the classifier tensors only differ in shape and are skipped whole; with it
(``MODEL.WEIGHTS_CLASSES`` = the checkpoint's class names), for every classifier tensor the
model declares (``DenseDetector.class_channel_layout``: key -> anchors per location A, and
whether the last logit is a softmax background):

- the channels of a class named in both lists are copied, for each of the A anchors
  (channel ``a * C + k``, the layout of every dense head here);
- a class only the model has keeps the model's fresh initialisation (the prior-probability
  bias: it starts as rare as any class of a new detector);
- a class only the checkpoint has is dropped; a softmax background channel is copied.

Names match after lower-casing and trimming, and the COCO spellings of the darknet names file
the CrowdHuman seed ships (``motorbike`` = ``motorcycle``, ``aeroplane``, ``sofa``,
``pottedplant``, ``diningtable``, ``tvmonitor``) match the official ones.

Coverage: a remapped tensor counts as filled by the fraction of its classes that came from
the file, so ``MODEL.WEIGHTS_MIN_COVERAGE`` keeps its meaning ("how much of the model did the
file provide"): a COCO R-50 RetinaNet gives 80 of 81 classes of the seed's model (99.945 % of
its values) and 1 of 2 of a person + head model's classifier (99.943 % of that model).

Shape vocabulary: A anchors per location, C logits per anchor (K classes, + 1 with a softmax
background), K_s / K_t classes of the checkpoint / the model.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from crowdloss.data.coco import COCO_DARKNET_ALIASES

__all__ = ["ClassChannels", "ClassRemap", "resolve_class_names", "remap_class_channels",
           "class_remap_from_config", "normalise_class_name", "COCO_DARKNET_ALIASES"]

logger = logging.getLogger("crowdloss.engine")



class ClassChannels(NamedTuple):
    """How a classifier tensor's first dimension is laid out: A anchors x C logits."""

    num_anchors: int
    num_classes: int
    background: bool = False  # a softmax background logit after the K classes


class ClassRemap(NamedTuple):
    """The checkpoint's class names (``source``) and the model's (``target``), in order."""

    source: Tuple[str, ...]
    target: Tuple[str, ...]


def normalise_class_name(name: str) -> str:
    key = " ".join(str(name).strip().lower().split())
    return COCO_DARKNET_ALIASES.get(key, key)


def resolve_class_names(spec) -> Optional[Tuple[str, ...]]:
    """``MODEL.WEIGHTS_CLASSES`` -> names: a list of names; ``"coco"`` (a one-entry list too:
    overrides turn a string into one) -> ``COCO_CLASSES``; a path ending in ``.csv`` (class map
    ``name,id``) or ``.txt`` (one name a line) -> its names. "" / () -> None."""
    if spec is None or spec == "" or (isinstance(spec, (list, tuple)) and len(spec) == 0):
        return None
    items = [spec] if isinstance(spec, str) else list(spec)
    if len(items) == 1 and isinstance(items[0], str):
        item = items[0]
        if item.strip().lower() == "coco":
            from crowdloss.data.coco import COCO_CLASSES

            return tuple(COCO_CLASSES)
        if item.lower().endswith((".csv", ".txt")):
            return _read_names_file(os.path.expanduser(item))
    bad = [x for x in items if not isinstance(x, str) or not x.strip()]
    if bad:
        raise ValueError(f"MODEL.WEIGHTS_CLASSES: class names must be non-empty strings, got "
                         f"{bad[:3]}")
    return tuple(items)


def _read_names_file(path: str) -> Tuple[str, ...]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.WEIGHTS_CLASSES: no such file {path}")
    if path.lower().endswith(".csv"):
        from crowdloss.data.csv import load_csv_classes

        return tuple(load_csv_classes(path))
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f]
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise ValueError(f"{path}: expected one class name a line (line "
                         f"{names.index('') + 1 if '' in names else 1} is empty)")
    return tuple(names)


def _index(names: Sequence[str], what: str) -> Dict[str, int]:
    index: Dict[str, int] = {}
    for i, name in enumerate(names):
        key = normalise_class_name(name)
        if key in index:
            raise ValueError(f"{what}: class {name!r} appears twice (as {names[index[key]]!r} "
                             f"at {index[key]} and at {i})")
        index[key] = i
    return index


def remap_class_channels(converted: Dict[str, torch.Tensor], model_state: Mapping,
                         layout: Mapping[str, ClassChannels], remap: ClassRemap, *,
                         source: str = "") -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
    """Re-order the classifier tensors of ``converted`` (our names) to the model's classes.

    Args:
        model_state: the model's state dict (fresh values for the new classes).
        layout: model key -> ``ClassChannels`` of each classifier tensor.
        remap: checkpoint and model class names.
        source: the file, for messages.

    Returns:
        (converted with the classifier entries replaced by tensors of the model's shapes,
        {model key: fraction of its classes taken from the file}).

    Raises:
        ValueError: a classifier tensor whose channels are not A x (K_s [+ 1]), names that
            repeat, or a model whose class count is not ``len(remap.target)``.
    """
    from .weights import align_to_model

    src_index = _index(remap.source, "MODEL.WEIGHTS_CLASSES")
    tgt_index = _index(remap.target, "the datasets' thing_classes")
    pairs = [(t, src_index[key]) for key, t in tgt_index.items() if key in src_index]
    out = dict(converted)
    partial: Dict[str, float] = {}
    # Which file entry feeds each classifier key: the loader's own name rule, shapes aside.
    _, report = align_to_model(converted, list(layout))
    for mkey, spec in layout.items():
        if spec.num_classes != len(remap.target):
            raise ValueError(f"the model has {spec.num_classes} classes ({mkey}) but its "
                             f"datasets name {len(remap.target)}: {list(remap.target)[:5]}...")
        ckey = report.matched.get(mkey)
        if ckey is None:
            continue  # the file has no classifier: nothing to remap (the summary says so)
        value = converted[ckey]
        bg = int(spec.background)
        per_anchor = len(remap.source) + bg
        if value.shape[0] != spec.num_anchors * per_anchor:
            raise ValueError(
                f"{source}: {ckey} has {value.shape[0]} channels, but MODEL.WEIGHTS_CLASSES "
                f"lists {len(remap.source)} classes: with {spec.num_anchors} anchors per "
                f"location it should have {spec.num_anchors * per_anchor}")
        fresh = model_state[mkey].detach().clone().cpu()
        new = fresh.reshape(spec.num_anchors, spec.num_classes + bg, *fresh.shape[1:])
        old = value.to(new.dtype).reshape(spec.num_anchors, per_anchor, *value.shape[1:])
        for t, s in pairs:
            new[:, t] = old[:, s]
        if bg:
            new[:, -1] = old[:, -1]
        out[ckey] = new.reshape(fresh.shape)
        partial[mkey] = (len(pairs) + bg) / (spec.num_classes + bg)
    if partial:
        _log_remap(remap, pairs, source)
    return out, partial


def _log_remap(remap: ClassRemap, pairs: List[Tuple[int, int]], source: str) -> None:
    kept = {t for t, _ in pairs}
    used = {s for _, s in pairs}
    new = [n for i, n in enumerate(remap.target) if i not in kept]
    dropped = [n for i, n in enumerate(remap.source) if i not in used]
    renamed = [f"{remap.target[t]} <- {remap.source[s]}" for t, s in pairs
               if remap.target[t] != remap.source[s]]
    logger.info("Classes of %s: %d of the model's %d classes kept from the checkpoint's %d "
                "(MODEL.WEIGHTS_CLASSES), %d new with the prior-probability init: %s; %d "
                "dropped%s", source, len(pairs), len(remap.target), len(remap.source), len(new),
                ", ".join(new) or "none", len(dropped),
                f"; matched by alias: {', '.join(renamed)}" if renamed else "")
    if not pairs:
        logger.warning("%s: no class of MODEL.WEIGHTS_CLASSES is among the model's classes "
                       "%s: the classifier starts from scratch", source, list(remap.target))


def class_remap_from_config(cfg, datasets_key: str = "DATASETS.TRAIN") -> Optional[ClassRemap]:
    """``ClassRemap`` of ``MODEL.WEIGHTS_CLASSES`` and the ``thing_classes`` of the datasets
    named by ``datasets_key``; None when ``MODEL.WEIGHTS_CLASSES`` is empty.

    Raises:
        ValueError: the datasets disagree on their classes, or have none.
    """
    from crowdloss.config.access import cfg_get

    source = resolve_class_names(cfg_get(cfg, "MODEL.WEIGHTS_CLASSES"))
    if source is None:
        return None
    names = cfg_get(cfg, datasets_key)
    names = [names] if isinstance(names, str) else list(names or ())
    target = None
    for name in names:
        classes = tuple(dataset_class_names(name, cfg))
        if target is not None and classes != target:
            raise ValueError(f"{datasets_key}: datasets {names} have different classes "
                             f"({list(target)[:4]}... vs {list(classes)[:4]}...); "
                             "MODEL.WEIGHTS_CLASSES needs one class list")
        target = classes
    if not target:
        raise ValueError(f"MODEL.WEIGHTS_CLASSES is set but {datasets_key} names no dataset "
                         "with thing_classes to map them to")
    return ClassRemap(source, target)


def dataset_class_names(name: str, cfg=None) -> List[str]:
    """``thing_classes`` of a registered dataset (loading it when only loading sets them, as a
    COCO json does)."""
    from crowdloss.data.catalog import MetadataCatalog

    classes = MetadataCatalog.get(name).get("thing_classes")
    if not classes:
        from crowdloss.data.build import get_dataset_dicts

        get_dataset_dicts([name], cfg)
        classes = MetadataCatalog.get(name).get("thing_classes")
    if not classes:
        raise ValueError(f"dataset {name!r} has no thing_classes in its metadata")
    return list(classes)
