"""SSD (arXiv 1512.02325): VGG16 backbone, default boxes, box coding, matching and losses
against transcriptions of ssd.pytorch (``ssd_reference``)."""
import math

import pytest
import torch

import ssd_reference as ref
from crowdloss.config import SSDConfig
from crowdloss.modeling.anchors import AnchorGenerator
from crowdloss.modeling.assigners import SSDMatcher
from crowdloss.modeling.backbone import L2Norm, SSDVGG, build_ssd_vgg_backbone
from crowdloss.modeling.box_coder import Box2BoxTransform
from crowdloss.modeling.losses import hard_negative_mask
from crowdloss.modeling.meta_arch import SSD
from crowdloss.modeling.meta_arch.dense_detector import DenseOutputs
from crowdloss.modeling.priors import Priors
from crowdloss.ops import box_iou
from crowdloss.structures import Instances


# Small tensors and many small ops: one intra-op thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def ssd_cfg(width=0.125, size=300):
    cfg = SSDConfig()
    cfg.MODEL.VGG.WIDTH_FACTOR = width
    cfg.build_backbone = build_ssd_vgg_backbone
    if size == 512:
        s = cfg.MODEL.SSD
        s.IMAGE_SIZE = 512
        s.IN_FEATURES = s.IN_FEATURES + ["conv10_2"]
        s.STEPS = [8, 16, 32, 64, 128, 256, 512]
        s.MIN_SIZES = [35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8]
        s.MAX_SIZES = [76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6]
        s.ASPECT_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]]
    return cfg


@pytest.mark.parametrize("size,cells", [(300, [38, 19, 10, 5, 3, 1]),
                                        (512, [64, 32, 16, 8, 4, 2, 1])])
def test_vgg_sources(size, cells):
    net = SSDVGG(image_size=size, width_factor=0.125).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, size, size))
    assert list(out) == list(net.output_shape())
    assert [v.shape[-1] for v in out.values()] == cells == list(net.feature_sizes(size).values())
    assert [s.channels for s in net.output_shape().values()][:2] == [64, 128]
    # Reduced fc: fc6 3x3 dilation 6 padding 6, fc7 1x1.
    assert net.fc6.dilation == (6, 6) and net.fc6.padding == (6, 6) and net.fc7.kernel_size == (1, 1)
    full = SSDVGG(image_size=300)
    assert [s.channels for s in full.output_shape().values()] == [512, 1024, 512, 256, 256, 256]
    assert [s.stride for s in full.output_shape().values()] == [8, 16, 30, 60, 100, 300]


def test_l2norm_after_relu_with_eps_after_sqrt():
    norm = L2Norm(4)
    assert torch.equal(norm.weight, torch.full((4,), 20.0))
    x = torch.tensor([[3.0, 0.0, 4.0, 0.0]]).view(1, 4, 1, 1)
    assert torch.allclose(norm(x).flatten(), torch.tensor([12.0, 0.0, 16.0, 0.0]))
    assert torch.equal(norm(torch.zeros(1, 4, 2, 2)), torch.zeros(1, 4, 2, 2))  # no 0 / 0
    # The conv4_3 source is the normalised map; the trunk goes on with the raw one.
    net = SSDVGG(width_factor=0.125).eval()
    seen = {}
    net.conv4_3.register_forward_hook(lambda m, i, o: seen.setdefault("raw", o.clone()))
    with torch.no_grad():
        out = net(torch.randn(1, 3, 300, 300))
    raw = seen["raw"]
    assert (raw >= 0).all()  # after the ReLU
    expect = raw / (raw.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) * 20
    assert torch.allclose(out["conv4_3"], expect, atol=1e-5)


@pytest.mark.parametrize("sizes", [ref.VOC, ref.COCO])
def test_default_boxes_equal_ssd_pytorch_order_and_clamp(sizes):
    gen = AnchorGenerator.from_ssd(steps=sizes["steps"], min_sizes=sizes["min_sizes"],
                                   max_sizes=sizes["max_sizes"],
                                   aspect_ratios=sizes["aspect_ratios"], image_size=300)
    priors = gen([torch.zeros(1, 1, f, f) for f in sizes["feature_maps"]]).tensor
    assert priors.shape == (8732, 4)
    ours = torch.cat([(priors[:, :2] + priors[:, 2:]) / 2, priors[:, 2:] - priors[:, :2]], 1) / 300
    expect = ref.prior_box(sizes)
    assert torch.allclose(ours, expect, atol=1e-6)
    assert (expect[:, 2:] == 1).any()  # the clamp is exercised (sqrt(264 x 315) > 300)


