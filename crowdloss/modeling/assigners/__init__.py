"""Label assigners: one class per rule, each with one ``assign()`` returning an AssignResult."""
from .atss import ATSSAssigner
from .base import AssignResult
from .fcos import FCOSAssigner
from .lla import LLAAssigner
from .max_iou import MaxIoUAssigner
from .ssd import SSDMatcher
from .warmup import WarmupAssigner

__all__ = ["AssignResult", "ATSSAssigner", "FCOSAssigner", "LLAAssigner", "MaxIoUAssigner",
           "SSDMatcher", "WarmupAssigner"]
