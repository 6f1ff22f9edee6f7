"""VOC xml -> dataset dicts: coordinates, classes, difficult, sizes, errors naming file:line,
registration (builtin names, custom datasets), the training difficult policy."""
import os

import numpy as np
import pytest

from crowdloss.config import BaseDetectionConfig
from crowdloss.data import (VOC_CLASSES, DatasetCatalog, MetadataCatalog, apply_difficult_policy,
                            build_train_loader, get_dataset_dicts, load_voc_instances,
                            register_voc_instances)
from voc_files import annotation_xml, object_xml, write_voc

IMAGES = {
    "000001": (40, 60, [("dog", 1, 1, 60, 40, 0), ("person", 5, 6, 5, 9, 1)]),
    "000002": (30, 20, [("tvmonitor", 3, 4, 15, 25, None), ("person", 10, 10, 30, 50, 0)]),
    "000003": (20, 20, []),
}


@pytest.fixture
def voc(tmp_path):
    return write_voc(tmp_path / "VOC2007", IMAGES)


def test_coordinates_classes_difficult_and_sizes(voc):
    dicts = load_voc_instances(voc, "test")
    assert [d["image_id"] for d in dicts] == ["000001", "000002", "000003"]
    d1, d2, d3 = dicts
    assert (d1["height"], d1["width"]) == (40, 60)
    assert d1["file_name"] == os.path.abspath(os.path.join(voc, "JPEGImages", "000001.jpg"))
    # 1-based inclusive pixels -> continuous: (xmin - 1, ymin - 1, xmax, ymax); the whole image
    # is (0, 0, W, H); xmin == xmax is a one-pixel-wide box.
    assert d1["annotations"] == [
        {"bbox": [0.0, 0.0, 60.0, 40.0], "category_id": VOC_CLASSES.index("dog"),
         "difficult": False},
        {"bbox": [4.0, 5.0, 5.0, 9.0], "category_id": 14, "difficult": True}]
    # A missing <difficult> is "not difficult"; a box reaching outside the image is clipped.
    assert d2["annotations"] == [
        {"bbox": [2.0, 3.0, 15.0, 25.0], "category_id": 19, "difficult": False},
        {"bbox": [9.0, 9.0, 20.0, 30.0], "category_id": 14, "difficult": False}]
    assert d3["annotations"] == []
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor" and len(VOC_CLASSES) == 20


def test_box_fully_outside_is_dropped_and_size_from_header(tmp_path):
    root = write_voc(tmp_path, {"a": (10, 12, [("cat", 20, 2, 30, 5, 0), ("cat", 2, 2, 5, 5, 0)])},
                     split="train", size=False)
    (d,) = load_voc_instances(root, "train", check_image_size=False)
    assert (d["height"], d["width"]) == (10, 12)  # no <size>: read from the image header
    assert d["annotations"] == [{"bbox": [1.0, 1.0, 5.0, 5.0], "category_id": 7,
                                 "difficult": False}]


def test_person_layout_parts_are_not_objects(voc):
    # VOC person-layout objects nest <part>s with their own <name> and <bndbox>.
    part = "    <part>\n      <name>head</name>\n      <bndbox><xmin>9</xmin><ymin>9</ymin>" \
           "<xmax>12</xmax><ymax>12</ymax></bndbox>\n    </part>\n  </object>"
    xml = annotation_xml("000001", 40, 60, [("person", 5, 5, 30, 30, 0)])
    _rewrite(voc, "000001", xml.replace("  </object>", part))
    (d, *_) = load_voc_instances(voc, "test")
    assert d["annotations"] == [{"bbox": [4.0, 4.0, 30.0, 30.0], "category_id": 14,
                                 "difficult": False}]


def test_unreadable_image_is_skipped_or_named(voc):
    with open(os.path.join(voc, "JPEGImages", "000001.jpg"), "wb") as f:
        f.write(b"not an image at all")
    with pytest.raises(ValueError, match="000001.jpg"):
        load_voc_instances(voc, "test")
    assert len(load_voc_instances(voc, "test", skip_bad_images=True)) == 2


def _rewrite(root, image_id, text):
    with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
        f.write(text)


