"""COCO test-dev: the registered image-info split is run like any test set, and its detections
are written in the evaluation server's format (integer image ids, COCO category ids, json +
zip named detections_test-dev2017_<name>_results) without being scored."""
import json
import logging
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crowdloss.data import MetadataCatalog
from crowdloss.engine import DefaultRunner
from crowdloss.evaluation import COCOEvaluator
from crowdloss.evaluation import evaluator as evaluator_module
from crowdloss.evaluation.coco import write_coco_submission
from crowdloss.modeling.meta_arch import ALRPLossRetinaNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_meta_arch import tiny_cfg  # noqa: E402

# Sparse COCO ids, as COCO's own (1..90 for 80 classes): contiguous 0, 1, 2 map to 1, 5, 90.
CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"},
              {"id": 5, "name": "airplane"}]
IMAGES = [{"id": 139, "file_name": "000000000139.jpg", "height": 60, "width": 80},
          {"id": 285, "file_name": "000000000285.jpg", "height": 72, "width": 56}]


@pytest.fixture
def testdev_root(tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    (root / "coco" / "test2017").mkdir(parents=True)
    (root / "coco" / "annotations").mkdir()
    rng = np.random.default_rng(0)
    for img in IMAGES:
        pixels = rng.integers(0, 256, (img["height"], img["width"], 3), dtype=np.uint8)
        cv2.imwrite(str(root / "coco" / "test2017" / img["file_name"]), pixels)
    info = {"info": {"description": "generated"}, "licenses": [], "images": IMAGES,
            "categories": CATEGORIES}  # an image-info json has no "annotations"
    (root / "coco" / "annotations" / "image_info_test-dev2017.json").write_text(json.dumps(info))
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(root))
    return root


class ListLogger(logging.Logger):
    """A logger of its own (other tests may reconfigure or disable crowdloss' loggers)."""

    def __init__(self):
        super().__init__("test_coco_submission", logging.INFO)
        self.messages = []
        handler = logging.Handler(logging.INFO)
        handler.emit = lambda record: self.messages.append(record.getMessage())
        self.addHandler(handler)


def test_testdev_detections_are_written_for_the_server_not_scored(testdev_root, tmp_path,
                                                                  monkeypatch):
    cfg = tiny_cfg("RetinaNet")
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    cfg.merge(dict(DATASETS=dict(TEST=("coco_2017_test-dev",)), OUTPUT_DIR=str(tmp_path / "out"),
                   TEST=dict(COCO_SUBMISSION_NAME="aLRPLoss"), DATALOADER=dict(NUM_WORKERS=0)))
    cfg.INPUT.AUG.TEST_PIPELINES = [("ResizeShortestEdge", dict(short_edge_length=64,
                                                                max_size=96))]
    torch.manual_seed(0)
    model = ALRPLossRetinaNet.from_config(cfg)
    assert MetadataCatalog.get("coco_2017_test-dev")["has_annotations"] is False
    log = ListLogger()
    monkeypatch.setattr(evaluator_module, "logger", log)
    results = DefaultRunner.test(cfg, model)
    # 7 detections per image (SCORE_THRESH_TEST 0, DETECTIONS_PER_IMAGE 7).
    assert results == {"coco_2017_test-dev": {"submission": {
        "detections": 14.0, "images_with_detections": 2.0}}}
    folder = tmp_path / "out" / "inference" / "coco_2017_test-dev"
    name = "detections_test-dev2017_aLRPLoss_results"
    assert sorted(p.name for p in folder.iterdir()) == [name + ".json", name + ".zip"]
    dets = json.loads((folder / (name + ".json")).read_text())
    assert {d["image_id"] for d in dets} == {139, 285}
    assert all(type(d["image_id"]) is int and type(d["category_id"]) is int for d in dets)
    assert {d["category_id"] for d in dets} <= {1, 5, 90}
    sizes = {img["id"]: (img["height"], img["width"]) for img in IMAGES}
    for d in dets:  # xywh in original-image pixels
        x, y, w, h = d["bbox"]
        height, width = sizes[d["image_id"]]
        assert x >= 0 and y >= 0 and w > 0 and h > 0
        assert x + w <= width + 0.01 and y + h <= height + 0.01 and 0 <= d["score"] <= 1
    with zipfile.ZipFile(folder / (name + ".zip")) as z:
        assert z.namelist() == [name + ".json"]
        assert json.loads(z.read(name + ".json")) == dets
    text = "\n".join(log.messages)
    assert "NOT scored" in text and "COCO evaluation server" in text and name + ".zip" in text


def test_submission_refuses_bad_names_ids_and_a_missing_output_dir(testdev_root, tmp_path):
    entry = {"image_id": 139, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="TEST.COCO_SUBMISSION_NAME = 'a_b'"):
        write_coco_submission([entry], str(out), "test-dev2017", "a_b")
    with pytest.raises(ValueError, match=r"results\[1\]: image_id = '285'"):
        write_coco_submission([entry, dict(entry, image_id="285")], str(out), "test-dev2017",
                              "x")
    assert not out.exists()  # nothing half written
    json_path, zip_path = write_coco_submission([dict(entry, image_id=np.int64(139))],
                                                str(out), "test-dev2017", "x")
    assert json.loads(Path(json_path).read_text())[0]["image_id"] == 139
    with pytest.raises(ValueError, match="needs an output_dir"):
        COCOEvaluator("coco_2017_test-dev")
    with pytest.raises(ValueError, match="TEST.COCO_SUBMISSION_NAME"):
        COCOEvaluator("coco_2017_test-dev", output_dir=str(tmp_path), submission_name="a/b")
