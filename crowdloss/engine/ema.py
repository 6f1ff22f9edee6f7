"""ModelEMA: an exponential moving average of a model's weights, kept beside training.

After every optimizer step the average moves toward the model::

    ema = d * ema + (1 - d) * model,    d = min(DECAY, (1 + t) / (10 + t))

for the t-th update (t = 2, 3, ...; the first one starts the average at the model). The ramp
(TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``) keeps the early, fast-moving
weights from dominating; from about ``9 / (1 - DECAY)`` updates on the decay is DECAY, an
average over the last ``1 / (1 - DECAY)`` steps or so. Every floating-point entry of the state
dict is averaged, BatchNorm's running statistics included (they belong to the averaged
weights); integer entries (BN's step counters) are copied. Averaging reads the model and
changes nothing in it: the run trains exactly as without it.

In a checkpoint (``engine.checkpoint``) ``model`` holds the averaged weights, the ones every
loader (``pods_test``, ``MODEL.WEIGHTS``, export) takes, and ``ema`` holds what a resume needs
to go on training: the trained weights, the update count and the decay. Evaluation during
training (``TEST.EVAL_PERIOD``) scores the averaged weights too (:meth:`ModelEMA.swapped`).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional

import torch
from torch import nn

from .weights import WeightsError

__all__ = ["ModelEMA"]


class ModelEMA:
    """The moving average of ``model``'s state dict (``SOLVER.EMA``).

    Args:
        model: the (unwrapped) model being trained; read, never written, except by
            :meth:`swapped` and :meth:`load_state_dict`.
        decay: the decay once ramped up, in [0, 1).
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9998) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"SOLVER.EMA.DECAY = {decay}; expected a number in [0, 1)")
        self.model = model
        self.decay = float(decay)
        self.updates = 0
        # Filled at the first update (or a resume) from the weights training starts from, so
        # a MODEL.WEIGHTS load before the first step is what the average starts at.
        self.averaged: Optional[Dict[str, torch.Tensor]] = None

    def current_decay(self) -> float:
        """The decay of the next update (0 for the first: it copies the model)."""
        if self.averaged is None:
            return 0.0
        t = self.updates + 1
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average one step toward the model (call after each optimizer step)."""
        d = self.current_decay()
        self.updates += 1
        state = self.model.state_dict()
        if self.averaged is None:
            self.averaged = {k: v.detach().clone() for k, v in state.items()}
            return
        avg, cur = [], []
        for key, value in state.items():
            if value.is_floating_point():
                avg.append(self.averaged[key])
                cur.append(value.detach())
            else:
                self.averaged[key].copy_(value)
        # One fused pass over all tensors: avg += (1 - d) * (cur - avg).
        torch._foreach_lerp_(avg, cur, 1.0 - d)

    def averaged_state(self) -> Dict[str, torch.Tensor]:
        """The averaged weights as a state dict (the model's own before the first update)."""
        return dict(self.averaged) if self.averaged is not None else self.model.state_dict()

    @contextlib.contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        """Within the block the model holds the averaged weights; the trained ones come back
        after it, bit for bit."""
        if self.averaged is None:
            yield self.model
            return
        trained = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.averaged)
        try:
            yield self.model
        finally:
            self.model.load_state_dict(trained)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        """What a checkpoint's ``ema`` entry holds: the TRAINED weights (its ``model`` entry
        holds the averaged ones), the update count and the decay."""
        return {"trained": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Resume: the model, which the checkpointer has just filled from ``model`` (the
        averaged weights), becomes the average, and gets its trained weights back."""
        if not isinstance(state, dict) or not isinstance(state.get("trained"), dict):
            raise WeightsError(f"a checkpoint's 'ema' entry must hold the trained weights "
                               f"under 'trained'; got {type(state).__name__}")
        if state.get("decay") is not None and float(state["decay"]) != self.decay:
            raise WeightsError(f"the checkpoint averaged with SOLVER.EMA.DECAY "
                               f"{state['decay']}, this run with {self.decay}: resume with the "
                               f"same value")
        self.averaged = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(state["trained"])
        self.updates = int(state.get("updates", 0))
