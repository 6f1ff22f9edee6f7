"""MODEL.CHANNELS_LAST: the same weights in NHWC order give the same losses, gradients and
detections as in NCHW (up to float rounding), for a dense detector, SSD and Faster R-CNN;
checkpoints move between the layouts; the runner trains in it."""
import copy

import pytest
import torch

from crowdloss.engine import DefaultRunner
from crowdloss.modeling.meta_arch import SSD, GeneralizedRCNN, place_model
from crowdloss.utils.env import seed_all_rng
from test_engine import ConvModel, make_cfg  # noqa: E402
from test_meta_arch import build, crowd_batch, make_input, tiny_cfg  # noqa: E402
from test_rcnn_e2e import sample, tiny_cfg as rcnn_cfg  # noqa: E402
from test_ssd import ssd_cfg  # noqa: E402


# Small tensors and many small ops: one intra-op thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def weights_4d(model):
    return [p for p in model.parameters() if p.dim() == 4]


def both_layouts(model, cfg):
    """(NCHW model, NHWC copy with the same weights), both through place_model."""
    cfg.MODEL.CHANNELS_LAST = False
    nchw = place_model(model, cfg)
    cfg = copy.deepcopy(cfg)
    cfg.MODEL.CHANNELS_LAST = True
    nhwc = place_model(copy.deepcopy(model), cfg)
    return nchw, nhwc


def test_place_model_changes_the_layout_only():
    cfg = tiny_cfg("FCOS")
    nchw, nhwc = both_layouts(build("FCOS"), cfg)
    assert all(p.is_contiguous() for p in weights_4d(nchw))
    for p in weights_4d(nhwc):
        assert p.is_contiguous(memory_format=torch.channels_last)
        if p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:  # else both layouts are one order
            assert not p.is_contiguous()
    for (k, a), (_, b) in zip(nchw.state_dict().items(), nhwc.state_dict().items()):
        assert torch.equal(a, b), k


def assert_same_training(nchw, nhwc, batch, grad_tol=1e-4):
    nchw.train(), nhwc.train()
    losses = [m(copy.deepcopy(batch)) for m in (nchw, nhwc)]
    assert losses[0].keys() == losses[1].keys()
    for k in losses[0]:
        torch.testing.assert_close(losses[1][k], losses[0][k], rtol=1e-4, atol=1e-5, msg=k)
    for m, loss in zip((nchw, nhwc), losses):
        sum(loss.values()).backward()
    grads = [dict((k, p.grad) for k, p in m.named_parameters() if p.grad is not None)
             for m in (nchw, nhwc)]
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k, g in grads[0].items():
        # Each conv sums its gradient in another order: errors scale with the tensor's largest
        # entry, not with each entry (a mishandled layout would be off by O(1) of it).
        scale = float(g.abs().max())
        torch.testing.assert_close(grads[1][k], g, rtol=1e-3, atol=grad_tol * scale + 1e-7,
                                   msg=k)


def assert_same_detections(nchw, nhwc, batch):
    nchw.eval(), nhwc.eval()
    with torch.no_grad():
        outs = [m(copy.deepcopy(batch)) for m in (nchw, nhwc)]
    for a, b in zip(*outs):
        a, b = a["instances"], b["instances"]
        assert len(a) == len(b) and len(a) > 0
        # Untrained scores sit near the prior, so rounding may swap two of equal score: the
        # scores are compared sorted and every box must have its twin in the other set.
        torch.testing.assert_close(b.scores.sort().values, a.scores.sort().values,
                                   rtol=1e-4, atol=1e-6)
        gap = torch.cdist(b.pred_boxes, a.pred_boxes, p=float("inf")).min(dim=1).values
        assert gap.max() < 1e-4 * float(a.pred_boxes.abs().max()) + 1e-3  # pixels


@pytest.mark.parametrize("name", ["LLAFCOS", "RetinaNet"])
def test_dense_detector_same_losses_gradients_and_detections(name):
    nchw, nhwc = both_layouts(build(name), tiny_cfg(name))
    assert_same_training(nchw, nhwc, crowd_batch())
    assert_same_detections(nchw, nhwc, crowd_batch())


def test_ssd_same_losses_gradients_and_detections():
    cfg = ssd_cfg()
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    nchw, nhwc = both_layouts(SSD.from_config(cfg), cfg)
    batch = [make_input(300, 300, [[40, 30, 120, 250], [90, 40, 170, 260]], [0, 0], 1),
             make_input(300, 300, [[150, 100, 200, 200]], [0], 2)]
    # Measured up to 1e-3 of the largest entry in the VGG trunk: batch-norm over two images
    # amplifies the rounding through its 15 layers (the FPN detectors: 1e-5).
    assert_same_training(nchw, nhwc, batch, grad_tol=3e-3)
    assert_same_detections(nchw, nhwc, batch)


def test_faster_rcnn_same_losses_and_gradients():
    cfg = rcnn_cfg(small_batches=True)
    torch.manual_seed(0)
    nchw, nhwc = both_layouts(GeneralizedRCNN.from_config(cfg), cfg)
    # The ROI sampler draws at random: the same stream for both models.
    batch = [sample(96, 80, 1), sample(72, 104, 2)]
    nchw.train(), nhwc.train()
    losses = []
    for m in (nchw, nhwc):
        torch.manual_seed(5)
        losses.append(m(copy.deepcopy(batch)))
    # Untrained objectness logits nearly tie, so rounding may swap a few proposals at the
    # top-k cut: the ROI classification loss moves by ~2e-4 of itself, the rest by ~1e-7.
    for k in losses[0]:
        rtol = 1e-3 if k == "loss_cls" else 1e-5
        torch.testing.assert_close(losses[1][k], losses[0][k], rtol=rtol, atol=1e-6, msg=k)


def test_checkpoint_moves_between_layouts(tmp_path):
    cfg = tiny_cfg("FCOS")
    nchw, nhwc = both_layouts(build("FCOS", seed=1), cfg)
    torch.save(nhwc.state_dict(), tmp_path / "nhwc.pth")
    fresh = place_model(build("FCOS", seed=2), cfg)  # NCHW (both_layouts left it False)
    fresh.load_state_dict(torch.load(tmp_path / "nhwc.pth", weights_only=True))
    assert all(p.is_contiguous() for p in weights_4d(fresh))
    for (k, a), (_, b) in zip(nchw.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k


def test_runner_trains_channels_last(tmp_path):
    cfg = make_cfg(tmp_path / "nhwc", max_iter=3)
    cfg.MODEL.CHANNELS_LAST = True
    seed_all_rng(0)
    runner = DefaultRunner(cfg, lambda c: ConvModel())
    runner.resume_or_load(resume=False)
    runner.train()
    assert runner.model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not runner.model.conv.weight.is_contiguous()
    # The same run in NCHW ends at the same weights (up to rounding).
    seed_all_rng(0)
    ref = DefaultRunner(make_cfg(tmp_path / "nchw", max_iter=3), lambda c: ConvModel())
    ref.resume_or_load(resume=False)
    ref.train()
    for (k, a), (_, b) in zip(ref.model.state_dict().items(), runner.model.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=k)
