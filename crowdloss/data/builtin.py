"""The cvpods dataset names. Registration is lazy: nothing touches the disk here."""
from __future__ import annotations

import functools
import os

from .build import CONFIGURABLE_LOADERS
from .catalog import DatasetCatalog, MetadataCatalog, datasets_root
from .coco import load_coco_json
from .crowdhuman import load_crowdhuman_odgt

__all__ = ["register_crowdhuman_instances", "register_all", "COCO_SERVER_SPLITS"]


def _crowdhuman_loader(odgt_file, image_root, prepare, *, box_type="fbox",
                       skip_bad_images=False):
    if prepare is not None:
        prepare()
    return load_crowdhuman_odgt(odgt_file, image_root, box_type=box_type,
                                skip_bad_images=skip_bad_images)


def register_crowdhuman_instances(name: str, odgt_file: str, image_root: str, *,
                                  prepare=None) -> None:
    """Register a CrowdHuman-format dataset (honours DATASETS.BOX_TYPE / SKIP_BAD_IMAGES).

    Args:
        prepare: optional zero-argument callable run before loading (e.g. generate the data).
    """
    loader = functools.partial(_crowdhuman_loader, os.fspath(odgt_file), os.fspath(image_root),
                               prepare)
    DatasetCatalog.register(name, loader)
    CONFIGURABLE_LOADERS[name] = loader
    MetadataCatalog.set(name, evaluator_type="crowdhuman", thing_classes=["person"],
                        gt_file=os.fspath(odgt_file), image_root=os.fspath(image_root))


def _builtin_crowdhuman(name, folder, split, *, box_type="fbox", skip_bad_images=False):
    # Paths resolve at load time so CROWDLOSS_DATASETS set after import is honoured.
    root = datasets_root() / folder
    odgt, images = root / "annotations" / f"annotation_{split}.odgt", root / "Images"
    MetadataCatalog.set(name, gt_file=str(odgt), image_root=str(images))
    if folder == "synthcrowd":
        from .synthetic import ensure_synthcrowd  # cv2 drawing code only when needed

        ensure_synthcrowd(str(root))
    return load_crowdhuman_odgt(odgt, images, box_type=box_type, skip_bad_images=skip_bad_images)


def _builtin_coco(name, split):
    root = datasets_root() / "coco"
    json_file = str(root / "annotations" / f"instances_{split}2017.json")
    MetadataCatalog.set(name, gt_file=json_file, json_file=json_file,
                        image_root=str(root / f"{split}2017"))
    return load_coco_json(json_file, str(root / f"{split}2017"), dataset_name=name)


def _builtin_coco_image_info(name, json_name, image_folder):
    # An image-info json: images and categories, no annotations (a server-scored split).
    root = datasets_root() / "coco"
    json_file = str(root / "annotations" / json_name)
    MetadataCatalog.set(name, gt_file=json_file, json_file=json_file,
                        image_root=str(root / image_folder))
    return load_coco_json(json_file, str(root / image_folder), dataset_name=name)


# name -> (image-info json, image folder, the COCO server's split name). test-dev images are
# part of the test2017 download.
COCO_SERVER_SPLITS = {
    "coco_2017_test-dev": ("image_info_test-dev2017.json", "test2017", "test-dev2017"),
}


def register_all() -> None:
    """Register crowdhuman_*, synthcrowd_*, coco_2017_* (train, val; test-dev: image info
    only, its detections are written for the COCO server instead of scored)."""
    root = datasets_root()
    for split in ("train", "val"):
        for folder in ("crowdhuman", "synthcrowd"):
            name = f"{folder}_{split}"
            loader = functools.partial(_builtin_crowdhuman, name, folder, split)
            DatasetCatalog.register(name, loader)
            CONFIGURABLE_LOADERS[name] = loader
            MetadataCatalog.set(
                name, evaluator_type="crowdhuman", thing_classes=["person"],
                gt_file=str(root / folder / "annotations" / f"annotation_{split}.odgt"),
                image_root=str(root / folder / "Images"))
        name = f"coco_2017_{split}"
        DatasetCatalog.register(name, functools.partial(_builtin_coco, name, split))
        json_file = str(root / "coco" / "annotations" / f"instances_{split}2017.json")
        MetadataCatalog.set(name, evaluator_type="coco", gt_file=json_file, json_file=json_file,
                            image_root=str(root / "coco" / f"{split}2017"))
    for name, (json_name, folder, server_split) in COCO_SERVER_SPLITS.items():
        DatasetCatalog.register(name, functools.partial(_builtin_coco_image_info, name,
                                                        json_name, folder))
        json_file = str(root / "coco" / "annotations" / json_name)
        MetadataCatalog.set(name, evaluator_type="coco", gt_file=json_file, json_file=json_file,
                            image_root=str(root / "coco" / folder), has_annotations=False,
                            submission_split=server_split)


if "crowdhuman_train" not in DatasetCatalog:
    register_all()