def test_ssd512_default_boxes():
    model = SSD.from_config(ssd_cfg(size=512))
    with torch.no_grad():
        images, _ = model.preprocess_image([{"image": torch.zeros(3, 512, 512, dtype=torch.uint8)}])
        out = model.dense_outputs(images)
    assert model.prior_generator.num_anchors_per_level == [4, 6, 6, 6, 6, 4, 4]
    assert len(out.priors) == 24564 and out.logits.shape == (1, 24564, 21)
    first = out.priors.tensor[0]  # cell (0, 0) of conv4_3: centre (4, 4), side 35.84
    assert torch.allclose(first, torch.tensor([4 - 17.92, 4 - 17.92, 4 + 17.92, 4 + 17.92]))


def test_box_coder_is_ssd_pytorch_encoding():
    g = torch.Generator().manual_seed(0)
    priors = ref.prior_box(ref.VOC)[torch.randint(0, 8732, (200,), generator=g)]
    centre = priors[:, :2] + (torch.rand(200, 2, generator=g) - 0.5) * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(torch.randn(200, 2, generator=g) * 0.3)
    matched = torch.cat([centre - size / 2, centre + size / 2], 1)
    coder = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    deltas = coder.get_deltas(ref.corners(priors) * 300, matched * 300)
    assert torch.allclose(deltas, ref.encode(matched, priors), atol=1e-4)
    loc = torch.randn(200, 4, generator=g)
    assert torch.allclose(coder.apply_deltas(loc, ref.corners(priors) * 300) / 300,
                          ref.decode(loc, priors), atol=1e-5)


def _scene(seed, num):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * 250
    wh = torch.rand(num, 2, generator=g) * 120 + 8
    return torch.cat([xy, (xy + wh).clamp(max=300)], 1)


def _priors300():
    gen = AnchorGenerator.from_ssd(steps=ref.VOC["steps"], min_sizes=ref.VOC["min_sizes"],
                                   max_sizes=ref.VOC["max_sizes"],
                                   aspect_ratios=ref.VOC["aspect_ratios"], image_size=300)
    return gen([torch.zeros(1, 1, f, f) for f in ref.VOC["feature_maps"]])


def test_matcher_equals_ssd_pytorch_match():
    # The same default boxes (ours, in pixels) on both sides: the rules are compared on
    # identical IoU values. (On [0, 1] coordinates, as the reference runs, IoUs equal in exact
    # arithmetic, e.g. a GT containing two boxes of one shape, may round either way; the
    # boxes themselves are compared in test_default_boxes_equal_ssd_pytorch_order_and_clamp.)
    priors = _priors300()
    matcher = SSDMatcher(iou_thresh=0.5)
    for seed in range(6):
        gts = _scene(seed, 3 + 4 * seed)
        if seed == 0:  # two identical GTs
            gts = torch.cat([gts, gts[:1]])
        labels = torch.zeros(len(gts), dtype=torch.long)
        result = matcher.assign(priors, gts, labels)
        idx, conf = ref.match(gts, labels, None, point_form=priors.tensor)
        expect = torch.where(conf > 0, idx, torch.full_like(idx, -1))
        assert torch.equal(result.gt_inds, expect), seed
        assert not result.ignored.any()
        if seed == 0:  # threshold matches go to the first copy, the forced box to the last
            best = box_iou(gts[:1], priors.tensor)[0].argmax()
            assert result.gt_inds[best] == len(gts) - 1 and (result.gt_inds == 0).any()


