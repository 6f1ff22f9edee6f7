"""LLA (arXiv 2101.04307) on FCOS: half-width ResNet-18-FPN, synthcrowd, 256 px, 2600 iters, CPU.

One of the three synthcrowd reference experiments (lla / fcos / atss
.res18.fpn.synthcrowd.256size.*) with IDENTICAL backbone, head width, input size, batch, LR
and schedule, so that they differ only in label assignment and losses
(``crowdloss.config.synthcrowd_reference_config`` holds their shared values). Written for ONE
process (REFERENCE_WORLD_SIZE 1); no pretrained weights, so the backbone trains from scratch
with BatchNorm (FREEZE_AT 0).
"""
from crowdloss.config import FCOSConfig, synthcrowd_reference_config

_config_dict = synthcrowd_reference_config(
    method="lla",
    max_iter=2600,
    # The band of the README's 2600-iteration synthcrowd table (benchmark runner, 3 seeds):
    # mean +- 3 seed stds (at least 0.01); pods_test says when a run falls outside.
    expected_results=[
        ("AP", 0.6795, 0.0384),
        ("mMR", 0.8085, 0.0795),
        ("Recall", 0.9247, 0.01),
        ("JI", 0.5476, 0.0393),
    ],
)


class CustomFCOSConfig(FCOSConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomFCOSConfig()
