"""The cvpods dataset names. Registration is lazy: nothing touches the disk here."""
from __future__ import annotations

import functools
import os
from typing import Sequence

from .catalog import CONFIGURABLE_LOADERS, DatasetCatalog, MetadataCatalog, datasets_root
from .coco import COCO_CLASSES, load_coco_json
from .crowdhuman import load_crowdhuman_odgt
from .voc import VOC_CLASSES, load_voc_instances

__all__ = ["register_crowdhuman_instances", "register_voc_instances", "register_all",
           "COCO_SERVER_SPLITS"]

# name -> (year folder under datasets/VOCdevkit, split); VOC07 test is scored with the
# 11-point AP of its year. Train on 07+12 with DATASETS.TRAIN = ("voc_2007_trainval",
# "voc_2012_trainval"): DATASETS.TRAIN is a list of names, so no combined name is needed.
_VOC_BUILTIN = {
    "voc_2007_trainval": ("VOC2007", "trainval"),
    "voc_2007_test": ("VOC2007", "test"),
    "voc_2012_trainval": ("VOC2012", "trainval"),
}


def _crowdhuman_loader(odgt_file, image_root, prepare, *, box_type="fbox",
                       skip_bad_images=False, tag_map=None):
    if prepare is not None:
        prepare()
    return load_crowdhuman_odgt(odgt_file, image_root, box_type=box_type,
                                skip_bad_images=skip_bad_images, tag_map=tag_map)


def register_crowdhuman_instances(name: str, odgt_file: str, image_root: str, *,
                                  prepare=None) -> None:
    """Register a CrowdHuman-format dataset (honours DATASETS.BOX_TYPE / SKIP_BAD_IMAGES /
    TAG_MAP).

    Args:
        prepare: optional zero-argument callable run before loading (e.g. generate the data).
    """
    loader = functools.partial(_crowdhuman_loader, os.fspath(odgt_file), os.fspath(image_root),
                               prepare)
    DatasetCatalog.register(name, loader)
    CONFIGURABLE_LOADERS[name] = loader
    MetadataCatalog.set(name, evaluator_type="crowdhuman", thing_classes=["person"],
                        gt_file=os.fspath(odgt_file), image_root=os.fspath(image_root),
                        created_on_load=prepare is not None)


def _builtin_crowdhuman(name, folder, split, *, box_type="fbox", skip_bad_images=False,
                        tag_map=None):
    # Paths resolve at load time so CROWDLOSS_DATASETS set after import is honoured.
    root = datasets_root() / folder
    odgt, images = root / "annotations" / f"annotation_{split}.odgt", root / "Images"
    MetadataCatalog.set(name, gt_file=str(odgt), image_root=str(images))
    if folder == "synthcrowd":
        from .synthetic import ensure_synthcrowd  # cv2 drawing code only when needed

        ensure_synthcrowd(str(root))
    return load_crowdhuman_odgt(odgt, images, box_type=box_type, skip_bad_images=skip_bad_images,
                                tag_map=tag_map)


PERSON_HEAD_CLASSES = ("person", "head")


def _synthcrowd_person_head(name, split, *, skip_bad_images=False, **_other_options):
    """synthcrowd as pytorch-retinanet CSV (built once from its odgt by the CrowdHuman CSV
    builder: fbox persons, heads, ignore regions as class "ignore"), read back as CSV."""
    from .crowdhuman_csv import build_crowdhuman_csv
    from .csv import load_csv_annotations
    from .synthetic import ensure_synthcrowd

    root = datasets_root() / "synthcrowd"
    ensure_synthcrowd(str(root))
    odgt, images = root / "annotations" / f"annotation_{split}.odgt", root / "Images"
    out = root / "csv" / f"person_head_{split}.csv"
    # Rebuilt when the odgt is newer (a regenerated dataset); the content is a function of
    # the odgt, so concurrent ranks writing it (atomically) agree.
    if not out.is_file() or out.stat().st_mtime_ns < odgt.stat().st_mtime_ns:
        build_crowdhuman_csv(str(odgt), str(images), str(out), ignore="class",
                             ignore_class="ignore")
    MetadataCatalog.set(name, gt_file=str(odgt), image_root=str(images),
                        annotations_csv=str(out))
    return load_csv_annotations(str(out), PERSON_HEAD_CLASSES, ignore_class="ignore",
                                skip_bad_images=skip_bad_images, image_id="stem")


