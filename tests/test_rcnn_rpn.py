"""Faster R-CNN's RPN: anchor labelling with ignore regions, the 256 / 0.5 sampling, the losses
against their formulas, and proposal selection (per-level top-k, per-level NMS, clipping, min
size, post-NMS cap) on hand-made inputs."""
import math

import pytest
import torch

from crowdloss.modeling.anchors import AnchorGenerator
from crowdloss.modeling.assigners import MaxIoUAssigner
from crowdloss.modeling.box_coder import Box2BoxTransform
from crowdloss.modeling.priors import Priors
from crowdloss.modeling.proposal_generator import RPN, StandardRPNHead, find_top_rpn_proposals
from crowdloss.modeling.sampling import subsample_labels
from crowdloss.structures import Instances


def make_rpn(**kw):
    args = dict(in_features=["p3"], head=StandardRPNHead(in_channels=4, num_anchors=1),
                anchor_generator=AnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[8]),
                anchor_assigner=MaxIoUAssigner(neg_iou_thresh=0.3, pos_iou_thresh=0.7,
                                               allow_low_quality_matches=True,
                                               ignore_ioa_thresh=0.5),
                box2box_transform=Box2BoxTransform())
    args.update(kw)
    return RPN(**args)


def gts(boxes, classes, size=(400, 600)):
    return Instances(size, gt_boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                     gt_classes=torch.tensor(classes, dtype=torch.long))


# GT0, GT1 (small: no anchor reaches 0.7), an ignore region, GT2 inside it.
SCENE = gts([[0, 0, 40, 40], [100, 0, 130, 30], [200, 0, 300, 100], [260, 50, 290, 95]],
            [0, 0, -1, 0])
ANCHORS = torch.tensor([
    [0, 0, 40, 40],      # a0 IoU 1 with GT0: positive
    [0, 0, 40, 20],      # a1 IoU 0.5 with GT0: grey zone
    [500, 300, 540, 340],  # a2 nothing: negative
    [205, 5, 245, 45],   # a3 inside the ignore region (IoA 1), no GT: excluded
    [280, 0, 320, 40],   # a4 IoA exactly 0.5 (not above): negative
    [290, 0, 330, 40],   # a5 IoA 0.25: negative
    [100, 0, 145, 45],   # a6 IoU 0.44 with GT1, its best anchor: low-quality positive
    [0, 0, 42, 40],      # a7 IoU 0.95 with GT0: positive
    [260, 50, 290, 95],  # a8 = GT2, inside the ignore region: positive all the same
], dtype=torch.float32)


def test_anchor_labels_with_ignore_regions():
    rpn = make_rpn()
    priors = Priors(ANCHORS, [len(ANCHORS)], [8])
    labels, matched = rpn.label_and_sample_anchors(priors, [SCENE])
    assert labels.shape == (1, 9) and matched.shape == (1, 9, 4)
    assert labels[0].tolist() == [1, -1, 0, -1, 0, 0, 1, 1, 1]
    gt = SCENE.gt_boxes
    for a, g in ((0, 0), (6, 1), (7, 0), (8, 3)):
        assert torch.equal(matched[0, a], gt[g])
    assert not matched[0, labels[0] != 1].any()


def test_anchor_labels_without_gt_and_with_only_ignore():
    rpn = make_rpn()
    priors = Priors(ANCHORS, [len(ANCHORS)], [8])
    labels, _ = rpn.label_and_sample_anchors(priors, [gts([], []),
                                                      gts([[200, 0, 300, 100]], [-1])])
    assert labels[0].tolist() == [0] * 9
    # Only the ignore rule applies: a3 (IoA 1) and a8 (IoA 1) are excluded, nothing positive.
    assert labels[1].tolist() == [0, 0, 0, -1, 0, 0, 0, 0, -1]


def _sampling_scene(num_pos):
    g = torch.Generator().manual_seed(1)
    pos = torch.tensor([[0.0, 0.0, 40.0, 40.0]]).repeat(num_pos, 1) + torch.rand(num_pos, 1, generator=g)
    neg = torch.tensor([[500.0, 300.0, 540.0, 340.0]]).repeat(600, 1) + torch.rand(600, 1, generator=g)
    ign = torch.tensor([[210.0, 10.0, 250.0, 50.0]]).repeat(100, 1) + torch.rand(100, 1, generator=g)
    anchors = torch.cat([pos, neg, ign])
    scene = gts([[0, 0, 40, 40], [200, 0, 300, 100]], [0, -1])
    return Priors(anchors, [len(anchors)], [8]), scene


