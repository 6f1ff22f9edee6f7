"""Proposal generators of the two-stage detectors: the RPN (arXiv 1506.01497) on FPN levels."""
from .rpn import RPN, StandardRPNHead, find_top_rpn_proposals

__all__ = ["RPN", "StandardRPNHead", "find_top_rpn_proposals"]
