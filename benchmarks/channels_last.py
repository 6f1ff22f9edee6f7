"""MODEL.CHANNELS_LAST: training-step time of the synthcrowd experiments with their weights in
NCHW (the default) and in NHWC, on the CPU, one thread.

For each experiment (default: the LLA demo, SSD300 and Faster R-CNN; each built from its own
config.py / net.py) two copies with the same weights are placed by ``place_model``, one per
layout, and both take training steps (forward + backward + SGD update) on the same batch drawn
once from synthcrowd_train with the experiment's train pipeline. ``--warmup`` steps of each,
then ``--steps`` timed steps, the two layouts alternating step by step so that a change of load
on a shared machine hits both alike. Time is process CPU time; each figure is the median step.

Usage: python benchmarks/channels_last.py [--steps 6] [--warmup 2] [EXPERIMENT ...]
Needs synthcrowd (CROWDLOSS_DATASETS; generated on first use). Prints one line per experiment
and, LAST, the geometric mean over them of NCHW / NHWC (above 1: channels-last is faster).
"""
import os
import sys

# Runnable from a checkout without installing (same as the other benchmarks).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rcnn_step import variants_main  # noqa: E402  (benchmarks/ is this script's path[0])

if __name__ == "__main__":
    variants_main(__doc__, [("NCHW", False, None), ("NHWC", True, None)], ("NCHW", "NHWC"),
                  "NCHW / NHWC step CPU time")
