"""D2SGD parameter groups and per-iteration LR schedule values."""
import math
from types import SimpleNamespace as NS

import pytest
import torch
from torch import nn

from crowdloss.engine.solver import (
    WarmupCosineLR,
    WarmupMultiStepLR,
    build_lr_scheduler,
    build_optimizer,
)


def solver_cfg(name="D2SGD", sched="WarmupMultiStepLR", **sch):
    lr_sched = dict(NAME=sched, MAX_ITER=100, STEPS=(20, 30), WARMUP_FACTOR=0.001,
                    WARMUP_ITERS=10, WARMUP_METHOD="linear", GAMMA=0.1)
    lr_sched.update(sch)
    opt = NS(NAME=name, BASE_LR=0.1, BIAS_LR_FACTOR=2.0, WEIGHT_DECAY=1e-4,
             WEIGHT_DECAY_NORM=0.0, MOMENTUM=0.9, BETAS=(0.8, 0.99))
    return NS(SOLVER=NS(OPTIMIZER=opt, LR_SCHEDULER=NS(**lr_sched)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_d2sgd_param_groups():
    opt = build_optimizer(solver_cfg(), Net())
    assert isinstance(opt, torch.optim.SGD)
    groups = {g["name"]: g for g in opt.param_groups}
    assert sorted(groups) == sorted([
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "gn.weight", "gn.bias",
        "ln.weight", "ln.bias", "fc.weight", "fc.bias",
    ])  # frozen parameters are left out
    for name, g in groups.items():
        assert g["momentum"] == 0.9
        if name.split(".")[0] in ("bn", "gn", "ln"):
            assert (g["lr"], g["weight_decay"]) == (0.1, 0.0), name
        elif name.endswith("bias"):
            assert g["lr"] == pytest.approx(0.2) and g["weight_decay"] == 1e-4, name
        else:
            assert (g["lr"], g["weight_decay"]) == (0.1, 1e-4), name


def test_other_optimizers_and_bad_name():
    assert isinstance(build_optimizer(solver_cfg("SGD"), Net()), torch.optim.SGD)
    adamw = build_optimizer(solver_cfg("AdamW"), Net())
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 1e-4
    assert adamw.param_groups[0]["betas"] == (0.8, 0.99)  # SOLVER.OPTIMIZER.BETAS
    adam = build_optimizer(solver_cfg("Adam"), Net())  # pytorch-retinanet's optimizer
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.8, 0.99)
    assert adam.param_groups[0]["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER.NAME.*'Adam'"):
        build_optimizer(solver_cfg("Adamax"), Net())


def lrs(scheduler, optimizer, iters):
    out = []
    for _ in range(iters):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: a no-op that keeps torch's step-order check quiet
        scheduler.step()
    return out


def test_warmup_multistep_values():
    cfg = solver_cfg()
    opt = build_optimizer(cfg, nn.Linear(2, 2, bias=False))
    values = lrs(build_lr_scheduler(cfg, opt), opt, 40)
    assert values[0] == pytest.approx(0.1 * 0.001)
    assert values[5] == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))
    assert values[9] == pytest.approx(0.1 * (0.001 * 0.1 + 0.9))
    assert values[10] == pytest.approx(0.1) and values[19] == pytest.approx(0.1)
    assert values[20] == pytest.approx(0.01) and values[29] == pytest.approx(0.01)
    assert values[30] == pytest.approx(0.001) and values[39] == pytest.approx(0.001)


def test_warmup_cosine_values():
    cfg = solver_cfg(sched="WarmupCosineLR", WARMUP_ITERS=0)
    opt = build_optimizer(cfg, nn.Linear(2, 2, bias=False))
    values = lrs(build_lr_scheduler(cfg, opt), opt, 101)
    assert values[0] == pytest.approx(0.1)
    assert values[25] == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert values[50] == pytest.approx(0.05)
    assert values[100] == pytest.approx(0.0, abs=1e-12)
    warm = solver_cfg(sched="WarmupCosineLR", WARMUP_ITERS=10)
    opt = build_optimizer(warm, nn.Linear(2, 2, bias=False))
    values = lrs(build_lr_scheduler(warm, opt), opt, 11)
    assert values[0] == pytest.approx(0.1 * 0.001)
    assert values[10] == pytest.approx(0.05 * (1 + math.cos(math.pi * 10 / 100)))


def test_bias_group_keeps_its_factor_under_the_schedule():
    cfg = solver_cfg()
    opt = build_optimizer(cfg, nn.Linear(2, 2))
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(25):
        opt.step()
        sched.step()
    weight, bias = opt.param_groups
    assert weight["lr"] == pytest.approx(0.01) and bias["lr"] == pytest.approx(0.02)


@pytest.mark.parametrize("name", ["WarmupMultiStepLR", "WarmupCosineLR"])
def test_scheduler_state_dict_round_trip(tmp_path, name):
    cfg = solver_cfg(sched=name)
    opt = build_optimizer(cfg, nn.Linear(2, 2, bias=False))
    sched = build_lr_scheduler(cfg, opt)
    lrs(sched, opt, 25)
    torch.save(sched.state_dict(), tmp_path / "s.pth")
    expected = lrs(sched, opt, 10)

    opt2 = build_optimizer(cfg, nn.Linear(2, 2, bias=False))
    sched2 = build_lr_scheduler(cfg, opt2)
    sched2.load_state_dict(torch.load(tmp_path / "s.pth", weights_only=True))
    # The optimizer's lr is restored by the optimizer's own state dict in a real resume.
    for g, lr in zip(opt2.param_groups, sched2.get_last_lr()):
        g["lr"] = lr
    assert lrs(sched2, opt2, 10) == pytest.approx(expected)
    assert isinstance(sched2, (WarmupMultiStepLR, WarmupCosineLR))


def test_bad_schedule_config():
    opt = build_optimizer(solver_cfg(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="LR_SCHEDULER.NAME"):
        build_lr_scheduler(solver_cfg(sched="Poly"), opt)
    with pytest.raises(ValueError, match="STEPS must be increasing"):
        build_lr_scheduler(solver_cfg(STEPS=(30, 20)), opt)
    with pytest.raises(ValueError, match="WARMUP_METHOD"):
        build_lr_scheduler(solver_cfg(WARMUP_METHOD="exp"), opt)
