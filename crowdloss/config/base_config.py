"""``BaseConfig``: the root of the config class chain, with the task-independent defaults.

A playground experiment chains configs exactly as in cvpods::

    _config_dict = dict(MODEL=dict(LLA=dict(TOPK=10)), SOLVER=dict(IMS_PER_BATCH=16))

    class CustomFCOSConfig(FCOSConfig):
        def __init__(self):
            super().__init__()
            self._register_configuration(_config_dict)

    config = CustomFCOSConfig()

Each class's ``__init__`` calls its parent's, then registers (merges) its own dict, so the defaults
of a class live in one module-level ``_config_dict`` next to it. Legacy flat keys
(``SOLVER.BASE_LR``...) are migrated before merging (see ``legacy.py``).

``diff_from_parent()`` compares with a fresh instance of the *parent config class*: the first
class of the MRO defined inside the ``crowdloss`` package. For a playground config that is the
crowdloss class it subclasses, so the diff is exactly what the experiment (plus any command-line
override) changed. ``experiment_keys()`` adds the keys the experiment's dict restates with their
default values: the keys the unread-key report checks (``tracking.py``).

Every key a component reads is declared here or in a subclass, with its default; components
read keys without a code default (``cfg_get(cfg, "A.B")``), so a default exists in one place.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Type

from . import legacy
from .config_dict import ConfigDict
from .tracking import untracked

__all__ = ["BaseConfig", "config_diff"]

logger = logging.getLogger(__name__)

# Task-independent defaults (cvpods' base_config.py names and values).
_config_dict: Dict[str, Any] = dict(
    MODEL=dict(
        # "cuda"; the CLI falls back to "cpu" when CUDA is absent.
        DEVICE="cuda",
        # Keep the model's 4-D weights in NHWC order (torch.channels_last), so every conv runs
        # in that layout: the same model and weights, different float rounding; training steps
        # 1.14-1.36x faster on CPU (oneDNN; benchmarks/channels_last.py), also the layout
        # tensor cores prefer under AMP. Checkpoints load either way.
        CHANNELS_LAST=False,
        # Checkpoint or backbone weights to load ("" = none): .pth, MSRA .pkl, detectron2://...
        WEIGHTS="",
        # Least fraction of the model's values (parameters and buffers) a weights file must
        # fill, else the run stops with an error naming what is missing. TRAIN: loading
        # MODEL.WEIGHTS to start training (an ImageNet backbone fills 73-89% of our detectors;
        # a checkpoint of another model ~0%). TEST: pods_test (a random head gives garbage).
        WEIGHTS_MIN_COVERAGE=dict(TRAIN=0.5, TEST=1.0),
        # The class names of MODEL.WEIGHTS' classifier, in channel order: a list of names,
        # "coco" (the 80 COCO classes in category-id order) or the path of a class-map CSV
        # (name,id) or names file (one a line). Set, the classifier channels of the classes
        # the datasets' thing_classes share with it are kept (by name, per anchor) and the
        # others start from the prior init; partly filled tensors count that fraction
        # toward WEIGHTS_MIN_COVERAGE. "" / () = no remapping (shapes must agree).
        WEIGHTS_CLASSES=(),
        # BGR order (INPUT.FORMAT) in 0-255; std 1 because MSRA weights absorbed it in conv1.
        PIXEL_MEAN=[103.530, 116.280, 123.675],
        PIXEL_STD=[1.0, 1.0, 1.0],
    ),
    INPUT=dict(
        FORMAT="BGR",
        AUG=dict(
            TRAIN_PIPELINES=[
                ("ResizeShortestEdge",
                 dict(short_edge_length=(800,), max_size=1333, sample_style="choice")),
                ("RandomFlip", dict()),
            ],
            TEST_PIPELINES=[
                ("ResizeShortestEdge",
                 dict(short_edge_length=800, max_size=1333, sample_style="choice")),
            ],
        ),
    ),
    DATASETS=dict(TRAIN=(), TEST=()),
    DATALOADER=dict(
        NUM_WORKERS=2,
        # Batch portrait and landscape images separately (less padding).
        ASPECT_RATIO_GROUPING=True,
        FILTER_EMPTY_ANNOTATIONS=True,
        # The data order and augmentation draws of training; < 0: those of SEED. Set apart
        # from SEED, the initialisation and the data stream vary separately (a seed study).
        SEED=-1,
    ),
    SOLVER=dict(
        LR_SCHEDULER=dict(
            NAME="WarmupMultiStepLR",
            MAX_ITER=40000,
            STEPS=(30000,),
            WARMUP_FACTOR=1.0 / 1000,
            WARMUP_ITERS=1000,
            WARMUP_METHOD="linear",
            GAMMA=0.1,
        ),
        OPTIMIZER=dict(
            NAME="D2SGD",
            BASE_LR=0.01,
            BIAS_LR_FACTOR=1.0,
            WEIGHT_DECAY=1e-4,
            # Weight decay of normalization layers' affine parameters.
            WEIGHT_DECAY_NORM=0.0,
            MOMENTUM=0.9,
            # Adam / AdamW only.
            BETAS=(0.9, 0.999),
        ),
        CHECKPOINT_PERIOD=5000,
        # Images per step over all processes; IMS_PER_BATCH / IMS_PER_DEVICE must equal
        # REFERENCE_WORLD_SIZE, the process count the schedule is written for (see rescale.py).
        IMS_PER_BATCH=16,
        IMS_PER_DEVICE=2,
        # Split each device batch into this many chunks and accumulate their gradients.
        BATCH_SUBDIVISIONS=1,
        REFERENCE_WORLD_SIZE=8,
        CLIP_GRADIENTS=dict(ENABLED=False, CLIP_TYPE="norm", CLIP_VALUE=1.0, NORM_TYPE=2.0),
        AMP=dict(ENABLED=False, DTYPE="float16"),
        # An exponential moving average of the weights, updated after every step; checkpoints
        # hold it as their "model" (what pods_test scores). DECAY once ramped up: an average
        # over about 1 / (1 - DECAY) steps (0.9998, YOLOX's, suits long schedules).
        EMA=dict(ENABLED=False, DECAY=0.9998),
    ),
    TEST=dict(
        # > 0: evaluate every EVAL_PERIOD iterations; 0: after training only; < 0: never.
        EVAL_PERIOD=0,
        # A checkpoint of a SOLVER.EMA run holds the weight average and the trained weights:
        # True scores the average (its "model"), False the trained weights.
        EMA_WEIGHTS=True,
        DETECTIONS_PER_IMAGE=100,
        # Checked after the final evaluation of pods_train and after pods_test:
        # [[dataset, task, metric, expected, tolerance], ...] (dataset may be left out when
        # DATASETS.TEST has one), e.g. ["synthcrowd_val", "crowdhuman", "AP", 0.62, 0.03]:
        # inside when |result - expected| <= tolerance. See docs/config.md.
        EXPECTED_RESULTS=[],
        # A result outside its band: "warn" (a warning per entry) or "error" (exit status 1).
        EXPECTED_RESULTS_MISMATCH="warn",
    ),
    # "" = derive from the experiment dir (crowdloss.config.default_output_dir).
    OUTPUT_DIR="",
    # < 0: a random seed per run; >= 0: fixed.
    SEED=-1,
    # torch.backends.cudnn.benchmark: autotune conv algorithms (fast for fixed input sizes,
    # not bit-reproducible across runs).
    CUDNN_BENCHMARK=False,
    # Keys this experiment set that the run never read: "warn", "error" or "off".
    UNREAD_KEYS="warn",
)


class BaseConfig(ConfigDict):
    """Root config class: builds the task-independent defaults.

    Subclasses call ``super().__init__()`` then ``self._register_configuration(their_dict)``.
    """

    def __init__(self):
        super().__init__()
        self._register_configuration(_config_dict)

    def _register_configuration(self, config: Mapping) -> None:
        """Merge a nested dict into self, migrating legacy keys first (cvpods' name).

        The leaf keys of each registered dict are remembered, in order, so that
        ``experiment_keys`` can tell the keys of the classes beyond the parent config class.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"can only register a mapping, got {type(config).__name__}")
        with untracked():
            migrated, _ = legacy.migrate(config, self)
            registered = self.__dict__.setdefault("_registered_keys", [])
            registered.append(ConfigDict(migrated).flat_keys())
            ConfigDict.merge(self, migrated)

    def merge(self, other: Optional[Mapping] = None, **kwargs: Any) -> "BaseConfig":
        """``ConfigDict.merge`` after moving legacy keys (``SOLVER.BASE_LR``...) to their homes."""
        with untracked():
            for source in (other or {}, kwargs):
                if not isinstance(source, Mapping):
                    raise TypeError(f"can only merge a mapping into a config, got "
                                    f"{type(source).__name__}")
                migrated, _ = legacy.migrate(source, self)
                super().merge(migrated)
        return self

    @classmethod
    def parent_config_class(cls) -> Type["BaseConfig"]:
        """The first class of the MRO defined in the ``crowdloss`` package.

        Playground experiments are loaded under their own module names, so a class whose
        module is ``crowdloss`` or ``crowdloss.*`` is a library class, anything else a user's.
        """
        for klass in cls.__mro__:
            module = klass.__module__ or ""
            if issubclass(klass, BaseConfig) and (module == "crowdloss"
                                                  or module.startswith("crowdloss.")):
                return klass
        return BaseConfig  # unreachable: BaseConfig itself is in the MRO

    def diff_from_parent(self) -> Dict[str, Any]:
        """Nested dict of the keys whose values differ from a fresh parent config instance."""
        return self.diff(self.parent_config_class()())

    def experiment_keys(self) -> List[str]:
        """Sorted dotted leaf keys the experiment set: those registered by the classes beyond
        the parent config class (even at their default value) and those whose value differs
        from the parent's (however they were changed)."""
        with untracked():
            parent = self.parent_config_class()()
            skip = len(parent.__dict__.get("_registered_keys", []))
            keys = {k for keys in self.__dict__.get("_registered_keys", [])[skip:] for k in keys}
            keys.update(ConfigDict(self.diff(parent)).flat_keys())
        return sorted(keys)


def config_diff(cfg: BaseConfig) -> Dict[str, Any]:
    """``cfg.diff_from_parent()``: what an experiment changed relative to its crowdloss class.

    Raises:
        TypeError: ``cfg`` is not a ``BaseConfig`` (a bare ``ConfigDict`` has no parent class).
    """
    if not isinstance(cfg, BaseConfig):
        raise TypeError(f"config_diff needs a BaseConfig subclass instance, got "
                        f"{type(cfg).__name__}; a bare ConfigDict has no parent config class")
    return cfg.diff_from_parent()
