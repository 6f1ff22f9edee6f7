"""Faster R-CNN's ROI heads: proposal sampling (25 %, GT added, ignore regions), the box head
losses against their formulas (class-specific deltas, weights 10 / 10 / 5 / 5), inference
(score 0.05, per-class NMS, cap, clip) and the Repulsion Loss on the foreground ROIs."""
import math

import pytest
import torch

from crowdloss.config import RCNNFPNConfig
from crowdloss.modeling.assigners import MaxIoUAssigner
from crowdloss.modeling.box_coder import Box2BoxTransform
from crowdloss.modeling.poolers import ROIPooler
from crowdloss.modeling.roi_heads import (FastRCNNConvFCHead, FastRCNNOutputLayers, ROIRepulsion,
                                          StandardROIHeads, fast_rcnn_inference_single_image,
                                          fast_rcnn_losses)
from crowdloss.structures import Instances, ShapeSpec

W = (10.0, 10.0, 5.0, 5.0)


def make_heads(num_classes=2, **kw):
    args = dict(in_features=["p2", "p3"],
                box_pooler=ROIPooler(output_size=2, scales=(1 / 4, 1 / 8)),
                box_head=FastRCNNConvFCHead(in_channels=4, pooler_resolution=2, fc_dims=(8,)),
                box_predictor=FastRCNNOutputLayers(input_size=8, num_classes=num_classes),
                proposal_matcher=MaxIoUAssigner(pos_iou_thresh=0.5, neg_iou_thresh=0.5,
                                                allow_low_quality_matches=False,
                                                ignore_ioa_thresh=0.5),
                box2box_transform=Box2BoxTransform(weights=W), num_classes=num_classes)
    args.update(kw)
    return StandardROIHeads(**args)


def inst(size=(200, 400), **fields):
    out = {}
    for k, v in fields.items():
        if "classes" in k:
            out[k] = torch.tensor(v, dtype=torch.long)
        else:
            out[k] = torch.as_tensor(v, dtype=torch.float32).reshape(-1, 4)
    return Instances(size, **out)


GT = inst(gt_boxes=[[0, 0, 40, 80], [100, 0, 140, 80], [200, 0, 300, 100]], gt_classes=[1, 0, -1])
PROPOSALS = [[0, 0, 40, 70],     # p0 IoU 0.875 with GT0: foreground, class 1
             [0, 0, 40, 30],     # p1 IoU 0.375: background
             [210, 10, 250, 60],  # p2 inside the ignore region: never sampled
             [300, 100, 340, 140],  # p3 nothing: background
             [100, 0, 140, 40],  # p4 IoU 0.5 with GT1: foreground, class 0
             [280, 0, 320, 40]]  # p5 IoA 0.5 with the ignore region (not above): background


def _rows(t):
    return sorted(map(tuple, t.tolist()))


def test_sampling_adds_valid_gts_and_never_samples_ignored_as_background():
    heads = make_heads()
    props = inst(proposal_boxes=PROPOSALS)
    s = heads.label_and_sample_proposals([props], [GT])[0]
    fg = s.gt_inds >= 0
    expect_fg = {(0, 0, 40, 70): (1, 0), (100, 0, 140, 40): (0, 1), (0, 0, 40, 80): (1, 0),
                 (100, 0, 140, 80): (0, 1)}  # box: (class, gt index); the GTs were appended
    got_fg = {tuple(b): (int(c), int(i)) for b, c, i in
              zip(s.proposal_boxes[fg].tolist(), s.gt_classes[fg], s.gt_inds[fg])}
    assert got_fg == expect_fg
    assert bool(fg[: int(fg.sum())].all())  # foreground first
    assert _rows(s.proposal_boxes[~fg]) == _rows(torch.tensor(PROPOSALS)[[1, 3, 5]])
    assert bool((s.gt_classes[~fg] == 2).all())  # background label K
    assert not s.gt_boxes[~fg].any()
    for b, i in zip(s.gt_boxes[fg], s.gt_inds[fg]):
        assert torch.equal(b, GT.gt_boxes[i])
    # Neither the ignored proposal nor the ignore region itself is ever an ROI.
    assert (210, 10, 250, 60) not in _rows(s.proposal_boxes)
    assert (200, 0, 300, 100) not in _rows(s.proposal_boxes)


