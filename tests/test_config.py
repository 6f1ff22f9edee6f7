"""Config system: cvpods merge semantics, legacy keys, overrides, rescaling, outputs."""
import copy
import logging
import math
import os
import pickle

import pytest
import yaml

from crowdloss.config import (BaseConfig, BaseDetectionConfig, ConfigDict, FCOSConfig,
                              RetinaNetConfig, config_diff, default_output_dir, dump_config,
                              link_log, rescale_for_world_size)
from crowdloss.config.legacy import INPUT_KEYS, SOLVER_KEYS


# ---- ConfigDict ----------------------------------------------------------------------------
def test_attribute_and_key_access_are_one_store():
    c = ConfigDict(A=dict(B=1))
    assert isinstance(c.A, ConfigDict) and c.A is c["A"]
    c.A.C = 2
    assert c["A"]["C"] == 2
    c["D"] = {"E": {"F": 3}}
    assert c.D.E.F == 3 and isinstance(c.D.E, ConfigDict)
    c.update(G=dict(H=4))
    assert isinstance(c.G, ConfigDict) and c.G.H == 4
    del c.G
    assert "G" not in c
    c._private = 5  # underscore names are attributes, never keys
    assert "_private" not in c and c._private == 5
    with pytest.raises(AttributeError, match="did you mean A"):
        c.AA


def test_merge_nested_dicts_key_by_key_other_values_replace():
    src = dict(S=dict(X=1, Y=[1, 2], T=(1,), N=dict(P=1, Q=2)), K="a")
    c = ConfigDict(src)
    c.merge(dict(S=dict(Y=[9], T=(5, 6), N=dict(Q=3), Z=0), K="b"))
    assert c.to_dict() == dict(S=dict(X=1, Y=[9], T=(5, 6), N=dict(P=1, Q=3), Z=0), K="b")
    # A non-dict value replaces a whole section; leaves are copies, not aliases.
    c.merge(dict(S=None))
    assert c.S is None
    c.merge(dict(L=src["S"]["Y"]))
    c.L.append(3)
    assert src["S"]["Y"] == [1, 2]
    assert type(c.to_dict()) is dict and type(c.to_dict()["K"]) is str


def test_deepcopy_and_pickle_keep_class_and_values():
    cfg = FCOSConfig()
    cfg.MODEL.LLA.TOPK = 7
    for clone in (copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg)), cfg.copy()):
        assert type(clone) is FCOSConfig and clone == cfg
        clone.MODEL.LLA.TOPK = 1
        assert cfg.MODEL.LLA.TOPK == 7


def test_diff_reports_changed_and_new_keys_only():
    a = ConfigDict(A=dict(B=1, C=(1, 2)), D="x", E=[1])
    b = ConfigDict(A=dict(B=2, C=[1, 2]), D="x")
    assert a.diff(b) == {"A": {"B": 1}, "E": [1]}  # tuple vs list of equal items: no change


# ---- defaults ------------------------------------------------------------------------------
def test_cvpods_defaults():
    cfg = FCOSConfig()
    assert isinstance(cfg, BaseDetectionConfig) and isinstance(cfg, BaseConfig)
    assert cfg.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675] and cfg.MODEL.DEVICE == "cuda"
    assert cfg.MODEL.RESNETS.OUT_FEATURES == ["res3", "res4", "res5"]
    assert cfg.MODEL.FCOS.OBJECT_SIZES_OF_INTEREST[-1] == [512, math.inf]
    assert cfg.MODEL.LLA.to_dict() == dict(TOPK=10, REG_COST=1.5, IOU_WEIGHT=0.5,
                                           OUTSIDE_COST=1000.0, WARMUP_ITERS=0,
                                           WARMUP_ASSIGNER="atss")
    assert cfg.MODEL.ATSS.TOPK == 9 and cfg.MODEL.FCOS.NMS_THRESH_TEST == 0.6
    s = cfg.SOLVER
    assert (s.OPTIMIZER.BASE_LR, s.LR_SCHEDULER.STEPS, s.LR_SCHEDULER.WARMUP_FACTOR) == (
        0.01, (30000,), 0.001)
    assert (s.IMS_PER_BATCH, s.IMS_PER_DEVICE, s.REFERENCE_WORLD_SIZE) == (16, 2, 8)
    assert cfg.TEST.JI_MATCHING == "weight" and cfg.DATASETS.BOX_TYPE == "fbox"
    assert cfg.INPUT.AUG.TRAIN_PIPELINES[0] == (
        "ResizeShortestEdge", dict(short_edge_length=(800,), max_size=1333, sample_style="choice"))
    assert BaseDetectionConfig().MODEL.RESNETS.OUT_FEATURES == ["res4"]
    r = RetinaNetConfig()
    assert r.MODEL.ANCHOR_GENERATOR.SIZES[1] == pytest.approx([64, 64 * 2 ** (1 / 3),
                                                                64 * 2 ** (2 / 3)])
    assert r.MODEL.RETINANET.IOU_LABELS == [0, -1, 1] and "FCOS" not in r.MODEL
    # Instances never share mutable defaults.
    cfg.INPUT.AUG.TEST_PIPELINES[0][1]["max_size"] = 1
    assert FCOSConfig().INPUT.AUG.TEST_PIPELINES[0][1]["max_size"] == 1333


