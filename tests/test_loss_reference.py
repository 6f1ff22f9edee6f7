"""Training losses of the dense detectors pinned to float64 references of their formulas.

FCOS, ATSS, RetinaNet, LLA-FCOS and LLA-RetinaNet are built with ``from_config`` on a tiny
backbone (strides 8/16/32) and trained one step on a toy batch: two images of different odd
sizes, the first with overlapping persons of two classes and an ignore region, the second with
only an ignore region (no valid GT). A forward hook on ``model.head`` replaces the freshly
initialised head outputs (every logit at the prior, every box empty: a batch full of ties) by
seeded random ones that stay wired to the head, and retains their gradients. The loss values
(relative 1e-5) and the gradients of their sum w.r.t. every head output (absolute 1e-6) must
match ``loss_reference``, which rebuilds priors, label assignment and losses from the formulas
in float64; the rules it pins are listed in its docstrings. The batch is padded to 77 x 93:
priors in the padding of the smaller image are ordinary negatives.

Shape vocabulary: N images, K classes, A anchors per location, H_l x W_l level l.
"""
import pytest
import torch
from torch import nn

import loss_reference as ref
from crowdloss.config import FCOSConfig, RetinaNetConfig
from crowdloss.modeling.backbone import Backbone
from crowdloss.modeling.meta_arch import ATSS, FCOS, LLAFCOS, LLARetinaNet, RetinaNet
from crowdloss.structures import Instances

STRIDES = (8, 16, 32)
K = 2
# Level size ranges of the max ltrb distance (three levels for toy-sized persons).
RANGES = ((-1.0, 36.0), (36.0, 52.0), (52.0, float("inf")))
ANCHOR_SIZES = ((20.0, 28.0), (36.0, 50.0), (64.0, 90.0))
RATIOS = (1.0, 2.5)  # h / w

# Image 0 (H 67, W 93): two overlapping class-0 persons, a class-1 person, an ignore region
# over part of it and a small (7.6 x 20) class-1 person across the first two. Image 1
# (H 77, W 61): an ignore region only. Fractional coordinates keep every prior off every box
# edge (the references assert a margin at every decision), and the boxes are placed so that
# each rule decides something: FCOS size ranges and centre sampling both reject points, the
# small person overlaps no anchor by 0.4 (a RetinaNet low-quality match), one ATSS candidate
# of the second person lies between mean + population std and mean + unbiased std, and LLA
# gives some points taken by two GTs to a third GT that did not take them.
GTS = [
    ([[6.3, 4.6, 50.9, 62.2], [30.7, 10.1, 69.5, 63.5], [57.6, 17.3, 77.9, 46.6],
      [70.1, 28.2, 91.6, 65.3], [44.6, 4.3, 52.2, 24.3]], [0, 0, 1, -1, 1]),
    ([[8.4, 30.7, 45.2, 70.9]], [-1]),
]
SIZES = [(67, 93), (77, 61)]


# Small tensors and many small ops: one intra-op thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


class TinyBackbone(Backbone):
    """Three stride-2 convs to stride 8, then one per further level: features "p3".."p5"."""

    def __init__(self, in_channels: int, channels: int = 8):
        super().__init__()
        self.stem = nn.Sequential(
            *[nn.Conv2d(in_channels if i == 0 else channels, channels, 3, 2, 1) for i in range(3)]
        )
        self.downs = nn.ModuleList([nn.Conv2d(channels, channels, 3, 2, 1) for _ in STRIDES[1:]])
        for i, s in enumerate(STRIDES):
            name = f"p{i + 3}"
            self._out_features.append(name)
            self._out_feature_channels[name] = channels
            self._out_feature_strides[name] = s

    def forward(self, x):
        x = self.stem(x)
        out = {"p3": x}
        for i, down in enumerate(self.downs):
            x = down(x)
            out[f"p{i + 4}"] = x
        return out


def tiny_backbone(cfg, input_shape):
    return TinyBackbone(input_shape.channels)


def batch():
    inputs = []
    for i, ((h, w), (boxes, classes)) in enumerate(zip(SIZES, GTS)):
        g = torch.Generator().manual_seed(i)
        inputs.append({
            "image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
            "instances": Instances((h, w), gt_boxes=torch.tensor(boxes),
                                   gt_classes=torch.tensor(classes)),
            "height": h,
            "width": w,
        })
    return inputs


def reference_gts():
    """The GTs as the model sees them (float32 values, as float64 Python floats)."""
    return [(torch.tensor(b).tolist(), c) for b, c in GTS]


