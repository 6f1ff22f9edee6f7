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
import os
import sys

import torch

# Runnable from a checkout without installing (same as the other benchmarks).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from crowdloss.engine.runner import cpu_has_native_bf16  # noqa: E402
from rcnn_step import variants_main  # noqa: E402  (benchmarks/ is this script's path[0])

if __name__ == "__main__":
    print(f"native bfloat16 on this CPU: {cpu_has_native_bf16()}; CPU seconds per training "
          "step, one thread")
    variants_main(__doc__, [("fp32", False, None), ("bf16", False, torch.bfloat16),
                            ("bf16+NHWC", True, torch.bfloat16)], ("fp32", "bf16"),
                  "float32 / bfloat16 step CPU time (NCHW both)")
