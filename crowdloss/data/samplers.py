"""Samplers: infinite training stream (resumable), aspect-ratio batching, inference shards."""
from __future__ import annotations

import itertools
from typing import Callable, Iterable, Iterator, List, Optional

import torch

from ..utils import comm

__all__ = ["TrainingSampler", "AspectRatioGroupedBatcher", "InferenceSampler"]


class TrainingSampler:
    """Infinite stream of indices in ``[0, size)``, identical order on every rank.

    The global stream is one permutation per epoch from ``seed``; rank r takes positions
    r, r + world, r + 2 * world, ... . ``start`` skips that many of this rank's samples, so a
    resumed run continues exactly where the interrupted one stopped.
    """

    def __init__(self, size: int, *, shuffle: bool = True, seed: Optional[int] = None,
                 start: int = 0, rank: Optional[int] = None, world_size: Optional[int] = None):
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size={size}")
        self.size, self.shuffle, self.start = size, shuffle, start
        self.seed = comm.shared_random_seed() if seed is None else int(seed)
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size

    def _global(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
            yield from order.tolist()

    def __iter__(self) -> Iterator[int]:
        first = self.rank + self.start * self.world_size
        return itertools.islice(self._global(), first, None, self.world_size)


class AspectRatioGroupedBatcher:
    """Batch items so each batch is all landscape or all portrait (less padding).

    Args:
        items: iterable of items (e.g. (position, index) pairs).
        is_landscape: item -> bool.
        batch_size: items per batch.
    """

    def __init__(self, items: Iterable, is_landscape: Callable, batch_size: int):
        self.items, self.is_landscape, self.batch_size = items, is_landscape, batch_size

    def __iter__(self) -> Iterator[List]:
        buckets: List[List] = [[], []]
        for item in self.items:
            bucket = buckets[int(bool(self.is_landscape(item)))]
            bucket.append(item)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()


class InferenceSampler:
    """Contiguous, balanced shard of ``range(size)`` per rank; shards cover it exactly once."""

    def __init__(self, size: int, *, rank: Optional[int] = None, world_size: Optional[int] = None):
        rank = comm.get_rank() if rank is None else rank
        world = comm.get_world_size() if world_size is None else world_size
        per, extra = divmod(size, world)
        begin = rank * per + min(rank, extra)
        self.indices = range(begin, begin + per + (1 if rank < extra else 0))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