# -------------------------------------------------------------- model plumbing
def head_output(branch: str, stride: int, shape, g: torch.Generator) -> torch.Tensor:
    """Seeded outputs: logits around -2 (some above 0), positive ltrb of 0.4-3.4 strides,
    small anchor deltas, quality logits around 0."""
    if branch == "logits":
        return torch.randn(shape, generator=g) * 1.5 - 2.0
    if branch == "ltrb":
        return (0.4 + 3.0 * torch.rand(shape, generator=g)) * stride
    if branch == "deltas":
        return torch.randn(shape, generator=g) * 0.3
    return torch.randn(shape, generator=g)


def run(model, branches):
    """Train-mode forward on the toy batch with seeded head outputs; backprop the loss sum.

    Returns the losses (floats), the head outputs and their gradients (per branch, per level).
    """
    g = torch.Generator().manual_seed(1234)
    kept = []

    def hook(module, inputs, output):
        assert len(output) == len(branches), "head output layout changed"
        new = []
        for name, per_level in zip(branches, output):
            level_out = []
            for stride, t in zip(STRIDES, per_level):
                value = head_output(name, stride, t.shape, g)
                out = t + (value - t.detach())  # value, still wired to the head
                out.retain_grad()
                level_out.append(out)
            new.append(level_out)
        kept.append(new)
        return tuple(new)

    handle = model.head.register_forward_hook(hook)
    try:
        model.train()
        losses = model(batch())
    finally:
        handle.remove()
    sum(losses.values()).backward()
    (outs,) = kept
    grads = [[t.grad if t.grad is not None else torch.zeros_like(t) for t in b] for b in outs]
    return {k: v.item() for k, v in losses.items()}, outs, grads


def reference(outs, fn, **kw):
    """Run ``fn`` on float64 leaf copies of the head outputs; returns losses (floats), stats
    and the gradients of the loss sum."""
    leaves = [[t.detach().double().requires_grad_() for t in b] for b in outs]
    losses, stats = fn(leaves, reference_gts(), **kw)
    sum(losses.values()).backward()
    grads = [[t.grad if t.grad is not None else torch.zeros_like(t) for t in b] for b in leaves]
    return {k: v.item() for k, v in losses.items()}, stats, grads


