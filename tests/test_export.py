"""Exported networks (TorchScript, ONNX through onnxruntime) give the eager outputs, at other
sizes than the traced one, and the detections around them are the eager model's."""
import importlib.util

import pytest
import torch

from crowdloss.config import FCOSConfig, PyTorchRetinaNetConfig
from crowdloss.engine.export import (DenseNetwork, ExportedDetector, export_onnx,
                                     export_torchscript, load_torchscript, onnx_network)
from crowdloss.modeling.meta_arch import FCOS, RetinaNet

HAS_ORT = (importlib.util.find_spec("onnxruntime") is not None
           and importlib.util.find_spec("onnx") is not None)


def small(kind):
    cfg = PyTorchRetinaNetConfig() if kind == "retinanet" else FCOSConfig()
    cfg.MODEL.RESNETS.update(DEPTH=18, NORM="BN", STEM_OUT_CHANNELS=16, RES2_OUT_CHANNELS=16)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    head = cfg.MODEL.RETINANET if kind == "retinanet" else cfg.MODEL.FCOS
    head.update(NUM_CLASSES=2, NUM_CONVS=1, HEAD_CHANNELS=32)
    torch.manual_seed(0)
    model = (RetinaNet if kind == "retinanet" else FCOS).from_config(cfg).eval()
    with torch.no_grad():  # some scores above the threshold, so that NMS has work
        model.head.cls_score.weight.normal_(0, 0.3)
        model.head.cls_score.bias.fill_(-3.5)
    return model


def inputs(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
             "height": h + 7, "width": w - 5}]


def same_detections(a, b):
    a, b = a[0]["instances"], b[0]["instances"]
    assert len(a) == len(b) > 10
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert (a.scores - b.scores).abs().max() < 1e-4
    assert (a.pred_boxes - b.pred_boxes).abs().max() < 1e-3


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_torchscript_matches_eager(kind, tmp_path):
    model = small(kind)
    example, _ = model.preprocess_image(inputs(130, 190, 0))  # GN: P7 must not be 1 x 1
    path = export_torchscript(model, str(tmp_path / "net.pt"), example)
    net = load_torchscript(path)
    batch, _ = model.preprocess_image(inputs(100, 140, 1))  # another size than traced
    with torch.no_grad():
        eager = DenseNetwork(model)(batch)
        traced = net(batch)
    assert len(traced) == (2 if kind == "retinanet" else 3)
    for e, t in zip(eager, traced):
        assert e.shape == t.shape and torch.allclose(e, t, atol=1e-5)
    with torch.no_grad():
        same_detections(ExportedDetector(model, net)(inputs(100, 140, 1)),
                        model(inputs(100, 140, 1)))


@pytest.mark.skipif(not HAS_ORT, reason="onnx / onnxruntime not installed "
                                        "(pip install -r requirements-export.txt)")
@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_onnx_matches_eager(kind, tmp_path):
    model = small(kind)
    example, _ = model.preprocess_image(inputs(130, 190, 0))  # GN: P7 must not be 1 x 1
    path = export_onnx(model, str(tmp_path / "net.onnx"), example)
    net = onnx_network(path, threads=1)
    batch, _ = model.preprocess_image(inputs(100, 140, 1) + inputs(90, 150, 2))  # N = 2
    with torch.no_grad():
        eager = DenseNetwork(model)(batch)
    exported = net(batch)
    for e, o in zip(eager, exported):
        assert e.shape == o.shape and torch.allclose(e, o, atol=1e-4)
    with torch.no_grad():
        same_detections(ExportedDetector(model, net)(inputs(100, 140, 1)),
                        model(inputs(100, 140, 1)))


def test_missing_onnxruntime_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(ImportError, match="requirements-export.txt"):
        onnx_network("x.onnx")
