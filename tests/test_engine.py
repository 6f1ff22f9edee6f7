"""Runner tests on a tiny regression model with an in-test, iteration-indexed data loader."""
import json
import os
import re

import pytest
import torch
from torch import nn

from crowdloss.engine import DefaultRunner
from crowdloss.engine import runner as runner_mod
from crowdloss.engine.events import CommonMetricPrinter, EventStorage
from crowdloss.utils.env import get_rng_state, seed_all_rng, set_rng_state
from crowdloss.utils.logger import setup_logger


class Cfg(dict):
    """Minimal stand-in for ConfigDict: attribute and key access are one store."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for k, v in list(self.items()):
            if isinstance(v, dict) and not isinstance(v, Cfg):
                self[k] = Cfg(v)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


def sample(j):
    """Sample j of an endless deterministic stream: y = x . w_true + 0.5."""
    g = torch.Generator().manual_seed(1000 + j)
    x = torch.randn(4, generator=g)
    return {"x": x, "y": (x * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(0, keepdim=True) + 0.5}


def make_loader(batch, crash_at=None):
    def build(cfg, start_iter=0):
        def gen():
            k = start_iter
            while True:
                if crash_at is not None and k == crash_at:
                    raise RuntimeError("simulated crash")
                yield [sample(k * batch + i) for i in range(batch)]
                k += 1

        return gen()

    return build


class TinyModel(nn.Module):
    """Linear regressor; ``noise`` draws from torch's RNG each step so resume must restore it."""

    def __init__(self, noise=0.1, nan_at=None):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.norm = nn.BatchNorm1d(4, affine=True, track_running_stats=False)
        self.noise = noise
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, batch):
        x = torch.stack([b["x"] for b in batch])
        y = torch.stack([b["y"] for b in batch])
        if self.noise and self.training:
            x = x + self.noise * torch.randn_like(x)
        pred = self.linear(x * self.norm.weight + self.norm.bias)
        if not self.training:
            return [{"value": float(v)} for v in pred[:, 0]]
        loss = ((pred - y) ** 2).mean()
        self.calls += 1
        if self.nan_at is not None and self.calls > self.nan_at:
            loss = loss * float("nan")
        return {"loss_reg": loss, "loss_aux": 0.1 * pred.abs().mean()}


class ConvModel(TinyModel):
    """TinyModel whose inputs first pass a conv, so the layout has something to act on."""

    def __init__(self):
        super().__init__(noise=0.0)
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, batch):
        for b in batch:  # (4,) -> a 2-channel 1 x 2 image through the conv, back to (4,)
            b["x"] = self.conv(b["x"].reshape(1, 2, 1, 2)).reshape(4)
        return super().forward(batch)


def make_cfg(out, *, max_iter=10, batch=2, sub=1, period=4, loader=None, **solver):
    cfg = Cfg(
        MODEL={"DEVICE": "cpu", "CHANNELS_LAST": False, "WEIGHTS": "", "WEIGHTS_CLASSES": (),
               "WEIGHTS_MIN_COVERAGE": {"TRAIN": 0.5, "TEST": 1.0}},
        SOLVER={
            "LR_SCHEDULER": {"NAME": "WarmupMultiStepLR", "MAX_ITER": max_iter, "STEPS": (6,),
                             "WARMUP_FACTOR": 0.1, "WARMUP_ITERS": 3, "WARMUP_METHOD": "linear",
                             "GAMMA": 0.1},
            "OPTIMIZER": {"NAME": "D2SGD", "BASE_LR": 0.05, "BIAS_LR_FACTOR": 2.0,
                          "WEIGHT_DECAY": 1e-4, "WEIGHT_DECAY_NORM": 0.0, "MOMENTUM": 0.9},
            "CHECKPOINT_PERIOD": period, "IMS_PER_BATCH": batch, "IMS_PER_DEVICE": batch,
            "BATCH_SUBDIVISIONS": sub,
            "CLIP_GRADIENTS": {"ENABLED": False, "CLIP_TYPE": "norm", "CLIP_VALUE": 1.0,
                               "NORM_TYPE": 2.0},
            "AMP": {"ENABLED": False, "DTYPE": "float16"},
            "EMA": {"ENABLED": False, "DECAY": 0.9998},
        },
        DATASETS={"TRAIN": ("toy",), "TEST": ()},
        TEST={"EVAL_PERIOD": 0, "EMA_WEIGHTS": True},
        OUTPUT_DIR=str(out),
        SEED=0,
    )
    for key, value in solver.items():
        section, name = key.split("__")
        cfg.SOLVER[section][name] = value
    cfg.build_train_loader = loader or make_loader(batch)
    return cfg


