"""Step 1 of weight loading: find the file and read it without running code from it.

- ``resolve_weights_path``: a local path as is; ``http(s)://``, ``file://`` and
  ``detectron2://X`` (= https://dl.fbaipublicfiles.com/detectron2/X) downloaded once into
  ``$CROWDLOSS_CACHE`` (default ``~/.cache/crowdloss``).
- ``read_weights_file``: ``.pkl`` / ``.pickle`` through an unpickler that only rebuilds numpy
  arrays and plain containers (MSRA / detectron2 Caffe2 files); anything else with
  ``torch.load(weights_only=True)``.

The rest of the path: format detection and renaming in ``crowdloss.engine.weight_formats``;
aligning, the summary and the coverage rule in ``crowdloss.engine.weights``. ``WeightsError``
(a file that must not be used as is) is defined here, the module both of those import.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from typing import Any

import numpy as np
import torch

from crowdloss.utils.io import atomic_write

__all__ = ["WeightsError", "UnreadableWeightsError", "resolve_weights_path", "cache_dir",
           "read_weights_file", "load_pkl_safely"]

logger = logging.getLogger("crowdloss.engine")


class WeightsError(ValueError):
    """A weights file that must not be used as is (covers too little, names nothing known)."""


class UnreadableWeightsError(RuntimeError):
    """A file that cannot be read: truncated, not a weights file, or pickling code."""


# (module, name) pairs a numpy-array pickle needs; everything else is refused. numpy 1.x
# pickles name numpy.core.*, numpy 2 renamed it numpy._core (the old path still imports, with
# a deprecation warning), so both spellings are accepted and resolved to the new one.
_SAFE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol-2 pickles written by py3 rebuild bytes with it
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, *, source: str):
        super().__init__(file, encoding="latin1")  # py2 pickles store array bytes as str
        self._source = source

    def find_class(self, module: str, name: str):
        resolved = re.sub(r"^numpy\.core(?=\.|$)", "numpy._core", module)
        if (resolved, name) in _SAFE_GLOBALS:
            if resolved.startswith("numpy._core") and not hasattr(np, "_core"):
                resolved = module  # numpy < 2 has only numpy.core
            return super().find_class(resolved, name)
        if resolved.startswith("numpy.dtypes") and name.endswith("DType"):
            return super().find_class(resolved, name)  # numpy >= 1.25 dtype classes
        raise pickle.UnpicklingError(
            f"{self._source}: refusing to unpickle global '{module}.{name}': only numpy arrays "
            f"and dicts are allowed in a weights .pkl (a pickle can run arbitrary code)")


def load_pkl_safely(path: str) -> Any:
    """Load a pickle that may hold only dicts / lists / numbers / strings / numpy arrays.

    Raises:
        pickle.UnpicklingError: naming the file and the refused global for anything else.
    """
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f, source=str(path)).load()


def read_weights_file(path: str) -> Any:
    """Step 1: the file's content, read without running code from it.

    Raises:
        UnreadableWeightsError: truncated / foreign file or a torch file pickling objects.
        pickle.UnpicklingError: a ``.pkl`` asking for a global other than numpy's.
    """
    if path.endswith((".pkl", ".pickle")):
        try:
            return load_pkl_safely(path)
        except pickle.UnpicklingError as e:
            if "refusing" in str(e):
                raise
            raise UnreadableWeightsError(f"Cannot read {path} as a pickle ({e}); is it "
                                         "truncated?") from e
        except (EOFError, ValueError) as e:
            raise UnreadableWeightsError(f"Cannot read {path} as a pickle ({type(e).__name__}: "
                                         f"{e}); is it truncated?") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UnreadableWeightsError(
            f"Cannot read {path} as a weights-only torch checkpoint ({type(e).__name__}: {e}). "
            "Either the file is truncated / not a torch file, or it pickles Python objects "
            "besides tensors and plain containers, which are refused because unpickling can "
            "run code; re-save it as a plain state dict.") from e


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
