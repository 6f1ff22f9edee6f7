"""The one weight-loading path on real files: format detection into a detector, the summary
lines, the coverage rule on the real synthcrowd detector, and checkpoint provenance."""
import logging
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from crowdloss.cli.common import load_experiment
from crowdloss.engine import weights as EW
from crowdloss.engine.checkpoint import Checkpointer, DetectionCheckpointer
from crowdloss.engine.provenance import run_provenance

REPO = Path(__file__).resolve().parents[1]
LLA = REPO / "playground/detection/synthcrowd/lla.res18.fpn.synthcrowd.256size.2600"


@contextmanager
def engine_log():
    """crowdloss.engine records (the package logger may not propagate to caplog)."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    log = logging.getLogger("crowdloss.engine")
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old)


def text(records, level=logging.DEBUG):
    return "\n".join(r.getMessage() for r in records if r.levelno >= level)


def torchvision_names(our_key):
    """Our ResNet key -> torchvision's (the inverse of convert_torchvision_names)."""
    if our_key.startswith("stem.conv1."):
        rest = our_key[len("stem.conv1."):]
        return "conv1.weight" if rest == "weight" else "bn1." + rest[len("norm."):]
    stage, block, conv, rest = our_key.split(".", 3)
    layer = f"layer{int(stage[3:]) - 1}.{block}"
    if conv == "shortcut":
        return f"{layer}.downsample.0.weight" if rest == "weight" else \
            f"{layer}.downsample.1.{rest[len('norm.'):]}"
    return f"{layer}.{conv}.weight" if rest == "weight" else \
        f"{layer}.bn{conv[-1]}.{rest[len('norm.'):]}"


def test_torchvision_file_is_detected_converted_and_aligned(tmp_path):
    from crowdloss.modeling.backbone import ResNet

    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.bottom_up = ResNet(depth=18, stem_out_channels=4, res2_out_channels=4,
                                      norm="FrozenBN", stride_in_1x1=False)
    model.head = nn.Conv2d(32, 2, 1)
    torch.manual_seed(0)
    ours = {k: torch.randn(v.shape) for k, v in model.backbone.bottom_up.state_dict().items()}
    tv = {torchvision_names(k): v for k, v in ours.items()}
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(10, 32), torch.zeros(10)
    torch.save(tv, tmp_path / "resnet18-tv.pth")
    head_before = model.head.weight.detach().clone()
    with engine_log() as records:
        summary = DetectionCheckpointer(model, "").load_model_weights(
            str(tmp_path / "resnet18-tv.pth"))
    assert summary.weight_format == "torchvision" and summary.dropped == ["fc.weight", "fc.bias"]
    assert summary.matched == len(ours) and summary.missing == ["head.weight", "head.bias"]
    for key, value in ours.items():
        assert torch.equal(model.state_dict()["backbone.bottom_up." + key], value), key
    assert torch.equal(model.head.weight, head_before)
    assert f"Loaded weights from {tmp_path / 'resnet18-tv.pth'} (format torchvision)" in \
        text(records)


