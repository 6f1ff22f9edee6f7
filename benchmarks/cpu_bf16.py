"""SOLVER.AMP with bfloat16 on the CPU: training-step time of the synthcrowd experiments in
float32 and under bfloat16 autocast (alone and with MODEL.CHANNELS_LAST), one thread.

For each experiment (default: the LLA demo, SSD300 and Faster R-CNN; each built from its own
config.py / net.py) three copies with the same weights take training steps (forward + backward +
SGD update) on the same batch drawn once from synthcrowd_train with the experiment's train
pipeline: float32 NCHW (the default), bfloat16 autocast NCHW, bfloat16 autocast NHWC.
``--warmup`` steps of each, then ``--steps`` timed steps, the variants alternating step by step
so that a change of load on a shared machine hits all alike. Time is process CPU time; each
figure is the median step. The gain needs native bfloat16 (AVX512-BF16 or AMX, printed first);
without it autocast emulates bfloat16 and is slower than float32.

Usage: python benchmarks/cpu_bf16.py [--steps 6] [--warmup 2] [EXPERIMENT ...]
Needs synthcrowd (CROWDLOSS_DATASETS; generated on first use). Prints one line per experiment
and, LAST, the geometric mean over them of float32 / bfloat16 step time (NCHW both; above 1:
bfloat16 is faster).
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
from crowdloss.engine.runner import cpu_has_native_bf16  # noqa: E402
from crowdloss.modeling.meta_arch import place_model  # noqa: E402
from channels_last import EXPERIMENTS  # noqa: E402  (benchmarks/ is this script's path[0])
from rcnn_step import Stepper, build  # noqa: E402

VARIANTS = (("fp32", False, None), ("bf16", False, torch.bfloat16),
            ("bf16+NHWC", True, torch.bfloat16))


def time_variants(exp_name: str, steps: int, warmup: int) -> float:
    cfg, model = build(exp_name)
    batch = next(iter(build_train_loader(cfg)))
    steppers = {}
    for name, channels_last, dtype in VARIANTS:
        cfg.MODEL.CHANNELS_LAST = channels_last
        steppers[name] = Stepper(place_model(copy.deepcopy(model), cfg), batch, dtype)
    for i in range(warmup + steps):
        for st in steppers.values():
            torch.manual_seed(i)  # the R-CNN samplers draw at random: the same draws for all
            st.step(record=i >= warmup)
    med = {k: statistics.median(st.cpu) for k, st in steppers.items()}
    losses = "; ".join(f"{k} " + " ".join(f"{v:.3f}" for _, v in sorted(st.losses.items()))
                       for k, st in steppers.items())
    print(f"{exp_name:48s} " + "  ".join(f"{k} {v:.3f} s" for k, v in med.items())
          + f"  fp32/bf16 {med['fp32'] / med['bf16']:.2f}"
          + f"  fp32/(bf16+NHWC) {med['fp32'] / med['bf16+NHWC']:.2f}")
    print(f"{'':48s} last losses: {losses}")
    return med["fp32"] / med["bf16"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiments", nargs="*", default=list(EXPERIMENTS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"native bfloat16 on this CPU: {cpu_has_native_bf16()}; CPU time per training step, "
          "one thread")
    ratios = [time_variants(name, args.steps, args.warmup) for name in args.experiments]
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"float32 / bfloat16 step CPU time, geometric mean over {len(ratios)} experiments: "
          f"{geo:.2f}")


if __name__ == "__main__":
    main()
