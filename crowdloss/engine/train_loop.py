"""TrainLoop: the hook-driven iteration loop and one optimisation step, config-free.

``DefaultRunner`` (``engine.runner``) reads the config, builds the model, optimizer, loader and
hooks, and hands the step's settings to this class (the split of detectron2's SimpleTrainer /
DefaultTrainer).

One iteration (``run_step``): zero_grad; for each of ``subdivisions`` sub-batches draw this
rank's batch, forward (under autocast when AMP is on), check every returned scalar is finite,
and backward the sum of the ``loss_*`` entries / subdivisions (DDP ``no_sync`` on all but the
last, so gradients are reduced once); optional gradient clipping; one optimizer step. Entries
not named ``loss_*`` (e.g. a loss weight the model adapts) are only logged, averaged over
sub-batches and ranks like the losses. The hooks then step the LR schedule, time, checkpoint,
evaluate and write metrics, in that order.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import nn

from crowdloss.utils import comm
from crowdloss.utils.env import set_rng_state

from . import hooks
from .events import EventStorage

__all__ = ["TrainLoop"]

logger = logging.getLogger("crowdloss.engine")


class TrainLoop:
    """Runs ``model`` with ``optimizer`` from ``start_iter`` to ``max_iter`` under hooks.

    Args:
        model: returns ``{name: scalar tensor}`` in training; ``loss_*`` entries are optimised.
        optimizer: steps once per iteration.
        data_loader: an iterable of batches (subclasses may build it lazily instead, by
            overriding the ``data_loader`` property).
        max_iter: iterations ``0 .. max_iter - 1``.
        device: where the model runs (autocast's device type).
        subdivisions: sub-batches accumulated per step (``SOLVER.BATCH_SUBDIVISIONS``).
        amp_dtype: autocast dtype, None = full precision; float16 gets a GradScaler.
        clip_type: None, "norm" (total norm, logged as ``grad_norm``) or "value".
        clip_value: the norm or the value clipped to.
        clip_norm_type: the norm's p.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 data_loader: Optional[Iterable] = None, max_iter: int = 0,
                 device: torch.device = torch.device("cpu"), subdivisions: int = 1,
                 amp_dtype: Optional[torch.dtype] = None, clip_type: Optional[str] = None,
                 clip_value: float = 0.0, clip_norm_type: float = 2.0) -> None:
        if clip_type not in (None, "norm", "value"):
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE = {clip_type!r}; "
                             f"expected 'norm' or 'value'")
        if subdivisions < 1:
            raise ValueError(f"SOLVER.BATCH_SUBDIVISIONS must be >= 1, got {subdivisions}")
        self.model = model
        self.optimizer = optimizer
        self._data_loader = data_loader
        self.max_iter = int(max_iter)
        self.device = device
        self.subdivisions = int(subdivisions)
        self.amp_enabled = amp_dtype is not None
        self.amp_dtype = amp_dtype if amp_dtype is not None else torch.float16
        # bfloat16 has float32's exponent range: no loss scaling needed.
        use_scaler = self.amp_enabled and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.clip_type = clip_type
        self.clip_value = float(clip_value)
        self.clip_norm_type = float(clip_norm_type)
        self.start_iter = 0
        self.iter = 0
        self.storage: Optional[EventStorage] = None
        self._pending_rng: Optional[Dict[str, Any]] = None
        self._hooks: List[hooks.HookBase] = []

    @property
    def data_loader(self) -> Iterable:
        return self._data_loader

    def register_hooks(self, new_hooks: List[Optional[hooks.HookBase]]) -> None:
        for h in new_hooks:
            if h is not None:
                h.trainer = self
                self._hooks.append(h)

    # ------------------------------------------------------------------ loop
    def train(self) -> Dict[str, Any]:
        """Run iterations ``start_iter .. max_iter - 1``; returns the last eval results or {}."""
        logger.info("Starting training from iteration %d to %d", self.start_iter, self.max_iter)
        self.iter = self.start_iter
        with EventStorage(self.start_iter) as self.storage:
            # Nothing to draw when resuming a finished run (spares a DataLoader's worker start).
            self._data_iter = iter(self.data_loader) if self.start_iter < self.max_iter else None
            try:
                for h in self._hooks:
                    h.before_train()
                if self._pending_rng is not None:
                    # Restored last so that building the loader iterator and the hooks' setup
                    # cannot shift the streams relative to the uninterrupted run.
                    set_rng_state(self._pending_rng)
                    self._pending_rng = None
                for self.iter in range(self.start_iter, self.max_iter):
                    self.storage.iter = self.iter
                    for h in self._hooks:
                        h.before_step()
                    self.run_step()
                    for h in self._hooks:
                        h.after_step()
            finally:
                for h in self._hooks:
                    h.after_train()
        evals = [h for h in self._hooks if isinstance(h, hooks.EvalHook)]
        return (evals[-1].last_results if evals else {}) or {}

    def _autocast(self):
        if not self.amp_enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def run_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = self.subdivisions
        sums: Dict[str, float] = defaultdict(float)
        data_time = 0.0
        for i in range(n):
            t0 = time.perf_counter()
            batch = next(self._data_iter)
            data_time += time.perf_counter() - t0
            last = i == n - 1
            is_ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
            # Reduce gradients once, on the last sub-batch, not after every backward.
            sync = self.model.no_sync() if is_ddp and not last else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    loss_dict = self.model(batch)
                # Only ``loss_*`` entries are optimised; others (e.g. aLRP's self-balance
                # weight) are scalars to log.
                loss_terms = [v for k, v in loss_dict.items() if k.startswith("loss_")]
                if not loss_terms:
                    raise ValueError(f"the model returned no 'loss_*' entry in training, only "
                                     f"{sorted(loss_dict)}; losses must be named loss_*")
                losses = sum(loss_terms)
                # One device sync for all terms; a non-finite term makes the sum non-finite.
                terms = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()])
                values = dict(zip(loss_dict.keys(), terms.tolist()))
                self._check_finite(sum(values.values()), values, i)
                loss = losses / n
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            for k, v in values.items():
                sums[k] += v / n

        if self.clip_type is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            self.clip_gradients()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

        metrics = comm.reduce_dict({k: torch.tensor(v) for k, v in sorted(sums.items())})
        metrics = {k: float(v) for k, v in metrics.items()}
        self.storage.put_scalars(**metrics)
        self.storage.put_scalar("total_loss",
                                sum(v for k, v in metrics.items() if k.startswith("loss_")))
        self.storage.put_scalar("data_time", data_time)

    def clip_gradients(self) -> Optional[float]:
        """Clip by total norm (returns it, also put as ``grad_norm``) or by value."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.clip_type == "norm":
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_value,
                                                  norm_type=self.clip_norm_type)
            self.storage.put_scalar("grad_norm", norm)
            return float(norm)
        torch.nn.utils.clip_grad_value_(params, self.clip_value)
        return None

    def _check_finite(self, total: float, values: Dict[str, float], sub: int) -> None:
        if math.isfinite(total):
            return
        terms = ", ".join(f"{k}={v}" for k, v in values.items())
        where = f" (sub-batch {sub + 1}/{self.subdivisions})" if self.subdivisions > 1 else ""
        raise FloatingPointError(
            f"Loss became infinite or NaN at iteration={self.iter}{where}: "
            f"total_loss={total}, {terms}"
        )
