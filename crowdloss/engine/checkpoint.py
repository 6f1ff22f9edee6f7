"""Crash-safe checkpoints and pretrained-weight loading.

Shape of a training checkpoint (read back with ``torch.load(weights_only=True)``)::

    {"model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ... | None,
     "iteration": int (0-based, the last finished iteration),
     "rng": utils.env.get_rng_state() (a list with one per rank in distributed runs)}

Files are written to a hidden temp file in the same directory, fsynced and ``os.replace``d, so
a crash mid-write never leaves a truncated ``model_*.pth`` nor a ``last_checkpoint`` pointing at
one; the temp names (``.name.tmp.<pid>``) never match ``*.pth`` listings.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from crowdloss.utils import comm
from crowdloss.utils.env import get_rng_state
from crowdloss.utils.io import atomic_write

__all__ = ["Checkpointer", "DetectionCheckpointer", "atomic_write", "unwrap_model"]

logger = logging.getLogger("crowdloss.engine")

LAST_CHECKPOINT = "last_checkpoint"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


class Checkpointer:
    """Saves / restores a model and any objects with ``state_dict`` / ``load_state_dict``.

    Args:
        model: the model (DDP wrappers are unwrapped).
        save_dir: where checkpoints and ``last_checkpoint`` live.
        save_to_disk: write files; defaults to "this is rank 0".
        **checkpointables: e.g. ``optimizer=..., scheduler=..., scaler=...``; ``None`` values are
            stored as ``None`` so every checkpoint has the same keys.
    """

    def __init__(self, model: nn.Module, save_dir: str = "", *, save_to_disk: Optional[bool] = None,
                 **checkpointables: Any) -> None:
        self.model = unwrap_model(model)
        self.save_dir = save_dir
        self.save_to_disk = comm.is_main_process() if save_to_disk is None else save_to_disk
        self.checkpointables = checkpointables

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **extra: Any) -> Optional[str]:
        """Write ``<save_dir>/<name>.pth`` atomically and point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return None
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict() if obj is not None else None
        data.setdefault("scaler", None)
        data["rng"] = get_rng_state()
        data.update(extra)
        os.makedirs(self.save_dir, exist_ok=True)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        atomic_write(path, lambda f: torch.save(data, f))
        atomic_write(os.path.join(self.save_dir, LAST_CHECKPOINT),
                     basename)
        logger.info("Saved checkpoint to %s", path)
        return path

    # ------------------------------------------------------------------ finding
    def has_checkpoint(self) -> bool:
        return self.get_checkpoint_file() is not None

    def get_checkpoint_file(self) -> Optional[str]:
        """Newest checkpoint: the one ``last_checkpoint`` names, else the newest ``model_*.pth``."""
        pointer = os.path.join(self.save_dir, LAST_CHECKPOINT)
        if os.path.isfile(pointer):
            with open(pointer, encoding="utf-8") as f:
                name = f.read().strip()
            path = os.path.join(self.save_dir, name)
            if name and os.path.isfile(path):
                return path
            logger.warning("%s names %r, which does not exist; falling back to a listing",
                           pointer, name)
        files = self.get_all_checkpoint_files()
        return max(files, key=os.path.getmtime) if files else None

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

        Args:
            path: a file written by :meth:`save`.
            checkpointables: names to restore (default: all that the file has).

        Returns:
            What was not consumed: ``iteration``, ``rng`` and any extras.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint {path} does not exist")
        logger.info("Loading checkpoint from %s", path)
        data = _safe_torch_load(path)
        if not isinstance(data, dict) or "model" not in data:
            raise ValueError(
                f"{path}: expected a dict with a 'model' key, got {type(data).__name__}"
            )
        self._load_model(data.pop("model"), source=path)
        names = self.checkpointables.keys() if checkpointables is None else checkpointables
        for key in names:
            state = data.pop(key, None)
            obj = self.checkpointables.get(key)
            if obj is None or state is None:
                if obj is not None:
                    logger.warning("%s has no %r state; keeping the fresh one", path, key)
                continue
            obj.load_state_dict(state)
        return data

    def _load_model(self, state_dict: Dict[str, torch.Tensor], *, source: str) -> None:
        """Load ``state_dict`` into the model, skipping shape mismatches with a warning."""
        state_dict = {_strip_module(k): v for k, v in state_dict.items()}
        own = self.model.state_dict()
        for key in list(state_dict):
            if key in own and tuple(own[key].shape) != tuple(state_dict[key].shape):
                logger.warning(
                    "Skip loading %s from %s: shape %s in the checkpoint, %s in the model",
                    key, source, tuple(state_dict[key].shape), tuple(own[key].shape),
                )
                del state_dict[key]
        result = self.model.load_state_dict(state_dict, strict=False)
        # BN's num_batches_tracked is absent from converted weights and of no consequence.
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing:
            logger.info("Keys missing from %s (left as initialised): %s",
                        source, ", ".join(missing))
        if result.unexpected_keys:
            logger.info("Keys in %s not used by the model: %s",
                        source, ", ".join(result.unexpected_keys))


