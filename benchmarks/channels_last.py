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
import argparse
import copy
import math
import os
import statistics
import sys

import torch

# Runnable from a checkout without installing (same as the other benchmarks).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from crowdloss.data import build_train_loader  # noqa: E402
from crowdloss.modeling.meta_arch import place_model  # noqa: E402
from rcnn_step import Stepper, build  # noqa: E402  (benchmarks/ is this script's path[0])

EXPERIMENTS = ("lla.res18.fpn.synthcrowd.256size.2600", "ssd300.vgg16q.synthcrowd.300size.2600",
               "faster_rcnn.res18.fpn.synthcrowd.256size.2600")


def time_layouts(exp_name: str, steps: int, warmup: int) -> float:
    cfg, model = build(exp_name)
    batch = next(iter(build_train_loader(cfg)))
    steppers = {}
    for layout in (False, True):
        cfg.MODEL.CHANNELS_LAST = layout
        steppers[layout] = Stepper(place_model(copy.deepcopy(model), cfg), batch)
    for i in range(warmup + steps):
        for st in steppers.values():
            torch.manual_seed(i)  # the R-CNN samplers draw at random: the same draws for both
            st.step(record=i >= warmup)
    nchw, nhwc = (statistics.median(steppers[k].cpu) for k in (False, True))
    print(f"{exp_name:48s} NCHW {nchw:.3f} s  NHWC {nhwc:.3f} s CPU / step  "
          f"ratio {nchw / nhwc:.2f}")
    return nchw / nhwc


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiments", nargs="*", default=list(EXPERIMENTS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios = [time_layouts(name, args.steps, args.warmup) for name in args.experiments]
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"NCHW / NHWC step CPU time, geometric mean over {len(ratios)} experiments: {geo:.2f}")


if __name__ == "__main__":
    main()
