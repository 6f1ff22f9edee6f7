"""Config read tracking, experiment keys, and the unread-key report (library + CLI)."""
import copy
import pickle
import re
import shutil
import threading
from pathlib import Path

import pytest

from crowdloss.cli import test as pods_test
from crowdloss.cli import train as pods_train
from crowdloss.config import (BaseDetectionConfig, ConfigDict, FCOSConfig, ReadTracker,
                              UnreadKeyReport, UnreadKeysError, cfg_get, config_diff,
                              rescale_for_world_size, untracked, validate_config)
from crowdloss.config.tracking import TRAIN_ONLY_KEYS

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiny_experiment"


# ---- what counts as a read ----------------------------------------------------------------
def test_leaf_reads_are_recorded_under_their_dotted_path():
    cfg = FCOSConfig()
    with ReadTracker() as t:
        cfg.MODEL.FCOS.NUM_CLASSES
        cfg["SOLVER"]["LR_SCHEDULER"]["MAX_ITER"]
        cfg.MODEL.get("DEVICE")
        cfg.MODEL.get("NOT_A_KEY", 3)  # absent: nothing to record
        cfg_get(cfg, "INPUT.FORMAT")
        cfg_get(cfg, "TEST.NOT_A_KEY", 0)
        # Not reads: a section, a presence probe, iteration / conversion.
        cfg.MODEL.RESNETS
        assert "SEED" in cfg
        list(cfg.TEST.items()), cfg.DATALOADER.to_dict(), cfg.dump()
    assert t.keys == {"MODEL.FCOS.NUM_CLASSES", "SOLVER.LR_SCHEDULER.MAX_ITER", "MODEL.DEVICE",
                      "INPUT.FORMAT"}
    cfg.SEED  # after stop(): not recorded
    assert "SEED" not in t.keys


def test_bookkeeping_is_not_a_read():
    cfg = FCOSConfig()
    with ReadTracker() as t:
        cfg.merge(dict(SOLVER=dict(BASE_LR=0.02), MODEL=dict(LLA=dict(TopK=5))))
        cfg.merge_from_list(["SOLVER.LR_SCHEDULER.MAX_ITER", "100", "INPUT.MIN_SIZE_TEST", "64"])
        config_diff(cfg), cfg.experiment_keys(), cfg.flat_keys(), str(cfg), repr(cfg)
        clone = copy.deepcopy(cfg)
        cfg.copy(), pickle.loads(pickle.dumps(cfg)), FCOSConfig()
        assert clone == cfg
        validate_config(cfg)
    assert t.keys == set()


def test_rescaling_uses_the_batch_keys_but_not_the_schedule():
    cfg = FCOSConfig()  # written for 8 processes
    with ReadTracker() as t:
        rescale_for_world_size(cfg, 2)
    assert cfg.SOLVER.LR_SCHEDULER.MAX_ITER == 160000
    assert t.keys == {"SOLVER.IMS_PER_BATCH", "SOLVER.IMS_PER_DEVICE",
                      "SOLVER.REFERENCE_WORLD_SIZE"}


def test_paths_follow_copies_pickles_and_new_sections():
    cfg = FCOSConfig()
    cfg.MODEL.NEW = {"INNER": {"X": 1}}
    moved = ConfigDict(A=dict(B=dict(C=2)))
    cfg.MODEL.MOVED = moved.A  # a section re-homed under another parent
    with ReadTracker() as t:
        copy.deepcopy(cfg).MODEL.RESNETS.DEPTH
        pickle.loads(pickle.dumps(cfg)).MODEL.FCOS.PRIOR_PROB
        pickle.loads(pickle.dumps(cfg.MODEL)).FPN.NORM  # a pickled sub-section keeps its path
        cfg.MODEL.NEW.INNER.X
        cfg.MODEL.MOVED.B.C
    assert t.keys == {"MODEL.RESNETS.DEPTH", "MODEL.FCOS.PRIOR_PROB", "MODEL.FPN.NORM",
                      "MODEL.NEW.INNER.X", "MODEL.MOVED.B.C"}


def test_threads_record_and_untracked_is_per_thread():
    cfg = FCOSConfig()
    keys = [f"MODEL.FCOS.{k}" for k in ("NUM_CONVS", "PRIOR_PROB", "NMS_THRESH_TEST",
                                         "FOCAL_LOSS_GAMMA")]
    go = threading.Event()

    def reader(key):
        go.wait()
        for _ in range(200):
            cfg_get(cfg, key)

    with ReadTracker() as t, untracked():
        threads = [threading.Thread(target=reader, args=(k,)) for k in keys]
        for th in threads:
            th.start()
        cfg.SEED  # this thread is paused...
        go.set()
        for th in threads:
            th.join()
    assert t.keys == set(keys)  # ...the others are not