# ---- legacy keys ---------------------------------------------------------------------------
_LEGACY_VALUES = {
    "SOLVER.BASE_LR": 0.02, "SOLVER.WEIGHT_DECAY": 5e-4, "SOLVER.WEIGHT_DECAY_NORM": 0.1,
    "SOLVER.MOMENTUM": 0.8, "SOLVER.BIAS_LR_FACTOR": 2.0, "SOLVER.MAX_ITER": 28125,
    "SOLVER.STEPS": (18750, 24735), "SOLVER.WARMUP_FACTOR": 0.01, "SOLVER.WARMUP_ITERS": 500,
    "SOLVER.WARMUP_METHOD": "constant", "SOLVER.GAMMA": 0.2,
    "SOLVER.LR_SCHEDULER_NAME": "WarmupCosineLR",
}


def _nested(flat):
    out = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def test_every_legacy_solver_key_migrates_in_dicts_and_overrides(caplog):
    assert set(_LEGACY_VALUES) == set(SOLVER_KEYS)

    class Legacy(FCOSConfig):
        def __init__(self):
            super().__init__()
            self._register_configuration(_nested(_LEGACY_VALUES))

    with caplog.at_level(logging.WARNING, logger="crowdloss.config.legacy"):
        cfg = Legacy()
    for old, value in _LEGACY_VALUES.items():
        assert _get(cfg, SOLVER_KEYS[old]) == value
        assert old.split(".")[1] not in cfg.SOLVER
        assert f"{old} -> {SOLVER_KEYS[old]}" in caplog.text
    # The same names as command-line overrides (strings, cast to the existing types).
    cfg = FCOSConfig()
    cfg.merge_from_list(["SOLVER.BASE_LR", "0.5", "SOLVER.STEPS", "(10, 20)",
                         "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "SOLVER.MAX_ITER", "99"])
    lr = cfg.SOLVER.LR_SCHEDULER
    assert (cfg.SOLVER.OPTIMIZER.BASE_LR, lr.STEPS, lr.NAME, lr.MAX_ITER) == (
        0.5, (10, 20), "WarmupCosineLR", 99)
    assert "BASE_LR" not in cfg.SOLVER


def test_legacy_input_keys_move_into_resize_entries():
    assert set(INPUT_KEYS) >= {"INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN",
                               "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST"}
    cfg = FCOSConfig()
    cfg.merge(dict(INPUT=dict(MIN_SIZE_TRAIN=(640, 672), MAX_SIZE_TRAIN=1000,
                              MIN_SIZE_TEST=600, MAX_SIZE_TEST=900)))
    train, test = cfg.INPUT.AUG.TRAIN_PIPELINES, cfg.INPUT.AUG.TEST_PIPELINES
    assert train[0][1] == dict(short_edge_length=(640, 672), max_size=1000, sample_style="choice")
    assert train[1] == ("RandomFlip", {})
    assert test[0][1] == dict(short_edge_length=600, max_size=900, sample_style="choice")
    assert "MIN_SIZE_TRAIN" not in cfg.INPUT
    # Overrides: cast to the kwarg's type (a single train size becomes a tuple).
    msgs = cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", "512", "INPUT.MAX_SIZE_TEST", "700",
                                "INPUT.MIN_SIZE_TEST", "480", "INPUT.MAX_SIZE_TRAIN", "800"])
    assert cfg.INPUT.AUG.TRAIN_PIPELINES[0][1]["short_edge_length"] == (512,)
    assert cfg.INPUT.AUG.TRAIN_PIPELINES[0][1]["max_size"] == 800
    assert cfg.INPUT.AUG.TEST_PIPELINES[0][1] == dict(short_edge_length=480, max_size=700,
                                                      sample_style="choice")
    assert "INPUT.AUG.TEST_PIPELINES[0].max_size: 900 -> 700" in msgs
    # No ResizeShortestEdge entry to receive the size: a clear error, not a silent drop.
    with pytest.raises(ValueError, match="INPUT.MIN_SIZE_TEST needs a .*ResizeShortestEdge"):
        cfg.merge(dict(INPUT=dict(MIN_SIZE_TEST=1, AUG=dict(TEST_PIPELINES=[]))))