def train(cfg, *, seed=0, resume=False, **model_kw):
    seed_all_rng(seed)
    runner = DefaultRunner(cfg, lambda c: TinyModel(**model_kw))
    runner.resume_or_load(resume=resume)
    runner.train()
    return runner


def test_resume_equals_uninterrupted(tmp_path):
    full = train(make_cfg(tmp_path / "full"))
    assert sorted(n for n in os.listdir(tmp_path / "full") if "tfevents" not in n) == [
        "last_checkpoint", "metrics.json", "model_final.pth",
        "model_iter_0000004.pth", "model_iter_0000008.pth",
    ]
    crash_dir = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_cfg(crash_dir, loader=make_loader(2, crash_at=6)))
    assert (crash_dir / "last_checkpoint").read_text() == "model_iter_0000004.pth"
    # A different seed: the resumed run must get everything (RNG included) from the checkpoint.
    starts = []
    build = make_loader(2)
    counting = lambda cfg, start_iter=0: starts.append(start_iter) or build(cfg, start_iter)
    resumed = train(make_cfg(crash_dir, loader=counting), seed=123, resume=True)
    assert resumed.start_iter == 4
    assert starts == [4]  # the loader is built once, already positioned at the resume point
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-7), name
    assert full.scheduler.last_epoch == resumed.scheduler.last_epoch == 10
    # Without the RNG restore the noise differs and so do the weights: the test can fail.
    other = train(make_cfg(tmp_path / "other"), seed=5)
    assert not torch.allclose(full.model.linear.weight, other.model.linear.weight)


def test_resume_from_final_runs_nothing_and_weights_loaded(tmp_path):
    first = train(make_cfg(tmp_path / "a", max_iter=3))
    again = train(make_cfg(tmp_path / "a", max_iter=3), resume=True)
    assert again.start_iter == 3
    assert torch.equal(first.model.linear.weight, again.model.linear.weight)
    # MODEL.WEIGHTS (model only) when not resuming: weights equal, optimizer fresh.
    cfg = make_cfg(tmp_path / "b", max_iter=3)
    cfg.MODEL.WEIGHTS = str(tmp_path / "a" / "model_final.pth")
    runner = DefaultRunner(cfg, lambda c: TinyModel())
    runner.resume_or_load(resume=True)  # nothing in b: falls back to MODEL.WEIGHTS
    assert runner.start_iter == 0
    assert torch.equal(runner.model.linear.weight, first.model.linear.weight)
    assert not runner.optimizer.state