def test_trackers_nest():
    cfg = FCOSConfig()
    with ReadTracker() as outer:
        cfg.SEED
        with ReadTracker() as inner:
            cfg.OUTPUT_DIR
        cfg.MODEL.DEVICE
    assert outer.keys == {"SEED", "OUTPUT_DIR", "MODEL.DEVICE"} and inner.keys == {"OUTPUT_DIR"}


# ---- what the experiment set ------------------------------------------------------------------
class _Experiment(FCOSConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(dict(
            MODEL=dict(SHIFT_GENERATOR=dict(NUM_SHIFTS=1),  # restates its default
                       FCOS=dict(NUM_CLASSES=1)),
            SOLVER=dict(BASE_LR=0.02),  # legacy name
            INPUT=dict(MIN_SIZE_TEST=640)))  # legacy name of a pipeline kwarg


class _Derived(_Experiment):  # an experiment built on another experiment's class
    def __init__(self):
        super().__init__()
        self._register_configuration(dict(MODEL=dict(LLA=dict(TopK=7))))


def test_experiment_keys_are_registered_plus_changed_keys():
    cfg = _Experiment()
    cfg.TEST.PLOT = False  # changed after construction: found by the diff
    assert cfg.experiment_keys() == [
        "INPUT.AUG.TEST_PIPELINES", "MODEL.FCOS.NUM_CLASSES", "MODEL.SHIFT_GENERATOR.NUM_SHIFTS",
        "SOLVER.OPTIMIZER.BASE_LR", "TEST.PLOT"]
    assert "MODEL.LLA.TOPK" in _Derived().experiment_keys()
    assert FCOSConfig().experiment_keys() == []


def test_overrides_say_which_leaf_keys_they_set():
    cfg = FCOSConfig()
    applied = cfg.apply_overrides([
        "SOLVER.BASE_LR", "0.1", "INPUT.MAX_SIZE_TRAIN", "900", "MODEL.LLA.TopK", "3",
        "MODEL.ATSS", "{'TOPK': 5, 'ANCHOR_SCALE': 4}", "SEED", "1"])
    assert [o.leaf_keys for o in applied] == [
        ("SOLVER.OPTIMIZER.BASE_LR",), ("INPUT.AUG.TRAIN_PIPELINES",), ("MODEL.LLA.TOPK",),
        ("MODEL.ATSS.TOPK", "MODEL.ATSS.ANCHOR_SCALE"), ("SEED",)]
    assert cfg.MODEL.ATSS.TOPK == 5 and cfg.SOLVER.OPTIMIZER.BASE_LR == 0.1
    assert cfg.merge_from_list(["SEED", "2"]) == ["SEED: 1 -> 2"]


# ---- the report ---------------------------------------------------------------------------
def test_report_scopes_reports_each_key_once_and_modes(caplog):
    cfg = FCOSConfig()
    keys = ["MODEL.FCOS.NUM_CLASSES", "MODEL.SHIFT_GENERATOR.NUM_SHIFTS", "SOLVER.GAMMA_X",
            "TEST.PLOT"]
    report = UnreadKeyReport(keys).start()
    try:
        cfg.MODEL.FCOS.NUM_CLASSES
        assert report.check("build", only=("MODEL",)) == ["MODEL.SHIFT_GENERATOR.NUM_SHIFTS"]
        assert "never read (build): MODEL.SHIFT_GENERATOR.NUM_SHIFTS." in caplog.text
        cfg.TEST.PLOT  # read by a later stage: never reported
        assert report.check("end", exclude=TRAIN_ONLY_KEYS) == []
        assert report.check("end") == ["SOLVER.GAMMA_X"]  # NUM_SHIFTS was already reported
    finally:
        report.stop()
    strict = UnreadKeyReport(["SEED", "OUTPUT_DIR"], action="error").start()
    cfg.SEED
    with pytest.raises(UnreadKeysError, match=r"never read \(x\): OUTPUT_DIR\. .*'error'"):
        strict.check("x")
    strict.stop()
    caplog.clear()
    assert UnreadKeyReport(["SEED"], action="off").check("x") == ["SEED"]
    assert "never read" not in caplog.text
    with pytest.raises(ValueError, match="UNREAD_KEYS"):
        UnreadKeyReport([], action="loud")


def test_train_loader_reads_its_keys_when_built_not_per_sample(tmp_path, monkeypatch):
    # Loader workers have no tracker: fine only if drawing samples reads no config key.
    from crowdloss.data import build_test_loader, build_train_loader
    from crowdloss.data.synthetic import generate_synthcrowd

    generate_synthcrowd(str(tmp_path / "synthcrowd"), num_train=3, num_val=1, seed=1, workers=1)
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(tmp_path))
    cfg = BaseDetectionConfig()
    cfg.merge(dict(DATASETS=dict(TRAIN=("synthcrowd_train",)), SEED=3,
                   DATALOADER=dict(NUM_WORKERS=0), SOLVER=dict(IMS_PER_DEVICE=1),
                   INPUT=dict(MIN_SIZE_TRAIN=(32,), MIN_SIZE_TEST=32)))
    with ReadTracker() as t:
        loader = build_train_loader(cfg)
        test_loader = build_test_loader(cfg, "synthcrowd_val")
        built = t.keys
        batches = iter(loader)
        next(batches), next(batches), list(test_loader)
    assert t.keys == built
    assert {"DATASETS.TRAIN", "DATASETS.BOX_TYPE", "INPUT.AUG.TRAIN_PIPELINES",
            "INPUT.AUG.TEST_PIPELINES", "INPUT.FORMAT", "SOLVER.IMS_PER_DEVICE",
            "DATALOADER.NUM_WORKERS", "DATALOADER.ASPECT_RATIO_GROUPING", "SEED"} <= built


