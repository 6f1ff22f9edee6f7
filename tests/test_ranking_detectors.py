"""RetinaNet + aLRP Loss / + AP Loss: the (anchor, class) labels, the losses through the detector
against the loss functions on hand-built inputs, self-balance, train steps with K = 1 and 3."""
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crowdloss.config import RetinaNetConfig, rescale_for_world_size
from crowdloss.modeling.losses import SelfBalance, alrp_loss, ap_loss, smooth_l1_loss
from crowdloss.modeling.meta_arch import ALRPLossRetinaNet, APLossRetinaNet
from crowdloss.modeling.meta_arch.ranking_retinanet import ranking_labels
from crowdloss.ops import aligned_giou, aligned_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_meta_arch import crowd_batch, make_input, tiny_cfg  # noqa: E402

DETECTORS = {"alrp": ALRPLossRetinaNet, "ap": APLossRetinaNet}


def build(kind, num_classes=1, seed=0, **alrp):
    cfg = tiny_cfg("RetinaNet")
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    cfg.MODEL.ALRP.merge({"SB_PERIOD": 0, **alrp})
    torch.manual_seed(seed)
    return DETECTORS[kind].from_config(cfg)


def three_class_batch():
    return [
        make_input(67, 93, [[10, 5, 40, 60], [25, 8, 55, 66], [60, 10, 90, 40]], [0, 2, -1], 1),
        make_input(72, 64, [[4, 4, 30, 50], [30, 20, 60, 70]], [1, 1], 2),
        make_input(80, 61, [], [], 3),  # no GT
    ]


def hand_labels(anchor_labels, k):
    """The (anchor, class) labels written out entry by entry."""
    n, r = anchor_labels.shape
    out = torch.zeros(n, r, k, dtype=torch.long)
    for i in range(n):
        for j in range(r):
            c = int(anchor_labels[i, j])
            if c == -1:
                out[i, j, :] = -1
            elif c < k:
                out[i, j, c] = 1
    return out


# ----------------------------------------------------------------------------- labels
def test_ranking_labels_excluded_positive_background_and_k3():
    labels = torch.tensor([[0, 3, -1, 2], [3, 3, 1, -1]])
    got = ranking_labels(labels, 3)
    assert got.shape == (2, 4, 3)
    assert got.tolist() == [
        [[1, 0, 0], [0, 0, 0], [-1, -1, -1], [0, 0, 1]],
        [[0, 0, 0], [0, 0, 0], [0, 1, 0], [-1, -1, -1]],
    ]
    one = ranking_labels(torch.tensor([[0, 1, -1]]), 1)  # K = 1: background label 1
    assert one[..., 0].tolist() == [[1, 0, -1]]


def test_ranking_labels_without_positive_and_bad_label():
    got = ranking_labels(torch.tensor([[2, -1, 2]]), 2)
    assert int((got == 1).sum()) == 0 and got[0, 1].tolist() == [-1, -1]
    with pytest.raises(ValueError, match=r"label 4 outside \[-1, 2\]"):
        ranking_labels(torch.tensor([[0, 4]]), 2)


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("num_classes", [1, 3])
def test_alrp_losses_through_detector_equal_the_function(num_classes):
    model = build("alrp", num_classes)
    batch = crowd_batch() if num_classes == 1 else three_class_batch()
    outputs, targets = _outputs_and_targets(model, batch)
    assert int(targets.positive.sum()) > 0 and bool((targets.labels == -1).any())
    got = model.losses(outputs, targets)

    # By hand: labels entry by entry, positives in (image, anchor) order, E = 1 - GIoU.
    labels = hand_labels(targets.labels, num_classes)
    pos = [(i, j) for i in range(labels.shape[0]) for j in range(labels.shape[1])
           if bool((labels[i, j] == 1).any())]
    pred = torch.stack([outputs.pred_boxes[i, j] for i, j in pos])
    gt = torch.stack([targets.matched_boxes[i, j] for i, j in pos])
    errors = 1 - aligned_giou(pred, gt)
    logits = outputs.logits.detach().clone().requires_grad_(True)
    ref_cls, ref_loc = alrp_loss(logits, labels, errors)
    torch.testing.assert_close(got["loss_cls"], ref_cls)
    torch.testing.assert_close(got["loss_box_reg"], 50.0 * ref_loc)  # SB_INIT, no update
    assert float(got["sb_weight"]) == 50.0

    # Same gradient on the logits.
    grad_model = torch.autograd.grad(got["loss_cls"], outputs.logits, retain_graph=True)[0]
    grad_ref = torch.autograd.grad(ref_cls, logits)[0]
    torch.testing.assert_close(grad_model, grad_ref)

    # "iou": 2 (1 - IoU).
    model.loc_error = "iou"
    got_iou = model.losses(outputs, targets)
    _, ref_loc_iou = alrp_loss(outputs.logits.detach(), labels, 2 * (1 - aligned_iou(pred, gt)))
    torch.testing.assert_close(got_iou["loss_box_reg"].detach(), 50.0 * ref_loc_iou.detach())


