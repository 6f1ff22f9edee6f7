"""ssd.pytorch weights through MODEL.WEIGHTS: the reduced-fc VGG file and whole SSD300
checkpoints, and a converted SSD300 giving ssd.pytorch's detections (``ssd_reference``)."""
import warnings

import cv2
import numpy as np
import pytest
import torch

import ssd_reference as ref
from crowdloss.config import SSDConfig
from crowdloss.data.annotations import Annotations
from crowdloss.data.transforms import Resize
from crowdloss.engine.weights import detect_weight_format, load_weights
from crowdloss.modeling.backbone import build_ssd_vgg_backbone
from crowdloss.modeling.meta_arch import SSD
from crowdloss.modeling.ssd_weights import VGG_CONV_INDICES, background_last

WIDTH = 0.125  # a narrow model in ssd.pytorch's exact layout keeps the forward passes cheap


# Small tensors and many small ops: one intra-op thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def reference_state_dict(width=WIDTH, seed=0, num_classes=21, empty=False):
    """A state dict in ssd.pytorch's SSD300 layout (``ssd300_mAP_77.43_v2.pth``)."""
    g = torch.Generator().manual_seed(seed)
    c = lambda n: max(1, int(round(n * width)))  # noqa: E731
    shapes = {}
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
           (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    for i, (cin, cout) in zip(sorted(VGG_CONV_INDICES)[:13], vgg):
        shapes[f"vgg.{i}"] = (c(cout), cin if cin == 3 else c(cin), 3, 3)
    shapes["vgg.31"] = (c(1024), c(512), 3, 3)
    shapes["vgg.33"] = (c(1024), c(1024), 1, 1)
    extras = [(1024, 256, 1), (256, 512, 3), (512, 128, 1), (128, 256, 3), (256, 128, 1),
              (128, 256, 3), (256, 128, 1), (128, 256, 3)]
    for k, (cin, cout, ks) in enumerate(extras):
        shapes[f"extras.{k}"] = (c(cout), c(cin), ks, ks)
    for l, (cin, a) in enumerate(zip([512, 1024, 512, 256, 256, 256], [4, 6, 6, 6, 4, 4])):
        shapes[f"loc.{l}"] = (a * 4, c(cin), 3, 3)
        shapes[f"conf.{l}"] = (a * num_classes, c(cin), 3, 3)
    sd = {}
    for name, shape in shapes.items():
        fan_in = shape[1] * shape[2] * shape[3]
        make = torch.zeros if empty else (lambda *s: torch.randn(*s, generator=g))
        sd[f"{name}.weight"] = make(*shape) * (2.0 / fan_in) ** 0.5
        sd[f"{name}.bias"] = make(shape[0]) * 0.1
    sd["L2Norm.weight"] = torch.full((c(512),), 20.0) + (0 if empty else torch.randn(c(512), generator=g))
    return sd


def calibrate_head(sd, x):
    """Scale each head conv so that box offsets have std ~0.5 and class logits std ~1.5 with a
    background bias of 4: then a few hundred (not all 8732 x 20) boxes pass the 0.01 score."""
    loc, conf = ref.forward(sd, x)
    locs = loc.split([38 * 38 * 4, 19 * 19 * 6, 10 * 10 * 6, 5 * 5 * 6, 3 * 3 * 4, 4], dim=1)
    confs = conf.split([t.shape[1] for t in locs], dim=1)
    for l, (lo, co) in enumerate(zip(locs, confs)):
        for name, out, target in (("loc", lo, 0.5), ("conf", co, 1.5)):
            scale = target / float(out.std())
            sd[f"{name}.{l}.weight"] *= scale
            sd[f"{name}.{l}.bias"] *= scale
        a = sd[f"loc.{l}.weight"].shape[0] // 4
        bias = sd[f"conf.{l}.bias"].view(a, -1)
        bias[:, 0] += 4.0
    return sd


def build_ssd300(tmp_path, sd, **overrides):
    cfg = SSDConfig()
    cfg.MODEL.VGG.WIDTH_FACTOR = overrides.get("width", WIDTH)
    # ssd.pytorch checkpoints see RGB minus the mean in RGB order (docs/ssd.md).
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [123.0, 117.0, 104.0]
    cfg.TEST.DETECTIONS_PER_IMAGE = 20 * 200  # ssd.pytorch keeps 200 per class, no image cap
    cfg.build_backbone = build_ssd_vgg_backbone
    model = SSD.from_config(cfg).eval()
    path = tmp_path / "ssd300.pth"
    torch.save(sd, path)
    summary = load_weights(model, str(path), min_coverage=1.0, cfg=cfg)
    return model, summary


def test_formats_are_detected_and_conf_background_moves_last():
    sd = reference_state_dict()
    assert detect_weight_format(sd) == "ssd_pytorch"
    vgg = {k[len("vgg."):]: v for k, v in sd.items() if k.startswith("vgg.")}
    assert detect_weight_format(vgg) == "ssd_pytorch_vgg"
    assert detect_weight_format({k: v for k, v in vgg.items() if k != "33.bias"}) == "crowdloss"
    assert detect_weight_format({**sd, "fc.weight": torch.zeros(1)}) == "crowdloss"
    # Two anchors x three classes, background (class 0) first -> last, per anchor.
    w = torch.arange(6.0)
    assert background_last(w, 2).tolist() == [1.0, 2.0, 0.0, 4.0, 5.0, 3.0]
    with pytest.raises(ValueError, match="anchors"):
        background_last(torch.zeros(7), 2)


def test_vgg16_reducedfc_file_loads_into_the_backbone(tmp_path):
    sd = reference_state_dict()
    vgg = {k[len("vgg."):]: v for k, v in sd.items() if k.startswith("vgg.")}
    path = tmp_path / "vgg16_reducedfc.pth"
    torch.save(vgg, path)
    cfg = SSDConfig()
    cfg.MODEL.VGG.WIDTH_FACTOR = WIDTH
    cfg.build_backbone = build_ssd_vgg_backbone
    model = SSD.from_config(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # BGR with the Caffe mean: the file's convention
        summary = load_weights(model, str(path), cfg=cfg)
    assert summary.weight_format == "ssd_pytorch_vgg" and summary.matched == 30
    assert not summary.unexpected
    for index, name in VGG_CONV_INDICES.items():
        assert torch.equal(getattr(model.backbone, name).weight, vgg[f"{index}.weight"])
    # What the file does not hold: L2Norm, the extras and the head.
    assert any(k.startswith("backbone.conv6_1") for k in summary.missing)
    assert "backbone.conv4_3_norm.weight" in summary.missing


def test_full_width_checkpoint_fills_ssd300(tmp_path):
    sd = reference_state_dict(width=1.0, empty=True)
    model, summary = build_ssd300(tmp_path, sd, width=1.0)
    assert summary.coverage == 1.0 and summary.matched == len(sd) and not summary.unexpected
    # The pretrained VGG alone passes the training coverage rule (MODEL.WEIGHTS_MIN_COVERAGE.
    # TRAIN 0.5) for 20 VOC classes and for one CrowdHuman class.
    vgg = {k[len("vgg."):]: v for k, v in sd.items() if k.startswith("vgg.")}
    torch.save(vgg, tmp_path / "vgg.pth")
    assert load_weights(model, str(tmp_path / "vgg.pth"), min_coverage=0.5).coverage > 0.75


def test_converted_ssd300_gives_ssd_pytorch_detections(tmp_path):
    rng = np.random.default_rng(0)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3)).astype(np.uint8), (7, 7), 2)
    # ssd.pytorch: resize the BGR image, subtract the mean in BGR order, swap to RGB.
    x = cv2.resize(bgr, (300, 300)).astype(np.float32) - np.array([104, 117, 123], np.float32)
    x = torch.from_numpy(x[:, :, (2, 1, 0)].copy()).permute(2, 0, 1)[None]
    sd = calibrate_head(reference_state_dict(), x)
    with torch.no_grad():
        loc, conf = ref.forward(sd, x)
    expect = ref.detect(loc[0], conf[0], ref.prior_box(ref.VOC))
    assert 50 < len(expect) < 3000 and len({c for c, _, _ in expect}) > 5

    model, summary = build_ssd300(tmp_path, sd)
    assert summary.weight_format == "ssd_pytorch" and summary.coverage == 1.0
    rgb, _ = Resize(height=300, width=300)(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                                            Annotations.empty(), None)
    inputs = [{"image": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
               "height": 240, "width": 320}]
    with torch.no_grad():
        out = model(inputs)[0]["instances"]

    # ssd.pytorch returns [0, 1] boxes of the 300 x 300 input, unclipped; we return boxes of
    # the 240 x 320 original, clipped, without the empty ones.
    scale = torch.tensor([320.0, 240.0, 320.0, 240.0])
    rows = []
    for cl, score, box in expect:
        b = torch.tensor(box) * scale
        b[0::2] = b[0::2].clamp(0, 320)
        b[1::2] = b[1::2].clamp(0, 240)
        if b[2] > b[0] and b[3] > b[1]:
            rows.append((cl - 1, score, b))
    rows.sort(key=lambda r: (r[0], -r[1]))
    got = sorted(zip(out.pred_classes.tolist(), out.scores.tolist(), out.pred_boxes),
                 key=lambda r: (r[0], -r[1]))
    assert len(got) == len(rows)
    assert [r[0] for r in got] == [r[0] for r in rows]
    assert np.allclose([r[1] for r in got], [r[1] for r in rows], atol=1e-4)
    boxes_got = torch.stack([r[2] for r in got]) / scale
    boxes_ref = torch.stack([r[2] for r in rows]) / scale
    assert torch.allclose(boxes_got, boxes_ref, atol=1e-4)