@pytest.mark.parametrize("body, message", [
    ("<annotation>\n  <object>\n    <name>dog</name>\n  </annotation>",
     r"000001.xml:4: malformed XML \(mismatched tag"),
    (annotation_xml("000001", 40, 60, [("dog", 1, 1, 9, 9)]).replace("<ymax>9</ymax>", ""),
     r"000001.xml:\d+: <bndbox> has no <ymax>"),
    (annotation_xml("000001", 40, 60, [("dog", 1, 1, 9, 9)]).replace("<name>dog</name>", ""),
     r"000001.xml:\d+: <object> has no <name>"),
    (annotation_xml("000001", 40, 60, [("dog", 1, 1, 9, 9), ("unicorn", 1, 1, 9, 9)]),
     r"000001.xml:23: unknown class 'unicorn'"),
    (annotation_xml("000001", 40, 60, [("dog", 9, 1, 8, 9)]),
     r"000001.xml:\d+: empty box xmin=9 ymin=1 xmax=8 ymax=9"),
    (annotation_xml("000001", 40, 60, [("dog", "a", 1, 8, 9)]),
     r"000001.xml:\d+: <xmin> must be a finite number, got 'a'"),
    (annotation_xml("000001", 40, 60, [("dog", 1, 1, 8, 9, 2)]),
     r"000001.xml:\d+: <difficult> must be 0 or 1, got '2'"),
    (annotation_xml("000001", 41, 60, []), r"000001.xml: <size> says 41x60 .* is 40x60"),
])
def test_bad_annotations_name_file_and_line(voc, body, message):
    _rewrite(voc, "000001", body)
    with pytest.raises(ValueError, match=message):
        load_voc_instances(voc, "test")


def test_missing_files_and_skip_bad_images(voc, caplog):
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/val.txt"):
        load_voc_instances(voc, "val")
    os.remove(os.path.join(voc, "JPEGImages", "000002.jpg"))
    with pytest.raises(FileNotFoundError, match="image of '000002' not found"):
        load_voc_instances(voc, "test")
    kept = load_voc_instances(voc, "test", skip_bad_images=True)
    assert [d["image_id"] for d in kept] == ["000001", "000003"]
    assert "skipped 1 bad images" in caplog.text
    os.remove(os.path.join(voc, "Annotations", "000003.xml"))
    with pytest.raises(FileNotFoundError, match="000003.xml"):
        load_voc_instances(voc, "test", skip_bad_images=True)  # annotation errors always raise


def test_custom_classes_registration_and_catalog(tmp_path):
    root = write_voc(tmp_path / "mine", {"x1": (16, 16, [("head", 2, 2, 8, 8, 0)]),
                                         "x2": (16, 16, [("body", 1, 1, 16, 16, 1)])},
                     split="all", ext=".png")
    register_voc_instances("voc_custom_t", root, "all", class_names=["body", "head"])
    register_voc_instances("voc_custom_t", root, "all", class_names=["body", "head"])  # no-op
    with pytest.raises(KeyError, match="already registered with other arguments"):
        register_voc_instances("voc_custom_t", root, "all", class_names=["head", "body"])
    meta = MetadataCatalog.get("voc_custom_t")
    assert meta["evaluator_type"] == "voc" and meta["thing_classes"] == ["body", "head"]
    assert meta["use_07_metric"] is False and meta["split"] == "all"
    assert meta["image_root"] == os.path.join(root, "JPEGImages")
    dicts = DatasetCatalog.get("voc_custom_t")
    assert [a["category_id"] for d in dicts for a in d["annotations"]] == [1, 0]
    assert dicts[0]["file_name"].endswith("x1.png")
    with pytest.raises(ValueError, match="unknown class 'head'.*known: body"):
        load_voc_instances(root, "all", class_names=["body"])


