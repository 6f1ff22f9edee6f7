"""The cvpods dataset names. Registration is lazy: nothing touches the disk here."""
from __future__ import annotations

import functools
import os

from .build import CONFIGURABLE_LOADERS
from .catalog import DatasetCatalog, MetadataCatalog, datasets_root
from .coco import load_coco_json
from .crowdhuman import load_crowdhuman_odgt

__all__ = ["register_crowdhuman_instances", "register_all"]


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


def _ensure_synthcrowd(root):
    from .synthetic import ensure_synthcrowd  # cv2 drawing code only when needed

    ensure_synthcrowd(root)


def register_all() -> None:
    root = datasets_root()
    for split in ("train", "val"):
        ch = root / "crowdhuman"
        register_crowdhuman_instances(f"crowdhuman_{split}",
                                      ch / "annotations" / f"annotation_{split}.odgt", ch / "Images")
        sc = root / "synthcrowd"
        register_crowdhuman_instances(f"synthcrowd_{split}",
                                      sc / "annotations" / f"annotation_{split}.odgt", sc / "Images",
                                      prepare=functools.partial(_ensure_synthcrowd, str(sc)))
        name = f"coco_2017_{split}"
        json_file = str(root / "coco" / "annotations" / f"instances_{split}2017.json")
        image_root = str(root / "coco" / f"{split}2017")
        DatasetCatalog.register(name, functools.partial(load_coco_json, json_file, image_root,
                                                        dataset_name=name))
        MetadataCatalog.set(name, evaluator_type="coco", gt_file=json_file,
                            image_root=image_root, json_file=json_file)


if "crowdhuman_train" not in DatasetCatalog:
    register_all()