def _outputs_and_targets(model, batch):
    images, _ = model.preprocess_image(batch)
    gts = [x["instances"].to(model.device) for x in batch]
    outputs = model.dense_outputs(images)
    return outputs, model.label_batch(outputs, gts)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_ap_losses_through_detector_equal_the_functions(num_classes):
    model = build("ap", num_classes)
    batch = crowd_batch() if num_classes == 1 else three_class_batch()
    outputs, targets = _outputs_and_targets(model, batch)
    got = model.losses(outputs, targets)
    labels = hand_labels(targets.labels, num_classes)
    torch.testing.assert_close(got["loss_cls"], ap_loss(outputs.logits, labels))
    fg = targets.positive
    anchors = outputs.priors.tensor.expand(fg.shape[0], -1, -1)[fg]
    target_deltas = model.box_coder.get_deltas(anchors, targets.matched_boxes[fg])
    ref_box = smooth_l1_loss(outputs.deltas[fg], target_deltas, beta=1.0, reduction="mean")
    torch.testing.assert_close(got["loss_box_reg"], ref_box)  # mean over 4 x P values
    assert set(got) == {"loss_cls", "loss_box_reg"}


@pytest.mark.parametrize("kind", list(DETECTORS))
def test_no_positive_gives_zero_losses_and_zero_gradients(kind):
    model = build(kind, 3, SB_PERIOD=1)
    model.train()
    batch = [make_input(64, 64, [], [], 1), make_input(70, 50, [[5, 5, 40, 60]], [-1], 2)]
    losses = model(batch)
    assert float(losses["loss_cls"].detach()) == float(losses["loss_box_reg"].detach()) == 0.0
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    grads = [p.grad for p in model.head.parameters() if p.grad is not None]
    assert grads and all(float(g.abs().max()) == 0.0 for g in grads)
    if kind == "alrp":  # a period without positives keeps the weight
        assert float(model.self_balance.weight) == 50.0


# ----------------------------------------------------------------------------- self-balance
def test_self_balance_update_rule_on_a_hand_sequence():
    sb = SelfBalance(init_weight=50.0, period=3)

    def t(value):
        return torch.tensor(value, dtype=torch.float64)
    seq = [(0.9, 0.3, True), (0.8, 0.2, True), (0.0, 0.0, False)]  # the third has no positive
    used = [float(sb.step(t(c), t(l), p)) for c, l, p in seq]
    assert used == [50.0, 50.0, 50.0]
    expected = (0.25 + 0.85) / 0.25  # (mean L_loc + mean L_cls) / mean L_loc = 4.4
    assert float(sb.weight) == pytest.approx(expected, rel=1e-12)
    assert float(sb.cls_sum) == float(sb.loc_sum) == float(sb.num_sum) == 0 and int(sb.passes) == 0
    assert float(sb.step(t(0.5), t(0.5), True)) == pytest.approx(expected)
    assert int(sb.passes) == 1 and float(sb.cls_sum) == 0.5
    # The state is in the state dict: a copy continues the period exactly.
    copy = SelfBalance(init_weight=1.0, period=3)
    copy.load_state_dict(sb.state_dict())
    for m in (sb, copy):
        m.step(t(0.1), t(0.4), True)
        m.step(t(0.0), t(0.0), False)
    assert float(copy.weight) == float(sb.weight) == pytest.approx((0.45 + 0.3) / 0.45)
    # No positive in a whole period: the weight stays.
    for _ in range(3):
        sb.step(t(0.0), t(0.0), False)
    assert float(sb.weight) == pytest.approx((0.45 + 0.3) / 0.45)
    fixed = SelfBalance(init_weight=50.0, period=0)
    for _ in range(5):
        assert float(fixed.step(t(0.9), t(0.1), True)) == 50.0
    with pytest.raises(ValueError, match="SB_INIT"):
        SelfBalance(init_weight=0.0)
    with pytest.raises(ValueError, match="SB_PERIOD"):
        SelfBalance(period=-1)


