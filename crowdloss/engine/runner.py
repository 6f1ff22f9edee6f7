"""DefaultRunner: builds everything from a config and trains with ``TrainLoop``'s loop.

From the config: the model (``net.py``'s ``build_model``; DDP-wrapped in distributed runs), the
optimizer and LR schedule, the train loader (built lazily at the start iteration), the
checkpointer, the hooks (LR schedule, timer, weight average, checkpoints, evaluation, metric
writers, in that order) and the step's settings (``SOLVER.BATCH_SUBDIVISIONS``, ``SOLVER.AMP``,
``SOLVER.CLIP_GRADIENTS``). ``resume_or_load`` resumes exactly or loads ``MODEL.WEIGHTS``;
``test`` evaluates a model on ``DATASETS.TEST``. The iteration itself is ``engine.train_loop``.
"""
from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from crowdloss.config.access import cfg_get
from crowdloss.utils import comm

from . import hooks
from .checkpoint import DetectionCheckpointer, unwrap_model
from .class_remap import class_remap_from_config
from .ema import ModelEMA
from .events import CommonMetricPrinter, JSONWriter, TensorboardWriter, resume_metrics_file
from .provenance import run_provenance
from .solver import build_lr_scheduler, build_optimizer
from .train_loop import TrainLoop

__all__ = ["DefaultRunner"]

logger = logging.getLogger("crowdloss.engine")


def _cfg_builder(cfg, name: str) -> Optional[Callable]:
    """A builder that net.py attached to cfg (cvpods style), or None."""
    try:
        fn = getattr(cfg, name)
    except (AttributeError, KeyError):
        return None
    return fn if callable(fn) else None


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively here (AVX512-BF16 or AMX): without
    them CPU autocast emulates bfloat16 and is slower than float32."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without the probe
        return False


def _amp_dtype(cfg, device: torch.device) -> Optional[torch.dtype]:
    """``SOLVER.AMP``'s autocast dtype, or None (off, or unsupported on this device: warned).

    CUDA takes float16 (with loss scaling) or bfloat16; the CPU takes bfloat16 only (its
    float16 convolutions are not accelerated), and is warned when it lacks native bfloat16.
    """
    amp = cfg.SOLVER.AMP
    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    if amp.DTYPE not in dtypes:
        raise ValueError(f"SOLVER.AMP.DTYPE = {amp.DTYPE!r}; expected 'float16' or 'bfloat16'")
    if not amp.ENABLED:
        return None
    if device.type == "cpu" and amp.DTYPE == "bfloat16":
        if not cpu_has_native_bf16():
            msg = ("SOLVER.AMP on a CPU without native bfloat16 (AVX512-BF16 / AMX): autocast "
                   "emulates it, expect training slower than float32")
            warnings.warn(msg)
            logger.warning(msg)
        return torch.bfloat16
    if device.type != "cuda":
        need = "SOLVER.AMP.DTYPE bfloat16" if device.type == "cpu" else "CUDA"
        msg = (f"SOLVER.AMP.ENABLED is ignored on {device} with DTYPE {amp.DTYPE}: AMP needs "
               f"{need}; training in float32")
        warnings.warn(msg)
        logger.warning(msg)
        return None
    return dtypes[amp.DTYPE]