def test_gradient_accumulation_matches_big_batch(tmp_path):
    big = train(make_cfg(tmp_path / "big", max_iter=5, batch=4, loader=make_loader(4)), noise=0)
    acc = train(make_cfg(tmp_path / "acc", max_iter=5, batch=2, sub=2, loader=make_loader(2)),
                noise=0)
    assert big.model.calls == 5 and acc.model.calls == 10
    for a, b in zip(big.model.parameters(), acc.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    # ... and differs from a plain batch-2 run (accumulation really used both sub-batches).
    small = train(make_cfg(tmp_path / "small", max_iter=5, batch=2, loader=make_loader(2)), noise=0)
    assert not torch.allclose(small.model.linear.weight, big.model.linear.weight)


def test_non_finite_loss_names_iteration_and_terms(tmp_path):
    runner = DefaultRunner(make_cfg(tmp_path, max_iter=5), lambda c: TinyModel(nan_at=2))
    with pytest.raises(FloatingPointError) as err:
        runner.train()
    msg = str(err.value)
    assert "iteration=2" in msg and "loss_reg=nan" in msg and "total_loss=nan" in msg
    assert re.search(r"loss_aux=\d", msg), msg  # every term is listed, finite ones too
    # Raised before backward: the failing step left no gradient behind.
    assert all(p.grad is None for p in runner.model.parameters())


@pytest.mark.parametrize("clip_type,limit", [("norm", 0.5), ("value", 0.01)])
def test_gradient_clipping(tmp_path, clip_type, limit):
    def grads_after_one_step(enabled):
        cfg = make_cfg(tmp_path / f"{clip_type}{enabled}", max_iter=1,
                       CLIP_GRADIENTS__ENABLED=enabled, CLIP_GRADIENTS__CLIP_TYPE=clip_type,
                       CLIP_GRADIENTS__CLIP_VALUE=limit)
        runner = train(cfg, noise=0)
        return [p.grad for p in runner.model.parameters() if p.grad is not None]

    def measure(grads):
        if clip_type == "norm":
            return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
        return max(g.abs().max().item() for g in grads)

    assert measure(grads_after_one_step(False)) > 2 * limit
    assert measure(grads_after_one_step(True)) <= limit * (1 + 1e-5)


def test_float16_amp_is_disabled_on_cpu_with_a_warning(tmp_path):
    cfg = make_cfg(tmp_path, AMP__ENABLED=True)  # DTYPE float16
    with pytest.warns(UserWarning, match="AMP needs SOLVER.AMP.DTYPE bfloat16"):
        runner = DefaultRunner(cfg, lambda c: TinyModel())
    assert not runner.amp_enabled and runner.scaler is None


def test_bfloat16_amp_trains_on_cpu(tmp_path, monkeypatch):
    """SOLVER.AMP with bfloat16 runs on the CPU (autocast, no loss scaling); a CPU without
    native bfloat16 is warned that it will be slow, and still trains."""
    monkeypatch.setattr(runner_mod, "cpu_has_native_bf16", lambda: True)
    cfg = make_cfg(tmp_path, max_iter=2, AMP__ENABLED=True, AMP__DTYPE="bfloat16")
    runner = DefaultRunner(cfg, lambda c: TinyModel())
    assert runner.amp_enabled and runner.amp_dtype == torch.bfloat16 and runner.scaler is None
    seen = []
    runner.model.register_forward_hook(lambda m, i, o: seen.append(torch.is_autocast_enabled("cpu")))
    before = runner.model.linear.weight.detach().clone()
    runner.train()
    assert seen == [True, True]
    assert not torch.equal(before, runner.model.linear.weight.detach())
    monkeypatch.setattr(runner_mod, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without native bfloat16"):
        runner = DefaultRunner(make_cfg(tmp_path / "emulated", AMP__ENABLED=True,
                                        AMP__DTYPE="bfloat16"), lambda c: TinyModel())
    assert runner.amp_dtype == torch.bfloat16


def test_metrics_json_and_console_line(tmp_path):
    runner = train(make_cfg(tmp_path, max_iter=25, period=0))
    lines = (tmp_path / "metrics.json").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["iteration"] for r in records] == list(range(25))
    for key in ("loss_reg", "loss_aux", "total_loss", "lr", "time", "data_time"):
        assert all(key in r for r in records), key
    assert records[0]["lr"] == pytest.approx(0.05 * 0.1)  # warmup start
    assert records[-1]["lr"] == pytest.approx(0.05 * 0.1)  # after the step at 6
    r = records[7]
    assert r["total_loss"] == pytest.approx(r["loss_reg"] + r["loss_aux"], rel=1e-6)
    names = [n for n in os.listdir(tmp_path) if not n.startswith("events.out.tfevents.")]
    assert sorted(names) == ["last_checkpoint", "metrics.json", "model_final.pth"]
    assert runner.iter == 24


def test_console_line_format():
    printer = CommonMetricPrinter(max_iter=100)
    with EventStorage(0) as storage:
        for it in range(20):
            storage.iter = it
            storage.put_scalars(loss_cls=1.0 + it, loss_box_reg=0.5, total_loss=1.5 + it)
            storage.put_scalar("time", 0.25)
            storage.put_scalar("data_time", 0.01)
            storage.put_scalar("lr", 0.01, smoothing_hint=False)
        line = printer.format_line(storage)
    pattern = (r"^eta: 0:00:20  iter: 20/100  loss_box_reg: 0\.5  loss_cls: 10\.5  "
               r"total_loss: 11  time: 0\.2500  data_time: 0\.0100  lr: 0\.01$")
    if torch.cuda.is_available():
        pattern = pattern[:-1] + r"  max_mem: \d+M$"
    assert re.match(pattern, line), line


def test_setup_logger_is_idempotent_and_rank_aware(tmp_path):
    log0 = setup_logger(str(tmp_path), 0, name="crowdloss_test_a")
    setup_logger(str(tmp_path), 0, name="crowdloss_test_a")
    assert len(log0.handlers) == 2  # console + log.txt, once
    log1 = setup_logger(str(tmp_path), 1, name="crowdloss_test_b")
    assert len(log1.handlers) == 1  # no console on rank 1
    log0.info("hello from rank 0")
    log1.info("hello from rank 1")
    for h in log0.handlers + log1.handlers:
        h.flush()
    assert "hello from rank 0" in (tmp_path / "log.txt").read_text()
    assert "hello from rank 1" in (tmp_path / "log.txt.rank1").read_text()
    for h in log0.handlers + log1.handlers:
        h.close()


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    seed_all_rng(7)
    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pth")
    expected = (torch.rand(3), __import__("numpy").random.rand(2), __import__("random").random())
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    again = (torch.rand(3), __import__("numpy").random.rand(2), __import__("random").random())
    assert torch.equal(expected[0], again[0])
    assert (expected[1] == again[1]).all() and expected[2] == again[2]


class CountingEvaluator:
    """Fake DatasetEvaluator: its "metric" is the mean absolute error of the predictions."""

    def __init__(self):
        self.evaluations = 0

    def reset(self):
        self.errors = []

    def process(self, inputs, outputs):
        self.errors += [abs(o["value"] - float(i["y"])) for i, o in zip(inputs, outputs)]

    def evaluate(self):
        self.evaluations += 1
        return {"toy": {"MAE": sum(self.errors) / len(self.errors), "n": len(self.errors)}}


def test_eval_hook_periodic_and_final(tmp_path):
    cfg = make_cfg(tmp_path, max_iter=7)
    cfg.DATASETS.TEST = ("toy_val",)
    cfg.TEST.EVAL_PERIOD = 3
    evaluator = CountingEvaluator()
    cfg.build_test_loader = lambda c, name: [[sample(10_000 + i)] for i in range(5)]
    cfg.build_evaluator = lambda c, name, out: evaluator
    seed_all_rng(0)
    runner = DefaultRunner(cfg, lambda c: TinyModel())
    results = runner.train()
    assert evaluator.evaluations == 3  # after iterations 3, 6 and the last (7)
    assert list(results) == ["toy_val"] and results["toy_val"]["toy"]["n"] == 5
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    evals = [(r["iteration"], r["toy_val/toy/MAE"]) for r in records if "toy_val/toy/MAE" in r]
    assert [it for it, _ in evals] == [2, 5, 6]
    assert evals[-1][1] == pytest.approx(results["toy_val"]["toy"]["MAE"])
    assert runner.model.training  # inference restored the training flag
    # The classmethod on its own, with explicit evaluators.
    again = DefaultRunner.test(cfg, runner.model, evaluators=[CountingEvaluator()])
    assert again["toy_val"]["toy"]["MAE"] == pytest.approx(evals[-1][1])


@pytest.mark.parametrize("period,expected", [(0, 1), (-1, 0)])
def test_eval_period_zero_evaluates_once_negative_never(tmp_path, period, expected):
    cfg = make_cfg(tmp_path, max_iter=3)
    cfg.DATASETS.TEST = ("toy_val",)
    cfg.TEST.EVAL_PERIOD = period
    evaluator = CountingEvaluator()
    cfg.build_test_loader = lambda c, name: [[sample(10_000 + i)] for i in range(2)]
    cfg.build_evaluator = lambda c, name, out: evaluator
    results = DefaultRunner(cfg, lambda c: TinyModel()).train()
    assert evaluator.evaluations == expected and bool(results) == bool(expected)


def test_crashed_run_still_flushes_metrics(tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_cfg(tmp_path, max_iter=10, loader=make_loader(2, crash_at=4)))
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]