def _safe_torch_load(path: str) -> Any:
    """``torch.load(weights_only=True)`` with an error that names the file and the likely cause."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(
            f"Cannot read {path} as a weights-only torch checkpoint ({type(e).__name__}: {e}). "
            "Either the file is truncated / not a torch file, or it pickles Python objects "
            "besides tensors and plain containers, which are refused because unpickling can "
            "run code; re-save it as a plain state dict."
        ) from e


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


# ---------------------------------------------------------------------- pretrained weights
D2_PREFIX = "detectron2://"
D2_BASE_URL = "https://dl.fbaipublicfiles.com/detectron2/"


def cache_dir() -> str:
    """``$CROWDLOSS_CACHE`` or ``~/.cache/crowdloss``."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "crowdloss")
    return os.environ.get("CROWDLOSS_CACHE") or default


def resolve_weights_path(path_or_url: str) -> str:
    """A local file for ``path_or_url``, downloading ``http(s)://``, ``file://`` and
    ``detectron2://X`` (= https://dl.fbaipublicfiles.com/detectron2/X) once into :func:`cache_dir`.

    Raises:
        RuntimeError: when the download fails; the message names the URL and the cache path
            where the file can be put by hand (machines without network access).
    """
    import urllib.parse
    import urllib.request

    url = path_or_url
    if url.startswith(D2_PREFIX):
        url = D2_BASE_URL + url[len(D2_PREFIX):]
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https", "file"):
        return os.path.expanduser(path_or_url)
    relative = (parsed.netloc + parsed.path).lstrip("/")
    parts = [p for p in relative.split("/") if p not in ("", ".", "..")]  # stay inside the cache
    target = os.path.join(cache_dir(), *parts)
    if os.path.isfile(target):
        return target
    # No barrier: ranks may not share a filesystem, and the pid-named temp file keeps
    # concurrent downloads of the same file from clobbering each other.
    os.makedirs(os.path.dirname(target), exist_ok=True)
    logger.info("Downloading %s to %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            atomic_write(target, lambda f: _copy_stream(response, f))
    except Exception as e:
        raise RuntimeError(
            f"Could not download {url} ({type(e).__name__}: {e}). Without network access, fetch "
            f"it elsewhere and put it at {target} (set CROWDLOSS_CACHE to move the cache)."
        ) from e
    return target


def _copy_stream(src, dst, chunk: int = 1 << 20) -> None:
    while True:
        block = src.read(chunk)
        if not block:
            return
        dst.write(block)


def _looks_torchvision(state_dict: Dict[str, Any]) -> bool:
    return "conv1.weight" in state_dict and any(k.startswith("layer1.") for k in state_dict)


def _import_weights():
    try:
        from crowdloss.modeling.backbone import weights
    except ImportError as e:
        raise ImportError(
            "Loading MSRA .pkl / torchvision weights needs crowdloss.modeling.backbone.weights, "
            f"which failed to import: {e}"
        ) from e
    return weights


class DetectionCheckpointer(Checkpointer):
    """A :class:`Checkpointer` that also reads pretrained weights from many sources."""

    def load_model_weights(self, path: str) -> None:
        """Load model weights only (``MODEL.WEIGHTS``) from a path or URL.

        Accepts our / cvpods / detectron2 ``.pth`` (bare state dict or ``{"model": ...}``,
        ``module.`` prefixes stripped), torchvision ResNet ``.pth`` (recognised by its key names)
        and MSRA Caffe2 / detectron2 ``.pkl`` (read by a restricted unpickler that only rebuilds
        numpy arrays). Foreign names go through ``crowdloss.modeling.backbone.weights``.
        """
        local = resolve_weights_path(path)
        if not os.path.isfile(local):
            raise FileNotFoundError(f"MODEL.WEIGHTS = {path!r}: no such file ({local})")
        model_keys = list(self.model.state_dict())
        if local.endswith(".pkl"):
            weights = _import_weights()
            data = weights.load_pkl_safely(local)
            if isinstance(data, dict) and "blobs" in data:
                data = data["blobs"]
            elif isinstance(data, dict) and isinstance(data.get("model"), dict):
                data = data["model"]
            state = self._convert(weights, data, "auto", model_keys)
        else:
            data = _safe_torch_load(local)
            if isinstance(data, dict) and isinstance(data.get("model"), dict):
                data = data["model"]
            if not isinstance(data, dict):
                raise ValueError(f"{local}: expected a state dict or {{'model': state_dict}}, "
                                 f"got {type(data).__name__}")
            data = {_strip_module(k): v for k, v in data.items()}
            if _looks_torchvision(data):
                logger.info("%s looks like a torchvision ResNet; converting its names", local)
                state = self._convert(_import_weights(), data, "torchvision", model_keys)
            else:
                state = data
        self._load_model(state, source=local)

    @staticmethod
    def _convert(weights, data, source: str, model_keys: List[str]) -> Dict[str, torch.Tensor]:
        converted = weights.convert_weights(data, source=source, model_keys=model_keys)
        if isinstance(converted, tuple):  # (state_dict, report) flavours
            converted = converted[0]
        return {k: torch.as_tensor(v) for k, v in converted.items()}
