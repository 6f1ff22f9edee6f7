"""Training engine: runner, hooks, checkpoints, metrics, solver; ``launch`` for multi-process."""
from .checkpoint import Checkpointer, DetectionCheckpointer
from .events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    TensorboardWriter,
    get_event_storage,
)
from . import hooks
from .hooks import *  # noqa: F401,F403  (the hook classes, listed in hooks.__all__)
from .runner import DefaultRunner
from .train_loop import TrainLoop
from .solver import build_lr_scheduler, build_optimizer

__all__ = [
    "launch",
    "DefaultRunner",
    "TrainLoop",
    "Checkpointer",
    "DetectionCheckpointer",
    "EventStorage",
    "get_event_storage",
    "JSONWriter",
    "TensorboardWriter",
    "CommonMetricPrinter",
    "build_optimizer",
    "build_lr_scheduler",
    *hooks.__all__,
]


def __getattr__(name):
    # launch pulls in torch.multiprocessing and the process-group machinery: import it on first
    # use, so that importing the engine for a runner or a checkpointer stays cheap.
    if name == "launch":
        from .launch import launch

        return launch
    raise AttributeError(f"module 'crowdloss.engine' has no attribute {name!r}")