def test_legacy_and_new_name_conflict_is_an_error():
    with pytest.raises(ValueError, match="both SOLVER.BASE_LR .* SOLVER.OPTIMIZER.BASE_LR"):
        FCOSConfig().merge(dict(SOLVER=dict(BASE_LR=0.1, OPTIMIZER=dict(BASE_LR=0.2))))


def test_lla_topk_alias_in_dicts_and_overrides():
    cfg = FCOSConfig()
    cfg.merge(dict(MODEL=dict(LLA=dict(TopK=15))))
    assert cfg.MODEL.LLA.TOPK == 15 and "TopK" not in cfg.MODEL.LLA
    cfg.merge_from_list(["MODEL.LLA.TopK", "12"])
    assert cfg.MODEL.LLA.TOPK == 12 and "TopK" not in cfg.MODEL.LLA


# ---- overrides -----------------------------------------------------------------------------
def test_overrides_are_evaluated_and_cast():
    cfg = FCOSConfig()
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.OPTIMIZER.BASE_LR", "1",
        "MODEL.FCOS.CENTERNESS_ON_REG", "true", "SOLVER.AMP.ENABLED", "True",
        "DATASETS.TRAIN", "crowdhuman_train", "DATASETS.TEST", "('a', 'b')",
        "MODEL.FCOS.FPN_STRIDES", "(4, 8)", "MODEL.WEIGHTS", "1e-3",
        "SOLVER.LR_SCHEDULER.MAX_ITER", "1e4", "MODEL.FCOS.REG_WEIGHT", "inf",
        "MODEL.LLA", "{'REG_COST': 2.0}",
    ])
    assert cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.IMS_PER_BATCH == 4
    assert cfg.SOLVER.OPTIMIZER.BASE_LR == 1.0 and type(cfg.SOLVER.OPTIMIZER.BASE_LR) is float
    assert cfg.MODEL.FCOS.CENTERNESS_ON_REG is True and cfg.SOLVER.AMP.ENABLED is True
    assert cfg.DATASETS.TRAIN == ("crowdhuman_train",) and cfg.DATASETS.TEST == ("a", "b")
    assert cfg.MODEL.FCOS.FPN_STRIDES == [4, 8]
    assert cfg.MODEL.WEIGHTS == "1e-3"  # strings verbatim
    assert cfg.SOLVER.LR_SCHEDULER.MAX_ITER == 10000
    assert cfg.MODEL.FCOS.REG_WEIGHT == math.inf
    assert cfg.MODEL.LLA.to_dict() == dict(TOPK=10, REG_COST=2.0, IOU_WEIGHT=0.5,
                                           OUTSIDE_COST=1000.0, WARMUP_ITERS=0,
                                           WARMUP_ASSIGNER="atss")


def test_unknown_override_key_lists_close_matches():
    cfg = FCOSConfig()
    with pytest.raises(KeyError, match="SOLVER.OPTIMIZER.BASE_LRR.*SOLVER.OPTIMIZER.BASE_LR"):
        cfg.merge_from_list(["SOLVER.OPTIMIZER.BASE_LRR", "0.1"])
    with pytest.raises(KeyError) as info:
        cfg.merge_from_list(["MODEL.TOPK", "3"])
    assert "MODEL.LLA.TOPK" in str(info.value) and "MODEL.ATSS.TOPK" in str(info.value)
    with pytest.raises(KeyError, match="MODEL.RETINANET.NUM_CLASSES"):
        cfg.merge_from_list(["MODEL.RETINANET.NUM_CLASSES", "1"])  # not in an FCOS config
    with pytest.raises(ValueError, match="odd number"):
        cfg.merge_from_list(["MODEL.DEVICE"])


@pytest.mark.parametrize("key,value,expected", [
    ("SOLVER.IMS_PER_BATCH", "abc", "int"),
    ("SOLVER.IMS_PER_BATCH", "2.5", "int"),
    ("MODEL.FCOS.CENTERNESS_ON_REG", "maybe", "bool"),
    ("SOLVER.OPTIMIZER.BASE_LR", "fast", "float"),
    ("SOLVER.OPTIMIZER.BASE_LR", "True", "float"),
    ("MODEL.LLA", "3", "ConfigDict"),
])
def test_override_with_bad_type_names_key_value_and_type(key, value, expected):
    with pytest.raises(ValueError) as info:
        FCOSConfig().merge_from_list([key, value])
    msg = str(info.value)
    assert key in msg and repr(value) in msg and f"type {expected}" in msg


