"""VOCEvaluator / PerClassAPEvaluator: dispatch by evaluator_type, the devkit results files (the
devkit procedure run on OUR files and the raw xml gives our numbers), metrics.json, the crowd
subset, TEST.PER_CLASS_AP beside the CrowdHuman metrics, the test pass end to end."""
import glob
import json
import logging
import math
import os
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
import torch

from crowdloss.config.base_detection_config import BaseDetectionConfig
from crowdloss.data import MetadataCatalog, register_crowdhuman_instances, register_voc_instances
from crowdloss.engine.runner import DefaultRunner
from crowdloss.evaluation.class_ap import PerClassAPEvaluator, VOCEvaluator
from crowdloss.evaluation.evaluator import CrowdHumanEvaluator, DatasetEvaluators, build_evaluator
from crowdloss.evaluation.registry import register_evaluator_type
from crowdloss.structures import Instances
from voc_files import write_voc

# Three images in xml (1-based inclusive) pixels: "crowd" has two overlapping dogs (IoU > 0.3),
# "diff" a difficult cat, "plain" a person and a dog far apart.
IMAGES = {
    "crowd": (60, 80, [("dog", 1, 1, 30, 40, 0), ("dog", 11, 1, 40, 40, 0), ("cat", 50, 5, 70, 30, 0)]),
    "diff": (50, 50, [("cat", 5, 5, 25, 25, 1), ("cat", 30, 30, 45, 45, 0)]),
    "plain": (40, 70, [("person", 2, 2, 20, 38, 0), ("dog", 40, 2, 69, 20, 0)]),
}
DOG, CAT, PERSON = 11, 7, 14
PRED = {  # continuous xyxy (ours), score, class
    "crowd": [((0, 0, 30, 40), 0.9, DOG), ((0.5, 0, 30, 40), 0.85, DOG),  # duplicate: FP
              ((12, 2, 41, 40), 0.3, DOG), ((49, 4, 70, 30), 0.8, CAT)],
    "diff": [((4, 4, 25, 25), 0.95, CAT), ((29, 29, 45, 45), 0.4, CAT)],
    "plain": [((1, 1, 20, 38), 0.7, PERSON), ((50, 20, 60, 30), 0.6, DOG),
              ((39.5, 1, 69, 20), 0.2, DOG)],
}


@pytest.fixture
def eval_log(caplog):
    logger = logging.getLogger("crowdloss.evaluation")
    old = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(old)


@pytest.fixture
def voc(tmp_path):
    root = write_voc(tmp_path / "VOC2007", IMAGES)
    name = f"voc_eval_{tmp_path.name}"
    register_voc_instances(name, root, "test", use_07_metric=True)
    return name, root


def outputs(image_id):
    rows = PRED[image_id]
    inst = Instances((1, 1), pred_boxes=torch.tensor([r[0] for r in rows], dtype=torch.float32),
                     scores=torch.tensor([r[1] for r in rows], dtype=torch.float32),
                     pred_classes=torch.tensor([r[2] for r in rows]))
    return [{"instances": inst}]


def run(ev):
    ev.reset()
    for image_id in IMAGES:
        ev.process([{"image_id": image_id, "height": 1, "width": 1}], outputs(image_id))
    return ev.evaluate()


def devkit_on_files(results_dir, root, classname, use_07):
    """The devkit procedure on its own inputs: the xml integers and a comp4 results file."""
    recs, npos = {}, 0
    for image_id in IMAGES:
        objs = ET.parse(os.path.join(root, "Annotations", f"{image_id}.xml")).findall("object")
        objs = [o for o in objs if o.find("name").text == classname]
        bb = np.array([[int(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax",
                                                                       "ymax")] for o in objs])
        diff = np.array([int(o.find("difficult").text) for o in objs], bool)
        recs[image_id] = [bb.reshape(-1, 4).astype(float), diff, [False] * len(objs)]
        npos += int((~diff).sum())
    with open(os.path.join(results_dir, f"comp4_det_test_{classname}.txt")) as f:
        lines = [line.split() for line in f]
    conf = np.array([float(x[1]) for x in lines])
    order = np.argsort(-conf, kind="stable")
    tp, fp = np.zeros(len(lines)), np.zeros(len(lines))
    for n, i in enumerate(order):
        gt, diff, taken = recs[lines[i][0]]
        b = np.array([float(v) for v in lines[i][2:]])
        ovmax = -np.inf
        if len(gt):
            iw = np.maximum(np.minimum(gt[:, 2], b[2]) - np.maximum(gt[:, 0], b[0]) + 1., 0.)
            ih = np.maximum(np.minimum(gt[:, 3], b[3]) - np.maximum(gt[:, 1], b[1]) + 1., 0.)
            uni = ((b[2] - b[0] + 1.) * (b[3] - b[1] + 1.)
                   + (gt[:, 2] - gt[:, 0] + 1.) * (gt[:, 3] - gt[:, 1] + 1.) - iw * ih)
            ov = iw * ih / uni
            ovmax, j = ov.max(), int(ov.argmax())
        if ovmax > 0.5:
            if not diff[j]:
                if taken[j]:
                    fp[n] = 1
                else:
                    tp[n], taken[j] = 1, True
        else:
            fp[n] = 1
    if npos == 0:
        return math.nan
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(float).eps)
    assert use_07
    return sum((np.max(prec[rec >= t]) if (rec >= t).any() else 0) / 11.
               for t in np.arange(0., 1.1, 0.1))


