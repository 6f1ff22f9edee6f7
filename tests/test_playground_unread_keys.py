"""Every shipped playground experiment through pods_train + pods_test: the unread-key report
names exactly the keys listed below (none, once the model-side cleanup lands).

The real experiment dirs, CLI entry points, builders, loaders and evaluators run in-process on
a few generated images; overrides shrink only sizes, depth and the schedule (no pretrained
weights: MODEL.WEIGHTS ""): keys that every run reads whatever their value, so they hide no
unread key (the real R-50/R-101 models are built by test_playground.py).
"""
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from crowdloss.cli import test as pods_test
from crowdloss.cli import train as pods_train
from crowdloss.data import COCO_CLASSES, load_crowdhuman_odgt
from crowdloss.data.crowdhuman_csv import build_class_map, build_crowdhuman_csv, coco_names
from crowdloss.data.synthetic import generate_synthcrowd

PLAYGROUND = Path(__file__).resolve().parents[1] / "playground" / "detection"
EXPERIMENTS = sorted(str(p.parent.relative_to(PLAYGROUND))
                     for p in PLAYGROUND.glob("*/*/config.py"))

# Keys each experiment sets that no component reads, as reported on today's tree. The model
# rework removes MODEL.SHIFT_GENERATOR.NUM_SHIFTS and LLA's unused loss keys: then update this
# table (every entry should become empty).
_FCOS_FAMILY = ["MODEL.SHIFT_GENERATOR.NUM_SHIFTS"]
EXPECTED_UNREAD = {
    "crowdhuman/atss.res50.fpn.crowdhuman.800size.30k": [],
    "crowdhuman/fcos.res50.fpn.crowdhuman.800size.30k": [],
    "crowdhuman/lla.res101.fpn.crowdhuman.800size.30k": [],
    "crowdhuman/lla.res50.fpn.crowdhuman.800size.30k": [],
    "crowdhuman/lla.retinanet.res50.fpn.crowdhuman.800size.30k": [],
    "crowdhuman/retinanet.res50.fpn.crowdhuman.800size.30k": [],
    "synthcrowd/atss.res18.fpn.synthcrowd.256size.2600": [],
    "synthcrowd/fcos.res18.fpn.synthcrowd.256size.2600": [],
    "synthcrowd/lla.res18.fpn.synthcrowd.256size.2600": [],
    "synthcrowd/retinanet.res18.fpn.synthcrowd.person_head.256size.2600": [],
    # TEST.PLOT is this test's override (SMALL); only the CrowdHuman evaluator plots.
    "coco/retinanet.res50.fpn.coco.608size.720k": ["TEST.PLOT"],
    **{f"crowdhuman/retinanet.res{d}.fpn.crowdhuman.coco_ft.608size.750k": []
       for d in (18, 34, 50, 101, 152)},
}

SMALL = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18",
         "MODEL.RESNETS.RES2_OUT_CHANNELS", "32", "MODEL.RESNETS.STEM_OUT_CHANNELS", "32",
         "MODEL.FPN.OUT_CHANNELS", "32",
         "SOLVER.LR_SCHEDULER.MAX_ITER", "1", "SOLVER.REFERENCE_WORLD_SIZE", "1",
         "SOLVER.IMS_PER_BATCH", "1", "SOLVER.IMS_PER_DEVICE", "1",
         "DATALOADER.NUM_WORKERS", "0", "TEST.PLOT", "False",
         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
         "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
_REPORT = re.compile(r"never read \([^)]*\): (.*?)\. They have no effect")


def reported(text: str):
    """Every key the unread-key report named in a log (one line per check point)."""
    return sorted(k for m in _REPORT.finditer(text) for k in m.group(1).split(", "))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    # The CrowdHuman experiments read crowdhuman_{train,val}: same odgt layout, generated.
    for folder, seed in (("synthcrowd", 3), ("crowdhuman", 4)):
        generate_synthcrowd(str(root / folder), num_train=2, num_val=1, seed=seed, workers=1)
    # The seed-recipe experiments read CSV files built from CrowdHuman's odgt (their README).
    ch = root / "crowdhuman"
    for split in ("train", "val"):
        build_crowdhuman_csv(str(ch / "annotations" / f"annotation_{split}.odgt"),
                             str(ch / "Images"), str(ch / "csv" / f"{split}.csv"),
                             ignore="class")
    build_class_map(coco_names("darknet") + ["head"], str(ch / "csv" / "classes.csv"))
    # COCO 2017 layout for the COCO experiment: the synthcrowd images as one category.
    for split in ("train", "val"):
        odgt = ch / "annotations" / f"annotation_{split}.odgt"
        dicts = load_crowdhuman_odgt(str(odgt), str(ch / "Images"))
        folder = root / "coco" / f"{split}2017"
        folder.mkdir(parents=True)
        images, annos = [], []
        for k, d in enumerate(dicts, 1):
            shutil.copy(d["file_name"], folder / os.path.basename(d["file_name"]))
            images.append({"id": k, "file_name": os.path.basename(d["file_name"]),
                           "height": d["height"], "width": d["width"]})
            annos += [{"id": len(annos) + 1, "image_id": k, "category_id": 1, "iscrowd": 0,
                       "area": (b[2] - b[0]) * (b[3] - b[1]),
                       "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
                      for b in (a["bbox"] for a in d["annotations"] if a["category_id"] == 0)]
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(COCO_CLASSES)]
        (root / "coco" / "annotations").mkdir(exist_ok=True)
        (root / "coco" / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": annos, "categories": cats}))
    return root


def test_table_lists_every_experiment():
    assert sorted(EXPECTED_UNREAD) == EXPERIMENTS


@pytest.mark.slow
@pytest.mark.parametrize("rel", EXPERIMENTS)
def test_experiment_sets_no_unread_key(rel, datasets, tmp_path, monkeypatch):
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(datasets))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    args = ["--dir", str(PLAYGROUND / rel), "OUTPUT_DIR", str(out), *SMALL]
    pods_train.run(args)
    assert (out / "model_final.pth").is_file()
    train_log = (out / "log.txt").read_text()
    assert "Evaluation results for" in train_log  # the final evaluation ran: all stages read
    assert reported(train_log) == EXPECTED_UNREAD[rel]

    # pods_test reads no training key; it must report nothing the training run did not.
    pods_test.run(args)
    test_log = (out / "log.txt").read_text()[len(train_log):]
    assert "Results per checkpoint" in test_log
    assert reported(test_log) == EXPECTED_UNREAD[rel]
