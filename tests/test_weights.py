"""Pretrained-weight conversion: MSRA Caffe2 and torchvision R-50 names, suffix matching,
restricted unpickling, input-convention warnings, the format registry."""
import functools
import os
import pickle
import warnings
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
from torch import nn

from crowdloss.engine import weights as EW
from crowdloss.engine import weight_formats
from crowdloss.engine.weight_files import load_pkl_safely
from crowdloss.modeling.backbone import FPN, LastLevelP6P7, ResNet
from crowdloss.modeling.backbone import weights as W

R50_STAGES = ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512))  # (stage, blocks, width)


def convert(data, weight_format="auto"):
    """Steps 2-4 of the loading path: unwrap, detect, rename."""
    state, _ = EW.split_checkpoint(data, source="test")
    return EW.convert_weights(state, weight_format)[0]


@functools.lru_cache(maxsize=None)
def _msra_r50_blobs():
    """Every blob of MSRA's ImageNet R-50.pkl, with its published name and shape.

    Each blob is filled with its own index so the test can tell where it landed.
    """
    blobs = {}

    def add(name, *shape):
        blobs[name] = np.full(shape, float(len(blobs)), dtype=np.float32)

    def conv_bn(prefix, cout, cin, k, bn_prefix=None):
        add(f"{prefix}_w", cout, cin, k, k)
        add(f"{bn_prefix or prefix}_bn_s", cout)
        add(f"{bn_prefix or prefix}_bn_b", cout)

    conv_bn("conv1", 64, 3, 7, bn_prefix="res_conv1")
    cin = 64
    for stage, n, width in R50_STAGES:
        for i in range(n):
            p = f"res{stage}_{i}_"
            if i == 0:
                conv_bn(p + "branch1", 4 * width, cin, 1)
            conv_bn(p + "branch2a", width, cin, 1)
            conv_bn(p + "branch2b", width, width, 3)
            conv_bn(p + "branch2c", 4 * width, width, 1)
            cin = 4 * width
    add("fc1000_w", 1000, 2048)
    add("fc1000_b", 1000)
    return blobs


@functools.lru_cache(maxsize=None)
def _torchvision_r50_state_dict():
    """Every key of torchvision's resnet50().state_dict(), with its shape."""
    sd = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = torch.full((cout, cin, k, k), float(len(sd)))

    def bn(name, c):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{name}.{attr}"] = torch.full((c,), float(len(sd)))
        sd[f"{name}.num_batches_tracked"] = torch.tensor(0)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for stage, n, width in R50_STAGES:
        for i in range(n):
            p = f"layer{stage - 1}.{i}"
            conv(f"{p}.conv1", width, cin, 1)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3)
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", 4 * width, width, 1)
            bn(f"{p}.bn3", 4 * width)
            if i == 0:
                conv(f"{p}.downsample.0", 4 * width, cin, 1)
                bn(f"{p}.downsample.1", 4 * width)
            cin = 4 * width
    sd["fc.weight"] = torch.zeros(1000, 2048)
    sd["fc.bias"] = torch.zeros(1000)
    return sd


def msra_r50_blobs():
    return dict(_msra_r50_blobs())  # shallow copy: tests may add entries


def torchvision_r50_state_dict():
    return dict(_torchvision_r50_state_dict())


def meta_r50(**kw):
    # Names and shapes without allocating or initialising 23.5M parameters.
    with torch.device("meta"):
        return ResNet(depth=50, **kw)


@pytest.fixture(scope="module")
def r50_state():
    return meta_r50(norm="FrozenBN").state_dict()


def test_msra_r50_every_key_converted(r50_state):
    blobs = msra_r50_blobs()
    assert len(blobs) == 3 + 16 * 9 + 4 * 3 + 2  # stem, 16 blocks, 4 projections, fc
    blobs["res2_0_branch2a_w_momentum"] = np.zeros((64, 64, 1, 1), np.float32)
    converted, dropped = W.convert_msra_names(blobs)
    assert sorted(dropped) == ["fc1000_b", "fc1000_w", "res2_0_branch2a_w_momentum"]
    assert set(converted) == set(r50_state)  # nothing lost but fc, nothing left over
    for k, v in r50_state.items():
        assert converted[k].shape == v.shape, k
        assert isinstance(converted[k], torch.Tensor) and converted[k].dtype == torch.float32
    # Values land where the Caffe2 name says.
    for c2, ours in (("conv1_w", "stem.conv1.weight"), ("res_conv1_bn_s", "stem.conv1.norm.weight"),
                     ("res2_0_branch2a_bn_b", "res2.0.conv1.norm.bias"),
                     ("res3_0_branch1_w", "res3.0.shortcut.weight"),
                     ("res4_5_branch2b_w", "res4.5.conv2.weight"),
                     ("res5_2_branch2c_bn_s", "res5.2.conv3.norm.weight")):
        assert torch.all(converted[ours] == float(blobs[c2].flat[0])), (c2, ours)
    # Caffe2 folded BN statistics into scale/shift: mean 0, var 1.
    assert torch.all(converted["res4.2.conv2.norm.running_mean"] == 0)
    assert torch.all(converted["res4.2.conv2.norm.running_var"] == 1)
    net = meta_r50(norm="FrozenBN")
    net.load_state_dict(converted, strict=True, assign=True)
    assert torch.all(net.res5[2].conv3.norm.weight == float(blobs["res5_2_branch2c_bn_s"][0]))


