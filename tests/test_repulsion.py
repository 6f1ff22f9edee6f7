"""Repulsion Loss (arXiv 1711.07752): Smooth_ln, RepGT and RepBox against plain formulas on
hand-made scenes, the chunked RepBox against all pairs, and the switch in the configs."""
import math

import pytest
import torch

from crowdloss.config import FCOSConfig, RetinaNetConfig, SSDConfig
from crowdloss.modeling.assigners import AssignResult
from crowdloss.modeling.losses import (RepBoxLoss, RepGTLoss, build_repulsion_losses,
                                       repbox_pair_sums, smooth_ln)
from crowdloss.modeling.losses.repulsion import prior_boxes
from crowdloss.modeling.meta_arch.dense_detector import DenseOutputs
from crowdloss.modeling.priors import Priors
from crowdloss.modeling.targets import BatchTargets, ImageTargets

K = 1


# Small tensors and many small ops: one intra-op thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def ln_formula(x, sigma):
    return -math.log(1 - x) if x <= sigma else (x - sigma) / (1 - sigma) - math.log(1 - sigma)


def iog(b, g):
    w = max(0.0, min(b[2], g[2]) - max(b[0], g[0]))
    h = max(0.0, min(b[3], g[3]) - max(b[1], g[1]))
    return w * h / ((g[2] - g[0]) * (g[3] - g[1]))


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def scene(priors, preds, gts, classes, gt_inds):
    """One image: priors (R, 4) anchors, predicted boxes (R, 4) (the deltas ARE the boxes),
    GTs, and the assignment gt_inds (R,) (-1 background)."""
    priors = Priors(torch.tensor(priors, dtype=torch.float32), [len(priors)], [8])
    deltas = torch.tensor(preds, dtype=torch.float32)[None].requires_grad_()
    logits = torch.zeros(1, len(preds), K, requires_grad=True)
    outputs = DenseOutputs(priors, logits, deltas, None, lambda d, p: d * 1.0)
    result = AssignResult(torch.tensor(gt_inds), torch.zeros(len(gt_inds), dtype=torch.bool))
    gts = torch.tensor(gts, dtype=torch.float32).reshape(-1, 4)
    targets = BatchTargets([ImageTargets.from_assignment(result, gts, torch.tensor(classes), K)], K)
    return outputs, targets


def test_smooth_ln_formula_and_eps_cap():
    x = torch.tensor([0.0, 0.2, 0.5, 0.7, 0.99, 1.0])
    for sigma in (0.0, 0.5, 0.9):
        expect = [ln_formula(v, sigma) for v in x.tolist()]
        assert torch.allclose(smooth_ln(x, sigma), torch.tensor(expect), atol=1e-6)
    assert torch.allclose(smooth_ln(x, 0.0), x)  # sigma 0: the identity
    # sigma 1: -ln(1 - x) up to 1 - eps, then its tangent: finite, with a finite slope.
    y = x.clone().requires_grad_()
    out = smooth_ln(y, 1.0, eps=1e-3)
    assert torch.allclose(out[:5], -torch.log1p(-x[:5]), atol=1e-6)
    assert math.isclose(out[5].item(), (1 - 0.999) / 1e-3 - math.log(1e-3), rel_tol=1e-4)
    out.sum().backward()
    assert torch.isfinite(y.grad).all() and math.isclose(y.grad[5].item(), 1e3, rel_tol=1e-3)
    with pytest.raises(ValueError, match="sigma"):
        smooth_ln(x, 1.5)


def test_repgt_one_gt_is_zero_and_the_seed_rule_is_not():
    # One GT, two positives attracted to it: no other GT, so no repulsion.
    prior = [[10.0, 10.0, 50.0, 90.0], [14.0, 12.0, 54.0, 92.0]]
    pred = [[12.0, 8.0, 52.0, 88.0], [16.0, 14.0, 50.0, 94.0]]
    gt = [[12.0, 10.0, 52.0, 90.0]]
    outputs, targets = scene(prior, pred, gt, [0], [0, 0])
    loss = RepGTLoss()(outputs, targets, 2.0)["loss_repgt"]
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    # The seed code ranks the GTs by IoU with the PREDICTION after masking the own GT with -1;
    # with one GT the arg max is that same GT, so each box is repelled from its own target.
    seed = sum(iog(p, gt[0]) for p in pred) / 2.0  # its sigma 0 (Smooth_ln = identity)
    assert seed > 0.8


def test_repgt_target_is_chosen_by_iou_with_the_prior():
    # Positive attracted to GT 0. GT 1 overlaps the PRIOR more, GT 2 the PREDICTION more:
    # the paper's rule (ours) repels it from GT 1, the seed's from GT 2.
    prior = [[20.0, 0.0, 60.0, 80.0]]
    pred = [[5.0, 0.0, 45.0, 80.0]]
    gts = [[18.0, 0.0, 58.0, 80.0], [40.0, 0.0, 80.0, 80.0], [0.0, 0.0, 30.0, 80.0]]
    assert iou(prior[0], gts[1]) > iou(prior[0], gts[2])
    assert iou(pred[0], gts[2]) > iou(pred[0], gts[1])
    outputs, targets = scene(prior, pred, gts, [0, 0, 0], [0])
    loss = RepGTLoss(weight=0.5, sigma=1.0)(outputs, targets, 1.0)["loss_repgt"]
    expect = 0.5 * ln_formula(iog(pred[0], gts[1]), 1.0)
    assert math.isclose(loss.item(), expect, rel_tol=1e-5)
    seed_value = 0.5 * ln_formula(iog(pred[0], gts[2]), 1.0)
    assert abs(seed_value - expect) > 0.1


