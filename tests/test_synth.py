import json
import multiprocessing as mp
import os

import numpy as np

from crowdloss.data import DatasetCatalog, get_dataset_dicts, load_crowdhuman_odgt
from crowdloss.data.synthetic import DONE_MARKER, ensure_synthcrowd, generate_synthcrowd


def _iou(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def _records(root, split="train"):
    with open(os.path.join(root, "annotations", f"annotation_{split}.odgt")) as f:
        return [json.loads(line) for line in f]


def test_synthcrowd_deterministic_and_format(tmp_path):
    a = generate_synthcrowd(str(tmp_path / "a"), num_train=12, num_val=3, seed=5, workers=2)
    b = generate_synthcrowd(str(tmp_path / "b"), num_train=12, num_val=3, seed=5, workers=1)
    for split in ("train", "val"):
        fa = open(os.path.join(a, "annotations", f"annotation_{split}.odgt"), "rb").read()
        fb = open(os.path.join(b, "annotations", f"annotation_{split}.odgt"), "rb").read()
        assert fa == fb
    imgs = sorted(os.listdir(os.path.join(a, "Images")))
    assert len(imgs) == 15
    assert all(open(os.path.join(a, "Images", n), "rb").read()
               == open(os.path.join(b, "Images", n), "rb").read() for n in imgs)
    c = generate_synthcrowd(str(tmp_path / "c"), num_train=12, num_val=3, seed=6, workers=1)
    assert _records(c) != _records(a)
    rec = _records(a)[0]
    assert "height" not in rec and "width" not in rec
    for g in rec["gtboxes"]:
        assert {"tag", "fbox", "vbox", "hbox", "extra", "head_attr"} <= set(g)
        assert "ignore" in g["extra"] and "occ" in g["extra"]
    # official loader reads sizes from headers; vbox lies inside fbox for persons
    dicts = load_crowdhuman_odgt(os.path.join(a, "annotations", "annotation_train.odgt"),
                                 os.path.join(a, "Images"))
    assert len(dicts) == 12 and all(300 <= min(d["height"], d["width"]) for d in dicts)
    for r in _records(a):
        for g in r["gtboxes"]:
            f, v = np.array(g["fbox"]), np.array(g["vbox"])
            assert v[0] >= f[0] - 0.1 and v[0] + v[2] <= f[0] + f[2] + 0.2
            assert v[1] >= f[1] - 0.1 and v[1] + v[3] <= f[1] + f[3] + 0.2


def test_synthcrowd_crowding_statistics(tmp_path):
    root = generate_synthcrowd(str(tmp_path / "s"), num_train=70, num_val=0)
    counts, crowded, valid, masks, ignored = [], 0, 0, 0, 0
    for r in _records(root):
        persons = [g for g in r["gtboxes"] if g["tag"] == "person"]
        counts.append(len(persons))
        masks += sum(g["tag"] == "mask" for g in r["gtboxes"])
        ignored += sum(g["extra"]["ignore"] for g in persons)
        boxes = np.array([g["fbox"] for g in persons if not g["extra"]["ignore"]], float)
        boxes = boxes.reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        valid += len(boxes)
        if len(boxes) > 1:
            m = _iou(boxes, boxes)
            np.fill_diagonal(m, 0)
            crowded += int((m.max(1) > 0.5).sum())
    assert crowded / valid >= 0.2
    assert max(counts) >= 50 and counts.count(0) >= 1
    assert 14 <= np.mean(counts) <= 26
    assert masks > 0 and 0 < ignored < 0.3 * sum(counts)


def _race(root):
    ensure_synthcrowd(root, num_train=6, num_val=2, workers=1)


def test_ensure_synthcrowd_race_and_registered_loader(tmp_path, monkeypatch):
    root = str(tmp_path / "ds" / "synthcrowd")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_race, args=(root,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert os.path.exists(os.path.join(root, DONE_MARKER))
    assert len(os.listdir(os.path.join(root, "Images"))) == 8
    assert [n for n in os.listdir(tmp_path / "ds") if n != "synthcrowd"] == []  # no temp dirs left
    # the builtin name loads the existing copy (datasets_root() is read at registration)
    from crowdloss.data.builtin import register_crowdhuman_instances
    DatasetCatalog.remove("sc_test")
    register_crowdhuman_instances("sc_test", os.path.join(root, "annotations", "annotation_val.odgt"),
                                  os.path.join(root, "Images"))
    assert len(get_dataset_dicts("sc_test")) == 2
    DatasetCatalog.remove("sc_test")


def test_builtin_synthcrowd_generated_on_first_use(tmp_path, monkeypatch):
    import crowdloss.data.synthetic as syn

    calls = []
    real = syn.generate_synthcrowd
    monkeypatch.setattr(syn, "generate_synthcrowd",
                        lambda root, **kw: calls.append(root) or real(root, num_train=4, num_val=2))
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(tmp_path))  # after import: still honoured
    dicts = get_dataset_dicts("synthcrowd_val")
    assert len(dicts) == 2 and calls == [str(tmp_path / "synthcrowd")]
    from crowdloss.data import MetadataCatalog
    assert MetadataCatalog.get("synthcrowd_val")["gt_file"].startswith(str(tmp_path))
    get_dataset_dicts("synthcrowd_train")
    assert len(calls) == 1  # generated once


def test_versioned_marker_and_stale_copies_are_regenerated(tmp_path, caplog):
    import crowdloss.data.synthetic as syn

    root = str(tmp_path / "s")
    generate_synthcrowd(root, num_train=3, num_val=4, seed=2, workers=1)
    marker = syn.read_marker(root)
    assert marker == {"version": syn.SYNTHCROWD_VERSION, "num_train": 3, "num_val": 4,
                      "seed": 2, "jpeg_quality": 90}
    # the val split's first images do not depend on how many are generated
    small = generate_synthcrowd(str(tmp_path / "small"), num_train=3, num_val=2, seed=2,
                                workers=1)
    assert _records(small, "val") == _records(root, "val")[:2]
    # a copy of this version is used as it is when the caller does not ask for sizes ...
    stamp = os.stat(os.path.join(root, DONE_MARKER)).st_mtime_ns
    ensure_synthcrowd(root)
    assert os.stat(os.path.join(root, DONE_MARKER)).st_mtime_ns == stamp
    # ... and regenerated when it asks for others (it used to be returned silently)
    generate_synthcrowd(root, num_train=3, num_val=2, seed=2, workers=1)
    assert syn.read_marker(root)["num_val"] == 2 and len(_records(root, "val")) == 2
    # a version-1 copy (its marker has no version) is never used: regenerated, with a warning
    with open(os.path.join(root, DONE_MARKER), "w") as f:
        json.dump({"num_train": 3, "num_val": 2, "seed": 2, "jpeg_quality": 90}, f)
    assert syn.read_marker(root)["version"] == 1
    with caplog.at_level("WARNING", logger="crowdloss.data.synthetic"):
        ensure_synthcrowd(root, num_train=3, num_val=2, seed=2, workers=1)
    assert "generator version 1" in caplog.text
    assert syn.read_marker(root)["version"] == syn.SYNTHCROWD_VERSION
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # nothing left over
    # an unreadable marker counts as a copy of unknown version
    with open(os.path.join(root, DONE_MARKER), "w") as f:
        f.write("{not json")
    assert syn.read_marker(root) == {"version": None}
    ensure_synthcrowd(root, num_train=3, num_val=2, seed=2, workers=1)
    assert syn.read_marker(root)["version"] == syn.SYNTHCROWD_VERSION


def test_default_sizes_of_this_version():
    import crowdloss.data.synthetic as syn

    import inspect

    assert (syn.NUM_TRAIN, syn.NUM_VAL) == (1000, 1000)
    params = inspect.signature(syn.generate_synthcrowd).parameters
    assert params["num_train"].default == 1000 and params["num_val"].default == 1000
