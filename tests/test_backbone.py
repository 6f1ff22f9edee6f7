"""Layers (FrozenBN, get_norm, Conv2d) and ResNet backbones: shapes, names, freezing, norms."""
import math
from types import SimpleNamespace as NS

import pytest
import torch
from torch import nn

from crowdloss.modeling import layers
from crowdloss.modeling.backbone import ResNet, build_resnet_backbone
from crowdloss.config import cfg_get
from crowdloss.modeling.layers import Conv2d, FrozenBatchNorm2d, convert_frozen_batchnorm, get_norm
from crowdloss.structures import ShapeSpec

# Narrow widths keep every forward on CPU well under a second.
NARROW = dict(stem_out_channels=8, res2_out_channels=16, width_per_group=4)


def small_resnet(depth, **kw):
    args = dict(NARROW)
    if depth in (18, 34):
        args.update(res2_out_channels=8)
    args.update(kw)
    return ResNet(depth=depth, **args)


def resnet_cfg(**resnets):
    r = dict(DEPTH=50, OUT_FEATURES=["res3", "res4", "res5"], NUM_GROUPS=1, NORM="FrozenBN",
             WIDTH_PER_GROUP=4, STRIDE_IN_1X1=True, RES5_DILATION=1, RES2_OUT_CHANNELS=16,
             STEM_OUT_CHANNELS=8)
    r.update(resnets)
    return NS(MODEL=NS(BACKBONE=NS(FREEZE_AT=2), RESNETS=NS(**r)))


# ----------------------------------------------------------------------------- layers

def test_frozen_bn_matches_eval_batchnorm_and_has_no_parameters():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.normal_()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.2, 3)
    bn.eval()
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(bn)
    x = torch.randn(2, 5, 4, 3)
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert list(frozen.parameters()) == []
    torch.testing.assert_close(frozen(x), bn(x))
    # Explicit formula: (x - mean) / sqrt(var + eps) * w + b.
    ref = ((x - bn.running_mean[None, :, None, None])
           / torch.sqrt(bn.running_var[None, :, None, None] + 1e-5)
           * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])
    torch.testing.assert_close(frozen(x), ref.detach())
    # A fresh FrozenBN is the identity; BN checkpoints (with a step counter) load strictly.
    fresh = FrozenBatchNorm2d(5)
    torch.testing.assert_close(fresh(x), x)
    fresh.load_state_dict(bn.state_dict(), strict=True)
    torch.testing.assert_close(fresh(x), bn(x).detach())


def test_convert_frozen_batchnorm_replaces_nested_bn():
    net = nn.Sequential(Conv2d(3, 4, 3, norm=nn.BatchNorm2d(4)), nn.Sequential(nn.BatchNorm2d(4)))
    out = convert_frozen_batchnorm(net)
    assert out is net
    assert isinstance(net[0].norm, FrozenBatchNorm2d)
    assert isinstance(net[1][0], FrozenBatchNorm2d)
    assert set(net.state_dict()) == {"0.weight", "0.bias", "0.norm.weight", "0.norm.bias",
                                     "0.norm.running_mean", "0.norm.running_var",
                                     "1.0.weight", "1.0.bias", "1.0.running_mean",
                                     "1.0.running_var"}


