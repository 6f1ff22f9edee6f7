"""SOLVER.EMA: the moving average of the weights, in training, checkpoints, resume and loads."""
import pytest
import torch
from torch import nn

from crowdloss.config import FCOSConfig, ConfigValueError, validate_config
from crowdloss.engine import DefaultRunner
from crowdloss.engine.ema import ModelEMA
from crowdloss.engine.weights import WeightsError, load_weights
from crowdloss.utils.env import seed_all_rng

from test_engine import CountingEvaluator, TinyModel, make_cfg, make_loader, sample, train


def ema_cfg(out, **kw):
    return make_cfg(out, EMA__ENABLED=True, EMA__DECAY=0.5, **kw)


def test_update_follows_the_ramped_decay():
    model = nn.Linear(1, 1, bias=False)
    ema = ModelEMA(model, decay=0.4)  # the ramp reaches 0.4 at the 5th update
    values = [3.0, -1.0, 4.0, 10.0, 2.0, 7.0, -5.0]
    expected = None
    for t, v in enumerate(values, start=1):
        model.weight.data.fill_(v)
        ema.update()
        # The first update starts the average at the model; then d = min(0.4, (1+t)/(10+t)).
        d = min(0.4, (1 + t) / (10 + t))
        expected = v if expected is None else d * expected + (1 - d) * v
        assert ema.averaged_state()["weight"].item() == pytest.approx(expected, abs=1e-6)
    assert ema.updates == len(values)
    assert ema.current_decay() == 0.4
    assert ModelEMA(model, decay=0.9).current_decay() == 0.0  # the first update copies


def test_batchnorm_statistics_are_averaged_and_step_counters_copied():
    bn = nn.BatchNorm1d(2)
    ema = ModelEMA(bn, decay=0.5)
    for mean in (0.0, 4.0):
        bn.running_mean.fill_(mean)
        bn.num_batches_tracked.fill_(int(mean) + 1)
        ema.update()
    avg = ema.averaged_state()
    d = 3 / 12  # the second update's ramped decay
    assert torch.allclose(avg["running_mean"], torch.full((2,), (1 - d) * 4.0))
    assert avg["num_batches_tracked"].item() == 5 and avg["num_batches_tracked"].dtype == torch.long


def test_swapped_yields_the_average_and_restores_the_trained_weights_bit_for_bit():
    model = nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.9)
    ema.update()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped() as m:
        assert m is model and torch.equal(m.weight, ema.averaged_state()["weight"])
        assert not torch.equal(m.weight, trained["weight"])
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_bad_decay_is_refused():
    with pytest.raises(ValueError, match="SOLVER.EMA.DECAY"):
        ModelEMA(nn.Linear(1, 1), decay=1.0)
    cfg = FCOSConfig()
    cfg.merge_from_list(["SOLVER.EMA.ENABLED", "True", "SOLVER.EMA.DECAY", "1.5"])
    with pytest.raises(ConfigValueError, match="SOLVER.EMA.DECAY"):
        validate_config(cfg)


def test_averaging_does_not_change_training_and_checkpoints_hold_the_average(tmp_path):
    plain = train(make_cfg(tmp_path / "plain"))
    averaged = train(ema_cfg(tmp_path / "ema"))
    for key, value in plain.model.state_dict().items():  # the same run, bit for bit
        assert torch.equal(value, averaged.model.state_dict()[key]), key
    data = torch.load(tmp_path / "ema" / "model_final.pth", weights_only=True)
    assert data["ema"]["updates"] == 10 and data["ema"]["decay"] == 0.5
    for key, value in averaged.model.state_dict().items():
        assert torch.equal(data["ema"]["trained"][key], value)
        assert torch.equal(data["model"][key], averaged.ema.averaged_state()[key])
    assert not torch.equal(data["model"]["linear.weight"], data["ema"]["trained"]["linear.weight"])
    assert torch.load(tmp_path / "plain" / "model_final.pth", weights_only=True)["ema"] is None
    # What pods_test and MODEL.WEIGHTS load is the average; TEST.EMA_WEIGHTS False the
    # trained weights (and a file without an average loads its model either way).
    for ema_weights, expected in ((True, data["model"]), (False, data["ema"]["trained"])):
        fresh = TinyModel()
        load_weights(fresh, str(tmp_path / "ema" / "model_final.pth"), min_coverage=1.0,
                     ema_weights=ema_weights)
        assert torch.equal(fresh.linear.weight, expected["linear.weight"])
    fresh = TinyModel()
    load_weights(fresh, str(tmp_path / "plain" / "model_final.pth"), ema_weights=False)
    assert torch.equal(fresh.linear.weight, plain.model.linear.weight)


def test_resume_continues_the_average_exactly(tmp_path):
    full = train(ema_cfg(tmp_path / "full"))
    crash = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(ema_cfg(crash, loader=make_loader(2, crash_at=6)))
    resumed = train(ema_cfg(crash), seed=123, resume=True)
    assert resumed.start_iter == 4 and resumed.ema.updates == 10
    for key, value in full.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], rtol=0, atol=1e-7), key
        assert torch.allclose(full.ema.averaged_state()[key], resumed.ema.averaged_state()[key],
                              rtol=0, atol=1e-7), key


def test_resume_with_another_ema_setting_is_refused(tmp_path):
    train(ema_cfg(tmp_path, max_iter=3))
    with pytest.raises(WeightsError, match="SOLVER.EMA.ENABLED True"):
        train(make_cfg(tmp_path, max_iter=6), resume=True)
    cfg = make_cfg(tmp_path, max_iter=6, EMA__ENABLED=True, EMA__DECAY=0.9)
    with pytest.raises(WeightsError, match="SOLVER.EMA.DECAY 0.5, this run with 0.9"):
        train(cfg, resume=True)


def test_evaluation_during_training_scores_the_average(tmp_path):
    cfg = ema_cfg(tmp_path, max_iter=5)
    cfg.DATASETS.TEST = ("toy_val",)
    cfg.build_test_loader = lambda c, name: [[sample(10_000 + i)] for i in range(6)]
    cfg.build_evaluator = lambda c, name, out: CountingEvaluator()
    seed_all_rng(0)
    runner = DefaultRunner(cfg, lambda c: TinyModel())
    results = runner.train()
    averaged = TinyModel()
    averaged.load_state_dict(runner.ema.averaged_state())
    trained = TinyModel()
    trained.load_state_dict(runner.model.state_dict())
    mae = results["toy_val"]["toy"]["MAE"]
    score = lambda m: DefaultRunner.test(cfg, m, evaluators=[CountingEvaluator()])
    assert mae == pytest.approx(score(averaged)["toy_val"]["toy"]["MAE"])
    assert mae != pytest.approx(score(trained)["toy_val"]["toy"]["MAE"])
    cfg.TEST.EMA_WEIGHTS = False  # the trained weights instead
    assert runner._evaluate_during_training()["toy_val"]["toy"]["MAE"] == pytest.approx(
        score(trained)["toy_val"]["toy"]["MAE"])