class Pair(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.body = nn.Linear(8, width)
        self.head = nn.Linear(width, 2)


def test_wrong_checkpoint_fails_clearly_and_changes_nothing(tmp_path):
    torch.save({"model": {"other.weight": torch.zeros(3, 3)}}, tmp_path / "other.pth")
    torch.save(Pair(width=6).state_dict(), tmp_path / "wider.pth")
    model = Pair()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # another model entirely; the same model 1.5x wider (only head.bias (2,) still fits)
    for name, counts in (("other.pth", "0/4 model tensors matched (0.0% of values), 4 missing, "
                                       "0 skipped (shape), 1 unexpected"),
                         ("wider.pth", "1/4 model tensors matched (4.3% of values), 0 missing, "
                                       "3 skipped (shape), 0 unexpected")):
        with engine_log() as records, pytest.raises(EW.WeightsError) as err:
            DetectionCheckpointer(model, "").load_model_weights(
                str(tmp_path / name), min_coverage=0.5, requirement="X.MIN = 0.5")
        lines = text(records, logging.INFO)
        # The summary comes first, always, then the error names the file, the rule and the key.
        assert f"Loaded weights from {tmp_path / name} (format crowdloss)" in lines
        assert "Weights: " + counts in lines
        msg = str(err.value)
        assert name in msg and "fills only" in msg and "X.MIN = 0.5" in msg
        assert "body.weight" in msg  # what is missing
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key  # nothing was loaded
    # Below the threshold's bar the same file loads, skipping what does not fit, and says so.
    torch.save({"body.weight": torch.ones(4, 8), "body.bias": torch.ones(4),
                "extra.weight": torch.ones(1)}, tmp_path / "part.pth")
    with engine_log() as records:
        summary = DetectionCheckpointer(model, "").load_model_weights(str(tmp_path / "part.pth"),
                                                                      min_coverage=0.5)
    assert (summary.matched, summary.total, summary.unexpected) == (2, 4, ["extra.weight"])
    assert summary.coverage == pytest.approx(36 / 46)
    assert "Weights: 2/4 model tensors matched (78.3% of values), 2 missing, 0 skipped (shape), " \
           "1 unexpected" in text(records)


@pytest.fixture(scope="module")
def lla():
    """The real synthcrowd LLA detector (R18-FPN, 139 tensors) and its config."""
    exp = load_experiment(LLA)
    cfg = exp.config
    torch.manual_seed(0)
    return cfg, exp.build_model(cfg), exp.build_model


def test_coverage_rule_on_the_real_detector(lla, tmp_path):
    cfg, model, _ = lla
    train_min = cfg.MODEL.WEIGHTS_MIN_COVERAGE.TRAIN
    test_min = cfg.MODEL.WEIGHTS_MIN_COVERAGE.TEST
    assert (train_min, test_min) == (0.5, 1.0)
    state = model.state_dict()
    # 1. An ImageNet backbone (torchvision names): training may start from it...
    bottom_up = {k[len("backbone.bottom_up."):]: torch.randn(v.shape) if v.is_floating_point()
                 else v for k, v in state.items() if k.startswith("backbone.bottom_up.")}
    tv = {torchvision_names(k): v for k, v in bottom_up.items()}
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    torch.save(tv, tmp_path / "resnet18.pth")
    with engine_log() as records:
        summary = Checkpointer(model, "").load_model_weights(str(tmp_path / "resnet18.pth"),
                                                             min_coverage=train_min)
    assert summary.weight_format == "torchvision" and summary.matched == 100
    assert summary.total == 139 and 0.85 < summary.coverage < 0.9
    assert "Weights: 100/139 model tensors matched" in text(records)
    # ... but evaluating it (a random FPN and head) must fail.
    with pytest.raises(EW.WeightsError, match="fills only 8[5-9].*% of the model's values"):
        Checkpointer(model, "").load_model_weights(str(tmp_path / "resnet18.pth"),
                                                   min_coverage=test_min)
    # 2. A trained detector whose head is missing: fine-tuning may start from it, evaluation not.
    headless = {k: v for k, v in state.items() if not k.startswith("head.")}
    assert len(headless) < len(state)
    torch.save({"model": headless}, tmp_path / "headless.pth")
    assert Checkpointer(model, "").load_model_weights(str(tmp_path / "headless.pth"),
                                                      min_coverage=train_min).coverage < 1
    with pytest.raises(EW.WeightsError, match="head"):
        Checkpointer(model, "").load_model_weights(str(tmp_path / "headless.pth"),
                                                   min_coverage=test_min)
    # 3. The whole detector passes both.
    torch.save({"model": state}, tmp_path / "full.pth")
    assert Checkpointer(model, "").load_model_weights(str(tmp_path / "full.pth"),
                                                      min_coverage=test_min).coverage == 1.0


def test_coverage_threshold_is_a_declared_overridable_key(lla):
    cfg = lla[0].__class__()
    cfg.merge_from_list(["MODEL.WEIGHTS_MIN_COVERAGE.TEST", "0.9"])
    assert cfg.MODEL.WEIGHTS_MIN_COVERAGE.TEST == 0.9 and cfg.MODEL.WEIGHTS_MIN_COVERAGE.TRAIN == 0.5


def test_checkpoints_record_their_origin_and_loads_warn_on_differences(lla, tmp_path):
    cfg, model, build_model = lla
    mine = run_provenance(cfg, model, build_model)
    assert mine["experiment"] == str(LLA) and mine["model_class"].startswith("LLAFCOS")
    assert mine["config"]["MODEL.FCOS.NUM_CONVS"] == "2" and "OUTPUT_DIR" not in mine["config"]
    path = Checkpointer(model, str(tmp_path), provenance=mine).save("model_final", iteration=9)
    saved = torch.load(path, weights_only=True)["meta"]
    assert saved["config_hash"] == mine["config_hash"] and saved["crowdloss_version"]
    # The same run loading it: no warning.
    with engine_log() as records:
        Checkpointer(model, "", provenance=mine).load_model_weights(path)
    assert text(records, logging.WARNING) == ""
    assert f"written by experiment {LLA}" in text(records)
    # Another config / experiment: each difference is a warning.
    other_cfg = cfg.__class__()
    other_cfg.merge_from_list(["MODEL.FCOS.NUM_CONVS", "3", "OUTPUT_DIR", "/elsewhere"])
    other = dict(run_provenance(other_cfg, model, None), experiment="/some/other/experiment")
    with engine_log() as records:
        Checkpointer(model, "", provenance=other).load_model_weights(path)
    warnings = text(records, logging.WARNING)
    assert "its config differs in 1 key(s): MODEL.FCOS.NUM_CONVS: 2 -> 3" in warnings
    assert f"written by experiment {LLA}, this run has /some/other/experiment" in warnings
    assert "OUTPUT_DIR" not in warnings


def test_a_key_added_after_the_checkpoint_compares_as_its_neutral_value():
    from crowdloss.engine.provenance import provenance_differences

    current = {"config": {"TEST.COCO_METRICS": "false", "MODEL.FCOS.NUM_CONVS": "2"}}
    older = {"config": {"MODEL.FCOS.NUM_CONVS": "2"}}  # written before TEST.COCO_METRICS
    assert provenance_differences(older, current) == []
    current["config"]["TEST.COCO_METRICS"] = "true"
    assert provenance_differences(older, current) == [
        "its config differs in 1 key(s): TEST.COCO_METRICS: false -> true"]
