"""Faster R-CNN training step vs an FCOS training step on the same synthcrowd batch (CPU, one
thread).

The two models are the playground's synthcrowd experiments, built from their own config.py /
net.py: ``faster_rcnn.res18.fpn.synthcrowd.256size.2600`` (or, with --repulsion, its
``repgt_repbox`` variant) and ``fcos.res18.fpn.synthcrowd.256size.2600``: the same half-width
ResNet-18 + FPN (64 channels; P2-P6 for the R-CNN, P3-P7 for FCOS) and the same input
pipeline (short side 256, max 384). One batch of IMS_PER_DEVICE (4) images is drawn once from
synthcrowd_train with the experiments' train pipeline and given to both.

A step is forward + backward + an SGD update (LR 0.02 momentum 0.9, as the experiments);
``--warmup`` steps of each are run first (the R-CNN's proposals are random at initialisation
and NMS cost depends on them; after a few updates they settle), then ``--steps`` steps of each
are timed, the two models alternating step by step so that a change of load on a shared
machine hits both alike. Time is the process CPU time (one thread; wall time mostly measures
the neighbours, so it is printed but not used); each model's figure is its median step.

Usage: python benchmarks/rcnn_step.py [--steps 8] [--warmup 3] [--repulsion]
Needs synthcrowd (CROWDLOSS_DATASETS; generated on first use). Prints one line per model and,
LAST, the ratio Faster R-CNN / FCOS (median CPU seconds per step).
"""
import argparse
import copy
import math
import os
import statistics
import sys
import time

import torch

# Runnable from a checkout without installing (same as the other benchmarks).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from crowdloss.cli.common import load_experiment  # noqa: E402
from crowdloss.data import build_train_loader  # noqa: E402

SYNTH = os.path.join(ROOT, "playground", "detection", "synthcrowd")
FCOS_EXP = "fcos.res18.fpn.synthcrowd.256size.2600"
RCNN_EXP = "faster_rcnn.res18.fpn.synthcrowd.256size.2600"
RCNN_REP_EXP = "faster_rcnn.repgt_repbox.res18.fpn.synthcrowd.256size.2600"


def build(exp_name):
    exp = load_experiment(os.path.join(SYNTH, exp_name))
    cfg = exp.config
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATALOADER.NUM_WORKERS = 0
    torch.manual_seed(0)
    model = exp.build_model(cfg)
    model.train()
    return cfg, model


class Stepper:
    """Training steps of one model on a fixed batch, with their CPU and wall times."""

    def __init__(self, model, batch, autocast_dtype=None):
        self.model, self.batch, self.autocast_dtype = model, batch, autocast_dtype
        self.opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        self.cpu, self.wall, self.losses = [], [], {}

    def step(self, record: bool):
        c0, w0 = time.process_time(), time.perf_counter()
        amp = self.autocast_dtype is not None
        with torch.autocast("cpu", dtype=self.autocast_dtype or torch.bfloat16, enabled=amp):
            losses = self.model(self.batch)
        total = sum(losses.values())
        self.opt.zero_grad()
        total.backward()
        self.opt.step()
        if record:
            self.cpu.append(time.process_time() - c0)
            self.wall.append(time.perf_counter() - w0)
        if not torch.isfinite(total):
            raise SystemExit(f"non-finite loss: {losses}")
        self.losses = {k: float(v.detach()) for k, v in losses.items()}


#: the synthcrowd experiments the per-variant step benchmarks time by default
STEP_EXPERIMENTS = ("lla.res18.fpn.synthcrowd.256size.2600",
                    "ssd300.vgg16q.synthcrowd.300size.2600",
                    "faster_rcnn.res18.fpn.synthcrowd.256size.2600")


def time_variants(exp_name, variants, steps, warmup):
    """Median CPU seconds per training step of copies of one experiment's model with the same
    weights, one per variant ``(name, channels_last, autocast dtype or None)``, on one batch of
    its train pipeline; the variants alternate step by step so that load changes hit all."""
    from crowdloss.data import build_train_loader
    from crowdloss.modeling.meta_arch import place_model

    cfg, model = build(exp_name)
    batch = next(iter(build_train_loader(cfg)))
    steppers = {}
    for name, channels_last, dtype in variants:
        cfg.MODEL.CHANNELS_LAST = channels_last
        steppers[name] = Stepper(place_model(copy.deepcopy(model), cfg), batch, dtype)
    for i in range(warmup + steps):
        for st in steppers.values():
            torch.manual_seed(i)  # the R-CNN samplers draw at random: the same draws for all
            st.step(record=i >= warmup)
    return {name: statistics.median(st.cpu) for name, st in steppers.items()}


def variants_main(doc, variants, ratio, headline):
    """CLI of a per-variant step benchmark: ``[EXPERIMENT ...] [--steps] [--warmup]``; one
    line per experiment, LAST the geometric mean over them of ``ratio`` = (numerator variant,
    denominator variant) of the step times, printed after ``headline``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("experiments", nargs="*", default=list(STEP_EXPERIMENTS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios = []
    for exp_name in args.experiments:
        med = time_variants(exp_name, variants, args.steps, args.warmup)
        ratios.append(med[ratio[0]] / med[ratio[1]])
        others = "".join(f"  {ratio[0]}/{k} {med[ratio[0]] / v:.2f}" for k, v in med.items()
                         if k != ratio[0])
        print(f"{exp_name:48s} " + "  ".join(f"{k} {v:.3f} s" for k, v in med.items()) + others)
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"{headline}, geometric mean over {len(ratios)} experiments: {geo:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repulsion", action="store_true",
                        help=f"time {RCNN_REP_EXP} instead of {RCNN_EXP}")
    args = parser.parse_args()
    torch.set_num_threads(1)

    fcos_cfg, fcos = build(FCOS_EXP)
    rcnn_cfg, rcnn = build(RCNN_REP_EXP if args.repulsion else RCNN_EXP)
    pipes = [repr(c.INPUT.AUG.TRAIN_PIPELINES) for c in (fcos_cfg, rcnn_cfg)]
    if pipes[0] != pipes[1] or fcos_cfg.SOLVER.IMS_PER_DEVICE != rcnn_cfg.SOLVER.IMS_PER_DEVICE:
        raise SystemExit("the two experiments no longer share their input: compare like for like")
    batch = next(iter(build_train_loader(fcos_cfg)))
    sizes = [tuple(x["image"].shape[1:]) for x in batch]
    gts = [int((x["instances"].gt_classes >= 0).sum()) for x in batch]
    print(f"batch: {len(batch)} images {sizes}, valid GTs {gts}, one thread")

    steppers = {"fcos": Stepper(fcos, batch), "faster_rcnn": Stepper(rcnn, batch)}
    # Interleaved, so that a change of load on the shared machine hits both models alike.
    for i in range(args.warmup + args.steps):
        for stepper in steppers.values():
            stepper.step(record=i >= args.warmup)
    cpu = {}
    for name, st in steppers.items():
        cpu[name] = statistics.median(st.cpu)
        params = sum(p.numel() for p in st.model.parameters()) / 1e6
        shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(st.losses.items()))
        print(f"{name:12s} {cpu[name]:.3f} s CPU / step (wall {statistics.median(st.wall):.3f} s), "
              f"{params:.2f} M params; last losses: {shown}")
    print(f"faster_rcnn / fcos step CPU time ratio: {cpu['faster_rcnn'] / cpu['fcos']:.2f}")


if __name__ == "__main__":
    main()