def test_get_norm_kinds(monkeypatch):
    assert get_norm("", 8) is None and get_norm(None, 8) is None
    assert type(get_norm("BN", 8)) is nn.BatchNorm2d
    assert isinstance(get_norm("FrozenBN", 8), FrozenBatchNorm2d)
    gn = get_norm("GN", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32
    # SyncBN without a process group must be plain BN (nn.SyncBatchNorm cannot run there).
    sbn = get_norm("SyncBN", 8)
    assert type(sbn) is nn.BatchNorm2d
    sbn(torch.randn(2, 8, 3, 3))
    monkeypatch.setattr(layers.comm, "get_world_size", lambda: 2)
    assert isinstance(get_norm("SyncBN", 8), nn.SyncBatchNorm)
    # Optimizer no-weight-decay grouping recognises every norm with parameters.
    for norm in (get_norm("BN", 8), get_norm("SyncBN", 8)):
        assert isinstance(norm, nn.modules.batchnorm._NormBase)
    assert get_norm(lambda c: nn.LayerNorm(c), 6).normalized_shape == (6,)
    with pytest.raises(ValueError, match="multiple of 32"):
        get_norm("GN", 48)
    with pytest.raises(ValueError, match="unknown norm 'LN'"):
        get_norm("LN", 8)


def test_conv2d_with_norm_and_activation():
    conv = Conv2d(3, 4, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(4), activation=torch.relu)
    conv.norm.bias.fill_(-10.0)
    assert set(conv.state_dict()) >= {"weight", "norm.weight", "norm.bias"}
    assert torch.all(conv(torch.randn(1, 3, 5, 5)) == 0)  # bias -10 then ReLU


# ----------------------------------------------------------------------------- ResNet

@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_resnet_output_shapes_and_strides(depth):
    net = small_resnet(depth, out_features=["stem", "res2", "res3", "res4", "res5"], norm="BN")
    out = net(torch.randn(1, 3, 64, 96))
    spec = net.output_shape()
    assert list(out) == ["stem", "res2", "res3", "res4", "res5"]
    base = 8 if depth in (18, 34) else 16
    expect_ch = {"stem": 8, "res2": base, "res3": 2 * base, "res4": 4 * base, "res5": 8 * base}
    for name, t in out.items():
        stride = spec[name].stride
        assert stride == {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}[name]
        assert spec[name].channels == expect_ch[name] == t.shape[1]
        assert t.shape[-2:] == (math.ceil(64 / stride), math.ceil(96 / stride))
    blocks = {18: 2 + 2 + 2 + 2, 34: 16, 50: 16, 101: 33, 152: 50}[depth]
    assert sum(len(getattr(net, s)) for s in ("res2", "res3", "res4", "res5")) == blocks


def test_standard_widths_parameter_counts():
    # Known counts of the ImageNet models minus their fc layer (2048*1000+1000 / 512*1000+1000).
    with torch.device("meta"):  # count without allocating
        r50 = ResNet(depth=50, norm="BN")
        r18 = ResNet(depth=18, res2_out_channels=64, norm="BN")
        x101 = ResNet(depth=101, num_groups=32, width_per_group=8, norm="BN")
    assert sum(p.numel() for p in r50.parameters()) == 25_557_032 - 2_049_000
    assert sum(p.numel() for p in r18.parameters()) == 11_689_512 - 513_000
    assert sum(p.numel() for p in x101.parameters()) == 88_791_336 - 2_049_000
    assert x101.res2[0].conv2.groups == 32 and x101.res2[0].conv2.out_channels == 256


def test_detectron2_parameter_names():
    keys = set(ResNet(depth=50, **NARROW).state_dict())
    for k in ("stem.conv1.weight", "stem.conv1.norm.weight", "stem.conv1.norm.running_var",
              "res2.0.conv1.weight", "res2.0.conv1.norm.bias", "res2.0.shortcut.weight",
              "res2.0.shortcut.norm.weight", "res3.0.shortcut.norm.running_mean",
              "res5.2.conv3.norm.bias"):
        assert k in keys
    assert not any("bias" in k and "norm" not in k for k in keys)  # convs carry no bias
    assert "res2.1.shortcut.weight" not in keys
    r18 = set(small_resnet(18).state_dict())
    assert "res2.0.shortcut.weight" not in r18 and "res3.0.shortcut.weight" in r18
    assert "res2.0.conv3.weight" not in r18


def test_stride_in_1x1_and_res5_dilation():
    msra = ResNet(depth=50, stride_in_1x1=True, **NARROW)
    tv = ResNet(depth=50, stride_in_1x1=False, **NARROW)
    assert msra.res3[0].conv1.stride == (2, 2) and msra.res3[0].conv2.stride == (1, 1)
    assert tv.res3[0].conv1.stride == (1, 1) and tv.res3[0].conv2.stride == (2, 2)
    assert tv.res3[0].shortcut.stride == (2, 2)
    dil = ResNet(depth=50, res5_dilation=2, **NARROW)
    assert dil.output_shape()["res5"].stride == 16
    assert dil.res5[1].conv2.dilation == (2, 2) and dil.res5[1].conv2.padding == (2, 2)
    out = dil(torch.randn(1, 3, 64, 96))
    assert out["res5"].shape[-2:] == out["res4"].shape[-2:] == (4, 6)


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at_freezes_exactly_the_prefix(freeze_at):
    net = ResNet(depth=50, norm="BN", freeze_at=freeze_at, **NARROW)
    frozen_mods = {"stem", "res2", "res3", "res4", "res5"} if freeze_at >= 5 else \
        set(["stem", "res2", "res3", "res4"][:freeze_at])
    n_frozen = 0
    for name, p in net.named_parameters():
        top = name.split(".")[0]
        assert p.requires_grad == (top not in frozen_mods), name
        n_frozen += not p.requires_grad
    for name, m in net.named_modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            assert isinstance(m, FrozenBatchNorm2d) == (name.split(".")[0] in frozen_mods), name
    # Frozen BNs hold no parameters, so the frozen parameters are exactly the frozen convs.
    n_convs = sum(1 for name, m in net.named_modules()
                  if isinstance(m, nn.Conv2d) and name.split(".")[0] in frozen_mods)
    assert n_frozen == n_convs == {0: 0, 1: 1, 2: 11, 3: 24, 5: 53}[freeze_at]


def test_frozen_backbone_gets_no_gradient():
    net = ResNet(depth=18, norm="FrozenBN", freeze_at=2, **dict(NARROW, res2_out_channels=8))
    out = net(torch.randn(1, 3, 32, 32))
    out["res5"].sum().backward()
    assert net.stem.conv1.weight.grad is None and net.res2[0].conv1.weight.grad is None
    assert net.res3[0].conv1.weight.grad is not None


@pytest.mark.parametrize("norm", ["BN", "SyncBN", "GN", "FrozenBN", ""])
def test_norm_options_build_and_run(norm):
    net = ResNet(depth=50, norm=norm, freeze_at=0, stem_out_channels=32, res2_out_channels=64,
                 width_per_group=32, out_features=["res3"])
    out = net(torch.randn(2, 3, 32, 32))
    assert out["res3"].shape == (2, 128, 4, 4)
    kinds = {type(m) for m in net.modules()}
    want = {"BN": nn.BatchNorm2d, "SyncBN": nn.BatchNorm2d, "GN": nn.GroupNorm,
            "FrozenBN": FrozenBatchNorm2d}.get(norm)
    if want is None:
        assert not kinds & {nn.BatchNorm2d, nn.GroupNorm, FrozenBatchNorm2d}
    else:
        assert want in kinds


def test_only_needed_stages_are_built_and_init():
    net = ResNet(depth=50, out_features=["res3", "stem"], norm="BN", **NARROW)
    assert net.out_features == ["stem", "res3"]
    assert not hasattr(net, "res4") and not hasattr(net, "res5")
    assert set(net(torch.randn(1, 3, 32, 32))) == {"stem", "res3"}
    # MSRA fill: std sqrt(2 / fan_out); norms start at weight 1, bias 0.
    torch.manual_seed(0)
    w = ResNet(depth=50, norm="BN").res4[0].conv2.weight
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert abs(w.std().item() / math.sqrt(2 / fan_out) - 1) < 0.05
    bn = net.res3[0].conv1.norm
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_build_from_config_and_errors():
    net = build_resnet_backbone(resnet_cfg(), ShapeSpec(channels=3))
    assert net.out_features == ["res3", "res4", "res5"]
    assert not net.stem.conv1.weight.requires_grad and not net.res2[0].conv1.weight.requires_grad
    assert net.res3[0].conv1.weight.requires_grad
    assert isinstance(net.res3[0].conv1.norm, FrozenBatchNorm2d)
    with pytest.raises(ValueError, match="DEPTH must be one of"):
        build_resnet_backbone(resnet_cfg(DEPTH=42), ShapeSpec(channels=3))
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_resnet_backbone(resnet_cfg(OUT_FEATURES=["res6"]), ShapeSpec(channels=3))
    with pytest.raises(ValueError, match="RES2_OUT_CHANNELS == STEM_OUT_CHANNELS"):
        build_resnet_backbone(resnet_cfg(DEPTH=18), ShapeSpec(channels=3))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.randn(1, 1, 32, 32))
    cfg = resnet_cfg()
    del cfg.MODEL.RESNETS.DEPTH
    with pytest.raises(KeyError, match="MODEL.RESNETS.DEPTH"):
        build_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert cfg_get({"A": {"B": 3}}, "A.B") == 3 and cfg_get(cfg, "MODEL.X.Y", 7) == 7