def test_torchvision_r50_every_key_converted(r50_state):
    sd = torchvision_r50_state_dict()
    assert len(sd) == 320
    converted, dropped = W.convert_torchvision_names(sd)
    assert dropped == ["fc.weight", "fc.bias"]
    batches = {k for k in converted if k.endswith("num_batches_tracked")}
    assert len(batches) == 53 and set(converted) - batches == set(r50_state)
    for k, v in r50_state.items():
        assert converted[k].shape == v.shape, k
    for tv, ours in (("bn1.running_var", "stem.conv1.norm.running_var"),
                     ("layer1.0.downsample.0.weight", "res2.0.shortcut.weight"),
                     ("layer1.0.downsample.1.bias", "res2.0.shortcut.norm.bias"),
                     ("layer3.4.bn2.weight", "res4.4.conv2.norm.weight"),
                     ("layer4.2.conv3.weight", "res5.2.conv3.weight")):
        assert torch.equal(converted[ours], sd[tv]), (tv, ours)
    # Loads strictly into a trainable-BN model and (step counters dropped) a FrozenBN one.
    for norm in ("BN", "FrozenBN"):
        net = meta_r50(norm=norm, stride_in_1x1=False)
        net.load_state_dict(dict(converted), strict=True, assign=True)
        assert torch.equal(net.res4[4].conv2.norm.weight, sd["layer3.4.bn2.weight"])


def test_suffix_matching_into_prefixed_detector():
    model = nn.Module()
    with torch.device("meta"):
        bottom_up = ResNet(depth=50, out_features=["res3", "res4", "res5"])
        model.backbone = FPN(bottom_up=bottom_up, in_features=["res3", "res4", "res5"],
                             out_channels=16, top_block=LastLevelP6P7(in_channels=16,
                                                                      out_channels=16))
        model.head = nn.Conv2d(16, 2, 3)
    model_state = model.state_dict()
    blobs = {"blobs": msra_r50_blobs()}
    aligned, report = EW.align_to_model(convert(blobs), model_state)
    bottom = {k for k in model_state if k.startswith("backbone.bottom_up.")}
    assert set(aligned) == bottom and len(bottom) == 265
    assert set(report.unmatched_model_keys) == set(model_state) - bottom
    assert report.unused_checkpoint_keys == [] and report.ambiguous == {}
    assert torch.all(aligned["backbone.bottom_up.res3.1.conv2.norm.weight"] == float(
        blobs["blobs"]["res3_1_branch2b_bn_s"][0]))
    result = model.load_state_dict(aligned, strict=False, assign=True)
    assert set(result.missing_keys) == set(model_state) - bottom
    assert result.unexpected_keys == []
    # torchvision names align the same way; a plain key list works too.
    tv, _ = EW.align_to_model(convert(torchvision_r50_state_dict()), list(model_state))
    assert set(tv) == bottom


def test_align_prefers_longest_and_refuses_ambiguous_or_misshapen():
    ckpt = {"conv.weight": torch.zeros(2), "a.conv.weight": torch.ones(2),
            "norm.bias": torch.zeros(3), "fc.weight": torch.zeros(1)}
    model = {"x.a.conv.weight": torch.empty(2), "b.conv.weight": torch.empty(2),
             "p.norm.bias": torch.empty(3), "q.norm.bias": torch.empty(3),
             "fc.weight": torch.empty(5)}
    aligned, rep = EW.align_to_model(ckpt, model)
    assert torch.all(aligned["x.a.conv.weight"] == 1)  # the longer match wins
    assert torch.all(aligned["b.conv.weight"] == 0)
    assert rep.ambiguous == {"norm.bias": ["p.norm.bias", "q.norm.bias"]}
    assert rep.shape_mismatch == [("fc.weight", "fc.weight", (5,), (1,))]
    assert set(rep.unmatched_model_keys) == {"p.norm.bias", "q.norm.bias", "fc.weight"}
    assert set(rep.unused_checkpoint_keys) == {"norm.bias", "fc.weight"}
    # A dotted suffix only: "xconv.weight" must not take "conv.weight".
    assert EW.align_to_model(ckpt, ["xconv.weight"])[0] == {}
    # An exact name wins and is not also offered to the keys it is a suffix of.
    aligned, rep = EW.align_to_model({"conv.weight": torch.ones(2)},
                                     {"conv.weight": torch.empty(2), "a.conv.weight": torch.empty(2)})
    assert list(aligned) == ["conv.weight"] and rep.ambiguous == {}
    assert rep.unmatched_model_keys == ["a.conv.weight"]