# ---- world-size rescaling --------------------------------------------------------------------
@pytest.mark.parametrize("world,batch,lr,max_iter,steps,ckpt", [
    (1, 2, 0.00125, 320000, (240000,), 40000),
    (2, 4, 0.0025, 160000, (120000,), 20000),
    (8, 16, 0.01, 40000, (30000,), 5000),
    (16, 32, 0.02, 20000, (15000,), 2500),
])
def test_rescale_for_world_size(world, batch, lr, max_iter, steps, ckpt):
    cfg = FCOSConfig()
    cfg.TEST.EVAL_PERIOD = 4000
    msgs = rescale_for_world_size(cfg, world)
    s = cfg.SOLVER
    assert s.IMS_PER_BATCH == batch and s.IMS_PER_DEVICE == 2
    assert s.OPTIMIZER.BASE_LR == pytest.approx(lr, rel=1e-12)
    assert (s.LR_SCHEDULER.MAX_ITER, s.LR_SCHEDULER.STEPS, s.CHECKPOINT_PERIOD) == (
        max_iter, steps, ckpt)
    assert cfg.TEST.EVAL_PERIOD == 4000 * 8 // world
    assert s.LR_SCHEDULER.WARMUP_ITERS == 1000 and s.LR_SCHEDULER.WARMUP_FACTOR == 0.001
    assert msgs and all(isinstance(m, str) for m in msgs)
    # Idempotent: the resolved config is consistent for its world size.
    before = cfg.to_dict()
    rescale_for_world_size(cfg, world)
    assert cfg.to_dict() == before


def test_rescale_rounds_and_keeps_disabled_periods():
    cfg = FCOSConfig()
    cfg.merge_from_list(["SOLVER.STEPS", "(18750, 24735)", "SOLVER.MAX_ITER", "28125",
                         "TEST.EVAL_PERIOD", "-1", "SOLVER.CHECKPOINT_PERIOD", "3"])
    rescale_for_world_size(cfg, 3)
    sched = cfg.SOLVER.LR_SCHEDULER
    assert sched.STEPS == (50000, 65960) and sched.MAX_ITER == 75000  # x 8/3, half up
    assert cfg.TEST.EVAL_PERIOD == -1 and cfg.SOLVER.CHECKPOINT_PERIOD == 8
    cfg = FCOSConfig()
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.SOLVER.LR_SCHEDULER.merge(dict(MAX_ITER=5, STEPS=[3, 4]))
    rescale_for_world_size(cfg, 16)
    assert cfg.SOLVER.CHECKPOINT_PERIOD == 1  # at least 1 where it was positive
    assert cfg.SOLVER.LR_SCHEDULER.MAX_ITER == 3  # 2.5 rounds half up
    assert cfg.SOLVER.LR_SCHEDULER.STEPS == [2, 2]  # 1.5 -> 2, 2.0 -> 2; the list stays a list


def test_rescale_rejects_broken_batch_and_supports_disabling():
    cfg = FCOSConfig()
    cfg.SOLVER.IMS_PER_BATCH = 8  # 8 / 2 = 4 processes, but the reference says 8
    with pytest.raises(ValueError) as info:
        rescale_for_world_size(cfg, 2)
    msg = str(info.value)
    assert "IMS_PER_BATCH (8)" in msg and "IMS_PER_DEVICE (2)" in msg
    assert "REFERENCE_WORLD_SIZE (8)" in msg and "= 16" in msg and "REFERENCE_WORLD_SIZE 4" in msg
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    with pytest.raises(ValueError, match="must equal SOLVER.IMS_PER_DEVICE"):
        rescale_for_world_size(cfg, 2)
    before = cfg.to_dict()
    assert rescale_for_world_size(cfg, 4)  # 8 == 2 x 4: accepted, nothing rescaled
    assert cfg.to_dict() == before
    with pytest.raises(ValueError, match="world_size"):
        rescale_for_world_size(FCOSConfig(), 0)


# ---- diff, dump, outputs ---------------------------------------------------------------------
_EXPERIMENT = dict(
    MODEL=dict(FCOS=dict(NUM_CLASSES=1), LLA=dict(TopK=10, REG_COST=2.0)),
    SOLVER=dict(BASE_LR=0.01, STEPS=(18750, 24735)),
    DATASETS=dict(TRAIN=("crowdhuman_train",)),
)


class CustomFCOSConfig(FCOSConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_EXPERIMENT)


