"""Bad images and bad annotations on the data side, with real corrupt files written here.

Bad images: a JPEG truncated to a third (decodes grey-bottomed through cv2.imread), a JPEG cut
to 300 bytes (its header still parses), a truncated PNG, a JPEG whose entropy data is damaged
but which still ends with its end marker (only libjpeg's warning tells), and a missing file.
Every one is an error naming the path, or with skip_bad_images a logged skip that the train
loader (and its resume) and the test loader survive.
"""
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crowdloss.data import (DatasetCatalog, build_test_loader, build_train_loader,
                            get_dataset_dicts, load_coco_json, load_crowdhuman_odgt,
                            register_coco_instances, register_crowdhuman_instances)
from crowdloss.data.boxes import DroppedBoxes, clip_and_drop
from crowdloss.data.image_io import (BadImageError, check_image_file, read_image,
                                     read_image_size)

from bad_files import (loader_cfg as _cfg, write_corrupt_middle, write_cut_300, write_good,
                       write_truncated_third)


@pytest.fixture
def data_log(caplog):
    logger = logging.getLogger("crowdloss.data")
    old = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(old)


def _box(tag="person", f=(10, 10, 20, 30), ignore=0, **extra_keys):
    return {"tag": tag, "fbox": list(f), "vbox": list(f), "hbox": [12, 10, 5, 5],
            "extra": {"ignore": ignore, **extra_keys}}


def _odgt(tmp_path, records, name="a.odgt"):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return str(p)


# ------------------------------------------------------------------------- image checks
def test_read_image_rejects_truncated_and_corrupt_files_naming_the_path(tmp_path):
    good = write_good(tmp_path / "good.jpg")
    assert read_image(str(good)).shape == (60, 80, 3)
    assert check_image_file(str(good)) == (60, 80)
    bad = [write_truncated_third(tmp_path / "third.jpg"), write_cut_300(tmp_path / "cut.jpg"),
           write_truncated_third(tmp_path / "third.png"),
           write_corrupt_middle(tmp_path / "middle.jpg")]
    # cv2.imread itself returns a full-size (partly grey) array for two of them: the fault
    assert cv2.imread(str(bad[0])) is not None and cv2.imread(str(bad[3])) is not None
    for path in bad:
        with pytest.raises(BadImageError, match=str(path.name)):
            read_image(str(path))
    # the load-time check sees the missing end marker without decoding
    for path in bad[:3]:
        with pytest.raises(BadImageError, match="truncated"):
            check_image_file(str(path))
    assert check_image_file(str(bad[3])) == (60, 80)  # only a decode can tell
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(str(tmp_path / "nope.jpg"))
    with pytest.raises(BadImageError, match="nope.jpg"):  # missing is a bad image too
        check_image_file(str(tmp_path / "nope.jpg"))


def test_jpeg_with_bytes_after_the_end_marker_is_accepted(tmp_path):
    path = write_good(tmp_path / "trailer.jpg")
    path.write_bytes(path.read_bytes() + b"\x00" * 16 + b"camera trailer")
    assert check_image_file(str(path)) == (60, 80)
    assert read_image(str(path)).shape == (60, 80, 3)


def test_read_image_size_header_only(tmp_path):
    write_good(tmp_path / "x.jpg", 37, 53)
    write_good(tmp_path / "x.png", 21, 13)
    assert read_image_size(str(tmp_path / "x.jpg")) == (37, 53)
    assert read_image_size(str(tmp_path / "x.png")) == (21, 13)


# --------------------------------------------------------------- load-time: the loaders
@pytest.fixture
def bad_set(tmp_path):
    """Six images: i0..i2 good, i3 truncated to a third, i4 cut to 300 bytes, i5 missing."""
    root = tmp_path / "Images"
    root.mkdir()
    for k in range(3):
        write_good(root / f"i{k}.jpg", seed=k)
    write_truncated_third(root / "i3.jpg")
    write_cut_300(root / "i4.jpg")
    recs = [{"ID": f"i{k}", "gtboxes": [_box(), _box("mask", f=(40, 5, 20, 20))]}
            for k in range(6)]
    return _odgt(tmp_path, recs), root


