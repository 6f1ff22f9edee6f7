"""Every shipped playground experiment through pods_train + pods_test: no experiment sets a config
key that nothing reads (the unread-key report stays silent).

The real experiment dirs, CLI entry points, builders, loaders and evaluators run in-process on
a few generated images; overrides shrink only sizes, widths and the schedule (no pretrained
weights: MODEL.WEIGHTS ""), and touch only keys each family reads whatever their value, so they
hide no unread key (the real R-50/R-101/VGG16 models are built by test_playground.py).
"""
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from crowdloss.cli import test as pods_test
from crowdloss.cli import train as pods_train
from crowdloss.cli.common import load_experiment
from crowdloss.data import COCO_CLASSES
from crowdloss.data.crowdhuman_csv import build_class_map, build_crowdhuman_csv, coco_names
from crowdloss.data.synthetic import generate_synthcrowd

from voc_files import write_voc

PLAYGROUND = Path(__file__).resolve().parents[1] / "playground" / "detection"
EXPERIMENTS = sorted(str(p.parent.relative_to(PLAYGROUND))
                     for p in PLAYGROUND.glob("*/*/config.py"))

COMMON = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
          "SOLVER.LR_SCHEDULER.MAX_ITER", "1", "SOLVER.REFERENCE_WORLD_SIZE", "1",
          "SOLVER.IMS_PER_BATCH", "1", "SOLVER.IMS_PER_DEVICE", "1",
          "DATALOADER.NUM_WORKERS", "0"]
# ResNet-FPN detectors: a narrow ResNet-18 and small inputs (legacy INPUT.* names move into the
# ResizeShortestEdge entries).
RESNET_FPN = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
              "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.FPN.OUT_CHANNELS", "32"]
# ResNeXt: grouped bottlenecks need a bottleneck depth; one channel per group keeps it narrow.
RESNEXT = ["MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.WIDTH_PER_GROUP", "1"]
SMALL_TRAIN = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96"]
SMALL_TEST = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
# SSD: the VGG at an eighth of its width; the fixed-size input stays (the source maps need it).
SSD = ["MODEL.VGG.WIDTH_FACTOR", "0.125"]

_REPORT = re.compile(r"never read \([^)]*\): (.*?)\. They have no effect")


def shrink(rel: str) -> list:
    """The overrides that make experiment ``rel`` cheap, by the family its config belongs to."""
    cfg = load_experiment(str(PLAYGROUND / rel)).config
    # Only the CrowdHuman evaluator draws plots (and reads TEST.PLOT); the VOC one does not.
    plots = ["TEST.PLOT", "False"] if any(
        n.startswith(("crowdhuman", "synthcrowd")) for n in cfg.DATASETS.TEST) else []
    if "SSD" in cfg.MODEL:
        return COMMON + plots + SSD
    family = RESNET_FPN + (RESNEXT if cfg.MODEL.RESNETS.get("NUM_GROUPS", 1) > 1 else [])
    # Legacy INPUT.* sizes move into ResizeShortestEdge entries; a fixed-size Resize (the
    # SSD-style aLRP pipelines) keeps its size, which the narrow network handles.
    for stage, small in (("TRAIN", SMALL_TRAIN), ("TEST", SMALL_TEST)):
        if any(name == "ResizeShortestEdge" for name, _ in cfg.INPUT.AUG[stage + "_PIPELINES"]):
            family = family + small
    return COMMON + plots + family


def reported(text: str):
    """Every key the unread-key report named in a log (one line per check point)."""
    return sorted(k for m in _REPORT.finditer(text) for k in m.group(1).split(", "))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    # The CrowdHuman experiments read crowdhuman_{train,val}: same odgt layout, generated.
    for folder, seed in (("synthcrowd", 3), ("crowdhuman", 4)):
        generate_synthcrowd(str(root / folder), num_train=2, num_val=1, seed=seed, workers=1)
    person = [("person", 20, 10, 60, 90, 0), ("person", 50, 12, 95, 92, 0)]
    for year, split in (("VOC2007", "trainval"), ("VOC2007", "test"), ("VOC2012", "trainval")):
        write_voc(root / "VOCdevkit" / year, {f"{year}_{split}_{k}": (100, 120, person)
                                              for k in range(2)}, split=split)
    write_coco(root / "coco")
    # The seed-recipe experiments read CSV files built from CrowdHuman's odgt (their README).
    ch = root / "crowdhuman"
    for split in ("train", "val"):
        build_crowdhuman_csv(str(ch / "annotations" / f"annotation_{split}.odgt"),
                             str(ch / "Images"), str(ch / "csv" / f"{split}.csv"),
                             ignore="class")
    build_class_map(coco_names("darknet") + ["head"], str(ch / "csv" / "classes.csv"))
    return root


def write_coco(root: Path) -> None:
    """coco_2017_{train,val}: two images each, 80 categories with COCO's sparse ids."""
    ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    categories = [{"id": i, "name": name} for i, name in zip(ids, COCO_CLASSES)]
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir()
        images, annotations = [], []
        for k in range(2):
            name = f"{k:012d}.jpg"
            cv2.imwrite(str(root / f"{split}2017" / name),
                        rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
            images.append({"id": k + 1, "file_name": name, "height": 90, "width": 120})
            for j, (x, y, w, h) in enumerate(((10, 12, 40, 60), (60, 20, 45, 50))):
                annotations.append({"id": 10 * k + j + 1, "image_id": k + 1, "iscrowd": 0,
                                    "category_id": ids[j], "bbox": [x, y, w, h],
                                    "area": w * h})
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))


@pytest.fixture
def keep_log_link(request):
    """pods_train links <experiment>/log to its OUTPUT_DIR: put back whatever was there."""
    link = PLAYGROUND / request.node.callspec.params["rel"] / "log"
    before = os.readlink(link) if link.is_symlink() else None
    yield
    if link.is_symlink():
        link.unlink()
    if before is not None:
        link.symlink_to(before)


@pytest.mark.slow
@pytest.mark.parametrize("rel", EXPERIMENTS)
def test_experiment_sets_no_unread_key(rel, datasets, tmp_path, monkeypatch, keep_log_link):
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(datasets))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    args = ["--dir", str(PLAYGROUND / rel), "OUTPUT_DIR", str(out), *shrink(rel)]
    pods_train.run(args)
    assert (out / "model_final.pth").is_file()
    train_log = (out / "log.txt").read_text()
    if load_experiment(str(PLAYGROUND / rel)).config.TEST.EVAL_PERIOD >= 0:
        assert "Evaluation results for" in train_log  # the final evaluation ran
    assert reported(train_log) == []

    # pods_test reads no training key; it must report nothing the training run did not.
    pods_test.run(args)
    test_log = (out / "inference" / "log.txt").read_text()
    assert "Results per checkpoint" in test_log
    assert reported(test_log) == []