def assert_match(model_run, ref_run):
    losses, _, grads = model_run
    ref_losses, _, ref_grads = ref_run
    assert sorted(losses) == sorted(ref_losses)
    for k, v in ref_losses.items():
        assert v > 0, k
        assert losses[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    for b, (branch, ref_branch) in enumerate(zip(grads, ref_grads)):
        assert any(bool(r.abs().gt(1e-6).any()) for r in ref_branch), f"branch {b}: no gradient"
        for level, (gr, rg) in enumerate(zip(branch, ref_branch)):
            torch.testing.assert_close(gr.double(), rg, rtol=0, atol=1e-6,
                                       msg=lambda m: f"branch {b} level {level}: {m}")


def fcos_cfg(**fcos):
    cfg = FCOSConfig()
    head = dict(
        NUM_CLASSES=K, IN_FEATURES=["p3", "p4", "p5"], FPN_STRIDES=list(STRIDES), NUM_CONVS=1,
        HEAD_CHANNELS=32, OBJECT_SIZES_OF_INTEREST=[list(r) for r in RANGES],
        CENTERNESS_ON_REG=True, NORM_REG_TARGETS=True, IOU_LOSS_TYPE="giou",
        CENTER_SAMPLING_RADIUS=0.0, FOCAL_LOSS_ALPHA=0.25, FOCAL_LOSS_GAMMA=2.0,
    )
    head.update(fcos)
    cfg.merge(dict(MODEL=dict(DEVICE="cpu", FCOS=head, ATSS=dict(TOPK=9, ANCHOR_SCALE=8),
                              LLA=dict(TOPK=10, REG_COST=1.5, IOU_WEIGHT=0.5))))
    cfg.build_backbone = tiny_backbone
    return cfg


def retinanet_cfg(**retina):
    cfg = RetinaNetConfig()
    head = dict(
        NUM_CLASSES=K, IN_FEATURES=["p3", "p4", "p5"], NUM_CONVS=1, HEAD_CHANNELS=16,
        IOU_THRESHOLDS=[0.4, 0.5], IOU_LABELS=[0, -1, 1], ALLOW_LOW_QUALITY_MATCHES=True,
        IGNORE_IOA_THRESH=0.5, FOCAL_LOSS_ALPHA=0.25, FOCAL_LOSS_GAMMA=2.0,
        SMOOTH_L1_LOSS_BETA=0.1,
    )
    head.update(retina)
    cfg.merge(dict(MODEL=dict(
        DEVICE="cpu", RETINANET=head, LLA=dict(TOPK=10, REG_COST=1.5, IOU_WEIGHT=0.5),
        ANCHOR_GENERATOR=dict(SIZES=[list(s) for s in ANCHOR_SIZES],
                              ASPECT_RATIOS=[list(RATIOS)], OFFSET=0.0),
    )))
    cfg.build_backbone = tiny_backbone
    return cfg


def build(cls, cfg):
    torch.manual_seed(0)
    return cls.from_config(cfg)


def assert_nontrivial(stats, min_per_gt=2):
    """Every valid GT has several positives; the ignore GTs of LLA win priors too."""
    for per_gt, (_, classes) in zip(stats["per_gt"], GTS):
        for count, c in zip(per_gt, classes):
            if c >= 0:
                assert count >= min_per_gt, stats["per_gt"]


# ----------------------------------------------------------------------- tests
@pytest.mark.parametrize("radius,iou_type", [(0.0, "giou"), (1.5, "giou"), (0.0, "iou")])
def test_fcos_matches_reference(radius, iou_type):
    model = build(FCOS, fcos_cfg(CENTER_SAMPLING_RADIUS=radius, IOU_LOSS_TYPE=iou_type,
                                 REG_WEIGHT=1.0))
    got = run(model, ("logits", "ltrb", "quality"))
    want = reference(
        got[1], ref.fcos_reference, strides=STRIDES, k=K, alpha=0.25, gamma=2.0,
        iou_type=iou_type, reg_weight=1.0, assigner="fcos", ranges=RANGES, radius=radius)
    assert_nontrivial(want[1])
    assert sum(s["conflicts"] for s in want[1]["images"]) > 0
    assert -1 in want[1]["labels"][0]  # points won by the ignore region
    assert_match(got, want)


def test_atss_matches_reference():
    model = build(ATSS, fcos_cfg(IOU_LOSS_TYPE="giou", REG_WEIGHT=2.0))
    got = run(model, ("logits", "ltrb", "quality"))
    want = reference(got[1], ref.fcos_reference, strides=STRIDES, k=K, alpha=0.25, gamma=2.0,
                     iou_type="giou", reg_weight=2.0, assigner="atss", topk=9, scale=8.0)
    assert_nontrivial(want[1])
    assert sum(s["conflicts"] for s in want[1]["images"]) > 0
    assert -1 in want[1]["labels"][1]  # points inside the ignore-only image's region
    assert_match(got, want)


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou"])
def test_retinanet_matches_reference(loss_type):
    model = build(RetinaNet, retinanet_cfg(BBOX_REG_LOSS_TYPE=loss_type))
    got = run(model, ("logits", "deltas"))
    want = reference(got[1], ref.retinanet_reference, strides=STRIDES, anchor_sizes=ANCHOR_SIZES,
                     ratios=RATIOS, k=K, alpha=0.25, gamma=2.0, beta=0.1, loss_type=loss_type)
    # The 7.6 x 20 person overlaps no anchor by 0.4: its one positive is a low-quality match.
    assert_nontrivial(want[1], min_per_gt=1)
    assert want[1]["images"][0]["low_quality"] > 0
    assert -1 in want[1]["labels"][1]  # anchors covered by the ignore-only image's region
    assert_match(got, want)


def test_lla_fcos_matches_reference():
    model = build(LLAFCOS, fcos_cfg(IOU_LOSS_TYPE="giou", REG_WEIGHT=2.0))
    got = run(model, ("logits", "ltrb", "quality"))
    want = reference(got[1], ref.lla_reference, strides=STRIDES, k=K, alpha=0.25, gamma=2.0,
                     topk=10, reg_cost=1.5, reg_weight=2.0, iou_weight=0.5)
    assert_nontrivial(want[1])
    images = want[1]["images"]
    # Priors taken by >= 2 GTs, some of them won by a GT that did not take them.
    assert images[0]["conflicts"] > 0 and images[0]["overruled"] > 0
    # The ignore-only image: its region wins TOPK points, all counted in num_fg.
    assert want[1]["per_gt"][1] == [10]
    assert want[1]["num_fg"] == sum(map(sum, want[1]["per_gt"]))
    assert_match(got, want)


def test_lla_retinanet_matches_reference():
    model = build(LLARetinaNet, retinanet_cfg(REG_WEIGHT=2.0))
    got = run(model, ("logits", "deltas", "quality"))
    want = reference(got[1], ref.lla_reference, strides=STRIDES, k=K, alpha=0.25, gamma=2.0,
                     topk=10, reg_cost=1.5, reg_weight=2.0, iou_weight=0.5,
                     anchor_sizes=ANCHOR_SIZES, ratios=RATIOS)
    assert_nontrivial(want[1])
    assert want[1]["images"][0]["conflicts"] > 0
    assert want[1]["per_gt"][1] == [10]
    assert_match(got, want)
