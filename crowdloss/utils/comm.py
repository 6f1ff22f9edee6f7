"""Collective helpers that are safe without a process group.

cvpods' heads call ``dist.all_reduce`` unconditionally and crash on one GPU; every helper
here degrades to the single-process answer when ``torch.distributed`` is not initialised,
so model code can call them unconditionally.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "is_dist",
    "get_world_size",
    "get_rank",
    "get_local_rank",
    "get_local_size",
    "is_main_process",
    "synchronize",
    "all_gather",
    "gather",
    "all_reduce_mean",
    "all_reduce_sum",
    "reduce_dict",
    "shared_random_seed",
]


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_local_rank() -> int:
    """Rank of this process on its machine (set by launch as LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if is_dist() else 0


def get_local_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    if get_world_size() > 1:
        dist.barrier()


def _object_group():
    # gloo can move Python objects for any backend; NCCL object collectives need CUDA
    # tensors per rank, so objects always travel over a gloo group.
    global _GLOO_GROUP
    if dist.get_backend() == "gloo":
        return None
    if _GLOO_GROUP is None:
        _GLOO_GROUP = dist.new_group(backend="gloo")
    return _GLOO_GROUP


_GLOO_GROUP = None


def all_gather(obj: Any) -> List[Any]:
    """Gather a picklable object from every rank; returns a list indexed by rank."""
    if get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj, group=_object_group())
    return out


def gather(obj: Any, dst: int = 0) -> List[Any]:
    """Gather a picklable object to rank ``dst``; other ranks receive ``[]``."""
    if get_world_size() == 1:
        return [obj]
    group = _object_group()
    if get_rank() == dst:
        out: List[Any] = [None] * get_world_size()
        dist.gather_object(obj, out, dst=dst, group=group)
        return out
    dist.gather_object(obj, None, dst=dst, group=group)
    return []


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (returns a new tensor; input untouched)."""
    if get_world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks; identity on one process."""
    world = get_world_size()
    if world == 1:
        return tensor
    return all_reduce_sum(tensor) / world


def reduce_dict(values: Dict[str, torch.Tensor], average: bool = True) -> Dict[str, torch.Tensor]:
    """All-reduce a dict of scalar tensors (sorted keys so every rank agrees)."""
    if get_world_size() == 1:
        return values
    names = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in names])
    stacked = all_reduce_mean(stacked) if average else all_reduce_sum(stacked)
    return dict(zip(names, stacked))


def shared_random_seed() -> int:
    """A random int that is identical on every rank (rank 0's draw)."""
    seed = int(np.random.randint(2**31))
    return all_gather(seed)[0]
