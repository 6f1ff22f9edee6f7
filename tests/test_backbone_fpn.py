"""FPN + P6/P7: shapes on odd sizes, top block input, names, fusion math, config handling."""
import math
from types import SimpleNamespace as NS

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from crowdloss.config import BaseDetectionConfig
from crowdloss.modeling.backbone import (FPN, LastLevelMaxPool, LastLevelP6P7, ResNet,
                                          build_resnet_fpn_backbone, build_resnet_fpn_p7_backbone)
from crowdloss.structures import ShapeSpec


def fpn_cfg(top="p5", **fpn):
    f = dict(IN_FEATURES=["res3", "res4", "res5"], OUT_CHANNELS=32, NORM="", FUSE_TYPE="sum",
             TOP_BLOCK_IN_FEATURE=top)
    f.update(fpn)
    return NS(MODEL=NS(
        BACKBONE=NS(FREEZE_AT=2),
        RESNETS=NS(DEPTH=18, OUT_FEATURES=["res3", "res4", "res5"], NUM_GROUPS=1, NORM="FrozenBN",
                   WIDTH_PER_GROUP=64, STRIDE_IN_1X1=True, RES5_DILATION=1,
                   RES2_OUT_CHANNELS=16, STEM_OUT_CHANNELS=16),
        FPN=NS(**f)))


def pad_to(x, div):
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % div, 0, (-h) % div))


@pytest.mark.parametrize("hw", [(67, 93), (130, 61)])
def test_fpn_p3_p7_shapes_after_padding(hw):
    net = build_resnet_fpn_p7_backbone(fpn_cfg(), ShapeSpec(channels=3))
    assert net.size_divisibility == 32
    x = pad_to(torch.randn(1, 3, *hw), net.size_divisibility)
    out = net(x)
    spec = net.output_shape()
    assert list(out) == list(spec) == ["p3", "p4", "p5", "p6", "p7"]
    H, W = x.shape[-2:]
    for name, t in out.items():
        s = spec[name].stride
        assert s == 2 ** int(name[1:]) and spec[name].channels == 32 == t.shape[1]
        # Padded sizes divide exactly down to P5; P6/P7 are ceil-halvings of the level above.
        assert t.shape[-2:] == (math.ceil(H / s), math.ceil(W / s)), name


def test_fpn_runs_on_unpadded_odd_sizes():
    net = build_resnet_fpn_p7_backbone(fpn_cfg(), ShapeSpec(channels=3))
    out = net(torch.randn(2, 3, 67, 93))
    assert out["p3"].shape[-2:] == (9, 12) and out["p5"].shape[-2:] == (3, 3)
    assert out["p7"].shape[-2:] == (1, 1)


def test_top_block_input_p5_vs_res5():
    p5 = build_resnet_fpn_p7_backbone(fpn_cfg("p5"), ShapeSpec(channels=3))
    r5 = build_resnet_fpn_p7_backbone(fpn_cfg("res5"), ShapeSpec(channels=3))
    assert p5.top_block.p6.in_channels == 32  # FPN width
    assert r5.top_block.p6.in_channels == 128  # C5 width of the narrow R-18 (16 * 8)
    assert p5.top_block.p7.in_channels == r5.top_block.p7.in_channels == 32
    x = torch.randn(1, 3, 64, 64)
    r5.load_state_dict({k: v for k, v in p5.state_dict().items() if "top_block.p6" not in k},
                       strict=False)
    with torch.no_grad():
        feats = r5.bottom_up(x)
        out = r5(x)
        torch.testing.assert_close(out["p6"], r5.top_block.p6(feats["res5"]))
        torch.testing.assert_close(out["p7"], r5.top_block.p7(F.relu(out["p6"])))
        out5 = p5(x)
        torch.testing.assert_close(out5["p6"], p5.top_block.p6(out5["p5"]))
    # cvpods spells the key BLOCK_IN_FEATURES: a legacy alias, migrated when a config dict is
    # merged or an override applied; the builder reads only TOP_BLOCK_IN_FEATURE.
    legacy = BaseDetectionConfig()
    legacy.merge(dict(MODEL=dict(
        RESNETS=dict(DEPTH=18, OUT_FEATURES=["res3", "res4", "res5"], RES2_OUT_CHANNELS=16,
                     STEM_OUT_CHANNELS=16),
        FPN=dict(IN_FEATURES=["res3", "res4", "res5"], OUT_CHANNELS=32,
                 BLOCK_IN_FEATURES="res5"))))
    assert "BLOCK_IN_FEATURES" not in legacy.MODEL.FPN
    assert build_resnet_fpn_p7_backbone(legacy, ShapeSpec(channels=3)).top_block.in_feature == \
        "res5"
    legacy.merge_from_list(["MODEL.FPN.BLOCK_IN_FEATURES", "p5"])
    assert legacy.MODEL.FPN.TOP_BLOCK_IN_FEATURE == "p5"
    bad = fpn_cfg("res5")
    bad.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4"]
    bad.MODEL.FPN.IN_FEATURES = ["res3", "res4"]
    with pytest.raises(ValueError, match="needs 'res5'"):
        build_resnet_fpn_p7_backbone(bad, ShapeSpec(channels=3))
    with pytest.raises(ValueError, match="'p5' or 'res5'"):
        build_resnet_fpn_p7_backbone(fpn_cfg("p4"), ShapeSpec(channels=3))


