"""Losses against naive formulas, finite gradients, empty inputs."""
import math

import pytest
import torch

from crowdloss.modeling.losses import iou_loss, sigmoid_focal_loss, smooth_l1_loss


def test_focal_vs_naive():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g) * 3
    targets = (torch.rand(6, 3, generator=g) > 0.7).float()
    out = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    for x, t, o in zip(logits.flatten().tolist(), targets.flatten().tolist(), out.flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        pt = p if t == 1 else 1 - p
        at = 0.25 if t == 1 else 0.75
        assert o == pytest.approx(-at * (1 - pt) ** 2 * math.log(pt), rel=1e-4, abs=1e-6)
    assert sigmoid_focal_loss(logits, targets, reduction="sum").item() == pytest.approx(out.sum().item(), rel=1e-5)
    assert sigmoid_focal_loss(logits, targets, reduction="mean").item() == pytest.approx(out.mean().item(), rel=1e-5)
    # gamma 0, alpha off = plain BCE
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0), bce)


def test_focal_stable_grad_and_empty():
    logits = torch.tensor([[-80.0, 80.0, 0.0]], requires_grad=True)
    loss = sigmoid_focal_loss(logits, torch.tensor([[1.0, 0.0, 1.0]]), reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    empty = torch.zeros(0, 3, requires_grad=True)
    for red in ("sum", "mean"):
        z = sigmoid_focal_loss(empty, torch.zeros(0, 3), reduction=red)
        assert z.item() == 0.0 and z.requires_grad
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(logits, logits.detach(), reduction="avg")


def test_iou_loss_values():
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    target = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    iou = torch.tensor([1 / 3, 0.0])
    none = iou_loss(pred, target, loss_type="linear_iou", reduction="none")
    assert torch.allclose(none, 1 - iou)
    log_l = iou_loss(pred, target, loss_type="iou", reduction="none")
    assert log_l[0].item() == pytest.approx(math.log(3), rel=1e-5)
    assert log_l[1].item() == pytest.approx(-math.log(1e-6), rel=1e-5)  # clamped at eps
    giou = iou_loss(pred, target, loss_type="giou", reduction="none")
    assert giou.tolist() == pytest.approx([1 - (1 / 3 - 0.0), 1 - (0 - 100 / 300)], rel=1e-5)
    w = torch.tensor([0.5, 2.0])
    assert iou_loss(pred, target, weight=w, loss_type="giou").item() == pytest.approx((giou * w).sum().item())
    assert iou_loss(target, target, loss_type="giou").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="loss_type"):
        iou_loss(pred, target, loss_type="diou")


def test_iou_loss_grads_and_empty():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(8, 2, generator=g) * 50
    target = torch.cat([xy, xy + 5 + torch.rand(8, 2, generator=g) * 20], 1)
    pred = (target + torch.randn(8, 4, generator=g) * 4).requires_grad_()
    pred.data[0] = torch.tensor([3.0, 3.0, 3.0, 3.0])  # degenerate prediction
    for t in ("iou", "linear_iou", "giou"):
        pred.grad = None
        iou_loss(pred, target, loss_type=t).backward()
        assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    empty = torch.zeros(0, 4, requires_grad=True)
    z = iou_loss(empty, torch.zeros(0, 4), loss_type="giou")
    z.backward()
    assert z.item() == 0.0 and empty.grad.shape == (0, 4)


def test_smooth_l1():
    x = torch.tensor([0.0, 0.05, 0.3, -1.0], requires_grad=True)
    t = torch.zeros(4)
    out = smooth_l1_loss(x, t, beta=0.1, reduction="none")
    assert out.tolist() == pytest.approx([0.0, 0.5 * 0.05**2 / 0.1, 0.3 - 0.05, 1.0 - 0.05])
    assert smooth_l1_loss(x, t, beta=0.0).item() == pytest.approx(1.35)
    loss = smooth_l1_loss(x, t, beta=0.1)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    z = smooth_l1_loss(torch.zeros(0, 4, requires_grad=True), torch.zeros(0, 4), beta=0.1, reduction="mean")
    assert z.item() == 0.0 and z.requires_grad
