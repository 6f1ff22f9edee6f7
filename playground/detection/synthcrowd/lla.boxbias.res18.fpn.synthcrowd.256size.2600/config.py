"""LLA (arXiv 2101.04307) with the box outputs started one stride per side: synthcrowd, CPU.

lla.res18.fpn.synthcrowd.256size.2600 (channels-last weights) with one change: the box
output's bias starts at 1.0 instead of 0 (``MODEL.FCOS.BBOX_BIAS_INIT``), so that every
distance ReLU(scale * x) * stride starts at about one stride instead of half of them at exactly
0. Trained from scratch, the published initialisation let the warm-up kill the whole box output
of one LLA seed in seven and one side of it for over 1000 iterations in another
(docs/benchmark.md). Not the published method: the reference experiment keeps bias 0.
"""
from crowdloss.config import FCOSConfig, synthcrowd_reference_config

_config_dict = synthcrowd_reference_config(
    method="lla",
    max_iter=2600,
    channels_last=True,
    bbox_bias_init=1.0,
    # The band of its docs/benchmark.md table (benchmark runner, seeds 0-6): mean +- 3 seed
    # stds (at least 0.01); pods_test says when a run falls outside.
    expected_results=[
        ("AP", 0.6881, 0.0225),
        ("mMR", 0.8067, 0.0319),
        ("Recall", 0.9271, 0.01),
        ("JI", 0.5534, 0.0223),
    ],
)


class CustomFCOSConfig(FCOSConfig):
    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)


config = CustomFCOSConfig()
