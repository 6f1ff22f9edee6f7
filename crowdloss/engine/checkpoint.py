"""Crash-safe training checkpoints: saving, finding, resuming, and ``MODEL.WEIGHTS`` loads.

A training checkpoint (read back with ``torch.load(weights_only=True)``)::

    {"model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ... | None,
     "iteration": int (0-based index of the last finished iteration, as in detectron2),
     "rng": utils.env.get_rng_state() (a list with one per rank in distributed runs),
     "metrics": [{"iteration": i, scalar: value}] not yet in metrics.json when it was saved,
     "meta": engine.provenance.run_provenance(...) (experiment, model class, config, versions),
     "ema": None | {"trained": state_dict, "updates": int, "decay": float}}

Under ``SOLVER.EMA`` (``engine.ema``) ``model`` holds the averaged weights, the ones to evaluate
and deploy, and ``ema`` the trained ones a resume goes on from.

Names count iterations done: the checkpoint after 5000 iterations is ``model_iter_0005000.pth``
(``iteration`` 4999 inside), the last one ``model_final.pth``. Anything that needs a
checkpoint's number reads it from the file (:func:`checkpoint_iteration`), so files named by
the older 0-based rule (``model_iter_0004999.pth`` after 5000 iterations) resume and list
correctly too.

Files go through ``crowdloss.utils.io.atomic_write`` (hidden temp file, fsync, rename), so a
crash never leaves a half-written ``model_*.pth`` nor a ``last_checkpoint`` naming one; the temp
files a hard kill leaves behind are removed by :meth:`Checkpointer.remove_stale_temp_files`.
Every model load goes through ``crowdloss.engine.weights`` (one path, one summary line).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from crowdloss.utils import comm
from crowdloss.utils.env import get_rng_state
from crowdloss.utils.io import TEMP_MARKER, atomic_write

from .weight_files import UnreadableWeightsError, read_weights_file
from .weights import NATIVE_FORMAT, LoadSummary, WeightsError, load_state, load_weights

__all__ = ["Checkpointer", "DetectionCheckpointer", "unwrap_model", "checkpoint_iteration",
           "LAST_CHECKPOINT"]

logger = logging.getLogger("crowdloss.engine")

LAST_CHECKPOINT = "last_checkpoint"
_ITER_NAME = re.compile(r"model_iter_(\d+)\.pth")
_TEMP_NAME = re.compile(r"\..+" + re.escape(TEMP_MARKER) + r"(\d+)")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def checkpoint_iteration(path: str) -> Optional[int]:
    """Iterations done when ``path`` was saved: its ``iteration`` + 1, else the number in a
    ``model_iter_N.pth`` name, else None (a bare state dict named otherwise)."""
    try:
        # mmap: the tensors are not read, only the small entries
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if isinstance(data, dict) and isinstance(data.get("iteration"), int):
            return data["iteration"] + 1
    except Exception:  # unreadable here: loading it reports why
        pass
    match = _ITER_NAME.fullmatch(os.path.basename(path))
    return int(match.group(1)) if match else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class Checkpointer:
    """Saves / restores a model and any objects with ``state_dict`` / ``load_state_dict``.

    Args:
        model: the model (DDP wrappers are unwrapped).
        save_dir: where checkpoints and ``last_checkpoint`` live.
        save_to_disk: write files; defaults to "this is rank 0".
        provenance: this run's ``run_provenance(...)``: written into each checkpoint as
            ``meta`` and compared with the ``meta`` of each file loaded.
        **checkpointables: e.g. ``optimizer=..., scheduler=..., scaler=...``; ``None`` values are
            stored as ``None`` so every checkpoint has the same keys.
    """

    def __init__(self, model: nn.Module, save_dir: str = "", *, save_to_disk: Optional[bool] = None,
                 provenance: Optional[Dict[str, Any]] = None, **checkpointables: Any) -> None:
        self.model = unwrap_model(model)
        self.save_dir = save_dir
        self.save_to_disk = comm.is_main_process() if save_to_disk is None else save_to_disk
        self.provenance = provenance
        self.checkpointables = checkpointables

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **extra: Any) -> Optional[str]:
        """Write ``<save_dir>/<name>.pth`` atomically and point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return None
        ema = self.checkpointables.get("ema")
        # Loaders read "model": under SOLVER.EMA the averaged weights are what they should get.
        data: Dict[str, Any] = {"model": ema.averaged_state() if ema is not None
                                else self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict() if obj is not None else None
        data.setdefault("scaler", None)
        data["rng"] = get_rng_state()
        if self.provenance is not None:
            data["meta"] = self.provenance
        data.update(extra)
        os.makedirs(self.save_dir, exist_ok=True)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        atomic_write(path, lambda f: torch.save(data, f))
        atomic_write(os.path.join(self.save_dir, LAST_CHECKPOINT), basename)
        logger.info("Saved checkpoint to %s", path)
        return path

    def remove_stale_temp_files(self) -> List[str]:
        """Delete the temp files (``.<name>.tmp.<pid>``) of writers that are no longer alive.

        A hard kill during ``atomic_write`` leaves one behind (a whole checkpoint's worth of
        bytes). Files of a live process (another run writing here) are left alone.
        """
        if not self.save_dir or not self.save_to_disk or not os.path.isdir(self.save_dir):
            return []
        removed, size = [], 0
        for name in sorted(os.listdir(self.save_dir)):
            match = _TEMP_NAME.fullmatch(name)
            if not match or int(match.group(1)) == os.getpid() or _pid_alive(int(match.group(1))):
                continue
            path = os.path.join(self.save_dir, name)
            try:
                size += os.path.getsize(path)
                os.remove(path)
            except FileNotFoundError:  # removed by someone else meanwhile
                continue
            removed.append(name)
        if removed:
            logger.warning("Removed %d temp file(s) (%.1f MB) left in %s by killed writers: %s",
                           len(removed), size / 2**20, self.save_dir, ", ".join(removed))
        return removed

    # ------------------------------------------------------------------ finding
    def has_checkpoint(self) -> bool:
        return self.get_checkpoint_file() is not None

    def get_checkpoint_file(self) -> Optional[str]:
        """Newest checkpoint: the one ``last_checkpoint`` names, else the one with the most
        iterations done (never the newest mtime: a copied or touched old file must not win)."""
        candidates = self.resume_candidates()
        return candidates[0] if candidates else None

    def resume_candidates(self) -> List[str]:
        """Checkpoints to resume from, best first: the ``last_checkpoint`` target, then every
        other ``*.pth`` by iterations done, most first (unreadable counts by its name)."""
        files = self.get_all_checkpoint_files()
        pointer = os.path.join(self.save_dir, LAST_CHECKPOINT)
        first: List[str] = []
        if os.path.isfile(pointer):
            with open(pointer, encoding="utf-8") as f:
                name = f.read().strip()
            path = os.path.join(self.save_dir, name)
            if name and os.path.isfile(path):
                first = [path]
            else:
                logger.warning("%s names %r, which does not exist; taking the checkpoint with "
                               "the most iterations instead", pointer, name)

        def rank(path: str):
            done = checkpoint_iteration(path)
            final = os.path.basename(path) == "model_final.pth"
            return (done if done is not None else (float("inf") if final else -1), final)

        rest = sorted((p for p in files if p not in first), key=rank, reverse=True)
        return first + rest

    def get_all_checkpoint_files(self) -> List[str]:
        """Every finished ``*.pth`` in ``save_dir`` (temp files are hidden and excluded), sorted."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        return sorted(
            os.path.join(self.save_dir, f)
            for f in os.listdir(self.save_dir)
            if f.endswith(".pth") and not f.startswith(".")
            and os.path.isfile(os.path.join(self.save_dir, f))
        )

    # ------------------------------------------------------------------ loading
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """Restore the model and the checkpointables from a training checkpoint.

        The checkpoint must fill every tensor of the model (a resume continues *this* model).

        Args:
            path: a file written by :meth:`save`.
            checkpointables: names to restore (default: all that the file has).

        Returns:
            What was not consumed: ``iteration``, ``rng``, ``metrics``, ``meta`` and extras.

        Raises:
            UnreadableWeightsError: truncated / foreign file (nothing was changed).
            WeightsError: the file does not fill the whole model (nothing was changed).
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint {path} does not exist")
        logger.info("Loading checkpoint from %s", path)
        data = read_weights_file(path)
        if not isinstance(data, dict) or "model" not in data:
            raise WeightsError(
                f"{path}: expected a training checkpoint (a dict with a 'model' key), got "
                f"{type(data).__name__}{' with keys ' + str(sorted(data)[:8]) if isinstance(data, dict) else ''}")
        if data.get("ema") is not None and self.checkpointables.get("ema") is None:
            # Its "model" is an average; going on from it would silently change the run.
            raise WeightsError(f"{path} was trained with SOLVER.EMA.ENABLED True (its 'model' "
                               f"holds averaged weights); resume it with the same setting")
        summary = load_state(self.model, data, source=path, weight_format=NATIVE_FORMAT,
                             min_coverage=1.0, requirement="a resume needs every tensor",
                             provenance=self.provenance)
        extras = dict(summary.extras)
        names = self.checkpointables.keys() if checkpointables is None else checkpointables
        for key in names:
            state = extras.pop(key, None)
            obj = self.checkpointables.get(key)
            if obj is None or state is None:
                if obj is not None:
                    logger.warning("%s has no %r state; keeping the fresh one", path, key)
                continue
            obj.load_state_dict(state)
        return extras

    def resume(self) -> Optional[Dict[str, Any]]:
        """Load the best of :meth:`resume_candidates` that can be read; None when there is none.

        A truncated or foreign newest file (a copy cut short, a full disk outside our atomic
        writes) is reported and the next one is tried. The returned dict is :meth:`load`'s plus
        ``path``, the file used.

        Raises:
            UnreadableWeightsError: every candidate is unreadable.
        """
        candidates = self.resume_candidates()
        failures = []
        for path in candidates:
            try:
                extras = self.load(path)
            except UnreadableWeightsError as e:
                failures.append(path)
                later = candidates[len(failures):]
                logger.warning("Cannot resume from %s (%s); %s", path, e,
                               f"falling back to {later[0]}" if later else "no other checkpoint")
                continue
            if failures:
                logger.warning("Resuming from %s: the newer %s could not be read", path,
                               ", ".join(failures))
            extras["path"] = path
            return extras
        if failures:
            raise UnreadableWeightsError(f"no checkpoint in {self.save_dir} can be read: "
                                         f"{', '.join(failures)}")
        return None

    def load_model_weights(self, path: str, *, min_coverage: float = 0.0, requirement: str = "",
                           cfg: Any = None, ignore_config: Sequence[str] = (),
                           class_remap: Any = None, ema_weights: bool = True) -> LoadSummary:
        """Load model weights only (``MODEL.WEIGHTS``) from any accepted format, path or URL.

        See ``crowdloss.engine.weights`` for the summary, ``min_coverage`` and ``class_remap``
        (``MODEL.WEIGHTS_CLASSES``), ``ema_weights`` (``TEST.EMA_WEIGHTS``),
        ``crowdloss.engine.weight_formats`` for the formats.
        """
        return load_weights(self.model, path, min_coverage=min_coverage, requirement=requirement,
                            cfg=cfg, provenance=self.provenance, ignore_config=ignore_config,
                            class_remap=class_remap, ema_weights=ema_weights)


# cvpods' name for the same class.
DetectionCheckpointer = Checkpointer

