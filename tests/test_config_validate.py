"""Config edge cases: validation at setup, TEST.EXPECTED_RESULTS, CUDNN_BENCHMARK, declared
defaults (no key is read with a default that lives only in code)."""
import ast
import math
import shutil
from pathlib import Path

import pytest
import torch

from crowdloss.cli import test as pods_test
from crowdloss.cli import train as pods_train
from crowdloss.config import (BaseConfig, ConfigKeyError, ConfigValueError, FCOSConfig,
                              RetinaNetConfig, validate_config)
from crowdloss.config.validate import Expectation, parse_expected_results
from crowdloss.evaluation.expected import (ExpectedResultsError, check_expected_results,
                                           verify_expected_results)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "tiny_experiment"


def _cfg(**flat):
    cfg = FCOSConfig()
    cfg.merge_from_list([x for kv in flat.items() for x in kv])
    return cfg


# ---- validate_config ----------------------------------------------------------------------
def test_defaults_and_every_shipped_config_class_are_valid():
    for klass in (BaseConfig, FCOSConfig, RetinaNetConfig):
        assert validate_config(klass()) == []


@pytest.mark.parametrize("key,value,fragment", [
    ("SOLVER.LR_SCHEDULER.MAX_ITER", -5, "must be an integer >= 1"),
    ("SOLVER.LR_SCHEDULER.MAX_ITER", 0, "must be an integer >= 1"),
    ("SOLVER.LR_SCHEDULER.STEPS", (300, 200), "increasing order"),
    ("SOLVER.LR_SCHEDULER.STEPS", (0, 200), "iterations >= 1"),
    ("SOLVER.LR_SCHEDULER.WARMUP_ITERS", -1, "integer >= 0"),
    ("SOLVER.LR_SCHEDULER.WARMUP_FACTOR", 2.0, "<= 1"),
    ("SOLVER.LR_SCHEDULER.GAMMA", 0.0, "> 0"),
    ("SOLVER.LR_SCHEDULER.NAME", "Poly", "expected one of"),
    ("SOLVER.LR_SCHEDULER.WARMUP_METHOD", "exp", "expected one of"),
    ("SOLVER.OPTIMIZER.BASE_LR", 0.0, "> 0"),
    ("SOLVER.OPTIMIZER.BASE_LR", -0.01, "> 0"),
    ("SOLVER.OPTIMIZER.BASE_LR", math.nan, "finite"),
    ("SOLVER.OPTIMIZER.WEIGHT_DECAY", -1e-4, ">= 0"),
    ("SOLVER.OPTIMIZER.MOMENTUM", 1.0, "< 1"),
    ("SOLVER.OPTIMIZER.NAME", "Adamax", "expected one of"),
    ("SOLVER.IMS_PER_DEVICE", 0, "integer >= 1"),
    ("SOLVER.IMS_PER_BATCH", 0, "integer >= 1"),
    ("SOLVER.BATCH_SUBDIVISIONS", 0, "integer >= 1"),
    ("SOLVER.CHECKPOINT_PERIOD", -1, "integer >= 0"),
    ("SOLVER.REFERENCE_WORLD_SIZE", -8, "integer >= 0"),
    ("SOLVER.AMP.DTYPE", "float8", "expected one of"),
    ("DATALOADER.NUM_WORKERS", -2, "integer >= 0"),
    ("TEST.DETECTIONS_PER_IMAGE", 0, "integer >= 1"),
    ("UNREAD_KEYS", "loud", "expected one of"),
])
def test_one_bad_value_one_error_naming_key_and_value(key, value, fragment):
    cfg = FCOSConfig()
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigValueError) as info:
        validate_config(cfg)
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid config:" and len(lines) == 2, lines
    assert lines[1].startswith(f"  {key} = {value!r}: ") and fragment in lines[1]


def test_coco_max_dets_is_checked_when_coco_metrics_are_on():
    cfg = _cfg(**{"TEST.COCO_MAX_DETS": "5"})
    assert validate_config(cfg) == []  # TEST.COCO_METRICS off: COCO_MAX_DETS unused
    cfg.TEST.COCO_METRICS = True
    with pytest.raises(ConfigValueError, match=r"TEST.COCO_MAX_DETS = 5: must be an integer "
                                               r">= 10 \(COCO also reports AR1 and AR10\)"):
        validate_config(cfg)


