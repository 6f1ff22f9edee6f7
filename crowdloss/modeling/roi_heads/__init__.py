"""ROI heads of the two-stage detectors: Faster R-CNN's box branch (arXiv 1506.01497) on FPN
levels, ignore-aware, with the Repulsion Loss (arXiv 1711.07752) as an option."""
from .fast_rcnn import (FastRCNNConvFCHead, FastRCNNOutputLayers, fast_rcnn_inference_single_image, fast_rcnn_losses,
                        select_class_deltas)
from .repulsion import ROIRepulsion
from .roi_heads import StandardROIHeads

__all__ = ["StandardROIHeads", "FastRCNNConvFCHead", "FastRCNNOutputLayers", "ROIRepulsion",
           "fast_rcnn_losses", "fast_rcnn_inference_single_image", "select_class_deltas"]