class DefaultRunner(TrainLoop):
    """Trains ``build_model(cfg)`` as configured by ``cfg`` (cvpods' DefaultRunner semantics).

    Args:
        cfg: a crowdloss config (SOLVER, MODEL, DATASETS, TEST, OUTPUT_DIR keys).
        build_model: ``net.py``'s ``build_model(cfg) -> nn.Module``.
    """

    def __init__(self, cfg, build_model: Callable[[Any], nn.Module]) -> None:
        from crowdloss.modeling.meta_arch import place_model  # the model stack, on first use

        self.cfg = cfg
        device = torch.device(cfg.MODEL.DEVICE)
        model = place_model(build_model(cfg), cfg)
        logger.info("Model:\n%s", model)
        optimizer = self.build_optimizer(cfg, model)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        if comm.get_world_size() > 1:
            # Gradients are all-reduced; BN statistics stay per rank (as cvpods), hence no
            # buffer broadcast. device_ids only for CUDA (CPU DDP takes none).
            ids = [device.index if device.index is not None else comm.get_local_rank()]
            model = nn.parallel.DistributedDataParallel(
                model,
                device_ids=ids if device.type == "cuda" else None,
                broadcast_buffers=False,
                find_unused_parameters=False,
            )
        # The step's settings are read here rather than per step: every component reads its
        # keys when it is built (the unread-key report checks them before the first step).
        amp_dtype = _amp_dtype(cfg, device)
        clip = cfg.SOLVER.CLIP_GRADIENTS
        clip_type = clip.CLIP_TYPE if clip.ENABLED else None
        clip_value = float(clip.CLIP_VALUE) if clip.ENABLED else 0.0
        norm_type = float(clip.NORM_TYPE) if clip_type == "norm" else 2.0
        super().__init__(
            model, optimizer, device=device, amp_dtype=amp_dtype, clip_type=clip_type,
            clip_value=clip_value, clip_norm_type=norm_type,
            subdivisions=int(cfg.SOLVER.BATCH_SUBDIVISIONS),
            max_iter=int(cfg.SOLVER.LR_SCHEDULER.MAX_ITER))
        # Built on first use, once the start iteration is known: building a real loader reads
        # the whole annotation set, which a resume would otherwise pay for twice.
        self._data_loader_start = 0
        ema = cfg.SOLVER.EMA
        # DECAY is read only when the average is on (the unread-key report flags it otherwise).
        self.ema = ModelEMA(unwrap_model(model), decay=float(ema.DECAY)) if ema.ENABLED else None
        self.checkpointer = DetectionCheckpointer(
            unwrap_model(model), cfg.OUTPUT_DIR, provenance=run_provenance(cfg, model, build_model),
            optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler, ema=self.ema,
        )
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------ builders
    @classmethod
    def build_optimizer(cls, cfg, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        """``cfg.build_train_loader`` if net.py attached one, else ``crowdloss.data``'s.

        ``start_iter`` is the number of loader batches this rank already consumed; a loader
        whose builder does not take it restarts its order (logged).
        """
        fn = _cfg_builder(cfg, "build_train_loader")
        if fn is None:
            from crowdloss.data import build_train_loader as fn
        try:
            takes_start = "start_iter" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes_start = False
        if takes_start:
            return fn(cfg, start_iter=start_iter)
        if start_iter:
            logger.warning("%s takes no start_iter: the resumed data order restarts", fn)
        return fn(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        fn = _cfg_builder(cfg, "build_test_loader")
        if fn is None:
            from crowdloss.data import build_test_loader as fn
        return fn(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None):
        fn = _cfg_builder(cfg, "build_evaluator")
        if fn is None:
            from crowdloss.evaluation import build_evaluator as fn
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return fn(cfg, dataset_name, output_folder)

    def build_writers(self) -> list:
        out = self.cfg.OUTPUT_DIR
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(out, "metrics.json")),
            TensorboardWriter(out),
        ]

    def build_hooks(self) -> List[hooks.HookBase]:
        cfg = self.cfg
        ret: List[hooks.HookBase] = [
            hooks.IterationToModel(),
            hooks.LRScheduler(self.optimizer, self.scheduler),
            hooks.IterationTimer(),
            hooks.EMAUpdate(self.ema) if self.ema is not None else None,
            hooks.PeriodicCheckpointer(
                self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, self.max_iter
            ),
            hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self._evaluate_during_training),
        ]
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return [h for h in ret if h is not None]

    def _evaluate_during_training(self) -> Dict[str, Any]:
        """Scores the weights a checkpoint of this iteration would hand to pods_test: the
        averaged ones under SOLVER.EMA (unless TEST.EMA_WEIGHTS is False)."""
        source = f"iteration {self.iter + 1}"
        if self.ema is None or not self.cfg.TEST.EMA_WEIGHTS:
            return self.test(self.cfg, unwrap_model(self.model), source=source)
        with self.ema.swapped() as model:
            return self.test(self.cfg, model, source=source + " (EMA weights)")

    @property
    def data_loader(self):
        """This rank's train loader, positioned at ``start_iter`` (x BATCH_SUBDIVISIONS batches)."""
        start = self.start_iter * self.subdivisions
        if self._data_loader is None or self._data_loader_start != start:
            self._data_loader = self.build_train_loader(self.cfg, start_iter=start)
            self._data_loader_start = start
        return self._data_loader

    # ------------------------------------------------------------------ resume / load
    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from OUTPUT_DIR's newest checkpoint, else load ``MODEL.WEIGHTS`` (model only).

        Resuming restores model, optimizer, scheduler, scaler and RNG states and continues at
        the checkpoint's iteration + 1, with the data loader rebuilt to start there; an
        unreadable newest checkpoint falls back to the previous one, and ``metrics.json`` is
        cut back to the iterations before the resume point (see ``resume_metrics_file``).
        ``MODEL.WEIGHTS`` must fill ``MODEL.WEIGHTS_MIN_COVERAGE.TRAIN`` of the model.
        Temp files of killed checkpoint writes are removed first.
        """
        weights = self.cfg.MODEL.WEIGHTS
        # Part of the MODEL.WEIGHTS setting: read with it, used when the file is loaded.
        weights_classes = self.cfg.MODEL.WEIGHTS_CLASSES
        self.checkpointer.remove_stale_temp_files()
        extra = self.checkpointer.resume() if resume else None
        if extra is not None:
            if weights:
                logger.info("Resuming: MODEL.WEIGHTS %s is not loaded (the checkpoint holds "
                            "the trained model)", weights)
            self.start_iter = int(extra.get("iteration", -1)) + 1
            rng = extra.get("rng")
            if isinstance(rng, (list, tuple)):  # one state per rank (distributed runs)
                rng = rng[comm.get_rank()] if comm.get_rank() < len(rng) else rng[0]
            self._pending_rng = rng
            if self.checkpointer.save_to_disk and self.cfg.OUTPUT_DIR:
                resume_metrics_file(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"),
                                    self.start_iter, extra.get("metrics"))
            logger.info("Resuming at iteration %d from %s", self.start_iter, extra["path"])
        else:
            self.start_iter = 0
            if weights:
                key = "MODEL.WEIGHTS_MIN_COVERAGE.TRAIN"
                least = float(cfg_get(self.cfg, key))
                remap = (class_remap_from_config(self.cfg, "DATASETS.TRAIN")
                         if weights_classes else None)
                self.checkpointer.load_model_weights(
                    weights, min_coverage=least, requirement=f"{key} = {least:g}", cfg=self.cfg,
                    class_remap=remap)
        comm.synchronize()

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def test(cls, cfg, model: nn.Module, evaluators: Optional[list] = None, *,
             output_dir: Optional[str] = None, source: str = "",
             print_results: bool = True) -> Dict[str, Any]:
        """Evaluate ``model`` on each of ``cfg.DATASETS.TEST``; returns ``{dataset: results}``.

        Args:
            output_dir: where each dataset's result files go (``<output_dir>/<dataset>``);
                default ``OUTPUT_DIR/inference``.
            source: what is evaluated ("model_final.pth, iteration 2600"), for evaluators
                that label their outputs with it (plot titles).
            print_results: log each dataset's metrics (pods_test prints one table at the end
                instead).
        """
        names = list(cfg.DATASETS.TEST)
        if not names:
            return {}
        from crowdloss.evaluation import inference_on_dataset, print_csv_format

        if evaluators is not None and len(evaluators) != len(names):
            raise ValueError(
                f"{len(evaluators)} evaluators for {len(names)} datasets in DATASETS.TEST"
            )
        results: Dict[str, Any] = OrderedDict()
        for idx, name in enumerate(names):
            loader = cls.build_test_loader(cfg, name)
            if evaluators is not None:
                evaluator = evaluators[idx]
            else:
                folder = os.path.join(output_dir, name) if output_dir else None
                evaluator = cls.build_evaluator(cfg, name, folder)
            if source and hasattr(evaluator, "source"):
                evaluator.source = source
            res = inference_on_dataset(model, loader, evaluator)
            results[name] = res
            if print_results and comm.is_main_process() and res:
                logger.info("Evaluation results for %s%s:", name, f" ({source})" if source else "")
                print_csv_format(res)
        return results