def test_repgt_identical_gts_ignore_regions_and_gradients():
    # GT 0 and GT 1 identical; GT 2 an ignore region overlapping the prior most; GT 3 valid.
    prior = [[0.0, 0.0, 40.0, 80.0], [100.0, 0.0, 140.0, 80.0], [300, 300, 340, 380]]
    pred = [[4.0, 0.0, 44.0, 80.0], [96.0, 4.0, 130.0, 84.0], [300, 300, 340, 380]]
    gts = [[2.0, 0.0, 42.0, 80.0], [2.0, 0.0, 42.0, 80.0], [98.0, 0.0, 138.0, 80.0],
           [110.0, 0.0, 150.0, 80.0]]
    outputs, targets = scene(prior, pred, gts, [0, 0, -1, 0], [0, 3, -1])
    loss = RepGTLoss(weight=1.0, sigma=0.5)(outputs, targets, 3.0)["loss_repgt"]
    # Positive 0 is repelled from its identical twin GT 1; positive 1 from GT 0 (the best
    # VALID GT other than its own: the ignore region overlaps it more but never repels).
    expect = (ln_formula(iog(pred[0], gts[1]), 0.5) + ln_formula(iog(pred[1], gts[0]), 0.5)) / 3
    assert iog(pred[1], gts[0]) == 0.0 and iog(pred[1], gts[2]) > 0.5
    assert math.isclose(loss.item(), expect, rel_tol=1e-5)
    loss.backward()
    assert outputs.logits.grad is None  # only the boxes are pushed
    assert outputs.deltas.grad[0, 0].abs().sum() > 0 and outputs.deltas.grad[0, 2].abs().sum() == 0


def test_no_positives_gives_zero_losses():
    outputs, targets = scene([[0.0, 0.0, 10.0, 10.0]], [[0.0, 0.0, 10.0, 10.0]],
                             [[0.0, 0.0, 10.0, 10.0]], [0], [-1])
    for term in (RepGTLoss(), RepBoxLoss()):
        (loss,) = term(outputs, targets, 1.0).values()
        assert loss.item() == 0.0 and loss.requires_grad


def dense_repbox(boxes, groups, sigma):
    """All P x P ordered pairs at once, straight from the formula."""
    lt = torch.max(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    ious = inter / (area[:, None] + area[None, :] - inter)
    pair = groups[:, None] != groups[None, :]
    return (smooth_ln(ious, sigma) * pair).sum(), int((pair & (ious > 0)).sum())


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_repbox_chunked_equals_all_pairs(sigma):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 10 + torch.rand(300, 2, generator=g) * 40], 1).double()
    groups = torch.randint(0, 25, (300,), generator=g)
    a = boxes.clone().requires_grad_()
    total, count = repbox_pair_sums(a, groups, sigma, max_block_elements=9000)  # 30-row blocks
    b = boxes.clone().requires_grad_()
    expect, expect_count = dense_repbox(b, groups, sigma)
    assert int(count) == expect_count > 0
    assert torch.allclose(total, expect, rtol=1e-10)
    total.backward()
    expect.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: repbox_pair_sums(x, groups[:8], sigma,
                                                               max_block_elements=24)[0],
                                    (boxes[:8].clone().requires_grad_(),))


def test_repbox_loss_over_a_batch():
    prior = [[0.0, 0.0, 10.0, 10.0]] * 4
    pred = [[0.0, 0.0, 20.0, 20.0], [10.0, 0.0, 30.0, 20.0], [5.0, 5.0, 25.0, 25.0],
            [100.0, 100.0, 110.0, 110.0]]
    gts = [[0.0, 0.0, 20.0, 20.0], [10.0, 0.0, 30.0, 20.0]]
    # Positives 0 and 2 share GT 0 (no pair); 3 overlaps nobody.
    outputs, targets = scene(prior, pred, gts, [0, 0], [0, 1, 0, 1])
    loss = RepBoxLoss(weight=0.5, sigma=0.0)(outputs, targets, 1.0)["loss_repbox"]
    pairs = [(0, 1), (1, 2)]
    expect = 0.5 * 2 * sum(iou(pred[i], pred[j]) for i, j in pairs) / (2 * len(pairs) + 1e-3)
    assert math.isclose(loss.item(), expect, rel_tol=1e-5)


def test_point_priors_stand_for_squares():
    priors = Priors(torch.tensor([[4.0, 4.0], [16.0, 16.0]]), [1, 1], [8, 16])
    assert prior_boxes(priors, 8.0).tolist() == [[-28.0, -28.0, 36.0, 36.0],
                                                 [-48.0, -48.0, 80.0, 80.0]]


@pytest.mark.parametrize("config", [SSDConfig, RetinaNetConfig, FCOSConfig])
def test_config_switches_the_terms(config):
    cfg = config()
    assert build_repulsion_losses(cfg) == []
    cfg.MODEL.REPULSION.REPGT.ENABLED = True
    (term,) = build_repulsion_losses(cfg)
    assert isinstance(term, RepGTLoss) and term.weight == 0.5 and term.sigma == 1.0
    cfg.MODEL.REPULSION.REPBOX.ENABLED = True
    terms = build_repulsion_losses(cfg)
    assert isinstance(terms[1], RepBoxLoss) and terms[1].sigma == 0.0