def test_ignore_regions_are_not_appended_as_proposals():
    # An ignore region on a person (IoU 0.875) would be a foreground ROI of that person if it
    # were added to the proposals: only valid GTs are.
    gt = inst(gt_boxes=[[0, 0, 40, 80], [0, 0, 40, 70]], gt_classes=[0, -1])
    s = make_heads().label_and_sample_proposals([inst(proposal_boxes=[[300, 0, 340, 40]])],
                                                [gt])[0]
    assert _rows(s.proposal_boxes) == [(0, 0, 40, 80), (300, 0, 340, 40)]
    assert s.gt_inds.tolist() == [0, -1]


def test_sampling_without_appended_gts_and_without_gts():
    heads = make_heads(proposal_append_gt=False)
    s = heads.label_and_sample_proposals([inst(proposal_boxes=PROPOSALS)], [GT])[0]
    assert int((s.gt_inds >= 0).sum()) == 2 and len(s) == 5
    empty = inst(gt_boxes=[], gt_classes=[])
    s = make_heads().label_and_sample_proposals([inst(proposal_boxes=PROPOSALS)], [empty])[0]
    assert len(s) == 6 and bool((s.gt_classes == 2).all()) and bool((s.gt_inds == -1).all())


def _many(num_fg):
    g = torch.Generator().manual_seed(0)
    fg = torch.tensor([[0.0, 0.0, 40.0, 80.0]]) + torch.rand(num_fg, 4, generator=g) * 3
    bg = torch.tensor([[300.0, 100.0, 340.0, 140.0]]) + torch.rand(1000, 4, generator=g) * 3
    return inst(proposal_boxes=torch.cat([fg, bg]).tolist())


def test_sampling_512_with_at_most_25_percent_foreground_seeded():
    heads = make_heads(batch_size_per_image=512, positive_fraction=0.25)
    torch.manual_seed(0)
    s = heads.label_and_sample_proposals([_many(600)], [GT])[0]
    assert len(s) == 512 and int((s.gt_inds >= 0).sum()) == 128
    torch.manual_seed(0)
    again = heads.label_and_sample_proposals([_many(600)], [GT])[0]
    assert torch.equal(s.proposal_boxes, again.proposal_boxes)
    torch.manual_seed(0)
    few = heads.label_and_sample_proposals([_many(10)], [GT])[0]
    # 10 proposals + 2 appended GTs are foreground; background fills the rest.
    assert len(few) == 512 and int((few.gt_inds >= 0).sum()) == 12


def _target(p, g):
    pw, ph, gw, gh = p[2] - p[0], p[3] - p[1], g[2] - g[0], g[3] - g[1]
    return [10 * (g[0] + gw / 2 - p[0] - pw / 2) / pw, 10 * (g[1] + gh / 2 - p[1] - ph / 2) / ph,
            5 * math.log(gw / pw), 5 * math.log(gh / ph)]


def _sl1(d, beta):
    d = abs(d)
    return 0.5 * d * d / beta if beta > 0 and d < beta else d - 0.5 * beta


@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("agnostic", [False, True])
def test_box_losses_match_formulas(beta, agnostic):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, generator=g)  # K = 2, background column 2
    deltas = torch.randn(3, 4 if agnostic else 8, generator=g)
    props = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 25.0, 15.0], [0.0, 0.0, 4.0, 8.0]])
    gt_boxes = torch.tensor([[1.0, 2.0, 12.0, 19.0], [4.0, 6.0, 30.0, 20.0], [0.0, 0.0, 0.0, 0.0]])
    gt_classes = torch.tensor([1, 0, 2])
    out = fast_rcnn_losses(logits, deltas, props, gt_classes, gt_boxes,
                           box2box_transform=Box2BoxTransform(weights=W), smooth_l1_beta=beta)
    ce = [math.log(sum(math.exp(v) for v in row)) - row[c]
          for row, c in zip(logits.tolist(), gt_classes.tolist())]
    assert float(out["loss_cls"]) == pytest.approx(sum(ce) / 3, rel=1e-5)
    box = 0.0
    for i in (0, 1):  # foreground rows; row i regresses with the deltas of its GT class
        c = 0 if agnostic else int(gt_classes[i])
        t = _target(props[i].tolist(), gt_boxes[i].tolist())
        box += sum(_sl1(float(deltas[i, 4 * c + j]) - t[j], beta) for j in range(4))
    assert float(out["loss_box_reg"]) == pytest.approx(box / 3, rel=1e-5)  # / all sampled ROIs


