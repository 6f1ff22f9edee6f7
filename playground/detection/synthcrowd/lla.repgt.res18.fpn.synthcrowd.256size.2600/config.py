"""LLA (arXiv 2101.04307) + RepGT (arXiv 1711.07752): half-width ResNet-18-FPN, synthcrowd, CPU.

lla.res18.fpn.synthcrowd.256size.2600 plus 0.5 x RepGT (Smooth_ln sigma 1.0): each positive
point's box is pushed off the valid GT, other than its own, that overlaps the point's prior
box most (a point stands for a square of MODEL.REPULSION.POINT_PRIOR_SCALE = 8 strides).
Everything else is identical to that experiment, so the two differ only in RepGT. Written for
ONE process (REFERENCE_WORLD_SIZE 1); no pretrained weights, so the backbone trains from
scratch with BatchNorm (FREEZE_AT 0).
"""
from crowdloss.config import FCOSConfig, synthcrowd_reference_config

# The LLA reference experiment as it is, plus RepGT (no band: measured over 2 seeds only).
_config_dict = synthcrowd_reference_config(method="lla", max_iter=2600)
_config_dict["MODEL"]["REPULSION"] = dict(REPGT=dict(ENABLED=True, WEIGHT=0.5, SIGMA=1.0))


class CustomFCOSConfig(FCOSConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomFCOSConfig()
