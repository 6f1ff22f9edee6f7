"""Datasets, transforms, samplers and loaders (see docs/internals.md)."""
from .annotations import Annotations, clip_and_drop
from .catalog import DatasetCatalog, MetadataCatalog, datasets_root
from .coco import load_coco_json, register_coco_instances
from .crowdhuman import load_crowdhuman_odgt
from .build import (CONFIGURABLE_LOADERS, build_test_loader, build_train_loader,
                    get_dataset_dicts, trivial_batch_collator)
from .builtin import register_crowdhuman_instances, register_voc_instances
from .mapper import DatasetMapper
from .samplers import AspectRatioGroupedBatcher, InferenceSampler, TrainingSampler
from .transforms import build_transforms
from .voc import VOC_CLASSES, apply_difficult_policy, load_voc_instances

__all__ = [
    "Annotations", "clip_and_drop",
    "DatasetCatalog", "MetadataCatalog", "datasets_root", "load_coco_json",
    "register_coco_instances", "load_crowdhuman_odgt", "register_crowdhuman_instances",
    "CONFIGURABLE_LOADERS", "build_test_loader", "build_train_loader", "get_dataset_dicts",
    "trivial_batch_collator", "DatasetMapper", "AspectRatioGroupedBatcher", "InferenceSampler",
    "TrainingSampler", "build_transforms",
    "VOC_CLASSES", "apply_difficult_policy", "load_voc_instances", "register_voc_instances",
]
