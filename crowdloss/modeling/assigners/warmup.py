"""An assignment warm-up: one rule for the first W training iterations, another after.

A prediction-aware rule (LLA, arXiv 2101.04307) assigns from the detector's own predictions,
which at initialisation mean nothing: from scratch, the first assignments follow the random
initial boxes. TOOD (arXiv 2108.07755) therefore trains its first epochs with ATSS and only
then switches to its task-aligned rule; ``WarmupAssigner`` does the same for any pair of
rules, e.g. ATSS (or FCOS) for ``warmup_iters`` iterations, then LLA.

The switch is a function of the training iteration, which the engine passes in before every
step (``engine.hooks.IterationToModel`` -> ``model.set_iteration`` -> ``set_iteration`` here):
an interrupted run resumed at iteration i switches exactly where the uninterrupted run did,
and ``SOLVER.BATCH_SUBDIVISIONS`` (several forwards per step) does not move it.
"""
import logging
from typing import Optional

from torch import Tensor

from ..priors import Priors
from .base import AssignResult, BaseAssigner

__all__ = ["WarmupAssigner"]

logger = logging.getLogger(__name__)


class WarmupAssigner(BaseAssigner):
    """``warmup``'s rule while the iteration is < ``warmup_iters``, ``main``'s from then on.

    ``uses_predictions`` is that of the rule in force, so the detector computes and passes
    predictions only once they are used. With ``warmup_iters`` > 0 the iteration must have
    been set (``set_iteration``) before the first ``assign``: a training loop that never says
    which iteration it is at gets an error, not a warm-up that silently never ends.

    Args:
        warmup: the rule of the first ``warmup_iters`` iterations (e.g. ``ATSSAssigner``).
        main: the rule afterwards (e.g. ``LLAAssigner``).
        warmup_iters: W >= 0; 0 = ``main`` from the start.
    """

    def __init__(self, *, warmup: BaseAssigner, main: BaseAssigner, warmup_iters: int):
        if int(warmup_iters) < 0:
            raise ValueError(f"WarmupAssigner: warmup_iters must be >= 0, got {warmup_iters}")
        self.warmup = warmup
        self.main = main
        self.warmup_iters = int(warmup_iters)
        self._iteration: Optional[int] = None

    def set_iteration(self, iteration: int) -> None:
        """The 0-based training iteration about to run."""
        iteration = int(iteration)
        if iteration == self.warmup_iters and self.warmup_iters > 0:
            logger.info("assignment warm-up over at iteration %d: %s -> %s", iteration,
                        type(self.warmup).__name__, type(self.main).__name__)
        self._iteration = iteration

    @property
    def active(self) -> BaseAssigner:
        """The rule in force at the current iteration."""
        if self.warmup_iters == 0:
            return self.main
        if self._iteration is None:
            raise RuntimeError(
                f"WarmupAssigner ({self.warmup_iters} warm-up iterations): the training "
                "iteration was never set. The engine sets it before every step "
                "(engine.hooks.IterationToModel); a custom loop must call "
                "model.set_iteration(iteration) before each training step")
        return self.warmup if self._iteration < self.warmup_iters else self.main

    @property
    def uses_predictions(self) -> bool:  # type: ignore[override]
        return self.active.uses_predictions

    def assign(self, priors: Priors, gt_boxes: Tensor, gt_classes: Tensor, *,
               pred_logits: Optional[Tensor] = None,
               pred_boxes: Optional[Tensor] = None) -> AssignResult:
        """The rule in force assigns (its own checks and zero-GT answer apply)."""
        return self.active.assign(priors, gt_boxes, gt_classes, pred_logits=pred_logits,
                                  pred_boxes=pred_boxes)