def test_diff_against_parent_class_shows_what_the_experiment_changed():
    cfg = CustomFCOSConfig()
    assert CustomFCOSConfig.parent_config_class() is FCOSConfig
    assert FCOSConfig.parent_config_class() is FCOSConfig
    expected = dict(MODEL=dict(FCOS=dict(NUM_CLASSES=1), LLA=dict(REG_COST=2.0)),
                    SOLVER=dict(LR_SCHEDULER=dict(STEPS=(18750, 24735))),
                    DATASETS=dict(TRAIN=("crowdhuman_train",)))
    assert cfg.diff_from_parent() == expected == config_diff(cfg)
    cfg.merge_from_list(["SEED", "3"])
    assert config_diff(cfg)["SEED"] == 3
    assert config_diff(FCOSConfig()) == {}
    with pytest.raises(TypeError, match="BaseConfig"):
        config_diff(ConfigDict(A=1))


def test_dump_and_reload_yaml(tmp_path):
    cfg = CustomFCOSConfig()
    cfg.build_backbone = test_dump_and_reload_yaml  # builders attached by net.py dump by name
    out = tmp_path / "out"
    diff = dump_config(cfg, str(out))
    assert sorted(os.listdir(out)) == ["config.yaml", "config_diff.yaml"]
    loaded = yaml.safe_load((out / "config.yaml").read_text())
    assert loaded["MODEL"]["FCOS"]["OBJECT_SIZES_OF_INTEREST"][-1] == [512, math.inf]
    assert ".inf" in (out / "config.yaml").read_text()
    assert loaded["SOLVER"]["LR_SCHEDULER"]["STEPS"] == [18750, 24735]
    assert loaded["INPUT"]["AUG"]["TRAIN_PIPELINES"][0][1]["short_edge_length"] == [800]
    assert loaded["build_backbone"].endswith("test_dump_and_reload_yaml")
    assert yaml.safe_load((out / "config_diff.yaml").read_text())["MODEL"]["LLA"] == {
        "REG_COST": 2.0}
    assert "build_backbone" in diff
    # A fresh parent config merged with the YAML is the same config (lists for tuples aside).
    del loaded["build_backbone"]
    reloaded = FCOSConfig().merge(loaded)
    del cfg.build_backbone
    assert reloaded.diff(cfg) == {} and cfg.diff(reloaded) == {}


def test_default_output_dir(monkeypatch, tmp_path):
    exp = tmp_path / "repo" / "playground" / "detection" / "crowdhuman" / "lla.res50.fpn"
    monkeypatch.setenv("CROWDLOSS_OUTPUT", str(tmp_path / "runs"))
    assert default_output_dir(str(exp)) == str(tmp_path / "runs/detection/crowdhuman/lla.res50.fpn")
    assert default_output_dir(str(tmp_path / "elsewhere" / "exp1")) == str(tmp_path / "runs/exp1")
    nested = tmp_path / "playground" / "a" / "playground" / "b"
    assert default_output_dir(str(nested)) == str(tmp_path / "runs" / "b")  # after the last one
    monkeypatch.delenv("CROWDLOSS_OUTPUT")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert default_output_dir(str(exp)) == os.path.join(repo, "output", "detection",
                                                        "crowdhuman", "lla.res50.fpn")


def test_link_log_creates_replaces_and_never_raises(tmp_path, caplog):
    exp, out1, out2 = tmp_path / "exp", tmp_path / "o1", tmp_path / "o2"
    exp.mkdir()
    assert link_log(str(exp), str(out1)) == str(exp / "log")
    assert os.readlink(exp / "log") == str(out1)
    assert link_log(str(exp), str(out1)) == str(exp / "log")  # same target: untouched
    link_log(str(exp), str(out2))
    assert os.readlink(exp / "log") == str(out2)
    (exp / "log").unlink()
    (exp / "log").mkdir()  # a real dir named log is left alone
    with caplog.at_level(logging.WARNING):
        assert link_log(str(exp), str(out1)) is None
        assert link_log(str(tmp_path / "missing"), str(out1)) is None
    assert "not a symlink" in caplog.text and "could not link" in caplog.text


def test_coco_ranking_config_refuses_an_unknown_setting():
    from crowdloss.config import coco_ranking_config

    cfg = coco_ranking_config(loss="ap", size=800, backbone="r101", epochs=2, lr_steps=(1,),
                              base_lr=0.001)
    assert cfg["SOLVER"]["LR_SCHEDULER"]["STEPS"] == (7330,) and "ALRP" not in cfg["MODEL"]
    with pytest.raises(ValueError, match="unknown setting"):
        coco_ranking_config(loss="focal", size=800, backbone="r101", epochs=1, lr_steps=(),
                            base_lr=0.01)