def test_sampling_256_half_positive_seeded():
    rpn = make_rpn()
    priors, scene = _sampling_scene(400)
    torch.manual_seed(0)
    labels = rpn.label_and_sample_anchors(priors, [scene])[0][0]
    assert int((labels == 1).sum()) == 128 and int((labels == 0).sum()) == 128
    assert bool((labels[:400] != 0).all())          # positives are never sampled as negatives
    assert bool((labels[400:1000] != 1).all())
    assert bool((labels[1000:] == -1).all())        # ignore-region anchors never sampled
    torch.manual_seed(0)
    again = rpn.label_and_sample_anchors(priors, [scene])[0][0]
    torch.manual_seed(1)
    other = rpn.label_and_sample_anchors(priors, [scene])[0][0]
    assert torch.equal(labels, again) and not torch.equal(labels, other)


def test_sampling_fills_with_negatives_when_positives_are_few():
    rpn = make_rpn()
    priors, scene = _sampling_scene(20)
    torch.manual_seed(0)
    labels = rpn.label_and_sample_anchors(priors, [scene])[0][0]
    assert int((labels == 1).sum()) == 20 and int((labels == 0).sum()) == 236


def test_subsample_labels_rules():
    labels = torch.tensor([-1, 0, 0, 2, 1, 2, -1, 2])  # background label 2
    torch.manual_seed(0)
    pos, neg = subsample_labels(labels, 4, 0.25, bg_label=2)
    assert len(pos) == 1 and int(labels[pos]) in (0, 1)
    assert len(neg) == 3 and bool((labels[neg] == 2).all())
    pos, neg = subsample_labels(labels, 100, 0.5, bg_label=2)
    assert sorted(pos.tolist()) == [1, 2, 4] and sorted(neg.tolist()) == [3, 5, 7]
    with pytest.raises(ValueError, match="positive_fraction"):
        subsample_labels(labels, 4, 1.5, bg_label=2)


def _bce(x, y):
    return math.log1p(math.exp(-x)) if y == 1 else math.log1p(math.exp(x))


def _smooth_l1(d, beta):
    d = abs(d)
    return 0.5 * d * d / beta if beta > 0 and d < beta else d - 0.5 * beta


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_rpn_losses_match_formulas(beta):
    rpn = make_rpn(smooth_l1_beta=beta, loss_weight=2.0)
    anchors = torch.tensor([[0, 0, 10, 10], [5, 5, 25, 15], [0, 0, 4, 8]], dtype=torch.float32)
    priors = Priors(anchors, [3], [8])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, generator=g)
    deltas = torch.randn(2, 3, 4, generator=g)
    labels = torch.tensor([[1, 0, -1], [-1, 1, 1]])
    matched = torch.zeros(2, 3, 4)
    matched[0, 0] = torch.tensor([1.0, 2.0, 12.0, 9.0])
    matched[1, 1] = torch.tensor([4.0, 6.0, 30.0, 20.0])
    matched[1, 2] = torch.tensor([0.0, 1.0, 5.0, 7.0])
    out = rpn.losses(priors, logits, deltas, labels, matched)
    cls, loc = 0.0, 0.0
    for n in range(2):
        for r in range(3):
            y = int(labels[n, r])
            if y < 0:
                continue
            cls += _bce(float(logits[n, r]), y)
            if y == 1:
                a, m = anchors[r].tolist(), matched[n, r].tolist()
                aw, ah, gw, gh = a[2] - a[0], a[3] - a[1], m[2] - m[0], m[3] - m[1]
                target = [(m[0] + gw / 2 - a[0] - aw / 2) / aw, (m[1] + gh / 2 - a[1] - ah / 2) / ah,
                          math.log(gw / aw), math.log(gh / ah)]
                loc += sum(_smooth_l1(float(deltas[n, r, i]) - target[i], beta) for i in range(4))
    norm = 2.0 / (256 * 2)  # loss_weight / (batch_size_per_image * N)
    assert float(out["loss_rpn_cls"]) == pytest.approx(cls * norm, rel=1e-5)
    assert float(out["loss_rpn_loc"]) == pytest.approx(loc * norm, rel=1e-5)


def _props(boxes, scores):
    return torch.tensor(boxes, dtype=torch.float32)[None], torch.tensor(scores)[None]