def test_voc_evaluator_numbers_files_and_table(voc, tmp_path, eval_log):
    name, root = voc
    out = tmp_path / "inference" / name
    ev = build_evaluator(BaseDetectionConfig(), name, str(out))
    assert isinstance(ev, VOCEvaluator)
    res = run(ev)["voc"]
    assert list(res)[:2] == ["mAP", "mAP_crowd"]
    assert set(res) == {"mAP", "mAP_crowd", "AP-cat", "AP-dog", "AP-person"}
    # The official procedure on the files we wrote and the untouched xml: the same APs, to the
    # last bit (the files hold every number exactly; the +1 conventions cancel).
    for cls in ("cat", "dog", "person"):
        assert res[f"AP-{cls}"] == devkit_on_files(str(out), root, cls, use_07=True), cls
    dog = ev.result.classes[DOG]
    assert (dog.num_gt, dog.tp, dog.fp) == (3, 3, 2)  # the duplicate and the far box are FP
    assert ev.result.classes[CAT].ignored == 1  # the detection on the difficult cat
    assert len(glob.glob(str(out / "comp4_det_test_*.txt"))) == 20
    assert (out / "comp4_det_test_aeroplane.txt").read_text() == ""
    first = (out / "comp4_det_test_dog.txt").read_text().splitlines()[0].split()
    assert first[0] == "crowd" and [float(v) for v in first[1:]] == [0.8999999761581421, 1, 1,
                                                                     30, 40]
    # Crowd subset: only "crowd" (its two dogs overlap by IoU 800 / 1600 > 0.3).
    assert ev.crowd_image_ids == ["crowd"]
    assert ev.crowd_result.classes[DOG].num_gt == 2 and ev.crowd_result.num_images == 1
    assert res["mAP_crowd"] == ev.crowd_result.mAP
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["convention"] == "voc_devkit" and summary["use_07_metric"] is True
    assert summary["mAP"] == res["mAP"] and summary["crowd"]["num_images"] == 1
    assert summary["crowd"]["iou_threshold"] == 0.3
    assert summary["classes"]["aeroplane"]["ap"] is None
    assert summary["classes"]["dog"]["tp"] == 3
    assert "mAP on the crowd subset" in eval_log.text and "11-point AP" in eval_log.text


def test_missing_predictions_count_as_misses(voc, eval_log):
    name, _ = voc
    ev = VOCEvaluator(name, use_07_metric=False)
    ev.reset()
    ev.process([{"image_id": "plain", "height": 1, "width": 1}], outputs("plain"))
    res = ev.evaluate()["voc"]
    assert ev.result.classes[DOG].num_gt == 3 and ev.result.classes[DOG].recall == 1 / 3
    assert res["AP-person"] == 1.0 and "2 of 3 images were not predicted" in eval_log.text
    ev.reset()
    ev.process([{"image_id": "nope", "height": 1, "width": 1}], outputs("plain"))
    with pytest.raises(ValueError, match="not in the GT"):
        ev.evaluate()


