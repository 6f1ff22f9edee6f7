"""Meta-architectures: ``Detector`` (shared by one- and two-stage), ``DenseDetector`` and the
dense detectors, ``GeneralizedRCNN`` (Faster R-CNN) (cvpods names)."""
from .atss import ATSS
from .base import Detector, place_model
from .dense_detector import DenseDetector, DenseOutputs
from .fcos import FCOS
from .lla import LLAFCOS, LLARetinaNet
from .ranking_retinanet import ALRPLossRetinaNet, APLossRetinaNet
from .rcnn import GeneralizedRCNN
from .retinanet import RetinaNet
from .ssd import SSD

__all__ = ["Detector", "DenseDetector", "DenseOutputs", "FCOS", "ATSS", "RetinaNet", "LLAFCOS",
           "LLARetinaNet", "SSD", "ALRPLossRetinaNet", "APLossRetinaNet", "GeneralizedRCNN",
           "place_model"]