def test_all_bad_values_in_one_error_and_branch_only_checks():
    cfg = _cfg(**{"SOLVER.LR_SCHEDULER.MAX_ITER": "-5", "SOLVER.OPTIMIZER.BASE_LR": "-1"})
    with pytest.raises(ConfigValueError, match=r"MAX_ITER = -5: .*\n.*BASE_LR = -1\.0: "):
        validate_config(cfg)
    # Keys of a branch that is off are not checked (the unread-key report flags them if set).
    cfg = _cfg(**{"SOLVER.LR_SCHEDULER.NAME": "WarmupCosineLR",
                  "SOLVER.LR_SCHEDULER.STEPS": "(9, 3)",
                  "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": "-1.0"})
    assert validate_config(cfg) == []
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    with pytest.raises(ConfigValueError, match=r"CLIP_VALUE = -1\.0: must be a finite number > 0"):
        validate_config(cfg)


def test_steps_beyond_max_iter_only_warn():
    cfg = _cfg(**{"SOLVER.LR_SCHEDULER.MAX_ITER": "100", "SOLVER.LR_SCHEDULER.STEPS": "(50, 100)"})
    assert validate_config(cfg) == [
        "SOLVER.LR_SCHEDULER.STEPS [50, 100]: [100] >= MAX_ITER 100 never take effect"]