def test_proposals_per_level_topk_nms_clip_and_cap():
    level0 = _props([[0, 0, 10, 10], [0, 0, 10, 11], [50, 5, 60, 15], [-5, -5, 200, 8],
                     [70, 0, 71, 5], [30, 0, 40, 10]], [5.0, 4.0, 3.0, 2.0, 1.5, 0.1])
    level1 = _props([[0, 0, 10, 10], [80, 0, 90, 10]], [4.5, -1.0])
    kw = dict(nms_thresh=0.7, pre_nms_topk=5, min_box_size=2.0, training=False)
    out = find_top_rpn_proposals([level0[0], level1[0]], [level0[1], level1[1]], [(20, 100)],
                                 post_nms_topk=10, **kw)[0]
    # [0,0,10,11] is suppressed by [0,0,10,10] on its level (IoU 0.91), while the same box on
    # level 1 survives (NMS per level); [70,0,71,5] is 1 px wide (<= 2); the 0.1 box is the
    # 6th of level 0 (pre-NMS top 5); [-5,-5,200,8] is clipped to the 20 x 100 image.
    assert out.objectness_logits.tolist() == [5.0, 4.5, 3.0, 2.0, -1.0]
    assert out.proposal_boxes.tolist() == [[0, 0, 10, 10], [0, 0, 10, 10], [50, 5, 60, 15],
                                           [0, 0, 100, 8], [80, 0, 90, 10]]
    assert out.image_size == (20, 100)
    capped = find_top_rpn_proposals([level0[0], level1[0]], [level0[1], level1[1]], [(20, 100)],
                                    post_nms_topk=3, **kw)[0]
    assert capped.objectness_logits.tolist() == [5.0, 4.5, 3.0]


def test_proposals_clip_each_image_to_its_own_size():
    boxes = torch.tensor([[[0.0, 0.0, 90.0, 30.0]], [[0.0, 0.0, 90.0, 30.0]]])
    scores = torch.tensor([[1.0], [1.0]])
    out = find_top_rpn_proposals([boxes], [scores], [(20, 100), (8, 50)], nms_thresh=0.7,
                                 pre_nms_topk=10, post_nms_topk=10, min_box_size=0.0,
                                 training=False)
    assert out[0].proposal_boxes.tolist() == [[0, 0, 90, 20]]
    assert out[1].proposal_boxes.tolist() == [[0, 0, 50, 8]]


def test_non_finite_proposals_raise_in_training_and_are_dropped_in_eval():
    boxes, scores = _props([[0, 0, 10, 10], [float("nan"), 0, 5, 5]], [1.0, 2.0])
    kw = dict(nms_thresh=0.7, pre_nms_topk=10, post_nms_topk=10, min_box_size=0.0)
    with pytest.raises(FloatingPointError, match="diverged"):
        find_top_rpn_proposals([boxes], [scores], [(20, 20)], training=True, **kw)
    out = find_top_rpn_proposals([boxes], [scores], [(20, 20)], training=False, **kw)[0]
    assert out.proposal_boxes.tolist() == [[0, 0, 10, 10]]


def test_rpn_forward_shapes_levels_and_detached_proposals():
    gen = AnchorGenerator(sizes=[[16], [32]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[4, 8])
    rpn = make_rpn(in_features=["p2", "p3"], head=StandardRPNHead(in_channels=4, num_anchors=3),
                   anchor_generator=gen, pre_nms_topk=(50, 40), post_nms_topk=(30, 20))
    feats = {"p2": torch.randn(2, 4, 9, 11, requires_grad=True),
             "p3": torch.randn(2, 4, 5, 6, requires_grad=True)}
    scene = gts([[3, 4, 20, 30]], [0], size=(35, 41))
    rpn.train()
    torch.manual_seed(0)
    props, losses = rpn(feats, [(35, 41), (30, 44)], [scene, gts([], [], size=(30, 44))])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    (losses["loss_rpn_cls"] + losses["loss_rpn_loc"]).backward()
    assert rpn.rpn_head.objectness_logits.weight.grad.abs().sum() > 0
    for p, (h, w) in zip(props, [(35, 41), (30, 44)]):
        assert 0 < len(p) <= 30 and not p.proposal_boxes.requires_grad
        assert bool((p.proposal_boxes[:, 2] <= w).all() and (p.proposal_boxes[:, 3] <= h).all())
        assert bool((p.objectness_logits[:-1] >= p.objectness_logits[1:]).all())
    rpn.eval()
    props, losses = rpn(feats, [(35, 41), (30, 44)])
    assert losses == {} and all(len(p) <= 20 for p in props)


def test_rpn_rejects_mismatched_anchor_levels():
    with pytest.raises(ValueError, match="one list per level"):
        make_rpn(in_features=["p2", "p3"])