@pytest.mark.parametrize("bad", ["i3", "i4", "i5"])
def test_odgt_loader_bad_image_is_an_error_naming_the_path(tmp_path, bad_set, bad):
    odgt, root = bad_set
    keep = {"i0", "i1", bad}
    lines = [ln for ln in Path(odgt).read_text().splitlines() if json.loads(ln)["ID"] in keep]
    odgt = _odgt(tmp_path, lines, "one_bad.odgt")
    with pytest.raises(BadImageError, match=rf"Images/{bad}(\.jpg|\{{)"):
        load_crowdhuman_odgt(odgt, root)


def test_odgt_loader_skips_bad_images_with_their_paths_logged(bad_set, data_log):
    odgt, root = bad_set
    dicts = load_crowdhuman_odgt(odgt, root, skip_bad_images=True)
    assert [d["image_id"] for d in dicts] == ["i0", "i1", "i2"]
    for name in ("i3.jpg", "i4.jpg", "i5"):
        assert name in data_log.text
    assert "skipped 3 bad images" in data_log.text


def test_size_cache_notices_an_image_truncated_after_it_was_cached(tmp_path, bad_set):
    odgt, root = bad_set
    lines = Path(odgt).read_text().splitlines()[:3]
    odgt = _odgt(tmp_path, lines, "good.odgt")
    assert len(load_crowdhuman_odgt(odgt, root)) == 3  # sizes cached
    write_cut_300(root / "i1.jpg")
    with pytest.raises(BadImageError, match=r"i1\.jpg"):
        load_crowdhuman_odgt(odgt, root)


def test_odgt_size_disagreeing_with_the_image_is_an_error(tmp_path, bad_set):
    _, root = bad_set
    odgt = _odgt(tmp_path, [{"ID": "i0", "height": 60, "width": 80, "gtboxes": []},
                            {"ID": "i1", "height": 80, "width": 60, "gtboxes": []}])
    with pytest.raises(ValueError, match=r"a.odgt:2.*i1.*80x60.*60x80"):
        load_crowdhuman_odgt(odgt, root)


def _coco(tmp_path, images, annotations, name="c.json"):
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "person"}]}
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return str(p)


def test_coco_loader_checks_images_like_the_odgt_loader(tmp_path, bad_set, data_log):
    _, root = bad_set
    images = [{"id": k, "file_name": f"i{k}.jpg", "height": 60, "width": 80} for k in range(6)]
    js = _coco(tmp_path, images, [])
    with pytest.raises(BadImageError, match=r"i3\.jpg"):
        load_coco_json(js, str(root))
    dicts = load_coco_json(js, str(root), skip_bad_images=True)
    assert [d["image_id"] for d in dicts] == [0, 1, 2] and "skipped 3 bad images" in data_log.text
    DatasetCatalog.remove("bad_coco")
    register_coco_instances("bad_coco", js, str(root))  # DATASETS.SKIP_BAD_IMAGES reaches it
    try:
        assert len(get_dataset_dicts("bad_coco", _cfg(True))) == 3
        with pytest.raises(BadImageError, match=r"i3\.jpg"):
            get_dataset_dicts("bad_coco", _cfg(False))
    finally:
        DatasetCatalog.remove("bad_coco")
    wrong = _coco(tmp_path, [{"id": 0, "file_name": "i0.jpg", "height": 61, "width": 80}], [],
                  "w.json")
    with pytest.raises(ValueError, match=r"images\[0\].*61x80.*60x80"):
        load_coco_json(wrong, str(root))


# -------------------------------------------------- map time: train loader, resume, test
@pytest.fixture
def registered(bad_set, tmp_path):
    odgt, root = bad_set
    write_corrupt_middle(root / "i2.jpg")  # passes the load-time check, fails the decode
    DatasetCatalog.remove("bad_train")
    register_crowdhuman_instances("bad_train", odgt, root)
    yield root
    DatasetCatalog.remove("bad_train")


def test_train_loader_without_skip_names_the_bad_image(registered):
    with pytest.raises(BadImageError, match=r"i3\.jpg"):
        build_train_loader(_cfg(False))


def test_train_loader_skips_bad_images_and_resumes_bitwise(registered, data_log):
    assert [d["image_id"] for d in get_dataset_dicts("bad_train", _cfg(True))] == \
        ["i0", "i1", "i2"]  # i2 only fails when decoded
    it = iter(build_train_loader(_cfg(True)))
    batches = [next(it) for _ in range(10)]
    seen = {x["image_id"] for b in batches for x in b}
    assert seen == {"i0", "i1"} and all(len(b) == 2 for b in batches)
    assert "i2.jpg" in data_log.text and "Corrupt JPEG data" in data_log.text
    data_log.clear()
    resumed = iter(build_train_loader(_cfg(True), start_iter=3))
    for want in batches[3:]:
        got = next(resumed)
        assert [g["image_id"] for g in got] == [w["image_id"] for w in want]
        for g, w in zip(got, want):
            assert torch.equal(g["image"], w["image"])
            assert torch.equal(g["instances"].gt_boxes, w["instances"].gt_boxes)
    assert "i2.jpg" in data_log.text  # the resumed part did meet (and replace) the bad image