def test_per_class_ap_beside_crowdhuman(tmp_path):
    images = tmp_path / "Images"
    images.mkdir()
    gt = [{"ID": "a", "height": 50, "width": 60, "gtboxes": [
        {"tag": "person", "fbox": [0, 0, 20, 40]}, {"tag": "mask", "fbox": [30, 0, 30, 50]}]},
        {"ID": "b", "height": 50, "width": 60, "gtboxes": [{"tag": "person",
                                                            "fbox": [10, 5, 20, 40]}]}]
    for r in gt:
        cv2.imwrite(str(images / f"{r['ID']}.jpg"), np.zeros((50, 60, 3), np.uint8))
    odgt = tmp_path / "gt.odgt"
    odgt.write_text("".join(json.dumps(r) + "\n" for r in gt))
    name = f"ch_{tmp_path.name}"
    register_crowdhuman_instances(name, str(odgt), str(images))
    cfg = BaseDetectionConfig()
    cfg.TEST.PLOT = False
    assert isinstance(build_evaluator(cfg, name, None), CrowdHumanEvaluator)  # default: off
    cfg.TEST.PER_CLASS_AP = "retinanet_csv"
    out = tmp_path / "out"
    ev = build_evaluator(cfg, name, str(out))
    assert isinstance(ev, DatasetEvaluators)
    preds = {"a": [((0, 0, 20, 40), 0.9), ((30, 0, 60, 50), 0.8)],  # 2nd: on the ignore region
             "b": [((10, 5, 30, 45), 0.7), ((0, 0, 5, 5), 0.04)]}  # 2nd: below csv's 0.05
    ev.reset()
    for image_id, rows in preds.items():
        inst = Instances((50, 60), pred_boxes=torch.tensor([r[0] for r in rows], dtype=torch.float),
                         scores=torch.tensor([r[1] for r in rows]),
                         pred_classes=torch.zeros(len(rows), dtype=torch.long))
        ev.process([{"image_id": image_id, "height": 50, "width": 60}], [{"instances": inst}])
    res = ev.evaluate()
    assert set(res) == {"crowdhuman", "per_class_ap"}
    assert res["per_class_ap"] == {"mAP": 1.0, "AP-person": 1.0}
    per_class = ev._evaluators[1].result.classes[0]
    assert (per_class.num_dets, per_class.tp, per_class.fp, per_class.ignored) == (3, 2, 0, 1)
    assert json.loads((out / "per_class_ap.json").read_text())["convention"] == "retinanet_csv"
    cfg.TEST.PER_CLASS_AP = "coco"
    with pytest.raises(ValueError, match="AP convention must be one of"):
        build_evaluator(cfg, name, None)


def test_evaluator_types_and_registry(voc):
    name, _ = voc
    cfg = BaseDetectionConfig()
    MetadataCatalog.set(name, evaluator_type="per_class_ap", ap_convention="retinanet_csv")
    ev = build_evaluator(cfg, name, None)
    assert type(ev) is PerClassAPEvaluator and run(ev)["per_class_ap"]["AP-dog"] > 0
    assert ev.result.convention == "retinanet_csv" and not ev.result.use_07_metric

    class Mine(PerClassAPEvaluator):
        TASK = "mine"

    builder = lambda c, n, o: Mine(n)
    register_evaluator_type("mine_t", builder)
    register_evaluator_type("mine_t", builder)  # same builder again: fine
    with pytest.raises(KeyError, match="already registered"):
        register_evaluator_type("mine_t", lambda c, n, o: None)
    MetadataCatalog.set(name, evaluator_type="mine_t")
    assert set(run(build_evaluator(cfg, name, None))) == {"mine"}
    MetadataCatalog.set(name, evaluator_type="nope_t")
    with pytest.raises(ValueError, match=r"evaluator_type = 'nope_t'.*'voc'"):
        build_evaluator(cfg, name, None)
    with pytest.raises(KeyError, match="thing_classes"):
        PerClassAPEvaluator("no_classes_t")


class LookupModel(torch.nn.Module):
    """Returns PRED for each input image (boxes already in original-image pixels)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, inputs):
        assert inputs[0]["image"].shape[0] == 3
        return outputs(inputs[0]["image_id"])


def test_test_pass_end_to_end(voc, tmp_path):
    name, root = voc
    cfg = BaseDetectionConfig()
    cfg.DATASETS.TEST = (name,)
    cfg.INPUT.AUG.TEST_PIPELINES = []
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(tmp_path / "run")
    results = DefaultRunner.test(cfg, LookupModel())
    assert results[name]["voc"]["AP-dog"] == devkit_on_files(
        os.path.join(cfg.OUTPUT_DIR, "inference", name), root, "dog", use_07=True)
