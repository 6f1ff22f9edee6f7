"""The detector core: per-level heads and anchor counts, softmax scoring with per-class
candidates, the extra-loss hook, prediction-aware assignment, and the ``Detector`` base that a
two-stage model uses without dense inference."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crowdloss.modeling.anchors import AnchorGenerator
from crowdloss.modeling.assigners import AssignResult, MaxIoUAssigner
from crowdloss.modeling.backbone import Backbone
from crowdloss.modeling.box_coder import Box2BoxTransform
from crowdloss.modeling.heads import FCOSHead, PerLevelHead
from crowdloss.modeling.meta_arch import DenseDetector, Detector
from crowdloss.modeling.priors import Priors
from crowdloss.structures import Instances, ShapeSpec

K = 2  # classes; C = K + 1 logits with the background last


class TwoLevels(Backbone):
    """Strides 8 and 16 with different channel counts (6 and 10), like SSD's sources."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, stride=8, padding=1)
        self.b = nn.Conv2d(6, 10, 3, stride=2, padding=1)
        self._out_features = ["s8", "s16"]
        self._out_feature_channels = {"s8": 6, "s16": 10}
        self._out_feature_strides = {"s8": 8, "s16": 16}

    @property
    def size_divisibility(self):
        return 16

    def forward(self, x):
        a = self.a(x)
        return {"s8": a, "s16": self.b(a)}


class SoftmaxDetector(DenseDetector):
    def losses(self, outputs, targets):
        labels = targets.labels.flatten()
        valid = labels >= 0
        logits = outputs.logits.reshape(-1, self.num_logits)
        return {"loss_cls": F.cross_entropy(logits[valid], labels[valid], reduction="sum")
                / self.normalizer(targets.num_pos)}


def build(**kw):
    torch.manual_seed(0)
    backbone = TwoLevels()
    shapes = [backbone.output_shape()[k] for k in ("s8", "s16")]
    gen = AnchorGenerator(sizes=[[16], [32, 48]], aspect_ratios=[[1.0, 2.0], [1.0]],
                          strides=[8, 16], offset=0.5)
    args = dict(backbone=backbone, head_in_features=["s8", "s16"],
                head=PerLevelHead(input_shape=shapes, num_anchors=gen.num_anchors_per_level,
                                  num_logits=K + 1),
                prior_generator=gen, box_coder=Box2BoxTransform(weights=(10, 10, 5, 5)),
                assigner=MaxIoUAssigner(pos_iou_thresh=0.5, neg_iou_thresh=0.5), num_classes=K,
                pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0], scoring="softmax",
                candidates_per="class", score_thresh_test=0.3, topk_candidates_test=3,
                nms_thresh_test=1.0, max_detections_per_image=50)
    args.update(kw)
    return SoftmaxDetector(**args)


def image(h, w, boxes, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
            "instances": Instances((h, w), gt_boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                   gt_classes=torch.tensor(classes, dtype=torch.long)),
            "height": h, "width": w}


def test_priors_checks_and_helpers():
    p = Priors(torch.zeros(5, 4), [2, 3], [8, 16])
    assert not p.is_points and p.level_stride().tolist() == [8, 8, 16, 16, 16]
    assert [t.shape[0] for t in p.per_level()] == [2, 3]
    with pytest.raises(ValueError, match="sum to"):
        Priors(torch.zeros(4, 2), [2, 3], [8, 16])
    with pytest.raises(ValueError, match="points"):
        Priors(torch.zeros(4, 3), [4], [8])


def test_per_level_head_matches_prior_layout():
    model = build()
    images, _ = model.preprocess_image([image(48, 64, [], [])])
    out = model.dense_outputs(images)
    # 6x8 cells x 2 anchors + 3x4 cells x 2 anchors
    assert out.priors.num_per_level == [6 * 8 * 2, 3 * 4 * 2]
    assert out.logits.shape == (1, len(out.priors), K + 1)
    assert out.deltas.shape == (1, len(out.priors), 4) and out.quality is None
    # Zero deltas decode to the priors themselves.
    zero = out._decode(torch.zeros(1, len(out.priors), 4), out.priors.tensor[None])
    assert torch.allclose(zero[0], out.priors.tensor, atol=1e-4)


