"""The box branch of Fast / Faster R-CNN (arXiv 1504.08083, 1506.01497), detectron2 / cvpods
semantics: the box head (pooled ROI features -> one vector per ROI; FPN's is two 1024-d FC
layers, arXiv 1612.03144), the predictor (K + 1 softmax class scores and class-specific box
deltas), their losses and the per-image inference.

Parameter names follow detectron2 / cvpods (``fc1``, ``fc2``, ``cls_score``, ``bbox_pred``),
so their checkpoints load directly.

Shape vocabulary: B sampled ROIs of the batch, R ROIs of one image, C channels, S x S pooled
bins, K classes (background is column K of the scores), J = K (class-specific regression) or
1 (class-agnostic), F the box head's output width, P foreground ROIs, D detections.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crowdloss.ops import batched_nms, clip_boxes
from crowdloss.structures import Instances

from ..layers import Conv2d, c2_msra_fill, c2_xavier_fill, get_norm
from ..losses import smooth_l1_loss

__all__ = ["FastRCNNConvFCHead", "FastRCNNOutputLayers", "select_class_deltas", "fast_rcnn_losses",
           "fast_rcnn_inference_single_image"]


class FastRCNNConvFCHead(nn.Module):
    """``conv_dims`` x (3x3 conv [+ norm] + ReLU), flatten, ``fc_dims`` x (FC + ReLU).

    Args:
        in_channels: C of the pooled features.
        pooler_resolution: S.
        conv_dims: output channels of each conv (empty for the FPN head).
        fc_dims: width of each FC layer ((1024, 1024) for the FPN head).
        norm: norm of the convs ("" none, "BN", "GN", "SyncBN").

    Output width: ``output_size`` (the last FC's width, or C' x S x S without FCs).
    """

    def __init__(self, *, in_channels: int, pooler_resolution: int,
                 conv_dims: Sequence[int] = (), fc_dims: Sequence[int] = (1024, 1024),
                 norm: str = ""):
        super().__init__()
        if not conv_dims and not fc_dims:
            raise ValueError("FastRCNNConvFCHead: MODEL.ROI_BOX_HEAD.NUM_CONV and NUM_FC are "
                             "both 0; the head needs at least one layer")
        channels = int(in_channels)
        self.convs, self.fcs = [], []
        for k, dim in enumerate(conv_dims):
            conv = Conv2d(channels, int(dim), kernel_size=3, padding=1, bias=not norm,
                          norm=get_norm(norm, int(dim)), activation=F.relu)
            c2_msra_fill(conv)
            self.add_module(f"conv{k + 1}", conv)
            self.convs.append(conv)
            channels = int(dim)
        size = channels * int(pooler_resolution) ** 2
        for k, dim in enumerate(fc_dims):
            fc = nn.Linear(size, int(dim))
            c2_xavier_fill(fc)
            self.add_module(f"fc{k + 1}", fc)
            self.fcs.append(fc)
            size = int(dim)
        self.output_size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, output_size)."""
        for conv in self.convs:
            x = conv(x)
        x = torch.flatten(x, start_dim=1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return x


class FastRCNNOutputLayers(nn.Module):
    """Two linear layers on the box head's features: ``cls_score`` (K + 1 logits, background
    last) and ``bbox_pred`` (J x 4 deltas). Weights N(0, 0.01) and N(0, 0.001), biases 0.

    Args:
        input_size: F.
        num_classes: K.
        cls_agnostic_bbox_reg: one box for all classes (J = 1) instead of one per class.
    """

    def __init__(self, *, input_size: int, num_classes: int,
                 cls_agnostic_bbox_reg: bool = False, box_dim: int = 4):
        super().__init__()
        self.num_classes = int(num_classes)
        self.cls_score = nn.Linear(input_size, self.num_classes + 1)
        num_reg = 1 if cls_agnostic_bbox_reg else self.num_classes
        self.bbox_pred = nn.Linear(input_size, num_reg * box_dim)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, F) -> logits (B, K + 1), deltas (B, J * 4)."""
        x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


def select_class_deltas(deltas: Tensor, classes: Tensor) -> Tensor:
    """The 4 deltas of each ROI's class: (P, J * 4) with (P,) classes in [0, K) -> (P, 4).
    With class-agnostic regression (J = 1) the deltas are returned as they are."""
    if deltas.shape[1] == 4:
        return deltas
    cols = 4 * classes[:, None] + torch.arange(4, device=deltas.device)
    return deltas.gather(1, cols)


def fast_rcnn_losses(logits: Tensor, deltas: Tensor, proposal_boxes: Tensor, gt_classes: Tensor,
                     gt_boxes: Tensor, *, box2box_transform, smooth_l1_beta: float
                     ) -> Dict[str, Tensor]:
    """Softmax cross-entropy averaged over the B sampled ROIs, and smooth L1 between the
    foreground ROIs' deltas OF THEIR GT CLASS and the deltas from their proposal to their GT
    (``box2box_transform``, weights 10, 10, 5, 5), summed and divided by B too: every
    foreground ROI weighs the same whatever the batch's foreground share (detectron2).

    Args:
        logits: (B, K + 1); deltas: (B, J * 4); proposal_boxes: (B, 4);
        gt_classes: (B,) in [0, K], K = background; gt_boxes: (B, 4) matched GT boxes
        (anything for background ROIs).
    """
    if logits.shape[0] == 0:  # no ROI at all: zero losses that keep the graph
        zero = logits.sum() * 0.0 + deltas.sum() * 0.0
        return {"loss_cls": zero, "loss_box_reg": zero}
    num_classes = logits.shape[1] - 1
    loss_cls = F.cross_entropy(logits, gt_classes, reduction="mean")
    fg = torch.nonzero((gt_classes >= 0) & (gt_classes < num_classes)).squeeze(1)
    pred = select_class_deltas(deltas[fg], gt_classes[fg])
    target = box2box_transform.get_deltas(proposal_boxes[fg], gt_boxes[fg])
    loss_box = smooth_l1_loss(pred, target, beta=smooth_l1_beta, reduction="sum")
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box / gt_classes.numel()}


def fast_rcnn_inference_single_image(boxes: Tensor, scores: Tensor, image_size: Tuple[int, int],
                                     *, score_thresh: float, nms_thresh: float,
                                     topk_per_image: int) -> Instances:
    """Detections of one image at its network-input size.

    Non-finite rows are dropped; every class's box is clipped to the image; each (ROI, class)
    whose probability exceeds ``score_thresh`` is a candidate; NMS per class at
    ``nms_thresh``; the ``topk_per_image`` best (all if < 0).

    Args:
        boxes: (R, J * 4) decoded boxes, per class or one for all.
        scores: (R, K + 1) softmax probabilities, background last.
        image_size: (h, w) unpadded.

    Returns:
        ``Instances`` with ``pred_boxes`` (D, 4), ``scores`` (D,), ``pred_classes`` (D,).
    """
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not bool(finite.all()):
        boxes, scores = boxes[finite], scores[finite]
    scores = scores[:, :-1]
    num_reg = boxes.shape[1] // 4
    boxes = clip_boxes(boxes.reshape(-1, 4), image_size).view(-1, num_reg, 4)
    keep_mask = scores > score_thresh  # (R, K)
    roi_idx, classes = torch.nonzero(keep_mask, as_tuple=True)
    boxes = boxes[roi_idx, 0] if num_reg == 1 else boxes[roi_idx, classes]
    scores = scores[roi_idx, classes]
    keep = batched_nms(boxes, scores, classes, nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    return Instances(tuple(image_size), pred_boxes=boxes[keep], scores=scores[keep],
                     pred_classes=classes[keep])
