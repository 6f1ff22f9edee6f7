"""ATSS: adaptive training sample selection (arXiv 1912.02424) on the FCOS head.

Everything but the assignment is FCOS (points, head with centerness on the box tower,
centerness-weighted GIoU, BCE centerness, inference): ATSS picks, per GT, the 9 points per level
nearest its centre, thresholds the IoU of a square ``ANCHOR_SCALE`` x stride anchor on each at
mean + std, and keeps those inside the GT. The box loss weight is ``MODEL.FCOS.REG_WEIGHT``
(2.0 in the published CrowdHuman baseline).

Shape vocabulary: as in fcos.py (N images, M gts, R points, K classes).
"""
from __future__ import annotations

from crowdloss.modeling.assigners import ATSSAssigner

from .fcos import FCOS

__all__ = ["ATSS"]


class ATSS(FCOS):
    """FCOS with ``ATSSAssigner``; keyword arguments as ``FCOS``."""

    @classmethod
    def build_assigner(cls, cfg):
        a = cfg.MODEL.ATSS
        return ATSSAssigner(topk=a.TOPK, anchor_scale=a.ANCHOR_SCALE)