def test_matcher_forcing_overrides_threshold_and_later_gt_wins():
    priors = Priors(torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0],
                                  [40.0, 0.0, 50.0, 10.0]]), [3], [8])
    # GT 0 covers prior 0 (IoU 1.0); GT 1 overlaps prior 0 at 0.36 and nothing else: its best
    # prior 0 is taken from GT 0 although GT 0's IoU is higher (the forcing overrides the
    # threshold match). GT 2 and GT 3 both have prior 2 as their best: the later one wins,
    # although prior 2 overlaps GT 2 more (1.0 against 0.83).
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.0, 4.0, 10.0, 10.0],
                        [40.0, 0.0, 50.0, 10.0], [38.0, 0.0, 50.0, 10.0]])
    result = SSDMatcher().assign(priors, gts, torch.zeros(4, dtype=torch.long))
    assert result.gt_inds.tolist() == [1, -1, 3]
    idx, conf = ref.match(gts, torch.zeros(4, dtype=torch.long), None, point_form=priors.tensor)
    assert torch.where(conf > 0, idx, -1).tolist() == [1, -1, 3]
    # Ignore regions never match; boxes they cover (IoA > 0.5) are ignored, not background.
    result = SSDMatcher().assign(priors, gts[[0, 2]], torch.tensor([0, -1]))
    assert result.gt_inds.tolist() == [0, -1, -1] and result.ignored.tolist() == [False, False, True]
    result = SSDMatcher(ignore_ioa_thresh=1.0).assign(priors, gts[[0, 2]], torch.tensor([0, -1]))
    assert not result.ignored.any()
    with pytest.raises(ValueError, match="points"):
        SSDMatcher().assign(Priors(torch.zeros(3, 2), [3], [8]), gts, torch.zeros(4, dtype=torch.long))


def test_hard_negative_mask_per_image():
    loss = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3], [0.4, 0.2, 0.8, 0.6, 0.0]])
    cand = torch.tensor([[True, True, False, True, True], [True, True, True, True, True]])
    mask = hard_negative_mask(loss, cand, torch.tensor([1, 0]), neg_pos_ratio=2.0)
    assert mask.tolist() == [[False, True, False, True, False], [False] * 5]


def test_losses_equal_multibox_loss():
    torch.manual_seed(0)
    model = SSD.from_config(ssd_cfg()).train()
    priors = _priors300()
    g = torch.Generator().manual_seed(1)
    n, r = 2, len(priors)
    logits = (torch.randn(n, r, 21, generator=g) * 2).requires_grad_()
    deltas = (torch.randn(n, r, 4, generator=g)).requires_grad_()
    gts = [_scene(7, 6), _scene(8, 11)]
    labels = [torch.randint(0, 20, (len(b),), generator=g) for b in gts]
    outputs = DenseOutputs(priors, logits, deltas, None, model.box_coder.apply_deltas)
    inst = [Instances((300, 300), gt_boxes=b, gt_classes=c) for b, c in zip(gts, labels)]
    ours = model.losses(outputs, model.label_batch(outputs, inst))
    grads = torch.autograd.grad(ours["loss_cls"] + ours["loss_box_reg"], (logits, deltas))

    conf = torch.cat([logits[..., 20:], logits[..., :20]], dim=-1)  # background first
    # In pixels, matching on our default boxes (see test_matcher_equals_ssd_pytorch_match);
    # the encoding is scale-free.
    targets = [torch.cat([b, c[:, None].float()], 1) for b, c in zip(gts, labels)]
    loss_l, loss_c = ref.multibox_loss(deltas, conf, ref.prior_box(ref.VOC) * 300, targets,
                                       point_form=priors.tensor)
    assert torch.allclose(ours["loss_box_reg"], loss_l, rtol=1e-4)
    assert torch.allclose(ours["loss_cls"], loss_c, rtol=1e-5)
    ref_grads = torch.autograd.grad(loss_l + loss_c, (logits, deltas))
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_image_without_positives_and_config():
    torch.manual_seed(0)
    model = SSD.from_config(ssd_cfg()).train()
    empty = {"image": torch.zeros(3, 300, 300, dtype=torch.uint8),
             "instances": Instances((300, 300), gt_boxes=torch.zeros(0, 4),
                                    gt_classes=torch.zeros(0, dtype=torch.long))}
    losses = model([empty])
    assert losses["loss_cls"].item() == 0 and losses["loss_box_reg"].item() == 0
    cfg = SSDConfig()
    assert cfg.SOLVER.OPTIMIZER.NAME == "SGD" and cfg.SOLVER.LR_SCHEDULER.WARMUP_ITERS == 0
    assert tuple(cfg.SOLVER.LR_SCHEDULER.STEPS) == (80000, 100000)
    with pytest.raises(ValueError, match="softmax"):
        SSD(scoring="sigmoid", **SSD.config_kwargs(ssd_cfg()))
    bad = ssd_cfg()
    bad.MODEL.SSD.STEPS = [8, 16]
    with pytest.raises(ValueError, match="STEPS"):
        SSD.from_config(bad)
    assert math.isclose(model.box_coder.weights[2], 5.0)
