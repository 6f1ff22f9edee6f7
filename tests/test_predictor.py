"""Predictor (numpy image -> detections in its pixels, test transforms inside) and pods_demo
(images, folders, globs, videos, GT overlay) on a tiny synthcrowd person + head model."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bad_files import scene
from crowdloss.cli import demo
from crowdloss.cli.common import load_experiment
from crowdloss.data import DatasetCatalog, MetadataCatalog
from crowdloss.data.csv import register_csv_instances
from crowdloss.data.mapper import DatasetMapper
from crowdloss.engine.predictor import Predictor

EXP = str(Path(__file__).resolve().parents[1] / "playground" / "detection" / "synthcrowd"
          / "retinanet.res18.fpn.synthcrowd.person_head.256size.2600")
TINY = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.RETINANET.HEAD_CHANNELS", "16",
        "MODEL.RETINANET.NUM_CONVS", "1", "INPUT.MIN_SIZE_TEST", "96",
        "INPUT.MAX_SIZE_TEST", "128", "TEST.DETECTIONS_PER_IMAGE", "50"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    exp = load_experiment(EXP)
    cfg = exp.config
    cfg.merge_from_list(TINY)
    torch.manual_seed(0)
    model = exp.build_model(cfg)
    with torch.no_grad():  # a random model that detects something
        model.head.cls_score.weight.normal_(0, 0.2)
        model.head.cls_score.bias.fill_(-2.0)
    path = tmp_path_factory.mktemp("w") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    for k, (h, w) in enumerate([(120, 160), (150, 110)]):
        cv2.imwrite(str(root / f"im{k}.png"), scene(h, w, seed=k))
    return root


def test_predictor_is_the_evaluated_model(weights, images):
    pred = Predictor.from_experiment(EXP, TINY, weights=weights)
    assert pred.class_names == ["person", "head"] and pred.input_format == "RGB"
    bgr = cv2.imread(str(images / "im0.png"))
    det = pred(bgr)
    assert 0 < len(det) <= 50 and det.boxes.shape == (len(det), 4)
    assert (det.boxes[:, 2] <= 160).all() and (det.boxes[:, 3] <= 120).all()  # its pixels
    assert (np.diff(det.scores) <= 0).all() and set(det.names()) <= {"person", "head"}
    # the same as the model on what the test loader gives pods_test
    mapper = DatasetMapper(pred.cfg, is_train=False)
    x = mapper({"file_name": str(images / "im0.png"), "height": 120, "width": 160,
                "image_id": "im0", "annotations": []})
    assert tuple(x["image"].shape[1:]) == (96, 128)  # the test resize happened
    with torch.no_grad():
        ref = pred.model([x])[0]["instances"]
    assert np.allclose(det.boxes, ref.pred_boxes.numpy(), atol=1e-4)
    assert np.allclose(det.scores, ref.scores.numpy())
    # channel order handled: RGB given as RGB is the same image
    rgb = pred(np.ascontiguousarray(bgr[:, :, ::-1]), image_format="RGB")
    assert np.array_equal(rgb.boxes, det.boxes) and len(det.above(0.3)) <= len(det)


def test_predictor_rejects_bad_images(weights):
    pred = Predictor.from_experiment(EXP, TINY, weights=weights)
    for bad in (np.zeros((20, 30), np.uint8), np.zeros((20, 30, 3), np.float32)):
        with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
            pred(bad)
    with pytest.raises(ValueError, match="image_format"):
        pred(np.zeros((20, 30, 3), np.uint8), image_format="BRG")


def test_demo_images_folder_glob_and_gt(weights, images, tmp_path):
    out = tmp_path / "vis"
    s = demo.run(["--dir", EXP, "--input", str(images), "--output", str(out), "--weights",
                  weights, "--threshold", "0.1", *TINY])
    assert s.frames == 2 and sorted(Path(p).name for p in s.outputs) == ["im0.png", "im1.png"]
    drawn = cv2.imread(str(out / "im0.png"))
    assert drawn.shape == (120, 160, 3) and not np.array_equal(drawn, cv2.imread(
        str(images / "im0.png")))  # boxes were drawn
    (images / "gt.csv").write_text("im0.png,10,10,60,100,person\nim1.png,,,,,\n")
    (images / "classes.csv").write_text("person,0\nhead,1\n")
    register_csv_instances("demo_gt", images / "gt.csv", images / "classes.csv")
    try:
        g = demo.run(["--dir", EXP, "--input", str(images / "im*.png"), "--output",
                      str(tmp_path / "gt"), "--weights", weights, "--gt", "demo_gt",
                      "--threshold", "1.0", *TINY])  # no detection drawn: only the GT
    finally:
        DatasetCatalog.remove("demo_gt")
        MetadataCatalog.remove("demo_gt")
    with_gt = cv2.imread(str(tmp_path / "gt" / "im0.png")).astype(int)
    plain = cv2.imread(str(images / "im0.png")).astype(int)
    changed = np.argwhere((with_gt != plain).any(axis=2))
    assert g.frames == 2 and len(changed)
    assert (changed.min(axis=0).tolist(), changed.max(axis=0).tolist()) == ([10, 10], [100, 60])


def test_demo_video_and_errors(weights, tmp_path, monkeypatch):
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (128, 96))
    for k in range(3):
        writer.write(scene(96, 128, seed=k))
    writer.release()
    s = demo.run(["--dir", EXP, "--input", video, "--output", str(tmp_path / "v"),
                  "--weights", weights, *TINY])
    assert s.frames == 3 and s.outputs == [str(tmp_path / "v" / "clip.mp4")]
    cap = cv2.VideoCapture(s.outputs[0])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()
    with pytest.raises(FileNotFoundError, match="no such file"):
        demo.resolve_source(str(tmp_path / "nothing.jpg"))
    with pytest.raises(FileNotFoundError, match="matches no image"):
        demo.resolve_source(str(tmp_path / "*.jpg"))
    assert demo.resolve_source("0").kind == "webcam"
    for var in ("DISPLAY", "WAYLAND_DISPLAY"):  # no --output and no display: a clear error
        monkeypatch.delenv(var, raising=False)
    assert demo.main(["--dir", EXP, "--input", video, "--weights", weights, *TINY]) == 1
