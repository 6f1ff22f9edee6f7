"""Datasets, transforms, samplers and loaders (see docs/internals.md).

The file-format side (catalog, odgt / COCO / VOC parsing, image checks, box clipping,
annotations) needs numpy only and is imported here; the torch side (loaders, mapper, samplers)
and the OpenCV transforms load on first attribute access, so the evaluation command can share
the odgt parser without importing torch.
"""
import importlib

from .annotations import Annotations
from .boxes import clip_and_drop
from .catalog import CONFIGURABLE_LOADERS, DatasetCatalog, MetadataCatalog, datasets_root
from .coco import COCO_CLASSES, load_coco_json, register_coco_instances
from .crowdhuman import load_crowdhuman_odgt
from .csv import (load_csv_annotations, load_csv_classes, register_csv_from_config,
                  register_csv_instances)
from .builtin import register_crowdhuman_instances, register_voc_instances
from .voc import VOC_CLASSES, apply_difficult_policy, load_voc_instances

_LAZY = {
    "build_test_loader": "build", "build_train_loader": "build", "get_dataset_dicts": "build",
    "trivial_batch_collator": "build", "DatasetMapper": "mapper",
    "AspectRatioGroupedBatcher": "samplers", "InferenceSampler": "samplers",
    "TrainingSampler": "samplers", "build_transforms": "transforms",
}

__all__ = [
    "DatasetCatalog", "MetadataCatalog", "datasets_root", "load_coco_json",
    "register_coco_instances", "load_crowdhuman_odgt", "register_crowdhuman_instances",
    "CONFIGURABLE_LOADERS", "Annotations", "clip_and_drop",
    "VOC_CLASSES", "apply_difficult_policy", "load_voc_instances", "register_voc_instances",
    "COCO_CLASSES", "load_csv_classes", "load_csv_annotations", "register_csv_instances",
    "register_csv_from_config",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