def _builtin_coco(name, split, *, skip_bad_images=False, box_type="fbox", tag_map=None):
    # box_type / tag_map are odgt options (CONFIGURABLE_LOADERS passes every option).
    root = datasets_root() / "coco"
    json_file = str(root / "annotations" / f"instances_{split}2017.json")
    MetadataCatalog.set(name, gt_file=json_file, json_file=json_file,
                        image_root=str(root / f"{split}2017"))
    return load_coco_json(json_file, str(root / f"{split}2017"), dataset_name=name,
                          skip_bad_images=skip_bad_images)


def _voc_loader(dirname, split, class_names, check_image_size, *, skip_bad_images=False,
                **_other_options):
    # CONFIGURABLE_LOADERS pass every dataset option (box_type...); VOC uses this one only.
    return load_voc_instances(dirname() if callable(dirname) else dirname, split,
                              class_names=class_names, check_image_size=check_image_size,
                              skip_bad_images=skip_bad_images)


def register_voc_instances(name: str, dirname: str, split: str, *,
                           class_names: Sequence[str] = VOC_CLASSES, use_07_metric: bool = False,
                           check_image_size: bool = True) -> None:
    """Register a VOC-format split (``Annotations/``, ``ImageSets/Main/``, ``JPEGImages/``).

    Callable from an experiment's ``config.py`` / ``net.py``; nothing is read until the name
    is used. Registering the same name again with the same arguments is a no-op (an
    experiment module may be imported twice); with other arguments it is an error.

    Args:
        dirname: the year folder (e.g. ``.../VOCdevkit/VOC2007``).
        split: the ``ImageSets/Main/<split>.txt`` list.
        class_names: names in contiguous-id order (``thing_classes``).
        use_07_metric: score with VOC2007's 11-point AP instead of the area under the
            interpolated curve (VOC2010+).
        check_image_size: cross-check every xml ``<size>`` against the image header.

    Honours ``DATASETS.SKIP_BAD_IMAGES``; the evaluator is "voc" (``VOCEvaluator``).
    """
    args = dict(dirname=os.fspath(dirname), split=split, thing_classes=list(class_names),
                use_07_metric=bool(use_07_metric))
    if name in DatasetCatalog:
        old = MetadataCatalog.get(name)
        if {k: old.get(k) for k in args} == args:
            return
        raise KeyError(f"dataset '{name}' is already registered with other arguments "
                       f"({ {k: old.get(k) for k in args} })")
    loader = functools.partial(_voc_loader, args["dirname"], split, tuple(class_names),
                               check_image_size)
    DatasetCatalog.register(name, loader)
    CONFIGURABLE_LOADERS[name] = loader
    # image_root: what a pre-run check of dataset files looks for.
    MetadataCatalog.set(name, evaluator_type="voc",
                        image_root=os.path.join(args["dirname"], "JPEGImages"), **args)


def _builtin_voc_dir(folder: str) -> str:
    # Resolved at load time so CROWDLOSS_DATASETS set after import is honoured.
    return str(datasets_root() / "VOCdevkit" / folder)


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


def _builtin_paths(name: str) -> dict:
    """File metadata of a built-in dataset under the CURRENT datasets root (an env var set after
    import, e.g. by a test or a launcher, must be honoured by pre-run checks too)."""
    root = datasets_root()
    if name in _VOC_BUILTIN:
        folder = _builtin_voc_dir(_VOC_BUILTIN[name][0])
        return dict(dirname=folder, image_root=os.path.join(folder, "JPEGImages"))
    if name in COCO_SERVER_SPLITS:
        json_name, image_folder, _ = COCO_SERVER_SPLITS[name]
        json_file = str(root / "coco" / "annotations" / json_name)
        return dict(gt_file=json_file, json_file=json_file,
                    image_root=str(root / "coco" / image_folder))
    folder, split = name.rsplit("_", 1)
    if folder == "synthcrowd_person_head":  # CSV rows built from synthcrowd's odgt
        folder = "synthcrowd"
    if folder == "coco_2017":
        json_file = str(root / "coco" / "annotations" / f"instances_{split}2017.json")
        return dict(gt_file=json_file, json_file=json_file,
                    image_root=str(root / "coco" / f"{split}2017"))
    return dict(gt_file=str(root / folder / "annotations" / f"annotation_{split}.odgt"),
                image_root=str(root / folder / "Images"))


