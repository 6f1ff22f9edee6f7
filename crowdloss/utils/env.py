"""Seeding and RNG state capture / restore.

A resumed run must end with the same weights as an uninterrupted one, so every generator the
training loop may draw from (python ``random``, numpy's global generator, torch CPU and every
CUDA device) is captured into the checkpoint and restored on resume. Checkpoints are read with
``torch.load(weights_only=True)``, which only accepts tensors and plain Python containers, so
numpy's state array is stored as a tensor and everything else as ints / floats / tuples.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = ["seed_all_rng", "get_rng_state", "set_rng_state"]


def seed_all_rng(seed: Optional[int] = None) -> int:
    """Seed python, numpy and torch (all devices); returns the seed used.

    Args:
        seed: the seed; ``None`` or a negative number draws a fresh one from the OS entropy pool.
    """
    if seed is None or seed < 0:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def get_rng_state() -> Dict[str, Any]:
    """Snapshot of every global generator, made only of tensors and plain Python types."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            # uint32 is not a weights_only-safe dtype everywhere; int64 holds it exactly.
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore a snapshot made by :func:`get_rng_state`.

    Raises:
        ValueError: when ``state`` lacks one of the expected entries.
    """
    for key in ("python", "numpy", "torch"):
        if key not in state:
            raise ValueError(f"RNG state is missing the {key!r} entry; got keys {sorted(state)}")
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            np.asarray(npst["keys"].numpy(), dtype=np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        # A run resumed on fewer devices restores what it can; more devices keep their seeds.
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu().to(torch.uint8), device=i)
