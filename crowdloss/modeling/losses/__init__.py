"""Detection losses: small functions of the predictions and the per-image targets.

Focal (arXiv 1708.02002), IoU family (UnitBox / GIoU), smooth L1, SSD's softmax cross-entropy
with hard negative mining (arXiv 1512.02325), the repulsion terms RepGT / RepBox (arXiv
1711.07752), and the ranking-based AP Loss (arXiv 1904.06373) and aLRP Loss (arXiv 2009.13592)
with aLRP's self-balance weight (``SelfBalance``, a module: its state is saved with the model).
Each returns a sum (or the requested reduction); the detector divides by its normaliser (num_fg,
rank-averaged), except the ranking losses, which are normalised by their definition.
"""
from .focal import focal_classification_loss, reduce_loss, sigmoid_focal_loss
from .iou import iou_loss, iou_quality_loss
from .multibox import hard_negative_mask, multibox_classification_loss
from .ranking import alrp_loss, ap_loss
from .repulsion import (RepBoxLoss, RepGTLoss, build_repulsion_losses, repbox_pair_sums,
                        smooth_ln)
from .self_balance import SelfBalance
from .smooth_l1 import smooth_l1_loss

__all__ = ["reduce_loss", "sigmoid_focal_loss", "focal_classification_loss", "iou_loss",
           "iou_quality_loss", "smooth_l1_loss", "hard_negative_mask",
           "multibox_classification_loss", "smooth_ln", "repbox_pair_sums", "RepGTLoss",
           "RepBoxLoss", "build_repulsion_losses", "ap_loss", "alrp_loss", "SelfBalance"]
