"""pytorch-retinanet checkpoints in crowdloss: the weight format at every depth, and the
converted network against a plain transcription of the reference (tests/
pytorch_retinanet_reference.py): same boxes, scores and classes to 1e-4."""
import logging

import numpy as np
import pytest
import torch

import pytorch_retinanet_reference as ref
from crowdloss.config import PyTorchRetinaNetConfig
from crowdloss.engine.weights import detect_weight_format, load_state
from crowdloss.modeling.meta_arch import RetinaNet


def build(depth=18, num_classes=3, **retinanet):
    cfg = PyTorchRetinaNetConfig()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.update(retinanet)
    cfg.TEST.DETECTIONS_PER_IMAGE = 100000  # the reference keeps every detection
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    torch.manual_seed(0)
    return RetinaNet.from_config(cfg).eval(), cfg


@pytest.mark.parametrize("depth", [18, 34, 50, pytest.param(101, marks=pytest.mark.slow),
                                   pytest.param(152, marks=pytest.mark.slow)])
def test_every_depth_converts_whole(depth):
    sd = ref.state_dict(depth, 80, empty=True)  # its COCO head: 9 x 80 class channels
    assert detect_weight_format(sd) == "pytorch_retinanet"
    model, cfg = build(depth, 80)
    summary = load_state(model, {"state_dict": {"module." + k: v for k, v in sd.items()}},
                         source="coco.pt", min_coverage=1.0, cfg=cfg)
    assert summary.weight_format == "pytorch_retinanet"
    assert summary.coverage == 1.0 and not summary.missing and not summary.unexpected
    assert not summary.shape_skipped and not summary.ambiguous
    # every entry of the file went somewhere (BN step counters aside)
    assert summary.matched == len([k for k in sd if not k.endswith("num_batches_tracked")])


def test_torchvision_backbone_is_not_taken_for_a_detector():
    sd = ref.state_dict(18, 2, empty=True)
    backbone = {k: v for k, v in sd.items() if k.startswith(("conv1", "bn1", "layer"))}
    assert detect_weight_format(backbone) == "torchvision"
    no_heads = {k: v for k, v in sd.items() if not k.startswith("regressionModel")}
    assert detect_weight_format(no_heads) != "pytorch_retinanet"


def _image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ours_at_input(model, image, batch=None):
    """Our detections in the padded input's pixels (before the rescale to the image), on our
    normalised and padded batch, or on ``batch`` (the reference's)."""
    x = [{"image": torch.from_numpy(image).permute(2, 0, 1).contiguous()}]
    with torch.no_grad():
        ours, sizes = model.preprocess_image(x)
        inst = model.forward_test(ours if batch is None else batch, sizes)[0]
    return ours, inst.scores, inst.pred_classes, inst.pred_boxes


def _sorted(scores, classes, boxes):
    order = np.lexsort((-scores.numpy(), classes.numpy()))  # class, then score descending
    return scores[order], classes[order], boxes[order]


@pytest.mark.parametrize("depth,size", [(18, (77, 101)), (50, (64, 64))])
def test_converted_model_gives_the_reference_detections(depth, size):
    k = 3
    sd = ref.state_dict(depth, k, seed=depth)
    model, cfg = build(depth, k)
    load_state(model, sd, source="ref.pt", min_coverage=1.0, cfg=cfg)
    image = _image(*size, seed=1)
    theirs = ref.preprocess(image)
    # Preprocessing: the same tensor (ours normalises 0-255 values in float32, it divides by
    # 255 and normalises in float64: a few 1e-7 apart), padded alike (77 -> 96 and, one block
    # more when already divisible, 64 -> 96).
    batch, *_ = _ours_at_input(model, image)
    assert batch.shape == theirs.shape and torch.allclose(batch, theirs, atol=1e-5)
    # The network and post-processing on the same input tensor.
    _, scores, classes, boxes = _ours_at_input(model, image, batch=theirs)
    t_scores, t_classes, t_boxes = ref.detect(sd, theirs, depth, k)
    assert len(t_scores) > 50 and len(set(t_classes.tolist())) == k  # a real test: many boxes
    ours = _sorted(scores, classes, boxes)
    want = _sorted(t_scores, t_classes, t_boxes)
    assert len(ours[0]) == len(want[0])
    assert torch.equal(ours[1], want[1])
    assert (ours[0] - want[0]).abs().max() < 1e-4
    # Box coordinates are pixels (up to ~100): float32 through ResNet-50 on another CPU's
    # kernels lands ~1e-4 px apart (1e-6 relative); a convention error is >= 0.5 px.
    assert torch.allclose(ours[2], want[2], rtol=1e-5, atol=1e-4)