def test_runner_with_the_real_config_class(tmp_path):
    from crowdloss.config import BaseDetectionConfig

    cfg = BaseDetectionConfig()
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "SOLVER.LR_SCHEDULER.MAX_ITER", "4", "SOLVER.LR_SCHEDULER.STEPS",
        "(2,)", "SOLVER.LR_SCHEDULER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.BATCH_SUBDIVISIONS", "2", "OUTPUT_DIR", str(tmp_path),
    ])
    cfg.build_train_loader = make_loader(cfg.SOLVER.IMS_PER_DEVICE)
    runner = DefaultRunner(cfg, lambda c: TinyModel())
    runner.resume_or_load(resume=True)
    assert runner.train() == {}
    assert runner.model.calls == 8
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == [
        "model_final.pth", "model_iter_0000002.pth"]
    assert runner.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.1)  # past STEPS[0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_amp_step_path_forced_on_cpu(tmp_path, dtype):
    """The CUDA-only AMP path (autocast, GradScaler, unscale before clipping, scaler state in
    the checkpoint), exercised through CPU autocast since CI has no GPU."""
    cfg = make_cfg(tmp_path, max_iter=3, CLIP_GRADIENTS__ENABLED=True)
    runner = DefaultRunner(cfg, lambda c: TinyModel())
    runner.amp_enabled, runner.amp_dtype = True, dtype
    if dtype == torch.float16:
        runner.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
        runner.checkpointer.checkpointables["scaler"] = runner.scaler
    before = runner.model.linear.weight.detach().clone()
    runner.train()
    after = runner.model.linear.weight.detach()
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)["scaler"]
    if dtype == torch.float16:
        assert saved["scale"] > 0 and saved["_growth_tracker"] == 3
    else:
        assert saved is None