def test_fcos_head_stops_training_whose_box_output_died():
    shapes = [ShapeSpec(channels=8, stride=s) for s in (8, 16)]
    feats = [torch.randn(2, 8, 6, 6), torch.randn(2, 8, 3, 3)]
    head = FCOSHead(input_shape=shapes, num_classes=1, fpn_strides=[8, 16], num_convs=1,
                    norm="", dead_box_patience=3)
    head(feats)
    head(feats)  # alive: ReLU(x) > 0 somewhere
    assert head._dead_box_forwards == 0
    with torch.no_grad():
        head.bbox_pred.bias.fill_(-1e3)  # scale * x < 0 everywhere: every box of zero size
    head(feats)
    head.eval()
    head(feats)  # evaluation does not count
    head.train()
    head(feats)
    assert head._dead_box_forwards == 2
    with pytest.raises(RuntimeError, match="distances for 3 training forwards in a row"):
        head(feats)
    # A live forward resets the count; patience 0 and exp(scale * x) never check.
    with torch.no_grad():
        head.bbox_pred.bias.fill_(0.0)
    head(feats)
    assert head._dead_box_forwards == 0
    for kwargs in ({"dead_box_patience": 0}, {"norm_reg_targets": False}):
        other = FCOSHead(input_shape=shapes, num_classes=1, fpn_strides=[8, 16], num_convs=1,
                         norm="", **{"dead_box_patience": 1, **kwargs})
        with torch.no_grad():
            other.bbox_pred.bias.fill_(-1e3)
        other(feats)
        other(feats)


def test_fcos_head_warns_once_when_one_side_of_the_boxes_is_dead(caplog):
    shapes = [ShapeSpec(channels=8, stride=s) for s in (8, 16)]
    feats = [torch.rand(2, 8, 6, 6), torch.rand(2, 8, 3, 3)]
    head = FCOSHead(input_shape=shapes, num_classes=1, fpn_strides=[8, 16], num_convs=1,
                    norm="", dead_box_patience=3, bbox_bias_init=1.0)
    with torch.no_grad():
        head.bbox_pred.bias[0] = -1e3  # the left distance 0 everywhere, the others alive
    with caplog.at_level("WARNING", logger="crowdloss.modeling.heads"):
        for _ in range(5):
            head(feats)  # not fatal: training goes on
    warnings = [r.getMessage() for r in caplog.records if "distance of the box" in r.getMessage()]
    assert len(warnings) == 1 and "the left distance" in warnings[0]
    assert head._dead_side_forwards == 5 and head._dead_box_forwards == 0
    with torch.no_grad():
        head.bbox_pred.bias[0] = 1.0
    head(feats)
    assert head._dead_side_forwards == 0


def test_fcos_head_box_bias_init_starts_boxes_out_of_the_relu_zero():
    shapes = [ShapeSpec(channels=8, stride=s) for s in (8, 16)]
    feats = [torch.rand(2, 8, 6, 6), torch.rand(2, 8, 3, 3)]
    kwargs = dict(input_shape=shapes, num_classes=1, fpn_strides=[8, 16], num_convs=1, norm="")
    torch.manual_seed(0)
    published = FCOSHead(**kwargs)
    assert torch.equal(published.bbox_pred.bias, torch.zeros(4))
    _, ltrb, _ = published(feats)
    dead = sum(int((x == 0).sum()) for x in ltrb) / sum(x.numel() for x in ltrb)
    assert 0.2 < dead < 0.8  # at bias 0 about half the distances start at exactly 0
    torch.manual_seed(0)
    biased = FCOSHead(**kwargs, bbox_bias_init=1.0)
    assert torch.equal(biased.bbox_pred.bias, torch.ones(4))
    # Only the bias differs: the same seed draws the same weights (no random draw is added).
    assert torch.equal(biased.bbox_pred.weight, published.bbox_pred.weight)
    _, ltrb, _ = biased(feats)
    for x, stride in zip(ltrb, (8, 16)):  # every distance alive, about one stride
        assert bool((x > 0.8 * stride).all()) and bool((x < 1.2 * stride).all())
    with pytest.raises(ValueError, match=r"BBOX_BIAS_INIT\) must be a finite number, got nan"):
        FCOSHead(**kwargs, bbox_bias_init=float("nan"))


def test_fcos_config_reads_box_bias_init():
    from crowdloss.config import FCOSConfig

    cfg = FCOSConfig()
    assert cfg.MODEL.FCOS.BBOX_BIAS_INIT == 0.0  # the published initialisation