def test_test_loader_skips_map_time_bad_images_or_names_them(registered, tmp_path, data_log):
    with pytest.raises(BadImageError, match=r"i3\.jpg"):  # load time, before any batch
        build_test_loader(_cfg(False), "bad_train")
    # only i2 (bad when decoded) left: the error comes from the first pass over it
    odgt = _odgt(tmp_path, [{"ID": f"i{k}", "gtboxes": []} for k in range(3)], "map.odgt")
    DatasetCatalog.remove("bad_map")
    register_crowdhuman_instances("bad_map", odgt, registered)
    try:
        loader = build_test_loader(_cfg(False), "bad_map")
        with pytest.raises(BadImageError, match=r"i2\.jpg.*Corrupt JPEG data"):
            list(loader)
    finally:
        DatasetCatalog.remove("bad_map")
    batches = [b for b in build_test_loader(_cfg(True), "bad_train")]
    assert [x["image_id"] for b in batches for x in b] == ["i0", "i1"]
    assert "skipping bad image" in data_log.text and "i2.jpg" in data_log.text


# ---------------------------------------------------------------------- bad annotations
@pytest.fixture
def two_images(tmp_path):
    root = tmp_path / "Images"
    root.mkdir()
    write_good(root / "a.jpg")
    write_good(root / "b.jpg")
    return root


def _raw_box_line(image_id, raw_fbox, tag="person"):
    # NaN / Infinity are what Python's json writes for float("nan") / float("inf")
    return ('{"ID": "%s", "gtboxes": [{"tag": "%s", "fbox": %s, "extra": {"ignore": 0}}]}'
            % (image_id, tag, raw_fbox))


@pytest.mark.parametrize("raw, message", [
    ("[10, NaN, 20, 30]", "finite"), ("[10, 10, Infinity, 30]", "finite"),
    ('[10, 10, "20", 30]', "finite"), ("[10, 10, 20]", "4"), ("[10, 10, true, 30]", "finite"),
    ("[10, 10, -5, 30]", "negative width"),
])
def test_odgt_bad_box_values_are_errors_naming_file_line(tmp_path, two_images, raw, message):
    odgt = _odgt(tmp_path, [_raw_box_line("a", "[1, 1, 5, 5]"), _raw_box_line("b", raw)])
    with pytest.raises(ValueError, match=rf"a\.odgt:2.*gtboxes\[0\].*{message}"):
        load_crowdhuman_odgt(odgt, two_images)


def test_odgt_unknown_tag_is_an_error_unless_mapped(tmp_path, two_images, data_log):
    odgt = _odgt(tmp_path, [_raw_box_line("a", "[1, 1, 5, 5]"),
                            _raw_box_line("b", "[1, 1, 5, 5]", tag="persn")])
    with pytest.raises(ValueError, match=r"a\.odgt:2.*gtboxes\[0\].*unknown tag 'persn'"
                                         r".*TAG_MAP"):
        load_crowdhuman_odgt(odgt, two_images)
    dicts = load_crowdhuman_odgt(odgt, two_images, tag_map={"persn": "person"})
    assert dicts[1]["annotations"][0]["category_id"] == 0
    assert "tag 'persn' -> 'person': 1 boxes" in data_log.text
    assert load_crowdhuman_odgt(odgt, two_images, tag_map={"persn": "mask"}
                                )[1]["annotations"][0]["category_id"] == -1
    with pytest.raises(ValueError, match="TAG_MAP.*'human'"):
        load_crowdhuman_odgt(odgt, two_images, tag_map={"persn": "human"})


def test_odgt_bad_ignore_flag_and_extra_are_errors(tmp_path, two_images):
    bad = {"ID": "a", "gtboxes": [{"tag": "person", "fbox": [1, 1, 5, 5],
                                   "extra": {"ignore": "yes"}}]}
    with pytest.raises(ValueError, match=r"a\.odgt:1.*gtboxes\[0\].*ignore"):
        load_crowdhuman_odgt(_odgt(tmp_path, [bad]), two_images)
    dup = [{"ID": "a", "gtboxes": []}, {"ID": "a", "gtboxes": []}]
    with pytest.raises(ValueError, match=r"a\.odgt:2.*duplicated ID 'a'"):
        load_crowdhuman_odgt(_odgt(tmp_path, dup), two_images)


