"""ATSS (arXiv 1912.02424): half-width ResNet-18-FPN, synthcrowd, 256 px, 2600 iters, CPU.

One of the three synthcrowd reference experiments (lla / fcos / atss
.res18.fpn.synthcrowd.256size.*) with IDENTICAL backbone, head width, input size, batch, LR
and schedule, so that they differ only in label assignment and losses
(``crowdloss.config.synthcrowd_reference_config`` holds their shared values). Written for ONE
process (REFERENCE_WORLD_SIZE 1); no pretrained weights, so the backbone trains from scratch
with BatchNorm (FREEZE_AT 0).
"""
from crowdloss.config import FCOSConfig, synthcrowd_reference_config

_config_dict = synthcrowd_reference_config(
    method="atss",
    max_iter=2600,
    # The band of the README's 2600-iteration synthcrowd table (benchmark runner, 3 seeds):
    # mean +- 3 seed stds (at least 0.01); pods_test says when a run falls outside.
    expected_results=[
        ("AP", 0.6928, 0.0272),
        ("mMR", 0.7018, 0.0234),
        ("Recall", 0.9, 0.01),
        ("JI", 0.551, 0.0223),
    ],
)


class CustomFCOSConfig(FCOSConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomFCOSConfig()