def test_padded_clip_and_no_clamp_are_what_make_it_exact():
    # The same weights in the cvpods defaults (clip to the image, dw clamp, top-k) differ:
    # the options are not decoration.
    k = 2
    sd = ref.state_dict(18, k, seed=5)
    sd["regressionModel.output.weight"] *= 50  # large deltas: boxes reach into the padding
    image = _image(70, 90, seed=2)
    t_scores, _, t_boxes = ref.detect(sd, ref.preprocess(image), 18, k)
    exact, cfg = build(18, k)
    load_state(exact, sd, source="ref.pt", cfg=cfg)
    _, scores, _, boxes = _ours_at_input(exact, image, batch=ref.preprocess(image))
    assert len(scores) == len(t_scores)
    assert float(t_boxes[:, 2].max()) > 90  # past the image, inside the padded 96
    other, cfg = build(18, k, TEST_CLIP="image", SCALE_CLAMP=1.0)
    load_state(other, sd, source="ref.pt", cfg=cfg)
    _, o_scores, _, o_boxes = _ours_at_input(other, image, batch=ref.preprocess(image))
    assert float(o_boxes[:, 2].max()) <= 90 and len(o_scores) != len(t_scores)


def test_detections_in_image_coordinates():
    # Through model() on the uint8 image: boxes rescaled to the dict's size (here the
    # input's), clipped to the image and empty ones dropped; everything else is the
    # reference's. Its float64 normalisation moves the input by ~1e-7, which the random
    # network amplifies to ~1e-4 px in the boxes: hence 1e-3 here (1e-4 on one input above).
    k = 2
    sd = ref.state_dict(18, k, seed=3)
    model, cfg = build(18, k)
    load_state(model, sd, source="ref.pt", cfg=cfg)
    image = _image(70, 90, seed=4)
    with torch.no_grad():
        out = model([{"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                      "height": 70, "width": 90}])[0]["instances"]
    t_scores, t_classes, t_boxes = ref.detect(sd, ref.preprocess(image), 18, k)
    t_boxes = torch.stack([t_boxes[:, 0].clamp(0, 90), t_boxes[:, 1].clamp(0, 70),
                           t_boxes[:, 2].clamp(0, 90), t_boxes[:, 3].clamp(0, 70)], dim=1)
    keep = (t_boxes[:, 2] > t_boxes[:, 0]) & (t_boxes[:, 3] > t_boxes[:, 1])
    ours = _sorted(out.scores, out.pred_classes, out.pred_boxes)
    want = _sorted(t_scores[keep], t_classes[keep], t_boxes[keep])
    assert out.image_size == (70, 90) and len(ours[0]) == len(want[0]) > 0
    assert torch.equal(ours[1], want[1]) and (ours[0] - want[0]).abs().max() < 1e-4
    # measured: 2e-4 px at most, on boxes up to 90 px
    assert (ours[2] - want[2]).abs().max() < 1e-3


def test_input_convention_warns_on_a_bgr_config(caplog):
    sd = ref.state_dict(18, 2, empty=True)
    model, cfg = build(18, 2)
    cfg.INPUT.FORMAT = "BGR"
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="INPUT.FORMAT"):
        load_state(model, sd, source="ref.pt", cfg=cfg)