def test_dropped_degenerate_boxes_are_logged_with_file_line_and_total(tmp_path, two_images,
                                                                      data_log):
    recs = [{"ID": "a", "gtboxes": [_box(), _box(f=(90, 10, 5, 5)), _box(f=(10, 10, 0, 5))]},
            {"ID": "b", "gtboxes": [_box(f=(-30, 0, 10, 10))]}]
    dicts = load_crowdhuman_odgt(_odgt(tmp_path, recs), two_images)
    assert [len(d["annotations"]) for d in dicts] == [1, 0]
    text = data_log.text
    assert "dropped 3 empty boxes" in text
    for where in ("a.odgt:1 gtboxes[1]", "a.odgt:1 gtboxes[2]", "a.odgt:2 gtboxes[0]"):
        assert where in text


def test_coco_bad_annotations_name_file_and_index(tmp_path, two_images, data_log):
    img = [{"id": 1, "file_name": "a.jpg", "height": 60, "width": 80}]
    good = {"image_id": 1, "bbox": [1, 2, 10, 20], "category_id": 1}
    for bbox, message in ((["1", 2, 3, 4], "finite"), ([1, float("nan"), 3, 4], "finite"),
                          ([1, 2, float("inf"), 4], "finite"), ([1, 2, -3, 4], "negative")):
        js = _coco(tmp_path, img, [good, {**good, "bbox": bbox}])
        with pytest.raises(ValueError, match=rf"c\.json annotations\[1\].*{message}"):
            load_coco_json(js, str(two_images))
    js = _coco(tmp_path, img, [good, {**good, "bbox": [90, 0, 5, 5]}])
    assert len(load_coco_json(js, str(two_images))[0]["annotations"]) == 1
    assert "dropped 1 empty boxes" in data_log.text and "c.json annotations[1]" in data_log.text
    js = _coco(tmp_path, img, [{**good, "iscrowd": "no"}])
    with pytest.raises(ValueError, match=r"annotations\[0\].*iscrowd"):
        load_coco_json(js, str(two_images))


def test_config_declares_the_tag_map():
    from crowdloss.config import BaseDetectionConfig

    cfg = BaseDetectionConfig()
    assert dict(cfg.DATASETS.TAG_MAP) == {} and cfg.DATASETS.SKIP_BAD_IMAGES is False


# ----------------------------------------------------------------------- shared helpers
def test_clip_and_drop():
    boxes = np.array([[-5, 10, 30, 50], [70, -5, 100, 15], [90, 10, 95, 15], [10, 10, 10, 20],
                      [5, 5, 6, 6]], np.float64)
    kept, idx, dropped = clip_and_drop(boxes, 60, 80, np.arange(5))
    assert idx.tolist() == [0, 1, 4] and dropped == 2
    assert kept.tolist() == [[0, 10, 30, 50], [70, 0, 80, 15], [5, 5, 6, 6]]
    kept, dropped = clip_and_drop(np.zeros((0, 4), np.float32), 60, 80)
    assert kept.shape == (0, 4) and kept.dtype == np.float32 and dropped == 0


def test_dropped_boxes_log_lists_the_first_few(caplog):
    log = DroppedBoxes("src", max_listed=2)
    for k in range(5):
        log.add(f"src:{k}", [0, 0, 0, 0])
    logger = logging.getLogger("test_dropped")
    with caplog.at_level(logging.INFO, logger="test_dropped"):
        log.report(logger)
    assert "dropped 5 empty boxes" in caplog.text and "src:1" in caplog.text
    assert "src:2" not in caplog.text and "3 more" in caplog.text


def test_train_loader_skips_identically_with_worker_processes(registered):
    """Replacement choices depend on stream positions only, not on which worker (with its own
    memory of bad files and its own stderr capture) maps the batch."""
    cfg = _cfg(True)
    ref = iter(build_train_loader(cfg))
    cfg["DATALOADER"] = dict(cfg.DATALOADER, NUM_WORKERS=2)
    par = iter(build_train_loader(cfg))
    for _ in range(10):
        a, b = next(ref), next(par)
        assert [x["image_id"] for x in a] == [x["image_id"] for x in b]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