def test_detectron2_names():
    keys = set(build_resnet_fpn_p7_backbone(fpn_cfg(), ShapeSpec(channels=3)).state_dict())
    for k in ("fpn_lateral3.weight", "fpn_lateral3.bias", "fpn_output5.weight",
              "top_block.p6.weight", "top_block.p7.bias", "bottom_up.stem.conv1.weight",
              "bottom_up.res2.0.conv1.norm.weight", "bottom_up.res5.1.conv2.weight"):
        assert k in keys, k
    assert not any(k.startswith("fpn_lateral2") or k.startswith("fpn_lateral6") for k in keys)


@pytest.mark.parametrize("fuse", ["sum", "avg"])
def test_top_down_fusion_matches_reference(fuse):
    net = build_resnet_fpn_p7_backbone(fpn_cfg(FUSE_TYPE=fuse), ShapeSpec(channels=3))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        c = net.bottom_up(x)
        out = net(x)
        prev = net.fpn_lateral5(c["res5"])
        expect = {"p5": net.fpn_output5(prev)}
        for lvl in (4, 3):
            up = prev.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest x2
            prev = getattr(net, f"fpn_lateral{lvl}")(c[f"res{lvl}"]) + up
            if fuse == "avg":
                prev = prev / 2
            expect[f"p{lvl}"] = getattr(net, f"fpn_output{lvl}")(prev)
    for k, v in expect.items():
        torch.testing.assert_close(out[k], v)


def test_fpn_norm_and_gradients():
    net = build_resnet_fpn_p7_backbone(fpn_cfg(NORM="GN"), ShapeSpec(channels=3))
    assert net.fpn_lateral4.bias is None and isinstance(net.fpn_lateral4.norm, nn.GroupNorm)
    assert net.fpn_output4.bias is None and isinstance(net.fpn_output4.norm, nn.GroupNorm)
    out = net(torch.randn(2, 3, 64, 64))
    sum(v.sum() for v in out.values()).backward()
    assert net.top_block.p7.weight.grad is not None and net.fpn_lateral3.weight.grad is not None
    assert net.bottom_up.res3[0].conv1.weight.grad is not None
    assert net.bottom_up.stem.conv1.weight.grad is None  # FREEZE_AT 2


def test_fpn_constructor_errors():
    bottom = ResNet(depth=18, stem_out_channels=8, res2_out_channels=8,
                    out_features=["res3", "res4"])
    with pytest.raises(ValueError, match="IN_FEATURES"):
        FPN(bottom_up=bottom, in_features=["res3", "res5"], out_channels=16)
    with pytest.raises(ValueError, match="FUSE_TYPE"):
        FPN(bottom_up=bottom, in_features=["res3", "res4"], out_channels=16, fuse_type="max")
    dil = ResNet(depth=50, stem_out_channels=8, res2_out_channels=16, width_per_group=4,
                 res5_dilation=2, out_features=["res3", "res4", "res5"])
    with pytest.raises(ValueError, match="doubling"):
        FPN(bottom_up=dil, in_features=["res3", "res4", "res5"], out_channels=16)
    # A two-level FPN names its top-block outputs after its coarsest level.
    two = FPN(bottom_up=bottom, in_features=["res3", "res4"], out_channels=16,
              top_block=LastLevelP6P7(in_channels=16, out_channels=16, in_feature="p4"))
    assert list(two.output_shape()) == ["p3", "p4", "p5", "p6"]
    assert two.size_divisibility == 16


def test_fpn_p2_p6_with_max_pooled_p6():
    cfg = fpn_cfg(IN_FEATURES=["res2", "res3", "res4", "res5"])
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    net = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(net.top_block, LastLevelMaxPool) and net.size_divisibility == 32
    assert not any(k.startswith("top_block") for k in net.state_dict())  # no parameters
    out = net(pad_to(torch.randn(1, 3, 67, 93), 32))
    spec = net.output_shape()
    assert list(out) == list(spec) == ["p2", "p3", "p4", "p5", "p6"]
    assert [spec[k].stride for k in spec] == [4, 8, 16, 32, 64]
    assert out["p2"].shape[-2:] == (24, 24) and out["p5"].shape[-2:] == (3, 3)  # 96 x 96 input
    # P6 takes every other cell of P5 (a 1x1 max-pool with stride 2): ceil(3 / 2) = 2.
    assert torch.equal(out["p6"], out["p5"][:, :, ::2, ::2])
