"""Repulsion Loss (arXiv 1711.07752) on the ROI head of Faster R-CNN, the detector the paper
was written on: L = L_Attr + alpha RepGT + beta RepBox.

L_Attr is the head's own box loss (``loss_box_reg``). The repulsion terms look at the sampled
foreground ROIs of each image, P of them; for ROI p with proposal box Q_p, attracted to GT
a(p) (the GT it is labelled with), its predicted box B_p is decoded from the deltas of a(p)'s
class (the box the attraction term trains):

- RepGT: the repulsion GT of p is the valid GT (class >= 0) other than a(p) of highest IoU with
  the PROPOSAL Q_p (the paper's argmax over G != G_Attr of IoU(G, P)); none when no such GT
  overlaps Q_p (p then adds 0). Loss: smooth_ln(IoG(B_p, G_rep), sigma_gt) summed over the
  foreground ROIs of the batch and divided by their number (averaged over processes, at
  least 1): the paper's mean over P+.
- RepBox: over ordered pairs of foreground ROIs of one image attracted to different GTs,
  smooth_ln(IoU(B_i, B_j), sigma_box) summed over the batch, divided by the number of those
  pairs with IoU > 0 (averaged over processes) + eps. Exact, in blocks (memory O(block), not
  P^2).

Ignore regions are never repulsion targets, and GT proposals added in training count like any
other foreground ROI. Gradients reach only the predicted deltas. The pieces (``smooth_ln``,
``aligned_iog``, ``repulsion_gt_targets``, ``repbox_pair_sums``) are the dense detectors'
(``crowdloss.modeling.losses.repulsion``); only the choice of boxes and targets is the ROI
head's.

Shape vocabulary: B sampled ROIs of the batch, S of one image, P foreground ones among them,
M gts of one image (ignore regions included), J = K or 1 box outputs per ROI.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from crowdloss.structures import Instances
from crowdloss.utils import comm

from ..losses.repulsion import aligned_iog, repbox_pair_sums, repulsion_gt_targets, smooth_ln
from .fast_rcnn import select_class_deltas

__all__ = ["ROIRepulsion"]


class ROIRepulsion:
    """RepGT and / or RepBox of the sampled foreground ROIs (module docstring).

    Args:
        box2box_transform: the ROI head's box coder (decodes the predicted boxes).
        repgt_weight, repgt_sigma: alpha and Smooth_ln's sigma of RepGT (0.5, 1.0); weight
            None switches RepGT off.
        repbox_weight, repbox_sigma: beta and sigma of RepBox (0.5, 0.0); None = off.
        eps: Smooth_ln's cap (sigma <= 1 - eps) and RepBox's denominator eps.
        max_block_elements: bound on the pair blocks of RepBox.
    """

    def __init__(self, *, box2box_transform, repgt_weight: Optional[float] = 0.5,
                 repgt_sigma: float = 1.0, repbox_weight: Optional[float] = 0.5,
                 repbox_sigma: float = 0.0, eps: float = 1e-3,
                 max_block_elements: int = 1 << 20):
        if repgt_weight is None and repbox_weight is None:
            raise ValueError("ROIRepulsion: RepGT and RepBox are both off")
        for sigma in (repgt_sigma, repbox_sigma):
            smooth_ln(torch.zeros(1), sigma, eps=eps)  # validates sigma / eps at build time
        self.box2box_transform = box2box_transform
        self.repgt_weight = None if repgt_weight is None else float(repgt_weight)
        self.repbox_weight = None if repbox_weight is None else float(repbox_weight)
        self.repgt_sigma, self.repbox_sigma = float(repgt_sigma), float(repbox_sigma)
        self.eps = float(eps)
        self.max_block_elements = int(max_block_elements)

    @classmethod
    def from_config(cls, cfg, box2box_transform) -> Optional["ROIRepulsion"]:
        """The terms ``MODEL.REPULSION`` switches on, or None when neither is."""
        r = cfg.MODEL.REPULSION
        use_gt, use_box = bool(r.REPGT.ENABLED), bool(r.REPBOX.ENABLED)
        if not (use_gt or use_box):
            return None
        kwargs = dict(box2box_transform=box2box_transform, eps=r.EPS,
                      repgt_weight=None, repbox_weight=None)
        if use_gt:
            kwargs.update(repgt_weight=r.REPGT.WEIGHT, repgt_sigma=r.REPGT.SIGMA)
        if use_box:
            kwargs.update(repbox_weight=r.REPBOX.WEIGHT, repbox_sigma=r.REPBOX.SIGMA,
                          max_block_elements=r.REPBOX.MAX_BLOCK_ELEMENTS)
        return cls(**kwargs)

    def __call__(self, deltas: Tensor, proposals: List[Instances],
                 gt_instances: List[Instances]) -> Dict[str, Tensor]:
        """``{"loss_repgt", "loss_repbox"}`` (the enabled ones).

        Args:
            deltas: (B, J * 4) predicted deltas of the sampled ROIs, images in order.
            proposals: the sampled ROIs (``StandardROIHeads.label_and_sample_proposals``:
                ``proposal_boxes``, ``gt_classes``, ``gt_inds``).
            gt_instances: every GT of each image (``gt_boxes``, ``gt_classes``).
        """
        repgt = deltas.sum() * 0.0  # keeps the graph when nothing contributes
        repbox = deltas.sum() * 0.0
        num_fg, num_pairs = 0, 0
        counts = [len(p) for p in proposals]
        for p, d, gt in zip(proposals, deltas.split(counts), gt_instances):
            fg = p.gt_inds >= 0
            if not bool(fg.any()):
                continue
            num_fg += int(fg.sum())
            attraction = p.gt_inds[fg]
            anchors = p.proposal_boxes[fg]
            pred = self.box2box_transform.apply_deltas(
                select_class_deltas(d[fg], p.gt_classes[fg]), anchors)
            if self.repgt_weight is not None:
                rep, has = repulsion_gt_targets(anchors, gt.gt_boxes, gt.gt_classes, attraction)
                if bool(has.any()):
                    iog = aligned_iog(pred[has], gt.gt_boxes[rep[has]].to(pred.dtype))
                    repgt = repgt + smooth_ln(iog, self.repgt_sigma, eps=self.eps).sum()
            if self.repbox_weight is not None:
                total, count = repbox_pair_sums(pred, attraction, self.repbox_sigma, eps=self.eps,
                                                max_block_elements=self.max_block_elements)
                repbox = repbox + total
                num_pairs += int(count)
        losses = {}
        # Every process reaches both collectives on every step (no early return above).
        if self.repgt_weight is not None:
            fg_mean = comm.all_reduce_mean(torch.tensor(float(num_fg), device=deltas.device))
            losses["loss_repgt"] = self.repgt_weight * repgt / max(float(fg_mean), 1.0)
        if self.repbox_weight is not None:
            pairs = comm.all_reduce_mean(torch.tensor(float(num_pairs), device=deltas.device))
            losses["loss_repbox"] = self.repbox_weight * repbox / (float(pairs) + self.eps)
        return losses
