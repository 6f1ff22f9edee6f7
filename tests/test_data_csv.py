"""pytorch-retinanet CSV datasets: the format's rules, every malformed row named by file:line,
registration from net.py or from DATASETS.CSV keys, and the evaluator they get."""
import pytest

from bad_files import write_good, write_truncated_third
from crowdloss.config import RetinaNetConfig
from crowdloss.data import DatasetCatalog, MetadataCatalog
from crowdloss.data.build import get_dataset_dicts
from crowdloss.data.csv import (load_csv_annotations, load_csv_classes, register_csv_from_config,
                                register_csv_instances)
from crowdloss.data.image_io import MissingImageError


@pytest.fixture
def files(tmp_path):
    (tmp_path / "img").mkdir()
    write_good(tmp_path / "img" / "a.jpg", 60, 80)
    write_good(tmp_path / "img" / "b.png", 50, 40, seed=1)
    (tmp_path / "classes.csv").write_text("person,0\nhead,1\n")
    return tmp_path


def write(path, text):
    path.write_text(text)
    return str(path)


def test_rows_images_and_conventions(files):
    ann = write(files / "ann.csv",
                "img/a.jpg,10,5,20,25,person\n"
                "img/b.png,,,,,\n"
                "img/a.jpg,12.5,6,14.5,9,head\n"      # decimals accepted
                "\n"                                    # blank lines skipped
                "img/a.jpg,-4,50,30,70,person\n")      # clipped to the 60 x 80 image
    names = load_csv_classes(str(files / "classes.csv"))
    assert names == ["person", "head"]
    dicts = load_csv_annotations(ann, names)
    assert [d["image_id"] for d in dicts] == ["img/a.jpg", "img/b.png"]  # first-row order
    a, b = dicts
    assert (a["height"], a["width"]) == (60, 80) and a["file_name"] == str(files / "img/a.jpg")
    # x2 is the right edge (width x2 - x1, no +1): numbers kept as they are
    assert [x["bbox"] for x in a["annotations"]] == [[10, 5, 20, 25], [12.5, 6, 14.5, 9],
                                                     [0, 50, 30, 60]]
    assert [x["category_id"] for x in a["annotations"]] == [0, 1, 0]
    assert b["annotations"] == [] and (b["height"], b["width"]) == (50, 40)