def test_detect_format_and_crowdloss_passthrough():
    assert EW.detect_weight_format({"conv1_w": 0, "res_conv1_bn_s": 0}) == "msra"
    assert EW.detect_weight_format(torchvision_r50_state_dict()) == "torchvision"
    assert EW.detect_weight_format({"backbone.bottom_up.res2.0.conv1.weight": 0}) == "crowdloss"
    assert EW.detect_weight_format({"stem.conv1.weight": 0}) == "crowdloss"
    # A detector built on a torchvision ResNet (pytorch-retinanet) is not a torchvision ResNet.
    detector = dict(torchvision_r50_state_dict(), **{"fpn.P5_1.weight": torch.zeros(1)})
    assert EW.detect_weight_format(detector) == "crowdloss"
    # detectron2 model-zoo .pkl: {"model": {name: ndarray}}; DDP "module." prefixes removed.
    d2 = {"model": {"module.backbone.bottom_up.stem.conv1.weight": np.ones((4, 3, 7, 7), "f4")},
          "__author__": "someone"}
    state, extras = EW.split_checkpoint(d2, source="d2.pkl")
    assert list(state) == ["backbone.bottom_up.stem.conv1.weight"] and extras == {
        "__author__": "someone"}
    assert isinstance(state["backbone.bottom_up.stem.conv1.weight"], torch.Tensor)
    with pytest.raises(EW.WeightsError, match="unknown weight format 'caffe'"):
        EW.convert_weights({"stem.conv1.weight": torch.zeros(1)}, "caffe")


def test_registering_a_format_plugs_it_into_the_loading_path(tmp_path):
    """What the pytorch-retinanet / ssd.pytorch converters do: one function + one registration."""
    def detect(sd):
        return "regressionModel.output.weight" in sd

    def convert_fn(sd):
        renamed = {k.replace("regressionModel.output", "head.bbox_pred"): v for k, v in sd.items()
                   if not k.startswith("anchors")}
        return renamed, [k for k in sd if k.startswith("anchors")]

    model = nn.Module()
    model.head = nn.Module()
    model.head.bbox_pred = nn.Conv2d(2, 4, 1)
    foreign = {"regressionModel.output.weight": torch.full((4, 2, 1, 1), 3.0),
               "regressionModel.output.bias": torch.full((4,), 5.0),
               "anchors.cache": torch.zeros(1)}
    torch.save(foreign, tmp_path / "retinanet.pt")
    try:
        EW.register_weight_format("test_yhenon", detect, convert_fn,
                                  input_convention=W.PRETRAINED_PIXEL_STATS["torchvision"])
        EW.register_weight_format("test_yhenon", detect, convert_fn,  # a net.py run twice
                                  input_convention=W.PRETRAINED_PIXEL_STATS["torchvision"])
        with pytest.raises(ValueError, match="already registered"):
            EW.register_weight_format("test_yhenon", lambda sd: False, convert_fn)
        cfg = NS(MODEL=NS(PIXEL_MEAN=[1.0, 2.0, 3.0], PIXEL_STD=[58.395, 57.12, 57.375]),
                 INPUT=NS(FORMAT="RGB"))
        with pytest.warns(UserWarning, match="PIXEL_MEAN"):
            summary = EW.load_weights(model, str(tmp_path / "retinanet.pt"), cfg=cfg)
        assert summary.weight_format == "test_yhenon" and summary.dropped == ["anchors.cache"]
        assert (summary.matched, summary.total, summary.coverage) == (2, 2, 1.0)
        assert torch.all(model.head.bbox_pred.bias == 5.0)
        # A second format claiming the same file is a bug in a detect(): said, not guessed.
        EW.register_weight_format("test_greedy", lambda sd: True, convert_fn)
        with pytest.raises(EW.WeightsError, match="test_yhenon.*test_greedy"):
            EW.load_weights(model, str(tmp_path / "retinanet.pt"))
    finally:
        weight_formats._FORMATS.pop("test_yhenon", None)
        weight_formats._FORMATS.pop("test_greedy", None)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"blobs": {"conv1_w": _Exploit(marker)}}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"bad\.pkl.*(posix|os)\.system"):
        load_pkl_safely(str(bad))
    assert not marker.exists()
    good = tmp_path / "good.pkl"
    blobs = {"conv1_w": np.arange(6, dtype=np.float32).reshape(1, 6), "s": np.float32(2.5)}
    for protocol in (2, 5):
        good.write_bytes(pickle.dumps({"blobs": blobs}, protocol=protocol))
        loaded = load_pkl_safely(str(good))
        np.testing.assert_array_equal(loaded["blobs"]["conv1_w"], blobs["conv1_w"])
        assert loaded["blobs"]["s"] == np.float32(2.5)


