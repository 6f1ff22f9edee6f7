"""Hooks that run around each training iteration, in the order the runner registers them:
iteration to model, LR scheduler, iteration timer, weight average (``SOLVER.EMA``), periodic
checkpointer, eval hook, periodic writer.

A hook sees the runner as ``self.trainer`` (``iter``, ``max_iter``, ``storage``, ``model``,
``optimizer``, ``scheduler``, ``cfg``). ``iter`` is the 0-based iteration just run in
``after_step``, so "every P iterations" means ``(iter + 1) % P == 0``.
"""
from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Callable, Dict, List, Optional

from crowdloss.utils import comm
from crowdloss.utils.env import get_rng_state

from .checkpoint import unwrap_model
from .events import EventWriter

__all__ = [
    "HookBase",
    "IterationToModel",
    "LRScheduler",
    "IterationTimer",
    "EMAUpdate",
    "PeriodicCheckpointer",
    "EvalHook",
    "PeriodicWriter",
]

logger = logging.getLogger("crowdloss.engine")


class HookBase:
    """Base class: override any of the four callbacks."""

    trainer: Any = None

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class IterationToModel(HookBase):
    """Before every step, tells a model that has ``set_iteration(iteration)`` which 0-based
    iteration is about to run (an assignment warm-up switches rules by it).

    The runner's ``iter`` starts at ``start_iter`` on a resume, so the model sees the same
    sequence as in an uninterrupted run; it is called once per optimizer step, whatever
    ``SOLVER.BATCH_SUBDIVISIONS``. Models without the method are left alone (duck typing: the
    engine imports no model class).
    """

    def __init__(self) -> None:
        self._setter = None

    def before_train(self) -> None:
        setter = getattr(unwrap_model(self.trainer.model), "set_iteration", None)
        self._setter = setter if callable(setter) else None

    def before_step(self) -> None:
        if self._setter is not None:
            self._setter(self.trainer.iter)


class LRScheduler(HookBase):
    """Records the learning rate of this iteration as ``lr``, then steps the scheduler."""

    def __init__(self, optimizer=None, scheduler=None) -> None:
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._group = 0

    def before_train(self) -> None:
        self._optimizer = self._optimizer or self.trainer.optimizer
        self._scheduler = self._scheduler or self.trainer.scheduler
        # Report the base lr, not a bias group's lr x BIAS_LR_FACTOR: prefer a weight group.
        groups = self._optimizer.param_groups
        names = [str(g.get("name", "")) for g in groups]
        self._group = next((i for i, n in enumerate(names) if not n.endswith("bias")), 0)

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._group]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self._scheduler.step()


class IterationTimer(HookBase):
    """Puts ``time`` (seconds per iteration: the step and the hooks before this one) and logs
    the total at the end: the training's wall time without the evaluations (EvalHooks report
    their own), which are logged apart."""

    def __init__(self) -> None:
        self._step_start = 0.0
        self._train_start = 0.0
        self._steps = 0

    def before_train(self) -> None:
        self._train_start = time.perf_counter()
        self._steps = 0

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("time", time.perf_counter() - self._step_start)
        self._steps += 1

    def after_train(self) -> None:
        total = time.perf_counter() - self._train_start
        hooks = getattr(self.trainer, "_hooks", []) if self.trainer is not None else []
        evaluating = sum(h.total_time for h in hooks if isinstance(h, EvalHook))
        training = max(0.0, total - evaluating)
        if self._steps:
            logger.info(
                "Total training time: %s (%.4f s / it over %d iterations)%s",
                datetime.timedelta(seconds=int(training)), training / self._steps, self._steps,
                f"; evaluation took {datetime.timedelta(seconds=int(evaluating))} more"
                if evaluating else "",
            )


class EMAUpdate(HookBase):
    """Moves a :class:`~crowdloss.engine.ema.ModelEMA` after every step; registered before
    the checkpointer, so that a checkpoint holds the average of the steps it has done."""

    def __init__(self, ema) -> None:
        self.ema = ema

    def after_step(self) -> None:
        self.ema.update()