def test_builtin_names(tmp_path, monkeypatch):
    for name, split in (("voc_2007_trainval", "trainval"), ("voc_2007_test", "test"),
                        ("voc_2012_trainval", "trainval")):
        meta = MetadataCatalog.get(name)
        assert meta["evaluator_type"] == "voc" and meta["split"] == split
        assert meta["thing_classes"] == list(VOC_CLASSES)
        assert meta["use_07_metric"] == name.startswith("voc_2007")
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(tmp_path))
    write_voc(tmp_path / "VOCdevkit" / "VOC2007", {"000009": (8, 8, [("cow", 1, 1, 4, 4, 0)])})
    write_voc(tmp_path / "VOCdevkit" / "VOC2012", {"2008_000001": (8, 8, [])}, split="trainval")
    assert [d["image_id"] for d in DatasetCatalog.get("voc_2007_test")] == ["000009"]
    assert DatasetCatalog.get("voc_2012_trainval")[0]["image_id"] == "2008_000001"


def test_difficult_policy():
    dicts = [{"image_id": 1, "annotations": [
        {"bbox": [0, 0, 2, 2], "category_id": 3, "difficult": True},
        {"bbox": [0, 0, 3, 3], "category_id": 4, "difficult": False}]},
        {"image_id": 2, "annotations": [{"bbox": [0, 0, 2, 2], "category_id": 1}]}]
    assert apply_difficult_policy(dicts, "keep") is dicts
    dropped = apply_difficult_policy(dicts, "drop")
    assert [a["category_id"] for a in dropped[0]["annotations"]] == [4]
    assert dropped[1] is dicts[1] and len(dicts[0]["annotations"]) == 2  # input untouched
    ignored = apply_difficult_policy(dicts, "ignore")
    assert [a["category_id"] for a in ignored[0]["annotations"]] == [-1, 4]
    with pytest.raises(ValueError, match="TRAIN_DIFFICULT must be one of"):
        apply_difficult_policy(dicts, "skip")


def _cfg(**datasets):
    cfg = BaseDetectionConfig()
    cfg.merge(dict(
        SEED=1, INPUT=dict(FORMAT="BGR", AUG=dict(TRAIN_PIPELINES=[])),
        DATASETS=dict(TRAIN=("voc_train_t",), BOX_TYPE="fbox", SKIP_BAD_IMAGES=False, **datasets),
        DATALOADER=dict(NUM_WORKERS=0, ASPECT_RATIO_GROUPING=False, FILTER_EMPTY_ANNOTATIONS=True),
        SOLVER=dict(IMS_PER_DEVICE=1)))
    return cfg


def test_training_view_applies_the_policy_before_filtering(tmp_path):
    root = write_voc(tmp_path, {"a": (12, 14, [("cat", 1, 1, 6, 6, 1)]),
                                "b": (12, 14, [("cat", 2, 2, 9, 9, 0), ("dog", 1, 1, 3, 3, 1)])},
                     split="trainval")
    register_voc_instances("voc_train_t", root, "trainval")
    # The test view keeps every box, flagged; the training view applies TRAIN_DIFFICULT.
    assert len(get_dataset_dicts(["voc_train_t"], _cfg())) == 2
    assert _cfg().DATASETS.TRAIN_DIFFICULT == "drop"  # the declared default
    cfg = _cfg(TRAIN_DIFFICULT="drop")
    dicts = get_dataset_dicts(["voc_train_t"], cfg, training=True, filter_empty=True)
    assert [d["image_id"] for d in dicts] == ["b"]  # "a" held only a difficult box
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [7]
    ignore = get_dataset_dicts(["voc_train_t"], _cfg(TRAIN_DIFFICULT="ignore"), training=True,
                               filter_empty=True)
    assert [[a["category_id"] for a in d["annotations"]] for d in ignore] == [[7, -1]]
    batch = next(iter(build_train_loader(cfg)))
    inst = batch[0]["instances"]
    assert batch[0]["image_id"] == "b" and inst.gt_classes.tolist() == [7]
    np.testing.assert_array_equal(inst.gt_boxes.numpy(), [[1, 1, 9, 9]])


def test_object_xml_helper_round_trip(tmp_path):
    # The helper itself: a difficult tag is written only when asked.
    assert "<difficult>" not in object_xml("dog", 1, 1, 2, 2, None)
    assert "<difficult>1</difficult>" in object_xml("dog", 1, 1, 2, 2, 1)