def test_restricted_unpickler_reads_python2_pickle(tmp_path):
    # What Python 2 + numpy 1.x wrote (MSRA's files): numpy.core globals, array bytes as a
    # py2 str (SHORT_BINSTRING), a dtype with its py2 state tuple.
    def s(b):
        return b"U" + bytes([len(b)]) + b
    data = np.arange(3, dtype="<f4").tobytes()
    raw = (b"\x80\x02}" + s(b"res_conv1_bn_s")
           + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b")
           + b"\x87R(K\x01K\x03\x85cnumpy\ndtype\n" + s(b"f4") + b"K\x00K\x01\x87R(K\x03"
           + s(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(data)
           + b"tbs.")
    path = tmp_path / "py2.pkl"
    path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy.core deprecation warning either
        loaded = load_pkl_safely(str(path))
    np.testing.assert_array_equal(loaded["res_conv1_bn_s"], np.array([0, 1, 2], "f4"))
    assert convert(loaded)["stem.conv1.norm.weight"].tolist() == [0, 1, 2]


def test_pixel_stats_warnings():
    msra = W.PRETRAINED_PIXEL_STATS["msra"]
    cfg = NS(MODEL=NS(PIXEL_MEAN=list(msra["pixel_mean"]), PIXEL_STD=[1.0, 1.0, 1.0],
                      RESNETS=NS(STRIDE_IN_1X1=True)), INPUT=NS(FORMAT="BGR"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert W.check_config_for_weights(cfg, "msra") == []
        assert W.check_config_for_weights(cfg, "crowdloss") == []
    with pytest.warns(UserWarning) as record:
        problems = W.check_config_for_weights(cfg, "torchvision")
    assert len(problems) == len(record) == 4
    text = " ".join(problems)
    for key in ("INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "STRIDE_IN_1X1"):
        assert key in text
    tv = W.PRETRAINED_PIXEL_STATS["torchvision"]
    assert W.check_weights_config("torchvision", pixel_mean=tv["pixel_mean"],
                                  pixel_std=tv["pixel_std"], input_format="rgb",
                                  stride_in_1x1=False) == []


def torchvision_shapes(depth, groups=1, width_per_group=64):
    """torchvision resnet{18,34,50,101,152} / resnext state-dict shapes as meta tensors."""
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    basic = depth in (18, 34)
    sd = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = torch.empty(cout, cin, k, k, device="meta")

    def bn(name, c):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{name}.{attr}"] = torch.empty(c, device="meta")

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for s, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
        out = planes if basic else planes * 4
        width = planes if basic else planes * width_per_group // 64 * groups
        for i in range(n):
            p = f"layer{s + 1}.{i}"
            if basic:
                conv(f"{p}.conv1", planes, cin, 3)
                conv(f"{p}.conv2", planes, planes, 3)
            else:
                conv(f"{p}.conv1", width, cin, 1)
                conv(f"{p}.conv2", width, width // groups, 3)
                conv(f"{p}.conv3", out, width, 1)
            for k in (1, 2) if basic else (1, 2, 3):
                bn(f"{p}.bn{k}", width if k < 3 and not basic else out)
            if i == 0 and (s > 0 or cin != out):
                conv(f"{p}.downsample.0", out, cin, 1)
                bn(f"{p}.downsample.1", out)
            cin = out
    return sd


@pytest.mark.parametrize("depth,kw", [(18, dict(res2_out_channels=64)),
                                      (34, dict(res2_out_channels=64)),
                                      (101, dict(num_groups=32, width_per_group=8))])
def test_torchvision_resnet18_34_and_resnext_names(depth, kw):
    converted = convert(torchvision_shapes(depth, kw.get("num_groups", 1),
                                           kw.get("width_per_group", 64)))
    with torch.device("meta"):
        ours = ResNet(depth=depth, norm="FrozenBN", stride_in_1x1=False, **kw).state_dict()
    assert set(converted) == set(ours)
    for k, v in ours.items():
        assert converted[k].shape == v.shape, k