def test_box_losses_without_rois_keep_the_graph():
    logits = torch.zeros(0, 3, requires_grad=True)
    deltas = torch.zeros(0, 8, requires_grad=True)
    out = fast_rcnn_losses(logits, deltas, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                           torch.zeros(0, 4), box2box_transform=Box2BoxTransform(weights=W),
                           smooth_l1_beta=0.0)
    assert float(out["loss_cls"].detach()) == 0.0
    (out["loss_cls"] + out["loss_box_reg"]).backward()


def test_inference_threshold_per_class_nms_cap_and_clip():
    scores = torch.tensor([[0.90, 0.03, 0.07], [0.70, 0.20, 0.10], [0.01, 0.50, 0.49]])
    boxes = torch.tensor([
        [0, 0, 10, 10, 0, 0, 10, 10],
        [0, 0, 10, 11, 0, 0, 10, 10],    # class 0 suppressed by roi 0 (IoU 0.91 > 0.5)
        [50, 50, 60, 60, -5, 0, 200, 10],  # class 1 box clipped to the 30 x 100 image
    ], dtype=torch.float32)
    kw = dict(score_thresh=0.05, nms_thresh=0.5)
    out = fast_rcnn_inference_single_image(boxes, scores, (30, 100), topk_per_image=-1, **kw)
    # roi 0 class 1 (0.03) and roi 2 class 0 (0.01) are below 0.05; roi 1 class 1 shares its
    # box with roi 0 class 1 but NMS is per class, and that one is no candidate anyway.
    assert out.scores.tolist() == pytest.approx([0.9, 0.5, 0.2])
    assert out.pred_classes.tolist() == [0, 1, 1]
    assert out.pred_boxes.tolist() == [[0, 0, 10, 10], [0, 0, 100, 10], [0, 0, 10, 10]]
    capped = fast_rcnn_inference_single_image(boxes, scores, (30, 100), topk_per_image=2, **kw)
    assert capped.scores.tolist() == pytest.approx([0.9, 0.5])
    same = fast_rcnn_inference_single_image(boxes[:2, :4].repeat(1, 2), scores[:2],
                                            (30, 100), topk_per_image=-1, **kw)
    assert same.pred_classes.tolist() == [0, 1]  # different classes never suppress each other


def test_heads_inference_decodes_every_class_from_its_proposal():
    heads = make_heads(score_thresh_test=0.0, detections_per_image=5).eval()
    torch.nn.init.zeros_(heads.box_predictor.bbox_pred.weight)  # zero deltas: boxes = proposals
    feats = {"p2": torch.randn(1, 4, 16, 24), "p3": torch.randn(1, 4, 8, 12)}
    props = [inst(size=(60, 90), proposal_boxes=[[2, 3, 30, 50], [40, 10, 80, 55]])]
    out = heads(feats, props)[0]
    assert out.image_size == (60, 90) and len(out) <= 4
    assert set(map(tuple, out.pred_boxes.tolist())) == {(2, 3, 30, 50), (40, 10, 80, 55)}


# ----------------------------------------------------------------------------- repulsion
REP_GT = inst(gt_boxes=[[0, 0, 40, 80], [-25, 0, 15, 80], [30, 0, 70, 80], [100, 0, 200, 80],
                        [140, 0, 180, 80]], gt_classes=[0, 0, 0, -1, 0])


def _rep_rois(preds):
    """Foreground ROIs a, b, d, e (+ one background) whose deltas decode to ``preds``."""
    boxes = torch.tensor([[0.0, 0, 40, 80], [30, 0, 70, 80], [130, 0, 170, 80], [0, 0, 40, 80],
                          [300, 0, 340, 80]])
    rois = Instances((100, 400), proposal_boxes=boxes, gt_classes=torch.tensor([0, 0, 0, 0, 1]),
                     gt_inds=torch.tensor([0, 2, 4, 0, -1]))
    coder = Box2BoxTransform(weights=W)
    deltas = coder.get_deltas(boxes, torch.tensor(preds, dtype=torch.float32))
    return rois, deltas.clone().requires_grad_(True), coder


