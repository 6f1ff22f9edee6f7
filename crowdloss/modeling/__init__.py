"""Models: backbones, heads, assigners, losses, box coders and the meta-architectures.

Submodules are imported where used (``crowdloss.modeling.meta_arch.FCOS``, ...) so that
importing one piece does not build the whole tree.
"""
from .postprocess import detector_postprocess

__all__ = ["detector_postprocess"]
