"""The synthcrowd schedule: one solver for every ``playground/detection/synthcrowd/`` experiment,
and the config of the three reference experiments (LLA, FCOS, ATSS) at either length.

A synthcrowd comparison (the README's tables, ``python -m crowdloss.tools.benchmark``) is only
fair when the experiments differ in the method and nothing else, so they all take their
solver from here: SGD at LR 0.02 with a 100-iteration linear warm-up from 1/1000, 2600
iterations of 4 images on ONE process, LR / 10 at 2000 and 2420. The comparison schedule of
the reference three is twice as long (5200, LR steps at 4000 and 4840): at 2600 LLA's seed std
is about 2 points of MR^-2, at 5200 about half that for FCOS and ATSS and 1.7 for LLA's
MR^-2 over 6 seeds (docs/benchmark.md).

Every key is spelled out, not inherited, because the config classes disagree on defaults
(``PyTorchRetinaNetConfig`` clips gradients at norm 0.1, as pytorch-retinanet does). The one
exception is ``SOLVER.EMA``: off in every config class, and its DECAY, set here while off,
would be reported as an unread key (a moving average did not help LLA here:
docs/benchmark.md).

Gradients are clipped at total L2 norm 5. The models train from scratch with BatchNorm, and
while the LR warms up an occasional batch gives a gradient 10-60x the usual norm (measured
over the first 200 iterations: median 3-4, single steps of 40-170). Without clipping that one
step decided the run: each method's worst seed was the one with the largest early loss spike,
4-18 AP50 points below the others. A norm of 5 caps those steps; after the warm-up it almost
never binds (docs/benchmark.md).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Sequence, Tuple

__all__ = ["synthcrowd_solver", "synthcrowd_input", "synthcrowd_reference_config",
           "SYNTHCROWD_LENGTHS"]

# The two lengths of the schedule: max_iter -> LR steps (every phase scales with the length).
SYNTHCROWD_LENGTHS = {2600: (2000, 2420), 5200: (4000, 4840)}


def synthcrowd_solver(*, max_iter: int = 2600) -> Dict[str, Any]:
    """A fresh ``SOLVER`` dict of the synthcrowd schedule (fresh, so a config may edit it).

    Args:
        max_iter: 2600 (every synthcrowd experiment) or 5200 (the comparison schedule of the
            reference three); the warm-up, LR and clipping are the same at both lengths.
    """
    if max_iter not in SYNTHCROWD_LENGTHS:
        raise ValueError(f"synthcrowd_solver: max_iter must be one of "
                         f"{sorted(SYNTHCROWD_LENGTHS)}, got {max_iter!r}")
    return dict(
        LR_SCHEDULER=dict(
            NAME="WarmupMultiStepLR",
            MAX_ITER=max_iter,
            STEPS=SYNTHCROWD_LENGTHS[max_iter],
            GAMMA=0.1,
            WARMUP_METHOD="linear",
            WARMUP_FACTOR=1.0 / 1000,
            WARMUP_ITERS=100,
        ),
        OPTIMIZER=dict(
            NAME="D2SGD",
            # 0.02 beat 0.01 for these from-scratch models (FCOS AP50 0.486 vs 0.455 at 1500
            # iterations, before clipping).
            BASE_LR=0.02,
            BIAS_LR_FACTOR=1.0,
            WEIGHT_DECAY=1e-4,
            WEIGHT_DECAY_NORM=0.0,
            MOMENTUM=0.9,
        ),
        CLIP_GRADIENTS=dict(ENABLED=True, CLIP_TYPE="norm", CLIP_VALUE=5.0, NORM_TYPE=2.0),
        IMS_PER_BATCH=4,
        IMS_PER_DEVICE=4,
        BATCH_SUBDIVISIONS=1,
        # Written for one process: more processes scale the batch and the LR (linear rule).
        REFERENCE_WORLD_SIZE=1,
        CHECKPOINT_PERIOD=500,
    )


def synthcrowd_input() -> Dict[str, Any]:
    """A fresh ``INPUT`` dict of the ResNet-FPN synthcrowd experiments: train at short side 256
    (max 384) with horizontal flips, test at 320 (max 480). (SSD300 has its own input.)"""
    return dict(
        AUG=dict(
            TRAIN_PIPELINES=[
                ("ResizeShortestEdge",
                 dict(short_edge_length=(256,), max_size=384, sample_style="choice")),
                ("RandomFlip", dict()),
            ],
            # Testing a bit larger than training helps the small persons (AP50 +0.016).
            TEST_PIPELINES=[
                ("ResizeShortestEdge",
                 dict(short_edge_length=320, max_size=480, sample_style="choice")),
            ],
        ),
    )


# The FCOS-head keys that make each reference experiment its method; everything else is shared.
_METHOD_KEYS = {
    # LLA (arXiv 2101.04307): top-10 candidates by cls + 1.5 x reg cost, IoU branch weight 0.5.
    "lla": dict(FCOS=dict(REG_WEIGHT=2.0), LLA=dict(TOPK=10, REG_COST=1.5, IOU_WEIGHT=0.5)),
    # FCOS (arXiv 1904.01355) with its "improvements": GIoU, centre sampling at 1.5 strides.
    "fcos": dict(FCOS=dict(IOU_LOSS_TYPE="giou", CENTER_SAMPLING_RADIUS=1.5, REG_WEIGHT=1.0)),
    # ATSS (arXiv 1912.02424): top 9 per level by centre distance, 8 x stride anchor.
    "atss": dict(FCOS=dict(IOU_LOSS_TYPE="giou", REG_WEIGHT=2.0),
                 ATSS=dict(TOPK=9, ANCHOR_SCALE=8)),
}


def synthcrowd_reference_config(*, method: str, max_iter: int = 2600,
                                channels_last: bool = False,
                                bbox_bias_init: float = 0.0,
                                expected_results: Sequence[Tuple[str, float, float]] = ()
                                ) -> Dict[str, Any]:
    """The config dict of ``{method}.res18.fpn.synthcrowd.256size.{max_iter}``.

    Identical backbone (ResNet-18 at half width, BN, from scratch), FPN 64, head 2 convs x 64,
    input (train short side 256 / max 384 with flips, test 320 / 480), batch 4 and schedule,
    so that the three differ only in label assignment and losses.

    Args:
        method: "lla", "fcos" or "atss".
        max_iter: the schedule's length (``synthcrowd_solver``).
        channels_last: ``MODEL.CHANNELS_LAST``, the weights' memory layout (the same model;
            other kernels, so not the same digits).
        bbox_bias_init: ``MODEL.FCOS.BBOX_BIAS_INIT``, the box outputs' initial bias: 0 as
            published; 1.0 starts every distance at about one stride, so that the warm-up
            cannot kill a side of the box output (the ``.boxbias`` experiments).
        expected_results: (metric, mean, tolerance) of the band ``pods_test`` checks a run
            against on synthcrowd_val: the runner's report, mean +- 3 seed stds (at least 0.01).
    """
    if method not in _METHOD_KEYS:
        raise ValueError(f"synthcrowd_reference_config: method must be one of "
                         f"{sorted(_METHOD_KEYS)}, got {method!r}")
    keys = copy.deepcopy(_METHOD_KEYS[method])
    head = dict(
        NUM_CLASSES=1,
        # A narrow head for the CPU: 2 convs of 64 channels per tower.
        NUM_CONVS=2,
        HEAD_CHANNELS=64,
        CENTERNESS_ON_REG=True,
        NORM_REG_TARGETS=True,
        NMS_THRESH_TEST=0.6,
        BBOX_BIAS_INIT=float(bbox_bias_init),
        **keys.pop("FCOS"),
    )
    return dict(
        MODEL=dict(
            WEIGHTS="",
            CHANNELS_LAST=channels_last,
            BACKBONE=dict(FREEZE_AT=0),
            RESNETS=dict(DEPTH=18, NORM="BN", STEM_OUT_CHANNELS=32, RES2_OUT_CHANNELS=32),
            FPN=dict(OUT_CHANNELS=64),
            SHIFT_GENERATOR=dict(OFFSET=0.0),
            FCOS=head,
            **keys,
        ),
        DATASETS=dict(TRAIN=("synthcrowd_train",), TEST=("synthcrowd_val",)),
        DATALOADER=dict(NUM_WORKERS=1),
        SOLVER=synthcrowd_solver(max_iter=max_iter),
        INPUT=synthcrowd_input(),
        # A fixed seed (chosen before any run, not tuned): `make demo` gives the same numbers
        # on every run of the same machine type and thread count. The runner varies it.
        SEED=0,
        TEST=dict(
            # pods_test evaluates (make demo, the benchmark runner); -1: pods_train does not
            # evaluate the same final model a second time (1000 val images, ~50 s each).
            EVAL_PERIOD=-1,
            DETECTIONS_PER_IMAGE=300,
            EXPECTED_RESULTS=[["synthcrowd_val", "crowdhuman", metric, mean, tol]
                              for metric, mean, tol in expected_results],
        ),
    )
