"""Optimizers and per-iteration learning-rate schedules built from ``cfg.SOLVER``.

``D2SGD`` is detectron2's SGD recipe (as cvpods names it): momentum SGD whose parameter groups
give normalisation layers their own weight decay (``WEIGHT_DECAY_NORM``, usually 0: decaying a
BN/GN scale towards 0 only fights the normalisation) and biases ``BIAS_LR_FACTOR`` x the learning
rate. Schedules are multiplicative factors on each group's initial lr, stepped once per
iteration (not per epoch), so a checkpoint's ``last_epoch`` is the iteration count.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Dict, List, Sequence

import torch
from torch import nn

__all__ = [
    "NORM_TYPES",
    "get_param_groups",
    "build_optimizer",
    "WarmupMultiStepLR",
    "WarmupCosineLR",
    "build_lr_scheduler",
]

# FrozenBatchNorm has buffers only, so it never appears here.
NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LocalResponseNorm,
)


def get_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    bias_lr_factor: float = 1.0,
) -> List[Dict[str, Any]]:
    """One group per trainable parameter, with its own lr and weight decay.

    Norm-layer parameters (weight and bias) get ``weight_decay_norm``; other biases get
    ``base_lr * bias_lr_factor``. Shared parameters are counted once.
    """
    groups: List[Dict[str, Any]] = []
    seen = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, decay = base_lr, weight_decay
            if isinstance(module, NORM_TYPES):
                decay = weight_decay_norm
            elif name == "bias":
                lr = base_lr * bias_lr_factor
            full = f"{module_name}.{name}" if module_name else name
            groups.append({"params": [param], "lr": lr, "weight_decay": decay, "name": full})
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameter")
    return groups


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """Optimizer named by ``cfg.SOLVER.OPTIMIZER.NAME``: "D2SGD", "SGD", "Adam" or "AdamW".

    "SGD", "Adam" and "AdamW" use one weight decay for every parameter (no norm / bias special
    cases). "Adam" (arXiv 1412.6980) adds the decay to the gradient (L2), "AdamW" (arXiv
    1711.05101) decouples it; pytorch-retinanet trains with Adam, lr 1e-5, no decay.
    """
    opt = cfg.SOLVER.OPTIMIZER
    name = opt.NAME
    if name == "D2SGD":
        groups = get_param_groups(
            model,
            base_lr=opt.BASE_LR,
            weight_decay=opt.WEIGHT_DECAY,
            weight_decay_norm=opt.WEIGHT_DECAY_NORM,
            bias_lr_factor=opt.BIAS_LR_FACTOR,
        )
        return torch.optim.SGD(groups, lr=opt.BASE_LR, momentum=opt.MOMENTUM)
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "SGD":
        return torch.optim.SGD(
            params, lr=opt.BASE_LR, momentum=opt.MOMENTUM, weight_decay=opt.WEIGHT_DECAY
        )
    if name in ("Adam", "AdamW"):
        klass = torch.optim.Adam if name == "Adam" else torch.optim.AdamW
        return klass(params, lr=opt.BASE_LR, betas=tuple(opt.BETAS),
                     weight_decay=opt.WEIGHT_DECAY)
    raise ValueError(
        f"SOLVER.OPTIMIZER.NAME = {name!r} is not supported; expected 'D2SGD', 'SGD', 'Adam' "
        "or 'AdamW'"
    )


def _warmup_factor(method: str, iteration: int, warmup_iters: int, warmup_factor: float) -> float:
    """Linear (or constant) ramp from ``warmup_factor`` at iteration 0 to 1 at ``warmup_iters``."""
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iteration / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(
        f"SOLVER.LR_SCHEDULER.WARMUP_METHOD = {method!r}; expected 'linear' or 'constant'"
    )


class _WarmupLR(torch.optim.lr_scheduler.LRScheduler):
    def __init__(self, optimizer, *, warmup_factor: float = 0.001, warmup_iters: int = 1000,
                 warmup_method: str = "linear", last_epoch: int = -1) -> None:
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def _factor(self, iteration: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> List[float]:
        it = self.last_epoch
        warm = _warmup_factor(self.warmup_method, it, self.warmup_iters, self.warmup_factor)
        return [base * warm * self._factor(it) for base in self.base_lrs]

    # The closed form is exact at any iteration, so torch's chainable path is never needed.
    _get_closed_form_lr = get_lr


class WarmupMultiStepLR(_WarmupLR):
    """lr = base x warmup(it) x gamma ** (number of ``milestones`` <= it)."""

    def __init__(self, optimizer, *, milestones: Sequence[int], gamma: float = 0.1,
                 **kwargs) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"SOLVER.LR_SCHEDULER.STEPS must be increasing, got {milestones}")
        self.milestones = [int(m) for m in milestones]
        self.gamma = gamma
        super().__init__(optimizer, **kwargs)

    def _factor(self, iteration: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, iteration)


class WarmupCosineLR(_WarmupLR):
    """lr = base x warmup(it) x 0.5 (1 + cos(pi it / max_iters)), reaching 0 at ``max_iters``."""

    def __init__(self, optimizer, *, max_iters: int, **kwargs) -> None:
        self.max_iters = int(max_iters)
        super().__init__(optimizer, **kwargs)

    def _factor(self, iteration: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(iteration, self.max_iters) / self.max_iters))


def build_lr_scheduler(cfg, optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Scheduler named by ``cfg.SOLVER.LR_SCHEDULER.NAME`` (stepped once per iteration)."""
    sch = cfg.SOLVER.LR_SCHEDULER
    common = dict(
        warmup_factor=sch.WARMUP_FACTOR,
        warmup_iters=sch.WARMUP_ITERS,
        warmup_method=sch.WARMUP_METHOD,
    )
    if sch.NAME == "WarmupMultiStepLR":
        return WarmupMultiStepLR(optimizer, milestones=sch.STEPS, gamma=sch.GAMMA, **common)
    if sch.NAME == "WarmupCosineLR":
        return WarmupCosineLR(optimizer, max_iters=sch.MAX_ITER, **common)
    raise ValueError(
        f"SOLVER.LR_SCHEDULER.NAME = {sch.NAME!r}; expected 'WarmupMultiStepLR' or 'WarmupCosineLR'"
    )
