"""CrowdHuman odgt -> pytorch-retinanet CSV and back: the builder's rows, read by the CSV
loader, are the odgt loader's boxes (generated CrowdHuman-format data with hbox)."""
import csv
import json
from collections import Counter

import pytest

from crowdloss.data import load_crowdhuman_odgt
from crowdloss.data.csv import load_csv_annotations, load_csv_classes
from crowdloss.data.synthetic import generate_synthcrowd
from crowdloss.tools.build_csv import (build_class_map, build_crowdhuman_csv, coco_names, main,
                                       read_names_file)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_synthcrowd(str(root), num_train=2, num_val=34, seed=7, workers=1)
    return root


def _odgt(root):
    return str(root / "annotations" / "annotation_val.odgt"), str(root / "Images")


def _by_image(dicts, cls):
    return {d["image_id"]: sorted(tuple(a["bbox"]) for a in d["annotations"]
                                  if a["category_id"] == cls) for d in dicts}


def test_round_trip_default(synth, tmp_path):
    odgt, images = _odgt(synth)
    out = tmp_path / "csv" / "val.csv"
    summary = build_crowdhuman_csv(odgt, images, out)
    dicts = load_csv_annotations(str(out), ["person", "head"], image_id="stem")
    full = load_crowdhuman_odgt(odgt, images, box_type="fbox")
    heads = load_crowdhuman_odgt(odgt, images, box_type="hbox")
    assert [d["image_id"] for d in dicts] == [d["image_id"] for d in full]  # every image
    assert [(d["height"], d["width"]) for d in dicts] == [(d["height"], d["width"]) for d in full]
    assert _by_image(dicts, 0) == _by_image(full, 0)   # valid full-body boxes, as the loader
    assert _by_image(dicts, 1) == _by_image(heads, 0)  # valid heads
    assert not any(a["category_id"] < 0 for d in dicts for a in d["annotations"])
    rows = list(csv.reader(open(out)))
    assert summary.written == Counter(r[5] for r in rows if r[5])
    empty = [r for r in rows if r[1:] == [""] * 5]
    assert summary.empty_images == len(empty) >= 1 and summary.images == len(dicts)
    ignored = sum(1 for d in full for a in d["annotations"] if a["category_id"] < 0)
    assert summary.dropped["ignored persons"] + summary.dropped["crowd (mask) regions"] >= ignored
    assert rows[0][0].startswith("../")  # relative to the CSV's folder, where it resolves


def test_ignore_policies_and_vbox(synth, tmp_path):
    odgt, images = _odgt(synth)
    records = [json.loads(line) for line in open(odgt)]
    tags = Counter((g["tag"], g["extra"].get("ignore", 0)) for r in records for g in r["gtboxes"])
    ignored_persons, masks = tags[("person", 1)], tags[("mask", 1)] + tags[("mask", 0)]
    valid = tags[("person", 0)]
    assert ignored_persons and masks  # the data exercises both kinds

    seed = build_crowdhuman_csv(odgt, images, tmp_path / "seed.csv", ignore="seed",
                                person_box="vbox")
    clipped = seed.dropped["boxes with no area inside the image"]
    assert seed.written["person"] + seed.written["head"] + clipped == 2 * (valid +
                                                                             ignored_persons)
    assert seed.dropped["crowd (mask) regions"] == masks and "ignore" not in seed.written
    vis = load_crowdhuman_odgt(odgt, images, box_type="vbox")
    seed_dicts = load_csv_annotations(str(tmp_path / "seed.csv"), ["person", "head"],
                                      image_id="stem")
    for d_csv, d_odgt in zip(seed_dicts, vis):  # valid visible boxes are among the persons
        persons = _by_image([d_csv], 0)[d_csv["image_id"]]
        assert set(_by_image([d_odgt], 0)[d_odgt["image_id"]]) <= set(persons)

    cls = build_crowdhuman_csv(odgt, images, tmp_path / "cls.csv", ignore="class")
    assert cls.written["ignore"] > 0 and not cls.dropped.get("ignored persons")
    dicts = load_csv_annotations(str(tmp_path / "cls.csv"), ["person", "head"],
                                 ignore_class="ignore", image_id="stem")
    full = load_crowdhuman_odgt(odgt, images, box_type="fbox")
    for d_csv, d_odgt in zip(dicts, full):  # the loader's ignore regions are all there
        assert set(_by_image([d_odgt], -1)[d_odgt["image_id"]]) <= set(
            _by_image([d_csv], -1)[d_csv["image_id"]])


def test_integer_coordinates_read_by_int(synth, tmp_path):
    odgt, images = _odgt(synth)
    out = tmp_path / "int.csv"
    summary = build_crowdhuman_csv(odgt, images, out, integer=True, paths="absolute",
                                   delimiter=" ")
    rows = [r for r in csv.reader(open(out), delimiter=" ") if r[1]]
    for r in rows:  # what pytorch-retinanet's reader does with them: int(), x2 > x1
        x1, y1, x2, y2 = (int(v) for v in r[1:5])
        assert x2 > x1 and y2 > y1 and r[0].startswith("/")
    assert summary.dropped["boxes rounding to no area (--integer)"] >= 0
    assert sum(summary.written.values()) == len(rows)


def test_head_attr_ignore_and_missing_image(tmp_path):
    (tmp_path / "Images").mkdir()
    from bad_files import write_good

    write_good(tmp_path / "Images" / "x.jpg", 100, 120)
    box = {"tag": "person", "fbox": [10, 10, 30, 60], "vbox": [10, 10, 30, 50],
           "hbox": [20, 10, 8, 8], "head_attr": {"ignore": 1}, "extra": {"ignore": 0}}
    odgt = tmp_path / "a.odgt"
    odgt.write_text(json.dumps({"ID": "x", "gtboxes": [box]}) + "\n")
    s = build_crowdhuman_csv(odgt, tmp_path / "Images", tmp_path / "a.csv")
    assert s.written == Counter(person=1) and s.dropped == Counter({"ignored heads": 1})
    odgt.write_text(odgt.read_text() + json.dumps({"ID": "gone", "gtboxes": []}) + "\n")
    with pytest.raises(FileNotFoundError, match=r"a.odgt:2: .*gone"):
        build_crowdhuman_csv(odgt, tmp_path / "Images", tmp_path / "b.csv")
    assert not (tmp_path / "b.csv").exists()  # nothing half-written
    assert main(["annotations", str(odgt), "--image-root", str(tmp_path / "Images"),
                 "--out", str(tmp_path / "c.csv")]) == 1


def test_class_maps(tmp_path):
    darknet = coco_names("darknet") + ["head"]
    assert len(darknet) == 81 and darknet[3] == "motorbike" and darknet[62] == "tvmonitor"
    assert coco_names()[3] == "motorcycle"
    assert main(["classes", "--coco", "darknet", "--extra", "head", "--out",
                 str(tmp_path / "c.csv")]) == 0
    assert load_csv_classes(str(tmp_path / "c.csv")) == darknet
    (tmp_path / "names.txt").write_text("person\r\nhead\r\n\r\n")  # Windows file, trailing blank
    assert read_names_file(str(tmp_path / "names.txt")) == ["person", "head"]
    build_class_map(["person", "a, b"], tmp_path / "q.csv")  # a comma is quoted, read back
    assert load_csv_classes(str(tmp_path / "q.csv")) == ["person", "a, b"]
    (tmp_path / "bad.txt").write_text("person\n\nhead\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: empty line"):
        read_names_file(str(tmp_path / "bad.txt"))
    with pytest.raises(ValueError, match="repeat"):
        build_class_map(["a", "a"], tmp_path / "r.csv")