# ---- through pods_train / pods_test (the tiny experiment, in-process) ------------------------
_REPORT = re.compile(r"never read \(([^)]*)\): (.*?)\. They have no effect")


def _reports(text):
    return [(stage, keys.split(", ")) for stage, keys in _REPORT.findall(text)]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = tmp_path / "tiny"
    shutil.copytree(FIXTURE, exp, ignore=shutil.ignore_patterns("__pycache__", "log"))
    return exp, tmp_path / "out"


def _log(out, since=0):
    return (out / "log.txt").read_text()[since:]


def test_cli_reports_a_real_unread_key_at_the_right_stage(tiny):
    exp, out = tiny
    # CLIP_VALUE has no effect while clipping is off; DATASETS.TEST and TEST.EXPECTED_RESULTS
    # are read only by the final evaluation: they must not be reported before it.
    pods_train.run(["--dir", str(exp), "OUTPUT_DIR", str(out),
                    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "5.0",
                    "TEST.EXPECTED_RESULTS", "[['regression', 'count', 6, 0]]"])
    log = _log(out)
    assert _reports(log) == [("by the model, optimizer, scheduler and train loader",
                              ["SOLVER.CLIP_GRADIENTS.CLIP_VALUE"])]
    assert log.index("never read") < log.index("Starting training")  # before the first step
    assert "Expected results: 1 of 1 inside their band" in log

    # Resuming a finished run builds no loader and evaluates nothing: no false report.
    size = len(log)
    pods_train.run(["--dir", str(exp), "--resume", "OUTPUT_DIR", str(out)])
    assert _reports(_log(out, size)) == []
    # pods_test reads no training key and reports none.
    size = len(_log(out))
    pods_test.run(["--dir", str(exp), "OUTPUT_DIR", str(out), "SOLVER.GAMMA", "0.5"])
    assert "Results per checkpoint" in _log(out, size) and _reports(_log(out, size)) == []


def test_cli_leaves_evaluation_keys_to_pods_test_when_training_evaluates_nothing(tiny):
    # TEST.EVAL_PERIOD -1 (the synthcrowd experiments: pods_test scores the model): the
    # evaluation keys are pods_test's to read and to report, not a false alarm of pods_train.
    exp, out = tiny
    pods_train.run(["--dir", str(exp), "OUTPUT_DIR", str(out), "TEST.EVAL_PERIOD", "-1",
                    "TEST.JI_MATCHING", "greedy", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "2.0"])
    assert _reports(_log(out)) == [("by the model, optimizer, scheduler and train loader",
                                    ["SOLVER.CLIP_GRADIENTS.CLIP_VALUE"])]
    size = len(_log(out))
    pods_test.run(["--dir", str(exp), "OUTPUT_DIR", str(out), "TEST.JI_MATCHING", "greedy"])
    # This toy task's evaluator has no JI: pods_test is where that is said.
    assert _reports(_log(out, size)) == [("by this evaluation", ["TEST.JI_MATCHING"])]


def test_cli_unread_keys_error_stops_before_training(tiny, capsys):
    exp, out = tiny
    with pytest.raises(SystemExit) as info:
        pods_train.run(["--dir", str(exp), "OUTPUT_DIR", str(out), "UNREAD_KEYS", "error",
                        "SOLVER.CLIP_GRADIENTS.NORM_TYPE", "1.0"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "pods_train: error: config keys set by this experiment but never read" in err
    assert "SOLVER.CLIP_GRADIENTS.NORM_TYPE" in err and "Traceback" not in err
    assert not list(out.glob("*.pth")) and "never read" in _log(out)
