"""Rescale a schedule written for ``SOLVER.REFERENCE_WORLD_SIZE`` processes to the real one.

cvpods configs are written for 8 GPUs: ``IMS_PER_BATCH / IMS_PER_DEVICE == 8``. cvpods asserted
that the run also had 8 GPUs; crowdloss instead keeps the per-device batch and scales the rest
by the linear scaling rule (Goyal et al., arXiv 1706.02677), so the same config trains on 1, 2, 8
or 16 processes and sees the same number of images at the same per-image learning rate.

With ``ratio = world_size / REFERENCE_WORLD_SIZE``:

- ``IMS_PER_BATCH = IMS_PER_DEVICE x world_size``;
- ``BASE_LR x ratio``;
- ``MAX_ITER``, ``STEPS``, ``CHECKPOINT_PERIOD``, ``TEST.EVAL_PERIOD`` and the model's
  iteration counts (``MODEL_ITERATION_KEYS``, where the config has them: aLRP's self-balance
  period, "an epoch") divided by ratio, rounded half up, at least 1 where they were positive
  (0 and negative periods keep their meaning);
- ``WARMUP_ITERS`` unchanged: warmup guards the first updates, whatever their size;
- ``REFERENCE_WORLD_SIZE`` becomes ``world_size``, so the resolved config is self-consistent
  and rescaling it again is a no-op.

``REFERENCE_WORLD_SIZE = 0`` disables rescaling; then ``IMS_PER_BATCH`` must already equal
``IMS_PER_DEVICE x world_size``. The function returns its log lines and logs nothing itself
(the caller logs them once, on the main process).

For the unread-key report, this function USES ``IMS_PER_BATCH`` and ``REFERENCE_WORLD_SIZE``
(their only reader) but merely rewrites the schedule keys, which their real readers (optimizer,
scheduler, hooks) must still read: that part runs ``untracked()``.
"""
from __future__ import annotations

from typing import List

from .access import cfg_get
from .tracking import untracked

__all__ = ["rescale_for_world_size", "MODEL_ITERATION_KEYS"]

# Model keys that count training iterations (section path, key); rescaled like MAX_ITER where
# the config has them (MODEL.ALRP exists in the RetinaNet configs only).
MODEL_ITERATION_KEYS = (("MODEL.ALRP", "SB_PERIOD"),)


def _scaled_iters(value: int, reference: int, world_size: int) -> int:
    # value * reference / world_size rounded half up, in integers (no float drift).
    if value <= 0:
        return value
    return max(1, (2 * value * reference + world_size) // (2 * world_size))


def rescale_for_world_size(cfg, world_size: int) -> List[str]:
    """Rescale ``cfg``'s batch, schedule and learning rate in place for ``world_size`` processes.

    Args:
        cfg: a config with the ``SOLVER`` / ``TEST`` keys of ``BaseConfig``.
        world_size: number of training processes (GPUs, or CPU workers).

    Returns:
        messages describing what changed (or why nothing did), to be logged by the caller.

    Raises:
        ValueError: ``world_size`` or ``IMS_PER_DEVICE`` < 1, or a batch that does not match
            ``REFERENCE_WORLD_SIZE`` (the message says which numbers disagree and how to fix it).
    """
    solver = cfg.SOLVER
    reference = int(solver.REFERENCE_WORLD_SIZE)
    per_device, batch = int(solver.IMS_PER_DEVICE), int(solver.IMS_PER_BATCH)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if per_device < 1:
        raise ValueError(f"SOLVER.IMS_PER_DEVICE must be >= 1, got {per_device}")
    if reference < 0:
        raise ValueError(f"SOLVER.REFERENCE_WORLD_SIZE must be >= 0 (0 disables rescaling), "
                         f"got {reference}")

    if reference == 0:
        if batch != per_device * world_size:
            raise ValueError(
                f"SOLVER.REFERENCE_WORLD_SIZE is 0 (no rescaling), so SOLVER.IMS_PER_BATCH "
                f"({batch}) must equal SOLVER.IMS_PER_DEVICE ({per_device}) x world size "
                f"({world_size}) = {per_device * world_size}; set SOLVER.IMS_PER_BATCH "
                f"{per_device * world_size}, or set SOLVER.REFERENCE_WORLD_SIZE to the number "
                f"of processes the schedule was written for")
        return [f"SOLVER.REFERENCE_WORLD_SIZE is 0: no rescaling for world size {world_size} "
                f"(IMS_PER_BATCH {batch} = {per_device} per device x {world_size})"]

    if batch != reference * per_device:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({batch}) / SOLVER.IMS_PER_DEVICE ({per_device}) must equal "
            f"SOLVER.REFERENCE_WORLD_SIZE ({reference}), the number of processes the schedule "
            f"is written for; set SOLVER.IMS_PER_BATCH = REFERENCE_WORLD_SIZE x IMS_PER_DEVICE "
            f"= {reference * per_device}, or set SOLVER.REFERENCE_WORLD_SIZE"
            + (f" {batch // per_device}" if batch % per_device == 0 else "")
            + " (0 disables rescaling)")

    if world_size == reference:
        return [f"world size {world_size} equals SOLVER.REFERENCE_WORLD_SIZE: no rescaling"]

    with untracked():
        return _rescale(cfg, reference, per_device, batch, world_size)


def _rescale(cfg, reference: int, per_device: int, batch: int, world_size: int) -> List[str]:
    solver = cfg.SOLVER
    sched, optim = solver.LR_SCHEDULER, solver.OPTIMIZER
    ratio = world_size / reference
    changes = []

    def note(key: str, old, new) -> None:
        changes.append(f"{key} {old} -> {new}")

    note("SOLVER.IMS_PER_BATCH", batch, per_device * world_size)
    solver.IMS_PER_BATCH = per_device * world_size
    new_lr = optim.BASE_LR * ratio
    note("SOLVER.OPTIMIZER.BASE_LR", optim.BASE_LR, new_lr)
    optim.BASE_LR = new_lr
    for section, name, key in ((sched, "SOLVER.LR_SCHEDULER", "MAX_ITER"),
                               (solver, "SOLVER", "CHECKPOINT_PERIOD"),
                               (cfg.TEST, "TEST", "EVAL_PERIOD")):
        old = section[key]
        section[key] = _scaled_iters(int(old), reference, world_size)
        note(f"{name}.{key}", old, section[key])
    for path, key in MODEL_ITERATION_KEYS:
        try:
            section = cfg_get(cfg, path)
        except KeyError:  # a config without that model
            continue
        if key in section:
            old = section[key]
            section[key] = _scaled_iters(int(old), reference, world_size)
            note(f"{path}.{key}", old, section[key])
    old_steps = sched.STEPS
    sched.STEPS = type(old_steps)(_scaled_iters(int(s), reference, world_size) for s in old_steps)
    note("SOLVER.LR_SCHEDULER.STEPS", old_steps, sched.STEPS)
    solver.REFERENCE_WORLD_SIZE = world_size
    header = (f"rescaled the schedule written for {reference} processes to world size "
              f"{world_size} (ratio {ratio:g}; WARMUP_ITERS {sched.WARMUP_ITERS} unchanged):")
    return [header] + ["  " + c for c in changes]
