"""ATSS: adaptive training sample selection (arXiv 1912.02424) on the FCOS head.

Everything but the assignment is FCOS (points, head with centerness on the box tower,
centerness-weighted GIoU, BCE centerness, inference): ATSS picks, per GT, the 9 points per level
nearest its centre, thresholds the IoU of a square ``ANCHOR_SCALE`` x stride anchor on each at
mean + std, and keeps those inside the GT. The box loss weight is ``REG_WEIGHT`` (2.0 as
published for the CrowdHuman baseline).

Shape vocabulary: as in fcos.py (N images, M gts, R points, K classes).
"""
from __future__ import annotations

from crowdloss.modeling.assigners import ATSSAssigner

from .dense_detector import cfg_get
from .fcos import FCOS

__all__ = ["ATSS"]


class ATSS(FCOS):
    """FCOS with ``ATSSAssigner``; keyword arguments as ``FCOS`` with ``reg_weight=2.0``."""

    def __init__(self, *, reg_weight: float = 2.0, **kwargs):
        super().__init__(reg_weight=reg_weight, **kwargs)

    @classmethod
    def build_assigner(cls, cfg):
        a = cfg.MODEL.ATSS
        return ATSSAssigner(
            topk=cfg_get(a, "TOPK", 9), anchor_scale=cfg_get(a, "ANCHOR_SCALE", 8.0)
        )

    @classmethod
    def default_reg_weight(cls, cfg) -> float:
        return cfg_get(cfg.MODEL.FCOS, "REG_WEIGHT", 2.0)
