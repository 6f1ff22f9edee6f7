"""The synthcrowd aLRP Loss and AP Loss experiments through the real runner on a tiny generated
synthcrowd: a few iterations train; an aLRP run that crashes between self-balance updates and
resumes from its checkpoint ends bitwise equal to the uninterrupted one, metrics.json included.
"""
import json
from pathlib import Path

import pytest
import torch

from crowdloss.cli.common import load_experiment
from crowdloss.data import build_train_loader
from crowdloss.data.synthetic import generate_synthcrowd
from crowdloss.engine import DefaultRunner
from crowdloss.utils.env import seed_all_rng

SYNTH = Path(__file__).resolve().parents[1] / "playground/detection/synthcrowd"
ALRP = SYNTH / "alrp_loss.res18.fpn.synthcrowd.256size.2600"
AP = SYNTH / "ap_loss.res18.fpn.synthcrowd.256size.2600"
# Bitwise comparisons of two trainings: one intra-op thread (conftest.one_thread), so that the
# CPU kernels' reduction order cannot depend on how threads are scheduled on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")

# Checkpoints after 3 and 6 iterations; self-balance updates after 2, 4 and 6: the checkpoint
# after 3 holds a period half done, and the resumed run crosses the next two updates.
MAX_ITER, PERIOD, SB_PERIOD = 6, 3, 2


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("datasets")
    generate_synthcrowd(str(root / "synthcrowd"), num_train=8, num_val=2, seed=3)
    monkeypatch_module.setenv("CROWDLOSS_DATASETS", str(root))
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def crashing_loader(crash_at):
    def build(cfg, start_iter=0):
        def gen():
            for k, batch in enumerate(build_train_loader(cfg, start_iter=start_iter), start_iter):
                if k == crash_at:
                    raise RuntimeError("simulated crash")
                yield batch
        return gen()
    return build


def make_cfg(exp_dir, out, *, crash_at=None, max_iter=MAX_ITER):
    cfg = load_experiment(str(exp_dir)).config
    cfg.merge_from_list([
        "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu",  # the CLI picks it from the launch
        "SOLVER.LR_SCHEDULER.MAX_ITER", str(max_iter), "SOLVER.LR_SCHEDULER.STEPS", "(4,)",
        "SOLVER.LR_SCHEDULER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", str(PERIOD),
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.IMS_PER_DEVICE", "2",
        "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()",
    ])
    if exp_dir == ALRP:
        cfg.MODEL.ALRP.SB_PERIOD = SB_PERIOD
    cfg.INPUT.AUG.TRAIN_PIPELINES = [
        ("ResizeShortestEdge", dict(short_edge_length=(128,), max_size=192,
                                    sample_style="choice")),
        ("RandomFlip", dict()),
    ]
    if crash_at is not None:
        cfg.build_train_loader = crashing_loader(crash_at)
    return cfg


def run(exp_dir, out, *, resume=False, crash_at=None, seed=0, max_iter=MAX_ITER):
    exp = load_experiment(str(exp_dir))
    seed_all_rng(seed)
    runner = DefaultRunner(make_cfg(exp_dir, out, crash_at=crash_at, max_iter=max_iter),
                           exp.build_model)
    runner.resume_or_load(resume=resume)
    runner.train()
    return runner


def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.json").read_text().splitlines()]


@pytest.mark.slow  # three short trainings of the synthcrowd model
def test_alrp_resume_across_self_balance_updates_is_bitwise_exact(tmp_path, datasets):
    full = run(ALRP, tmp_path / "full")
    weights = [r["sb_weight"] for r in records(tmp_path / "full")]
    assert len(weights) == MAX_ITER
    # 50 for two iterations, then a new weight after each period of 2.
    assert weights[0] == weights[1] == 50.0
    assert weights[2] == weights[3] != 50.0 and weights[4] == weights[5] != weights[2]
    assert all(w > 1.0 for w in weights)
    for r in records(tmp_path / "full"):  # the weight is logged, not added to the loss
        assert r["total_loss"] == pytest.approx(r["loss_cls"] + r["loss_box_reg"])

    crash = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(ALRP, crash, crash_at=4)
    assert (crash / "last_checkpoint").read_text() == "model_iter_0000003.pth"
    ckpt = torch.load(crash / "model_iter_0000003.pth", weights_only=True)["model"]
    assert int(ckpt["self_balance.passes"]) == 1 and float(ckpt["self_balance.num_sum"]) == 1
    resumed = run(ALRP, crash, resume=True, seed=123)
    assert resumed.start_iter == 3
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    got, ref = records(crash), records(tmp_path / "full")
    assert [r["iteration"] for r in got] == list(range(MAX_ITER))
    for mine, theirs in zip(got, ref):
        assert {k: v for k, v in mine.items() if "time" not in k} == \
            {k: v for k, v in theirs.items() if "time" not in k}, mine["iteration"]


@pytest.mark.slow
def test_ap_loss_experiment_trains_a_few_iterations(tmp_path, datasets):
    runner = run(AP, tmp_path / "ap", max_iter=2)
    rows = records(tmp_path / "ap")
    assert [r["iteration"] for r in rows] == [0, 1]
    for r in rows:
        assert 0 < r["loss_cls"] <= 1 and 0 < r["loss_box_reg"] < 10 and "sb_weight" not in r
        assert r["total_loss"] == pytest.approx(r["loss_cls"] + r["loss_box_reg"])
    assert type(runner.model).__name__ == "APLossRetinaNet"
