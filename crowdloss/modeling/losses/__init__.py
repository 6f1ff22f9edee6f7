"""Detection losses: focal, IoU family, smooth L1, ranking-based (AP Loss, aLRP Loss)."""
from .focal import reduce_loss, sigmoid_focal_loss
from .iou import iou_loss
from .ranking import alrp_loss, ap_loss
from .smooth_l1 import smooth_l1_loss

__all__ = ["reduce_loss", "sigmoid_focal_loss", "iou_loss", "smooth_l1_loss", "ap_loss",
           "alrp_loss"]
