"""Self-balance (SB) of aLRP Loss (Oksuz et al., arXiv 2009.13592): the weight of the
localisation component, re-estimated from the losses of the previous period.

Total loss L = L_cls + w L_loc. Instead of a tuned constant, the paper (and its code) sets
w = (mean L_loc + mean L_cls) / mean L_loc, the means taken over the previous epoch, starting
from w = 50: the weight follows the ratio of the two components as training goes.
Iteration-based schedules have no epochs, so a "period" here is a number of training forward
passes (one per iteration, or ``BATCH_SUBDIVISIONS`` per iteration).

All the state (the weight, the running sums and counters) lives in buffers: it is saved with
the model and a resumed run continues the period exactly where the interrupted one stopped.
The per-forward values are summed over ranks at every forward (one all-reduce of three
numbers), so every rank holds the same, global, sums: the weight is identical on every rank, a
checkpoint (written by rank 0) carries the sums of the whole run, and the means are those of
every (rank, iteration) loss with at least one positive, what the public code's DataParallel
training computes from its per-GPU losses.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from crowdloss.utils import comm

__all__ = ["SelfBalance", "self_balance_weight"]


def self_balance_weight(cls_sum: float, loc_sum: float) -> float:
    """(mean L_loc + mean L_cls) / mean L_loc for sums over the same count: 1 + cls / loc."""
    return (loc_sum + cls_sum) / loc_sum


class SelfBalance(nn.Module):
    """The SB weight and the statistics of the current period.

    Call ``step(loss_cls, loss_loc, has_positive)`` once per training forward pass, after
    computing both components; it returns the weight to multiply ``loss_loc`` with for this
    pass (the weight of the period in progress) and, at the last pass of a period, computes
    the next period's weight from the sums and resets them. A pass without any positive on a
    rank contributes nothing to the sums (both components are 0 by definition), but counts
    towards the period. A period in which no rank saw a positive keeps the weight.

    Args:
        init_weight: the weight of the first period (the paper's 50).
        period: training forward passes per period (> 0), or 0 for a fixed ``init_weight``.
    """

    def __init__(self, *, init_weight: float = 50.0, period: int = 0):
        super().__init__()
        if not init_weight > 0:
            raise ValueError(f"SelfBalance: init_weight = {init_weight}; expected > 0 "
                             "(MODEL.ALRP.SB_INIT)")
        if int(period) < 0:
            raise ValueError(f"SelfBalance: period = {period}; expected >= 0 forward passes "
                             "(MODEL.ALRP.SB_PERIOD, 0 = fixed weight)")
        self.period = int(period)
        f64 = dict(dtype=torch.float64)
        self.register_buffer("weight", torch.tensor(float(init_weight), **f64))
        # Sums over ranks and forward passes with a positive; passes done in this period.
        self.register_buffer("cls_sum", torch.zeros((), **f64))
        self.register_buffer("loc_sum", torch.zeros((), **f64))
        self.register_buffer("num_sum", torch.zeros((), **f64))
        self.register_buffer("passes", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"period={self.period}, weight={float(self.weight):.4f}"

    @torch.no_grad()
    def step(self, loss_cls: Tensor, loss_loc: Tensor, has_positive: bool) -> Tensor:
        """Record one forward pass; returns the weight for it (a float64 scalar copy)."""
        current = self.weight.clone()
        if self.period == 0:
            return current
        flag = 1.0 if has_positive else 0.0
        stats = torch.stack([loss_cls.detach().to(torch.float64) * flag,
                             loss_loc.detach().to(torch.float64) * flag,
                             torch.tensor(flag, dtype=torch.float64, device=loss_cls.device)])
        stats = comm.all_reduce_sum(stats.to(self.cls_sum.device))
        self.cls_sum += stats[0]
        self.loc_sum += stats[1]
        self.num_sum += stats[2]
        self.passes += 1
        if int(self.passes) >= self.period:
            # One host sync per period. loc_sum = 0 with positives means perfect boxes
            # everywhere: the ratio is undefined, keep the weight as for an empty period.
            if float(self.num_sum) > 0 and float(self.loc_sum) > 0:
                self.weight.fill_(self_balance_weight(float(self.cls_sum),
                                                      float(self.loc_sum)))
            self.cls_sum.zero_()
            self.loc_sum.zero_()
            self.num_sum.zero_()
            self.passes.zero_()
        return current