def test_pods_train_rejects_bad_numbers_before_building_anything(tmp_path, capsys):
    exp = tmp_path / "tiny"
    shutil.copytree(FIXTURE, exp, ignore=shutil.ignore_patterns("__pycache__", "log"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        pods_train.run(["--dir", str(exp), "OUTPUT_DIR", str(out),
                        "SOLVER.LR_SCHEDULER.MAX_ITER", "-5"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "pods_train: error: invalid config:\n  SOLVER.LR_SCHEDULER.MAX_ITER = -5: must be " \
           "an integer >= 1" in err and "Traceback" not in err
    assert not out.exists()  # failed before setup: no output dir, no log, no checkpoint


def test_vis_period_is_gone_and_cudnn_benchmark_is_applied(tmp_path, monkeypatch):
    assert "VIS_PERIOD" not in BaseConfig()
    with pytest.raises(ConfigKeyError, match="VIS_PERIOD"):
        BaseConfig().merge_from_list(["VIS_PERIOD", "10"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = tmp_path / "tiny"
    shutil.copytree(FIXTURE, exp, ignore=shutil.ignore_patterns("__pycache__", "log"))
    before = torch.backends.cudnn.benchmark
    try:
        pods_train.run(["--dir", str(exp), "OUTPUT_DIR", str(tmp_path / "out"),
                        "CUDNN_BENCHMARK", "True", "SOLVER.LR_SCHEDULER.MAX_ITER", "1"])
        assert torch.backends.cudnn.benchmark is True
        assert "CUDNN_BENCHMARK: cudnn autotuning on" in (tmp_path / "out" / "log.txt").read_text()
    finally:
        torch.backends.cudnn.benchmark = before


# ---- TEST.EXPECTED_RESULTS -------------------------------------------------------------------
def test_expected_results_forms_and_errors():
    assert parse_expected_results([["bbox", "AP", 0.5, 0.1]], ["val"]) == [
        Expectation("val", "bbox", "AP", 0.5, 0.1)]
    assert parse_expected_results([("b", "crowdhuman", "mMR", 1, 0)], ["a", "b"]) == [
        Expectation("b", "crowdhuman", "mMR", 1.0, 0.0)]
    bad = [(["bbox", "AP", 0.5, 0.1], "DATASETS.TEST has 2"),
           (["c", "bbox", "AP", 0.5, 0.1], "'c' is not evaluated"),
           (["a", "bbox", "AP", 0.5, -0.1], "tolerance must be a finite number >= 0"),
           (["a", "bbox", "AP", "high", 0.1], "expected value must be a finite number"),
           (["a", "bbox", 0.5], "expected [dataset, task, metric, expected, tolerance]")]
    for entry, fragment in bad:
        with pytest.raises(ConfigValueError) as info:
            parse_expected_results([["a", "bbox", "AP", 0.5, 0.1], entry], ["a", "b"])
        assert f"TEST.EXPECTED_RESULTS[1] = {entry!r}: " in str(info.value)
        assert fragment in str(info.value)
    cfg = _cfg(**{"TEST.EXPECTED_RESULTS": "[['bbox', 'AP', 0.5, 0.1]]"})  # DATASETS.TEST ()
    with pytest.raises(ConfigValueError, match=r"EXPECTED_RESULTS\[0\].*DATASETS.TEST has 0"):
        validate_config(cfg)


def test_expected_results_inside_outside_missing():
    results = {"val": {"crowdhuman": {"AP": 0.60, "mMR": math.nan}}}
    checks = check_expected_results([
        Expectation("val", "crowdhuman", "AP", 0.62, 0.03),
        Expectation("val", "crowdhuman", "AP", 0.70, 0.05),
        Expectation("val", "crowdhuman", "JI", 0.5, 0.1),
        Expectation("val", "crowdhuman", "mMR", 0.5, 0.1)], results)
    assert [c.inside for c in checks] == [True, False, False, False]
    assert checks[0].describe() == ("val/crowdhuman/AP = 0.6000: inside 0.6200 +- 0.0300 "
                                    "(0.0200 below, 67% of the tolerance)")
    assert checks[1].describe() == ("val/crowdhuman/AP = 0.6000: OUTSIDE 0.7000 +- 0.0500 "
                                    "(0.1000 below, 0.0500 beyond the tolerance)")
    assert "the evaluation has no such metric" in checks[2].describe()
    assert checks[3].describe().startswith("val/crowdhuman/mMR = nan: OUTSIDE")


def test_verify_expected_results_warns_or_raises(caplog):
    cfg = _cfg(**{"DATASETS.TEST": "('val',)",
                  "TEST.EXPECTED_RESULTS": "[['bbox', 'AP', 0.5, 0.01]]"})
    results = {"val": {"bbox": {"AP": 0.4}}}
    checks = verify_expected_results(cfg, results)
    assert [c.inside for c in checks] == [False]
    assert "Expected results: 0 of 1 inside their band" in caplog.text
    assert "val/bbox/AP = 0.4000: OUTSIDE 0.5000 +- 0.0100" in caplog.text
    cfg.TEST.EXPECTED_RESULTS_MISMATCH = "error"
    with pytest.raises(ExpectedResultsError, match="1 of 1 TEST.EXPECTED_RESULTS outside"):
        verify_expected_results(cfg, results)
    assert verify_expected_results(cfg, {"val": {"bbox": {"AP": 0.505}}})[0].inside
    with pytest.raises(ExpectedResultsError, match="evaluated nothing"):
        verify_expected_results(cfg, {})
    cfg.TEST.EVAL_PERIOD = -1  # a training that leaves scoring to pods_test: not a mismatch
    assert verify_expected_results(cfg, {}) == []
    cfg.TEST.EXPECTED_RESULTS = []
    assert verify_expected_results(cfg, results) == []


def test_pods_test_reports_each_entry_and_fails_in_error_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = tmp_path / "tiny"
    shutil.copytree(FIXTURE, exp, ignore=shutil.ignore_patterns("__pycache__", "log"))
    out = tmp_path / "out"
    pods_train.run(["--dir", str(exp), "OUTPUT_DIR", str(out)])
    rows = pods_test.run(["--dir", str(exp), "OUTPUT_DIR", str(out)])
    mse = rows[-1][2]["tiny_regression_val"]["regression"]["mse"]
    band = f"[['regression', 'mse', {mse}, 1e-6], ['regression', 'count', 7, 0.5]]"
    size = len((out / "log.txt").read_text())
    pods_test.run(["--dir", str(exp), "OUTPUT_DIR", str(out), "TEST.EXPECTED_RESULTS", band])
    log = (out / "log.txt").read_text()[size:]
    assert "Expected results: 1 of 2 inside their band" in log
    assert "tiny_regression_val/regression/mse = " in log and "inside" in log
    assert ("tiny_regression_val/regression/count = 6.0000: OUTSIDE 7.0000 +- 0.5000 "
            "(1.0000 below, 0.5000 beyond the tolerance)") in log
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        pods_test.run(["--dir", str(exp), "OUTPUT_DIR", str(out), "TEST.EXPECTED_RESULTS", band,
                       "TEST.EXPECTED_RESULTS_MISMATCH", "error"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "pods_test: error: 1 of 2 TEST.EXPECTED_RESULTS outside their band" in err


# ---- one place for defaults ----------------------------------------------------------------------
# Modules being reworked by the model-side change: they still read keys with code defaults
# (dense_detector's own cfg_get). Remove them from this list once they use crowdloss.config.
_NOT_YET: set = set()


def test_no_config_key_is_read_with_a_code_default():
    offenders = []
    for path in sorted((REPO / "crowdloss").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if any(rel.startswith(p) for p in _NOT_YET) or rel == "crowdloss/config/access.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "cfg_get"
                    and (len(node.args) > 2 or node.keywords)):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], "declare the key in a config class and drop the default"


def test_validated_names_are_the_ones_the_solver_builds():
    from torch import nn

    from crowdloss.config.validate import LR_SCHEDULER_NAMES, OPTIMIZER_NAMES
    from crowdloss.engine.solver import build_lr_scheduler, build_optimizer

    for name in OPTIMIZER_NAMES:
        optimizer = build_optimizer(_cfg(**{"SOLVER.OPTIMIZER.NAME": name}), nn.Linear(2, 1))
        for sched in LR_SCHEDULER_NAMES:
            build_lr_scheduler(_cfg(**{"SOLVER.LR_SCHEDULER.NAME": sched}), optimizer)
