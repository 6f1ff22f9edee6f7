"""Meta-architectures: the dense detectors (cvpods names)."""
from .atss import ATSS
from .dense_detector import DenseDetector
from .fcos import FCOS
from .lla import LLAFCOS, LLARetinaNet
from .retinanet import RetinaNet

__all__ = ["DenseDetector", "FCOS", "ATSS", "RetinaNet", "LLAFCOS", "LLARetinaNet"]