def _sb_worker(rank, world, tmp):
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank,
                            world_size=world)
    try:
        sb = SelfBalance(init_weight=50.0, period=2)
        values = [[(0.9, 0.3, True), (0.6, 0.1, True)], [(0.0, 0.0, False), (0.3, 0.2, True)]]
        for c, l, p in values[rank]:
            sb.step(torch.tensor(c, dtype=torch.float64), torch.tensor(l, dtype=torch.float64), p)
        torch.save(sb.state_dict(), os.path.join(tmp, f"sb{rank}.pth"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_self_balance_means_are_global_over_ranks(tmp_path):
    mp.start_processes(_sb_worker, args=(2, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    states = [torch.load(tmp_path / f"sb{r}.pth", weights_only=True) for r in range(2)]
    # Means over the three (rank, pass) losses with a positive: cls 0.6, loc 0.2.
    assert float(states[0]["weight"]) == pytest.approx((0.2 + 0.6) / 0.2, rel=1e-12)
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_sb_period_counts_iterations_and_rescales_with_the_world_size():
    cfg = tiny_cfg("RetinaNet")
    cfg.MODEL.ALRP.SB_PERIOD = 7
    cfg.SOLVER.BATCH_SUBDIVISIONS = 2
    assert ALRPLossRetinaNet.from_config(cfg).self_balance.period == 14  # forward passes
    cfg = RetinaNetConfig()  # written for 8 processes
    cfg.MODEL.ALRP.SB_PERIOD = 3665
    msgs = rescale_for_world_size(cfg, 4)
    assert cfg.MODEL.ALRP.SB_PERIOD == 7330 and any("MODEL.ALRP.SB_PERIOD" in m for m in msgs)


def test_bad_alrp_settings_name_their_key():
    cfg = tiny_cfg("RetinaNet")
    cfg.MODEL.ALRP.LOC_ERROR = "l1"
    with pytest.raises(ValueError, match="MODEL.ALRP.LOC_ERROR"):
        ALRPLossRetinaNet.from_config(cfg)
    cfg = tiny_cfg("RetinaNet")
    cfg.MODEL.APLOSS.DELTA = 0.0
    with pytest.raises(ValueError, match="MODEL.APLOSS.DELTA"):
        APLossRetinaNet.from_config(cfg)


# ----------------------------------------------------------------------------- train steps
@pytest.mark.parametrize("kind", list(DETECTORS))
@pytest.mark.parametrize("num_classes", [1, 3])
def test_train_step_and_inference(kind, num_classes):
    model = build(kind, num_classes, SB_PERIOD=1)
    batch = crowd_batch() if num_classes == 1 else three_class_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    weights = []
    for _ in range(2):
        opt.zero_grad()
        losses = model(batch)
        for k, v in losses.items():
            assert v.dim() == 0 and torch.isfinite(v), (k, v)
        assert 0 < float(losses["loss_cls"].detach()) <= 1
        assert float(losses["loss_box_reg"].detach()) > 0
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
        bad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
        assert not bad
        opt.step()
        weights.append(float(losses.get("sb_weight", -1.0)))
    if kind == "alrp":
        assert weights[0] == 50.0 and weights[1] != 50.0  # updated after each pass
    model.eval()
    with torch.no_grad():
        out = model(batch[:2])
    for o in out:
        inst = o["instances"]
        assert len(inst) <= 7 and bool((inst.pred_classes < num_classes).all())
