"""COCO evaluation through pycocotools on tiny jsons with known AP."""
import json

import numpy as np
import pytest
import torch

from crowdloss.data.catalog import MetadataCatalog
from crowdloss.evaluation.coco import evaluate_coco
from crowdloss.evaluation.evaluator import COCOEvaluator, build_evaluator
from crowdloss.structures import Instances


def make_gt(tmp_path, boxes_per_image, categories=((1, "person"),)):
    images, anns = [], []
    for img_id, boxes in boxes_per_image.items():
        images.append({"id": img_id, "width": 640, "height": 480, "file_name": f"{img_id}.jpg"})
        for x, y, w, h, cat in boxes:
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": i, "name": n} for i, n in categories]}))
    return str(path)


def dets(image_id, boxes, scores=None):
    scores = scores or [0.9] * len(boxes)
    return [{"image_id": image_id, "category_id": b[4], "bbox": list(b[:4]), "score": s}
            for b, s in zip(boxes, scores)]


def test_perfect_detections_give_ap_1(tmp_path):
    gt = {1: [(10, 10, 50, 100, 1), (200, 50, 60, 120, 3)], 2: [(300, 200, 40, 80, 1)]}
    path = make_gt(tmp_path, gt, categories=((1, "person"), (3, "car")))
    res = evaluate_coco(path, dets(1, gt[1]) + dets(2, gt[2]))
    assert res["AP"] == pytest.approx(1.0) and res["AP50"] == pytest.approx(1.0)
    assert res["AR100"] == pytest.approx(1.0)
    assert np.isnan(res["APs"])  # no small objects: COCOeval's -1 becomes NaN


def test_half_recall_known_ap_and_max_dets(tmp_path):
    gt = {1: [(10, 10, 50, 100, 1), (200, 50, 60, 120, 1)]}
    path = make_gt(tmp_path, gt)
    res = evaluate_coco(path, dets(1, gt[1][:1]))
    # precision 1 at the 51 recall thresholds 0.00..0.50 of 101, 0 beyond
    assert res["AP"] == pytest.approx(51 / 101)
    assert res["AR100"] == pytest.approx(0.5) and res["AR1"] == pytest.approx(0.5)
    # 12 people, 12 perfect detections: maxDets 10 caps recall at 10/12
    many = {1: [(10 + 50 * i, 10, 40, 100, 1) for i in range(12)]}
    path = make_gt(tmp_path, many)
    d = dets(1, many[1], [0.9 - 0.01 * i for i in range(12)])
    assert evaluate_coco(path, d, max_dets=100)["AP"] == pytest.approx(1.0)
    capped = evaluate_coco(path, d, max_dets=10)
    assert capped["AP"] == pytest.approx(84 / 101)  # thresholds 0.00..0.83
    assert "AR10" in capped and capped["AR10"] == pytest.approx(10 / 12)
    with pytest.raises(ValueError, match="max_dets"):
        evaluate_coco(path, d, max_dets=5)
    with pytest.raises(ValueError, match="image_id 99"):
        evaluate_coco(path, dets(99, many[1]))
    assert evaluate_coco(path, [])["AP"] == 0.0


def test_coco_evaluator_maps_contiguous_classes_and_writes_files(tmp_path):
    gt = {7: [(10, 10, 50, 100, 3)], 8: [(100, 100, 80, 60, 1)]}
    path = make_gt(tmp_path, gt, categories=((1, "person"), (3, "car")))
    MetadataCatalog.set("coco_toy_eval", evaluator_type="coco", gt_file=path)
    cfg = {"TEST": {"COCO_MAX_DETS": 300, "COCO_SUBMISSION_NAME": "crowdloss"}}
    out_dir = tmp_path / "inference" / "coco_toy_eval"
    ev = build_evaluator(cfg, "coco_toy_eval", str(out_dir))
    assert isinstance(ev, COCOEvaluator)
    ev.reset()
    for img_id, (x, y, w, h, cat) in ((7, gt[7][0]), (8, gt[8][0])):
        box = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)
        inst = Instances((480, 640), pred_boxes=box, scores=torch.tensor([0.8]),
                         pred_classes=torch.tensor([{1: 0, 3: 1}[cat]]))
        ev.process([{"image_id": img_id, "height": 480, "width": 640}], [{"instances": inst}])
    res = ev.evaluate()
    assert set(res) == {"bbox"} and res["bbox"]["AP"] == pytest.approx(1.0)
    assert "AR300" in res["bbox"]
    saved = json.loads((out_dir / "coco_instances_results.json").read_text())
    assert {(r["image_id"], r["category_id"]) for r in saved} == {(7, 3), (8, 1)}
    assert json.loads((out_dir / "metrics.json").read_text())["AP"] == pytest.approx(1.0)


def test_stats_equal_pycocotools_summarize_at_default_max_dets(tmp_path):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from crowdloss.evaluation.coco import _stats

    rng = np.random.default_rng(0)
    gt, results = {}, []
    for i in range(15):
        gt[i] = []
        for _ in range(int(rng.integers(0, 8))):
            x, y = rng.uniform(0, 400, 2)
            w, h = rng.uniform(5, 200, 2)
            cat = int(rng.choice([1, 2]))
            gt[i].append((x, y, w, h, cat))
            for _ in range(int(rng.integers(0, 3))):
                results.append({"image_id": i, "category_id": cat, "score": float(rng.random()),
                                "bbox": [x + rng.uniform(-10, 10), y + rng.uniform(-10, 10),
                                         w, h]})
    path = make_gt(tmp_path, gt, categories=((1, "a"), (2, "b")))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(path)
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    np.testing.assert_array_equal(_stats(ev.eval, ev.params), ev.stats)
    ours = evaluate_coco(path, results)
    np.testing.assert_allclose([ours[k] for k in ("AP", "AP50", "AR100")], ev.stats[[0, 1, 8]])