def test_repulsion_matches_the_paper_formulas():
    preds = [[18, 0, 58, 80], [10, 0, 50, 80], [130, 0, 170, 80], [0, 0, 40, 80],
             [300, 0, 340, 80]]
    rois, deltas, coder = _rep_rois(preds)
    rep = ROIRepulsion(box2box_transform=coder, repgt_weight=0.5, repgt_sigma=1.0,
                       repbox_weight=0.5, repbox_sigma=0.0, eps=1e-3)
    out = rep(deltas, [rois], [REP_GT])
    # RepGT picks the repulsion GT by IoU with the PROPOSAL: roi a's proposal overlaps GT1
    # most (0.23 vs 0.14 for GT2), so its box, which now covers GT2 (IoG 0.7) and not GT1,
    # pays nothing; roi b (proposal on GT2) is repelled from GT0 (IoG 0.75); roi d overlaps only
    # the ignore region besides its own GT: no target; roi e (on GT0) covers 15 / 40 of GT1.
    repgt = (-math.log(1 - 0.0) - math.log(1 - 0.75) + 0.0 - math.log(1 - 0.375)) / 4
    assert float(out["loss_repgt"].detach()) == pytest.approx(0.5 * repgt, rel=1e-5)
    # RepBox: ordered pairs attracted to different GTs: (a, b) IoU 2/3, (e, b) IoU 0.6, both
    # orders; (a, e) share GT0; d overlaps nobody. Smooth_ln with sigma 0 is the IoU itself.
    repbox = (2 * (2 / 3) + 2 * 0.6) / (4 + 1e-3)
    assert float(out["loss_repbox"].detach()) == pytest.approx(0.5 * repbox, rel=1e-5)
    (out["loss_repgt"] + out["loss_repbox"]).backward()
    grad = deltas.grad.abs().sum(dim=1)
    assert bool((grad[[1, 3]] > 0).all()) and float(grad[4]) == 0.0  # background untouched


def test_repulsion_choice_is_by_proposal_not_by_prediction():
    # Same ROIs; roi a's box now sits on GT1 instead: it pays, which it did not above.
    preds = [[-5, 0, 35, 80], [30, 0, 70, 80], [130, 0, 170, 80], [0, 0, 40, 80],
             [300, 0, 340, 80]]
    rois, deltas, coder = _rep_rois(preds)
    out = ROIRepulsion(box2box_transform=coder, repbox_weight=None)(deltas, [rois], [REP_GT])
    assert set(out) == {"loss_repgt"}
    # a: IoG with GT1 = 20 / 40; b: its box on GT2 overlaps GT0 by 10 / 40; e: 15 / 40.
    repgt = (-math.log(0.5) - math.log(0.75) - math.log(1 - 0.375)) / 4
    assert float(out["loss_repgt"].detach()) == pytest.approx(0.5 * repgt, rel=1e-5)


def test_repulsion_switched_by_config():
    cfg = RCNNFPNConfig()
    assert ROIRepulsion.from_config(cfg, Box2BoxTransform(weights=W)) is None
    cfg.MODEL.REPULSION.REPBOX.ENABLED = True
    rep = ROIRepulsion.from_config(cfg, Box2BoxTransform(weights=W))
    assert rep.repgt_weight is None and rep.repbox_weight == 0.5 and rep.repbox_sigma == 0.0
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    shapes = {f"p{i}": ShapeSpec(channels=8, stride=2 ** i) for i in range(2, 7)}
    heads = StandardROIHeads.from_config(cfg, shapes)
    assert isinstance(heads.repulsion, ROIRepulsion)
    assert heads.box_pooler.aligned and heads.box_pooler.output_size == (7, 7)
    assert heads.box_predictor.bbox_pred.out_features == 4
    assert heads.box2box_transform.weights == W


def test_config_errors_name_the_key():
    cfg = RCNNFPNConfig()
    shapes = {f"p{i}": ShapeSpec(channels=8, stride=2 ** i) for i in range(2, 7)}
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIPool"
    with pytest.raises(ValueError, match="POOLER_TYPE"):
        StandardROIHeads.from_config(cfg, shapes)
    cfg = RCNNFPNConfig()
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p9"]
    with pytest.raises(ValueError, match=r"IN_FEATURES \['p9'\]"):
        StandardROIHeads.from_config(cfg, shapes)