BUILTIN_NAMES = (list(_VOC_BUILTIN)
                 + [f"{f}_{s}" for s in ("train", "val") for f in ("crowdhuman", "synthcrowd")]
                 + [f"coco_2017_{s}" for s in ("train", "val")] + list(COCO_SERVER_SPLITS)
                 + [f"synthcrowd_person_head_{s}" for s in ("train", "val")])


# The paths last written by refresh_builtin_metadata, per dataset: a value that still equals
# them follows the datasets root; one a user (or a test) set since is theirs and kept.
_WRITTEN: dict = {}


def refresh_builtin_metadata() -> None:
    """Point the built-in datasets' file metadata at the current datasets root, leaving any
    path that was set by hand since the last refresh alone."""
    for name in BUILTIN_NAMES:
        meta, before = MetadataCatalog.get(name), _WRITTEN.get(name, {})
        fresh = {key: value for key, value in _builtin_paths(name).items()
                 if key not in meta or meta[key] == before.get(key)}
        MetadataCatalog.set(name, **fresh)
        _WRITTEN[name] = {**before, **fresh}


def register_all() -> None:
    """Register crowdhuman_*, synthcrowd_*, synthcrowd_person_head_*, coco_2017_* (train, val;
    test-dev: image info only, its detections are written for the COCO server instead of
    scored) and voc_*."""
    for name, (folder, split) in _VOC_BUILTIN.items():
        loader = functools.partial(_voc_loader, functools.partial(_builtin_voc_dir, folder),
                                   split, VOC_CLASSES, True)
        DatasetCatalog.register(name, loader)
        CONFIGURABLE_LOADERS[name] = loader
        MetadataCatalog.set(name, evaluator_type="voc", split=split,
                            thing_classes=list(VOC_CLASSES), use_07_metric=folder == "VOC2007")
    for split in ("train", "val"):
        for folder in ("crowdhuman", "synthcrowd"):
            name = f"{folder}_{split}"
            loader = functools.partial(_builtin_crowdhuman, name, folder, split)
            DatasetCatalog.register(name, loader)
            CONFIGURABLE_LOADERS[name] = loader
            # created_on_load: generated on first load, the CLI's check must not ask for files
            MetadataCatalog.set(name, evaluator_type="crowdhuman", thing_classes=["person"],
                                created_on_load=folder == "synthcrowd")
        name = f"coco_2017_{split}"
        loader = functools.partial(_builtin_coco, name, split)
        DatasetCatalog.register(name, loader)
        CONFIGURABLE_LOADERS[name] = loader
        MetadataCatalog.set(name, evaluator_type="coco", thing_classes=list(COCO_CLASSES))
        # person + head from synthcrowd's images: trained on CSV rows as the CrowdHuman seed
        # trains, scored with the CrowdHuman metrics on its person class (the odgt).
        name = f"synthcrowd_person_head_{split}"
        loader = functools.partial(_synthcrowd_person_head, name, split)
        DatasetCatalog.register(name, loader)
        CONFIGURABLE_LOADERS[name] = loader
        MetadataCatalog.set(name, evaluator_type="crowdhuman",
                            thing_classes=list(PERSON_HEAD_CLASSES), ap_convention="retinanet_csv",
                            created_on_load=True)
    for name, (json_name, folder, server_split) in COCO_SERVER_SPLITS.items():
        DatasetCatalog.register(name, functools.partial(_builtin_coco_image_info, name,
                                                        json_name, folder))
        MetadataCatalog.set(name, evaluator_type="coco", has_annotations=False,
                            submission_split=server_split)
    refresh_builtin_metadata()


if "crowdhuman_train" not in DatasetCatalog:
    register_all()
