"""SOLVER.AMP with bfloat16 on the CPU: every kind of detector takes a training step under CPU
autocast; the convolutions run in bfloat16 while the losses, the prediction-aware assignment
and the box decoding stay float32 (the meta-architectures cast the head outputs), so the losses
match float32 training to bfloat16's rounding and every gradient is finite."""
import copy

import pytest
import torch

from crowdloss.modeling.meta_arch import SSD, GeneralizedRCNN
from test_meta_arch import build, crowd_batch, make_input  # noqa: E402
from test_ranking_detectors import build as build_ranking  # noqa: E402
from test_rcnn_e2e import sample, tiny_cfg as rcnn_cfg  # noqa: E402
from test_ssd import ssd_cfg  # noqa: E402

# Small tensors and many small ops: one intra-op thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def ssd_model():
    cfg = ssd_cfg()
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    return SSD.from_config(cfg)


def ssd_batch():
    return [make_input(300, 300, [[40, 30, 120, 250], [90, 40, 170, 260]], [0, 0], 1),
            make_input(300, 300, [[150, 100, 200, 200]], [0], 2)]


def rcnn_model():
    torch.manual_seed(0)
    return GeneralizedRCNN.from_config(rcnn_cfg(small_batches=True))


CASES = {
    # name: (model factory, batch factory, losses compared to float32 at this relative tolerance;
    # None = not compared)
    "LLAFCOS": (lambda: build("LLAFCOS"), crowd_batch, 0.05),
    "RetinaNet": (lambda: build("RetinaNet"), crowd_batch, 0.05),
    "SSD": (ssd_model, ssd_batch, 0.05),
    # Untrained logits nearly tie: bfloat16 rounding reorders the ranking (aLRP's localisation
    # term weighs positives by rank) and the R-CNN's top-k proposals, so only sanity is checked.
    "aLRP": (lambda: build_ranking("alrp"), crowd_batch, None),
    "FasterRCNN": (rcnn_model, lambda: [sample(96, 80, 1), sample(72, 104, 2)], None),
}


def step(model, batch, amp: bool):
    model.train()
    torch.manual_seed(5)  # the R-CNN samplers draw at random: the same draws for both
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        losses = model(copy.deepcopy(batch))
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    return losses


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_step_under_cpu_bf16_autocast(name):
    make_model, make_batch, rtol = CASES[name]
    model = make_model()
    ref = copy.deepcopy(model)
    convs_in_bf16 = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, i, out: convs_in_bf16.append(out.dtype))
    losses = step(model, make_batch(), amp=True)
    assert convs_in_bf16 and set(convs_in_bf16) == {torch.bfloat16}  # autocast is on
    for k, v in losses.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), (k, v)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    if rtol is not None:
        want = step(ref, make_batch(), amp=False)
        for k in want:
            torch.testing.assert_close(losses[k], want[k], rtol=rtol, atol=1e-3, msg=k)