def test_space_delimiter_image_root_and_stems(files, tmp_path):
    ann = write(files / "seed.csv", "./img/a.jpg 1 2 3 4 person\n./img/b.png 5 6 7 8 head\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    moved = write(other / "seed.csv", open(ann).read())
    names = ["person", "head"]
    with pytest.raises(ValueError, match=r"seed.csv:1: expected 6 columns.*delimiter to ' '"):
        load_csv_annotations(ann, names)
    # the seed's paths are relative to its working directory, not to the CSV
    with pytest.raises(MissingImageError, match=r"seed.csv:1: .*resolve against"):
        load_csv_annotations(moved, names, delimiter=" ")
    dicts = load_csv_annotations(moved, names, delimiter=" ", image_root=str(files),
                                 image_id="stem")
    assert [d["image_id"] for d in dicts] == ["a", "b"]


@pytest.mark.parametrize("row,message", [
    ("img/a.jpg,1,2,3,person", r"ann.csv:2: expected 6 columns"),
    ("img/a.jpg,1,2,3,4,person,extra", r"ann.csv:2: expected 6 columns"),
    ("img/a.jpg,1,2,three,4,person", r"ann.csv:2: x2 = 'three' is not a number"),
    ("img/a.jpg,1,2,3,nan,person", r"ann.csv:2: y2 = 'nan' is not a finite number"),
    ("img/a.jpg,5,2,5,4,person", r"ann.csv:2: x2 > x1 and y2 > y1 are required"),
    ("img/a.jpg,1,9,5,4,person", r"ann.csv:2: x2 > x1 and y2 > y1 are required"),
    ("img/a.jpg,1,2,3,4,car", r"ann.csv:2: unknown class 'car'"),
    (",1,2,3,4,person", r"ann.csv:2: empty image path"),
])
def test_bad_rows_name_file_and_line(files, row, message):
    ann = write(files / "ann.csv", "img/a.jpg,10,5,20,25,person\n" + row + "\n")
    with pytest.raises(ValueError, match=message):
        load_csv_annotations(ann, ["person", "head"])


def test_missing_and_bad_images(files):
    ann = write(files / "ann.csv", "img/a.jpg,1,2,3,4,person\nimg/gone.jpg,1,2,3,4,person\n")
    with pytest.raises(MissingImageError, match=r"ann.csv:2: .*gone.jpg"):
        load_csv_annotations(ann, ["person"])
    write_truncated_third(files / "img" / "cut.jpg")
    ann = write(files / "ann2.csv", "img/cut.jpg,1,2,3,4,person\nimg/a.jpg,,,,,\n")
    with pytest.raises(ValueError, match=r"ann2.csv:1: .*cut.jpg"):
        load_csv_annotations(ann, ["person"])
    dicts = load_csv_annotations(ann, ["person"], skip_bad_images=True)
    assert [d["image_id"] for d in dicts] == ["img/a.jpg"]


@pytest.mark.parametrize("text,message", [
    ("person,0\nhead\n", r"classes.csv:2: expected 2 columns"),
    ("person,0\nhead,one\n", r"classes.csv:2: class id 'one' is not an integer"),
    ("person,0\nperson,1\n", r"classes.csv:2: duplicate class name 'person'"),
    ("person,0\nhead,0\n", r"classes.csv:2: duplicate class id 0"),
    ("person,0\nhead,2\n", r"ids must be 0..1.*\[1\] are missing"),
    ("", r"no classes"),
])
def test_bad_class_maps(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_csv_classes(write(tmp_path / "classes.csv", text))


def test_class_map_order_is_by_id(tmp_path):
    assert load_csv_classes(write(tmp_path / "c.csv", "head,1\nperson,0\n")) == ["person", "head"]


def test_ignore_class_rows_become_ignore_regions(files):
    ann = write(files / "ann.csv", "img/a.jpg,1,2,3,4,person\nimg/a.jpg,5,5,9,9,ignore\n")
    d = load_csv_annotations(ann, ["person"], ignore_class="ignore")[0]
    assert [x["category_id"] for x in d["annotations"]] == [0, -1]
    with pytest.raises(ValueError, match="unknown class 'ignore'"):
        load_csv_annotations(ann, ["person"])
    with pytest.raises(ValueError, match="also a class"):
        load_csv_annotations(ann, ["person", "ignore"], ignore_class="ignore")


def test_register_from_net_py(files):
    ann = write(files / "ann.csv", "img/a.jpg,10,5,20,25,head\nimg/b.png,,,,,\n")
    name = "test_csv_register"
    try:
        register_csv_instances(name, ann, files / "classes.csv")
        register_csv_instances(name, ann, files / "classes.csv")  # same again: no-op
        with pytest.raises(KeyError, match="other arguments"):
            register_csv_instances(name, ann, files / "classes.csv", delimiter=" ")
        meta = MetadataCatalog.get(name)
        assert meta["thing_classes"] == ["person", "head"]
        assert (meta["evaluator_type"], meta["ap_convention"]) == ("per_class_ap",
                                                                   "retinanet_csv")
        dicts = DatasetCatalog.get(name)
        assert dicts[0]["annotations"][0]["category_id"] == 1
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_register_from_config_keys(files, monkeypatch):
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(files))
    write(files / "train.csv", "img/a.jpg,10,5,20,25,person\n")
    write(files / "val.csv", "img/b.png,1,1,9,9,head\n")
    cfg = RetinaNetConfig()
    assert register_csv_from_config(cfg) == []  # nothing set: nothing registered
    cfg.DATASETS.CSV.TRAIN = "train.csv"  # relative to the datasets root
    with pytest.raises(ValueError, match="DATASETS.CSV.CLASSES"):
        register_csv_from_config(cfg)
    cfg.DATASETS.CSV.CLASSES = str(files / "classes.csv")
    cfg.DATASETS.CSV.VAL = "val.csv"
    try:
        assert register_csv_from_config(cfg) == ["csv_train", "csv_val"]
        assert get_dataset_dicts(["csv_val"], cfg)[0]["annotations"][0]["category_id"] == 1
        # the config owns the names: another config replaces them
        cfg.DATASETS.CSV.VAL = "train.csv"
        register_csv_from_config(cfg)
        assert DatasetCatalog.get("csv_val")[0]["image_id"] == "img/a.jpg"
    finally:
        for name in ("csv_train", "csv_val"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