class PeriodicCheckpointer(HookBase):
    """Saves ``model_iter_XXXXXXX.pth`` every ``period`` iterations and ``model_final.pth``.

    ``XXXXXXX`` is the number of iterations done (``model_iter_0005000.pth`` after 5000), the
    number ``pods_test --start-iter`` and its result table use. Each checkpoint also keeps the
    metrics not yet written to ``metrics.json`` (the writer flushes every 20 iterations, on its
    own period), so that a kill between the save and the next write loses no iteration.

    Args:
        checkpointer: a :class:`~crowdloss.engine.checkpoint.Checkpointer` (writes on rank 0 only).
        period: iterations between saves; 0 disables the periodic ones (the final save remains).
        max_iter: the run's length; the last iteration saves ``model_final``.
    """

    def __init__(self, checkpointer, period: int, max_iter: int) -> None:
        self.checkpointer = checkpointer
        self.period = int(period)
        self.max_iter = int(max_iter)

    def after_step(self) -> None:
        it = self.trainer.iter
        done = it + 1
        if done >= self.max_iter:
            name = "model_final"
        elif self.period > 0 and done % self.period == 0:
            name = f"model_iter_{done:07d}"
        else:
            return
        # Every rank's generators (a collective, hence here where all ranks run), so that each
        # rank resumes its own random streams; a single process stores its state directly.
        rng = comm.all_gather(get_rng_state()) if comm.get_world_size() > 1 else get_rng_state()
        pending = self.trainer.storage.unwritten_records(it) if self.checkpointer.save_to_disk \
            else []
        self.checkpointer.save(name, iteration=it, rng=rng, metrics=pending)


class EvalHook(HookBase):
    """Runs ``eval_function`` every ``eval_period`` iterations (if > 0) and after the last one
    (if >= 0); a negative period never evaluates (``TEST.EVAL_PERIOD``'s meaning).

    It runs on every rank, since inference is sharded; results come back on rank 0 only (other
    ranks get ``{}``). Numeric results are put into the storage as ``<dataset>/<task>/<metric>``.
    """

    def __init__(self, eval_period: int, eval_function: Callable[[], Dict[str, Any]]) -> None:
        self.period = int(eval_period)
        self.eval_function = eval_function
        self.last_results: Dict[str, Any] = {}
        self.total_time = 0.0  # seconds spent evaluating (kept out of the training time)

    def _do_eval(self) -> None:
        start = time.perf_counter()
        try:
            self._evaluate()
        finally:
            self.total_time += time.perf_counter() - start

    def _evaluate(self) -> None:
        results = self.eval_function() or {}
        self.last_results = results
        flat = {k: v for k, v in _flatten(results).items() if _is_number(v)}
        if flat:
            self.trainer.storage.put_scalars(smoothing_hint=False, **flat)
        comm.synchronize()  # keep ranks together: rank 0 evaluates longer than the others

    def after_step(self) -> None:
        if self.period < 0:
            return
        next_iter = self.trainer.iter + 1
        if next_iter == self.trainer.max_iter or (self.period > 0 and next_iter % self.period == 0):
            self._do_eval()


class PeriodicWriter(HookBase):
    """Flushes ``writers`` every ``period`` iterations and after the last, then closes them."""

    def __init__(self, writers: List[EventWriter], period: int = 20) -> None:
        self.writers = writers
        self.period = int(period)
        self._written_iter = -1

    def _write(self) -> None:
        for writer in self.writers:
            writer.write()
        self._written_iter = self.trainer.iter

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it + 1 == self.trainer.max_iter:
            self._write()

    def after_train(self) -> None:
        try:
            # A run that stopped early (an exception) still leaves its last metrics on disk.
            if self.trainer.iter > self._written_iter:
                self._write()
        finally:
            for writer in self.writers:
                writer.close()


def _flatten(results: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in results.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _is_number(value: Optional[Any]) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
