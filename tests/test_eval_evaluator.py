"""Evaluator plumbing: CrowdHumanEvaluator files and numbers, build_evaluator dispatch,
inference_on_dataset, print_csv_format, and rank-0 gathering in a 2-process gloo run."""
import json
import logging
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crowdloss.config import BaseDetectionConfig
from crowdloss.data.catalog import MetadataCatalog
from crowdloss.evaluation.coco import evaluate_coco
from crowdloss.evaluation.crowdhuman import main as crowdhuman_cli
from crowdloss.evaluation.evaluator import (CrowdHumanEvaluator, DatasetEvaluator,
                                            DatasetEvaluators, build_evaluator)
from crowdloss.evaluation.inference import inference_on_dataset, print_csv_format
from crowdloss.structures import Instances

# Four images; GT lines carry no height/width (like the official files): the evaluator takes
# the sizes from its inputs.
GT = [
    {"ID": "i0", "gtboxes": [{"tag": "person", "fbox": [10, 10, 30, 80]},
                             {"tag": "person", "fbox": [50, 10, 30, 80]},
                             {"tag": "mask", "fbox": [100, 0, 50, 50]}]},
    {"ID": "i1", "gtboxes": []},
    {"ID": "i2", "gtboxes": [{"tag": "person", "fbox": [150, 20, 60, 100],
                              "extra": {"ignore": 0}}]},
    {"ID": "i3", "gtboxes": [{"tag": "person", "fbox": [5, 5, 20, 40]}]},
]
PRED = {  # xyxy, score
    "i0": [([10, 10, 40, 90], 0.9), ([52, 12, 80, 90], 0.7), ([105, 5, 140, 40], 0.8)],
    "i1": [([0, 0, 20, 20], 0.6)],
    "i2": [([140, 20, 200, 120], 0.75), ([0, 100, 30, 140], 0.2)],
    "i3": [],
}


@pytest.fixture
def eval_log(caplog):
    # Attach to our logger directly: the engine's setup_logger turns off propagation to root.
    logger = logging.getLogger("crowdloss.evaluation")
    old = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(old)


def register(tmp_path, name="ch_toy_eval"):
    gt_file = tmp_path / "gt.odgt"
    gt_file.write_text("\n".join(json.dumps(r) for r in GT) + "\n")
    MetadataCatalog.set(name, evaluator_type="crowdhuman", gt_file=str(gt_file))
    return name, str(gt_file)


def batch(image_id):
    boxes = torch.tensor([b for b, _ in PRED[image_id]], dtype=torch.float32).reshape(-1, 4)
    scores = torch.tensor([s for _, s in PRED[image_id]], dtype=torch.float32)
    inst = Instances((160, 240), pred_boxes=boxes, scores=scores,
                     pred_classes=torch.zeros(len(scores), dtype=torch.long))
    return [{"image_id": image_id, "height": 160, "width": 240, "file_name": f"{image_id}.jpg"}], \
        [{"instances": inst}]


def test_crowdhuman_evaluator_numbers_and_files(tmp_path, eval_log):
    name, gt_file = register(tmp_path)
    out = tmp_path / "inference" / name
    cfg = BaseDetectionConfig()  # TEST.JI_MATCHING "weight", PLOT True, BOX_TYPE "fbox"
    ev = build_evaluator(cfg, name, str(out))
    assert isinstance(ev, CrowdHumanEvaluator)
    ev.reset()
    for image_id in PRED:
        ev.process(*batch(image_id))
    res = ev.evaluate()
    assert set(res) == {"crowdhuman"} and list(res["crowdhuman"]) == ["AP", "mMR", "Recall",
                                                                       "JI"]
    m = res["crowdhuman"]
    c = ev.result.counts
    assert (c["images"], c["valid_gt"], c["tp"], c["fp"], c["ignored_dt"]) == (4, 4, 3, 2, 1)
    assert m["Recall"] == 0.75
    # ranking .9 TP, .75 TP, .7 TP, .6 FP, .2 FP -> AP = trapezoids over (r, p)
    pts = [(.25, 1), (.5, 1), (.75, 1), (.75, .75), (.75, .6)]
    ap = sum((r1 - r0) * (p0 + p1) / 2 for (r0, p0), (r1, p1) in zip(pts, pts[1:]))
    assert m["AP"] == pytest.approx(ap, abs=1e-15)
    # The evaluator says what it counted; the metrics are printed once, by print_csv_format.
    assert "CrowdHuman evaluation of ch_toy_eval: 4 images, 4 valid GT" in eval_log.text
    assert "copypaste" not in eval_log.text
    for f in ("crowdhuman_results.odgt", "coco_instances_results.json", "metrics.json",
              "mr_fppi.png", "precision_recall.png"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["AP"] == m["AP"] and saved["counts"] == c
    assert saved["gt_file"] == str(gt_file)  # the scores can be recomputed from the files
    # the written results file, scored on its own, gives the very same numbers
    assert crowdhuman_cli(["--gt", gt_file, "--dt", str(out / "crowdhuman_results.odgt")]
                          ).metrics == m
    lines = (out / "crowdhuman_results.odgt").read_text().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"ID", "height", "width", "dtboxes"}
    assert first["dtboxes"][0] == {"box": [10.0, 10.0, 30.0, 80.0], "score": 0.8999999761581421,
                                   "tag": 1}


class ToyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen = []

    def forward(self, inputs):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return batch(inputs[0]["image_id"])[1]


def test_inference_on_dataset_restores_mode_and_returns_results(tmp_path):
    name, _ = register(tmp_path)
    model = ToyModel().train()
    loader = [batch(i)[0] for i in PRED]
    ev = CrowdHumanEvaluator(name, output_dir=None, plot=False)
    res = inference_on_dataset(model, loader, ev)
    assert model.training and model.seen == [(False, False)] * 4
    assert res["crowdhuman"]["Recall"] == 0.75

    class Boom(DatasetEvaluator):
        def process(self, inputs, outputs):
            raise RuntimeError("boom")

    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        inference_on_dataset(model, loader, Boom())
    assert model.training  # restored even on error
    assert inference_on_dataset(model, loader, None) == {}


def test_print_csv_format_and_dispatch_errors(tmp_path, eval_log):
    text = print_csv_format({"crowdhuman": {"AP": 0.5, "mMR": 0.25},
                             "regression": {"mse": 0.0123456, "count": 6}})
    assert text.splitlines() == ["copypaste: Task: crowdhuman (percent)", "copypaste: AP,mMR",
                                 "copypaste: 50.00,25.00", "copypaste: Task: regression",
                                 "copypaste: mse,count", "copypaste: 0.01235,6"]
    assert "copypaste: AP,mMR" in eval_log.text
    MetadataCatalog.set("weird_eval_ds", evaluator_type="voc2", gt_file="x")
    with pytest.raises(ValueError, match="evaluator_type = 'voc2'"):
        build_evaluator({}, "weird_eval_ds", None)
    with pytest.raises(KeyError, match="gt_file"):
        CrowdHumanEvaluator("no_gt_eval_ds")

    class Fixed(DatasetEvaluator):
        def evaluate(self):
            return {"bbox": {"AP": 1.0}}

    with pytest.raises(KeyError, match="both report task 'bbox'"):
        DatasetEvaluators([Fixed(), Fixed()]).evaluate()