def test_softmax_per_class_candidates_match_reference():
    model = build().eval()
    g = torch.Generator().manual_seed(3)
    fixed = {}

    def fake_head(features):
        logits = [torch.randn(1, a * (K + 1), f.shape[2], f.shape[3], generator=g) * 2
                  for f, a in zip(features, model.prior_generator.num_anchors_per_level)]
        deltas = [torch.zeros(1, a * 4, f.shape[2], f.shape[3])
                  for f, a in zip(features, model.prior_generator.num_anchors_per_level)]
        fixed["logits"] = logits
        return logits, deltas

    model.head.forward = fake_head
    with torch.no_grad():
        result = model([image(48, 64, [], [])])[0]["instances"]
    priors = model.prior_generator([torch.zeros(1, 1, 6, 8), torch.zeros(1, 1, 3, 4)])
    from crowdloss.modeling.meta_arch.dense_detector import permute_to_N_R_K
    logits = torch.cat([permute_to_N_R_K(x, K + 1) for x in fixed["logits"]], dim=1)[0]
    probs = logits.softmax(-1)[:, :K]
    expect = []
    for c in range(K):  # top 3 of each class over all priors, then the 0.3 threshold
        top = probs[:, c].topk(3)
        for s, r in zip(top.values.tolist(), top.indices.tolist()):
            box = priors.tensor[r].clone()
            box[0::2] = box[0::2].clamp(0, 64)
            box[1::2] = box[1::2].clamp(0, 48)
            if s > 0.3:
                expect.append((round(s, 6), c, [round(v, 3) for v in box.tolist()]))
    got = [(round(s, 6), c, [round(v, 3) for v in b.tolist()])
           for s, c, b in zip(result.scores.tolist(), result.pred_classes.tolist(), result.pred_boxes)]
    assert sorted(got) == sorted(expect) and len(expect) > 0
    # Background never becomes a class; every score is a class probability.
    assert result.pred_classes.max() < K and (result.scores <= 1).all()


def test_extra_losses_see_every_gt_and_are_added():
    seen = {}

    def repulsion_like(outputs, targets, normalizer):
        seen["gts"] = [t.gt_boxes.shape[0] for t in targets]
        seen["classes"] = [t.gt_classes.tolist() for t in targets]
        seen["normalizer"] = normalizer
        pos = targets.positive
        return {"loss_extra": outputs.pred_boxes[pos].sum() * 0 + float(pos.sum())}

    model = build(extra_losses=[repulsion_like]).train()
    batch = [image(48, 64, [[4, 4, 20, 36], [8, 2, 24, 34], [40, 0, 64, 30]], [0, 1, -1]),
             image(48, 64, [], [])]
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_extra"}
    assert seen["gts"] == [3, 0] and seen["classes"][0] == [0, 1, -1]
    assert losses["loss_extra"].item() == seen["normalizer"] > 0
    sum(losses.values()).backward()
    assert model.head.cls_score[0].weight.grad is not None


class Recorder:
    def __init__(self, uses_predictions):
        self.uses_predictions = uses_predictions
        self.calls = []

    def assign(self, priors, gt_boxes, gt_classes, **preds):
        self.calls.append({k: v.shape for k, v in preds.items()})
        return AssignResult.background(len(priors))


@pytest.mark.parametrize("aware", [False, True])
def test_predictions_reach_only_prediction_aware_assigners(aware):
    rec = Recorder(aware)
    model = build(assigner=rec).train()
    model([image(48, 64, [[4, 4, 20, 36]], [0]), image(48, 64, [], [])])
    assert len(rec.calls) == 2
    if aware:
        r = rec.calls[0]["pred_boxes"][0]
        assert rec.calls[0] == {"pred_logits": (r, K + 1), "pred_boxes": (r, 4)}
    else:
        assert rec.calls == [{}, {}]


class OneBox(Detector):
    """A minimal non-dense detector: what a two-stage model builds on."""

    def forward_train(self, images, image_sizes, gt_instances):
        return {"loss_box": self.backbone(images)["s8"].mean() * 0 + len(gt_instances)}

    def forward_test(self, images, image_sizes):
        return [Instances(size, pred_boxes=torch.tensor([[2.0, 4.0, 30.0, 40.0]]),
                          scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
                for size in image_sizes]


def test_detector_base_without_dense_inference():
    model = OneBox(backbone=TwoLevels(), pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)
    assert not hasattr(model, "inference_single_image")
    x = image(48, 64, [[1, 1, 5, 5]], [0])
    assert model.train()([x])["loss_box"].item() == 1
    x["height"], x["width"] = 96, 128  # the original image was twice the input size
    out = model.eval()([x])[0]["instances"]
    assert out.image_size == (96, 128)
    assert out.pred_boxes.tolist() == [[4.0, 8.0, 60.0, 80.0]]
