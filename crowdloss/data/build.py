"""Dataset names + config -> dataset dicts and data loaders.

Option-taking loaders: crowdhuman-format datasets honour ``DATASETS.BOX_TYPE`` and
``DATASETS.SKIP_BAD_IMAGES``. They register twice: in ``DatasetCatalog`` (zero-argument, the
defaults) and in ``CONFIGURABLE_LOADERS`` (name -> ``f(box_type=, skip_bad_images=)``), which
``get_dataset_dicts(names, cfg)`` prefers when a cfg is given.

Training data order: the sampler's index stream is batched (optionally by aspect ratio) on
indices alone, then each DataLoader worker maps every ``num_workers``-th batch; the DataLoader
returns batches round-robin, i.e. in stream order. A sample's augmentation RNG is seeded by
(seed, rank, its position in the stream), so ``start_iter`` (skip that many batches, cheap:
indices only) reproduces an uninterrupted run exactly.

Config keys are read when a loader is BUILT (here and in ``DatasetMapper.__init__``), never per
sample: worker processes then need no config, and the unread-key report sees every read.
"""
from __future__ import annotations

import logging
import random
from typing import Callable, Dict, List, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..utils import comm
from .catalog import DatasetCatalog
from ..config.access import cfg_get
from .mapper import DatasetMapper
from .samplers import AspectRatioGroupedBatcher, InferenceSampler, TrainingSampler
from .voc import apply_difficult_policy

__all__ = ["get_dataset_dicts", "build_train_loader", "build_test_loader",
           "trivial_batch_collator", "CONFIGURABLE_LOADERS"]

logger = logging.getLogger(__name__)

CONFIGURABLE_LOADERS: Dict[str, Callable[..., List[dict]]] = {}


def trivial_batch_collator(batch):
    """Keep a batch as the list of per-image dicts the models take."""
    return batch


def get_dataset_dicts(names: Union[str, Sequence[str]], cfg=None, *,
                      filter_empty: bool = False, training: bool = False) -> List[dict]:
    """Concatenate the datasets ``names``.

    Args:
        cfg: if given, crowdhuman-format loaders get DATASETS.BOX_TYPE / SKIP_BAD_IMAGES.
        filter_empty: drop images without any valid (category >= 0) box; the training loader
            passes DATALOADER.FILTER_EMPTY_ANNOTATIONS (evaluation must keep every image).
        training: the training view: annotations flagged ``difficult`` (VOC) get the
            DATASETS.TRAIN_DIFFICULT policy, before ``filter_empty`` (the key is read only
            when such annotations exist). Evaluation keeps them flagged, for the evaluator.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("no dataset names given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    dicts: List[dict] = []
    for name in names:
        if cfg is not None and name in CONFIGURABLE_LOADERS:
            part = CONFIGURABLE_LOADERS[name](
                box_type=cfg_get(cfg, "DATASETS.BOX_TYPE"),
                skip_bad_images=bool(cfg_get(cfg, "DATASETS.SKIP_BAD_IMAGES")))
        else:
            part = DatasetCatalog.get(name)
        if not part:
            raise ValueError(f"dataset '{name}' is empty")
        dicts.extend(part)
    if training and any(a.get("difficult") for d in dicts for a in d["annotations"]):
        dicts = apply_difficult_policy(dicts, cfg_get(cfg, "DATASETS.TRAIN_DIFFICULT"))
    if filter_empty:
        before = len(dicts)
        dicts = [d for d in dicts if any(a["category_id"] >= 0 for a in d["annotations"])]
        logger.info("removed %d images without valid boxes; %d left", before - len(dicts), len(dicts))
        if not dicts:
            raise ValueError(f"no image of {names} has a valid box")
    return dicts


class _TrainStream(IterableDataset):
    def __init__(self, dicts, mapper, sampler, batch_size, group, start_iter, seed, rank):
        self.dicts, self.mapper, self.sampler = dicts, mapper, sampler
        self.batch_size, self.group, self.start_iter = batch_size, group, start_iter
        self.seed, self.rank = seed, rank

    def _batches(self):
        items = enumerate(self.sampler)  # (position in this rank's stream, dataset index)
        if self.group:
            landscape = lambda item: self.dicts[item[1]]["width"] > self.dicts[item[1]]["height"]
            return iter(AspectRatioGroupedBatcher(items, landscape, self.batch_size))
        return (list(b) for b in iter(lambda: [next(items) for _ in range(self.batch_size)], None))

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for b, batch in enumerate(self._batches()):
            if b < self.start_iter or (b - self.start_iter) % nw != wid:
                continue
            yield [self.mapper(self.dicts[i], np.random.default_rng([self.seed, self.rank, pos]))
                   for pos, i in batch]


def _seed_worker(worker_id: int) -> None:
    seed = (torch.initial_seed() + worker_id) % 2**31
    np.random.seed(seed)
    random.seed(seed)


def build_train_loader(cfg, start_iter: int = 0) -> DataLoader:
    """Infinite loader of lists of IMS_PER_DEVICE model inputs, starting at ``start_iter``."""
    dicts = get_dataset_dicts(cfg_get(cfg, "DATASETS.TRAIN"), cfg, filter_empty=bool(
        cfg_get(cfg, "DATALOADER.FILTER_EMPTY_ANNOTATIONS")), training=True)
    seed = cfg_get(cfg, "SEED")
    seed = comm.shared_random_seed() if seed is None or seed < 0 else int(seed)
    sampler = TrainingSampler(len(dicts), shuffle=True, seed=seed)
    stream = _TrainStream(dicts, DatasetMapper(cfg, True), sampler,
                          int(cfg_get(cfg, "SOLVER.IMS_PER_DEVICE")),
                          bool(cfg_get(cfg, "DATALOADER.ASPECT_RATIO_GROUPING")),
                          start_iter, seed, comm.get_rank())
    workers = int(cfg_get(cfg, "DATALOADER.NUM_WORKERS"))
    g = torch.Generator()
    g.manual_seed(seed + comm.get_rank())
    return DataLoader(stream, batch_size=None, num_workers=workers, generator=g,
                      collate_fn=trivial_batch_collator, worker_init_fn=_seed_worker)


class _MapDataset(Dataset):
    def __init__(self, dicts, mapper):
        self.dicts, self.mapper = dicts, mapper

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, i):
        return self.mapper(self.dicts[i], np.random.default_rng(i))


def build_test_loader(cfg, dataset_name: str) -> DataLoader:
    """Batch-1 loader over this rank's contiguous shard of ``dataset_name``, in order."""
    dicts = get_dataset_dicts([dataset_name], cfg)
    sampler = torch.utils.data.BatchSampler(InferenceSampler(len(dicts)), 1, drop_last=False)
    return DataLoader(_MapDataset(dicts, DatasetMapper(cfg, False)), batch_sampler=sampler,
                      num_workers=int(cfg_get(cfg, "DATALOADER.NUM_WORKERS")),
                      collate_fn=trivial_batch_collator)