def _worker(rank, world, init_file, gt_file, out_dir, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        MetadataCatalog.set("ch_dist_eval", evaluator_type="crowdhuman", gt_file=gt_file)
        ev = CrowdHumanEvaluator("ch_dist_eval", output_dir=out_dir, plot=False)
        ids = list(PRED)
        for image_id in ids[rank * 2:(rank + 1) * 2]:  # contiguous shards
            ev.process(*batch(image_id))
        queue.put((rank, ev.evaluate()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_predictions_are_gathered_to_rank_0(tmp_path):
    name, gt_file = register(tmp_path)
    ev = CrowdHumanEvaluator(name, plot=False)
    for image_id in PRED:
        ev.process(*batch(image_id))
    single = ev.evaluate()
    ctx = mp.get_context("spawn")  # fork after torch thread pools started can hang
    queue = ctx.Queue()
    out = tmp_path / "dist_out"
    procs = [ctx.Process(target=_worker, args=(r, 2, str(tmp_path / "init"), gt_file, str(out),
                                               queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[1] == {}
    assert results[0] == single
    lines = (out / "crowdhuman_results.odgt").read_text().splitlines()
    assert [json.loads(x)["ID"] for x in lines] == list(PRED)  # every image, written once
    assert not os.path.exists(out / "mr_fppi.png")


def test_unpredicted_gt_image_gets_its_size_from_image_root(tmp_path, eval_log):
    import cv2

    name, _ = register(tmp_path, "ch_partial_eval")
    ev = CrowdHumanEvaluator(name, plot=False)
    for image_id in ("i0", "i1", "i2"):  # i3 never predicted; the odgt has no sizes
        ev.process(*batch(image_id))
    # no size anywhere (the image was skipped as unreadable): its GT is missed all the same
    res = ev.evaluate()["crowdhuman"]
    assert res["Recall"] == 0.75 and ev.result.counts["skipped_images"] == 1
    assert ev.result.counts["skipped_valid_gt"] == 1
    assert "1 of 4 GT images were not predicted" in eval_log.text and "i3" in eval_log.text
    root = tmp_path / "Images"
    root.mkdir()
    cv2.imwrite(str(root / "i3.jpg"), np.zeros((160, 240, 3), np.uint8))
    MetadataCatalog.set(name, image_root=str(root))
    ev = CrowdHumanEvaluator(name, plot=False)
    for image_id in ("i0", "i1", "i2"):
        ev.process(*batch(image_id))
    res = ev.evaluate()["crowdhuman"]
    assert res["Recall"] == 0.75 and ev.result.counts["images"] == 4  # i3 had no dets


def test_two_class_models_are_scored_on_their_person_class(tmp_path):
    # person + head (the CrowdHuman seed's kind of model): head detections exactly on the
    # persons must not count; the person detections alone give the one-class numbers.
    name, _ = register(tmp_path, "ch_two_class_eval")
    cfg = BaseDetectionConfig()
    cfg.TEST.PLOT = False
    single = build_evaluator(cfg, name)
    MetadataCatalog.set(name, thing_classes=["head", "person"])  # person is class 1 here
    double = build_evaluator(cfg, name)
    for ev in (single, double):
        ev.reset()
    for image_id in PRED:
        inputs, outputs = batch(image_id)
        single.process(inputs, outputs)
        inst = outputs[0]["instances"]
        both = Instances(inst.image_size, pred_boxes=torch.cat([inst.pred_boxes] * 2),
                         scores=torch.cat([inst.scores, inst.scores + 0.05]),
                         pred_classes=torch.cat([torch.ones(len(inst), dtype=torch.long),
                                                 torch.zeros(len(inst), dtype=torch.long)]))
        double.process(inputs, [{"instances": both}])
    assert double.evaluate() == single.evaluate()
    MetadataCatalog.set(name, thing_classes=["head", "car"])
    with pytest.raises(KeyError, match="need its class 'person'"):
        build_evaluator(cfg, name)


def test_coco_metrics_on_an_odgt_dataset(tmp_path):
    """TEST.COCO_METRICS: the same detections scored with COCO's AP and oLRP, ignore regions
    as iscrowd; equal to pycocotools on a GT json written here by hand."""
    name, _ = register(tmp_path, "ch_toy_coco")
    out = tmp_path / "inference" / name
    cfg = BaseDetectionConfig()
    cfg.TEST.COCO_METRICS = True
    ev = build_evaluator(cfg, name, str(out))
    ev.reset()
    for image_id in PRED:
        ev.process(*batch(image_id))
    res = ev.evaluate()
    assert set(res) == {"crowdhuman", "bbox"}
    coco = res["bbox"]
    # Ranked .9 TP, (.8 on the mask region: ignored), .75 TP, .7 TP, .6 FP, .2 FP; 4 GT:
    # precision 1 up to recall .75, so AP50 = 76 of COCO's 101 recall points.
    assert coco["AP50"] == pytest.approx(76 / 101, abs=1e-12)
    ids = {g["ID"]: k for k, g in enumerate(GT, 1)}
    boxes = [(ids[g["ID"]], b) for g in GT for b in g["gtboxes"]]
    anns = [{"id": j, "image_id": i, "category_id": 1, "bbox": b["fbox"],
             "area": b["fbox"][2] * b["fbox"][3], "iscrowd": int(b["tag"] == "mask")}
            for j, (i, b) in enumerate(boxes, 1)]
    gt_json = tmp_path / "by_hand.json"
    gt_json.write_text(json.dumps({"images": [{"id": i, "height": 160, "width": 240}
                                              for i in ids.values()],
                                   "annotations": anns, "categories": [{"id": 1}]}))
    results = [{"image_id": ids[i], "category_id": 1, "score": s,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
               for i, dets in PRED.items() for b, s in dets]
    expected = evaluate_coco(gt_json, results)
    assert coco.keys() == expected.keys()
    for k, v in expected.items():
        assert coco[k] == pytest.approx(v, abs=1e-12, nan_ok=True), k
    assert 0 < coco["moLRP"] < 1 and coco["moLRP_FN"] == pytest.approx(0.25)
    saved = json.loads((out / "coco_metrics.json").read_text())
    assert saved["AP50"] == coco["AP50"] and (out / "coco_gt.json").is_file()
