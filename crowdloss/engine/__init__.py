"""Training engine: runner, hooks, checkpoints, metrics, solver; ``launch`` for multi-process."""
from .checkpoint import Checkpointer, DetectionCheckpointer
from .events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    TensorboardWriter,
    get_event_storage,
)
from .hooks import (
    EvalHook,
    HookBase,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
)
from .runner import DefaultRunner
from .solver import build_lr_scheduler, build_optimizer

__all__ = [
    "launch",
    "DefaultRunner",
    "Checkpointer",
    "DetectionCheckpointer",
    "EventStorage",
    "get_event_storage",
    "JSONWriter",
    "TensorboardWriter",
    "CommonMetricPrinter",
    "HookBase",
    "LRScheduler",
    "IterationTimer",
    "PeriodicCheckpointer",
    "EvalHook",
    "PeriodicWriter",
    "build_optimizer",
    "build_lr_scheduler",
]


def __getattr__(name):
    # launch.py is a teammate's module: import it on first use so that the rest of the
    # engine works (and imports cheaply) whatever its state.
    if name == "launch":
        from .launch import launch

        return launch
    raise AttributeError(f"module 'crowdloss.engine' has no attribute {name!r}")
