"""Checks ``pods_train`` / ``pods_test`` run before launching anything expensive.

- :func:`plan_device`: which device the workers use and how many there are per machine. The
  device follows the machine (CUDA when it has GPUs) unless ``MODEL.DEVICE`` is set on the
  command line or by the experiment's config; ``--num-gpus`` defaults to every visible GPU
  for CUDA and to one process for CPU. A CUDA request without CUDA falls back to the CPU.
- :func:`check_datasets`: every dataset a run will read is registered (else the closest
  names) and its files exist (else where they were expected and where to read how to get
  them), before any model is built or any weight is downloaded.
"""
from __future__ import annotations

import difflib
import os
from typing import List, NamedTuple, Optional, Sequence

__all__ = ["DevicePlan", "plan_device", "config_sets", "check_datasets", "DATASETS_README"]

DATASETS_README = "datasets/README.md"


class DevicePlan(NamedTuple):
    """``device``: "cuda" or "cpu" (the launch's backend: NCCL or gloo); ``model_device``: the
    value ``MODEL.DEVICE`` gets in every worker; ``num_gpus``: processes per machine;
    ``warning`` / ``note``: what to log (a request that could not be met / an ordinary fact)."""

    device: str
    model_device: str
    num_gpus: int
    warning: Optional[str] = None
    note: Optional[str] = None


def plan_device(requested: str, *, explicit: bool, num_gpus: Optional[int],
                cuda_count: int, external: bool = False) -> DevicePlan:
    """Decide the workers' device from ``MODEL.DEVICE`` and the visible GPUs.

    Args:
        requested: the resolved ``MODEL.DEVICE`` ("cuda", "cuda:N" or "cpu").
        explicit: it was asked for (command line, or the config changed the default), so an
            unmet CUDA request warns; an inherited default only notes the CPU fallback.
        num_gpus: ``--num-gpus`` (None: every visible GPU for CUDA, 1 for CPU).
        cuda_count: ``torch.cuda.device_count()`` when CUDA is available, else 0.
        external: torchrun / SLURM started this process (one rank each; no count to check).

    Raises:
        ValueError: an unknown device, or more CUDA processes than visible GPUs.
    """
    requested = str(requested).strip()
    kind, _, index = requested.partition(":")
    if kind not in ("cpu", "cuda") or (kind == "cpu" and index) or (index and not index.isdigit()):
        raise ValueError(f"MODEL.DEVICE = {requested!r}; expected 'cuda', 'cuda:N' or 'cpu'")
    if kind == "cpu":
        return DevicePlan("cpu", "cpu", num_gpus or 1)
    if cuda_count == 0:
        text = f"MODEL.DEVICE is {requested!r} but CUDA is not available; using cpu"
        if explicit:
            return DevicePlan("cpu", "cpu", num_gpus or 1, warning=text)
        return DevicePlan("cpu", "cpu", num_gpus or 1, note="no CUDA device: running on cpu")
    if index:  # one named GPU: one process, on that GPU
        if int(index) >= cuda_count:
            raise ValueError(f"MODEL.DEVICE = {requested!r} but only {cuda_count} GPU(s) are "
                             f"visible (cuda:0 .. cuda:{cuda_count - 1})")
        if (num_gpus or 1) > 1 and not external:
            raise ValueError(f"MODEL.DEVICE = {requested!r} names one GPU but --num-gpus is "
                             f"{num_gpus}; use MODEL.DEVICE cuda for one GPU per process")
        return DevicePlan("cuda", requested, 1)
    num = num_gpus or cuda_count
    if num > cuda_count and not external:
        raise ValueError(f"--num-gpus {num} but {cuda_count} GPU(s) are visible: pass "
                         f"--num-gpus {cuda_count} or fewer, or MODEL.DEVICE cpu for CPU workers")
    return DevicePlan("cuda", "cuda", num)


def config_sets(cfg, key: str) -> bool:
    """Whether the experiment's config class changed ``key`` ("A.B") from its parent class."""
    try:
        diff = cfg.diff_from_parent()
    except Exception:  # noqa: BLE001 - a bare ConfigDict has no parent: nothing to compare
        return False
    for part in key.split("."):
        if not isinstance(diff, dict) or part not in diff:
            return False
        diff = diff[part]
    return True


# ---------------------------------------------------------------------------- datasets
_FILE_KEYS = (("gt_file", "annotation file"), ("json_file", "annotation file"),
              ("image_root", "image folder"))


def _names(value) -> List[str]:
    if isinstance(value, str):
        return [value]
    return list(value or ())


def check_datasets(cfg, keys: Sequence[str] = ("DATASETS.TRAIN", "DATASETS.TEST")) -> None:
    """Raise ``FileNotFoundError`` / ``KeyError`` (one readable line) for a dataset of ``keys``
    that is not registered or whose registered files are missing.

    Only metadata is read (``gt_file``, ``json_file``, ``image_root``); datasets flagged
    ``created_on_load`` (synthcrowd, generated on first use) and datasets registered without
    file metadata (an experiment's own loader) are taken as they are.
    """
    from crowdloss.config.access import cfg_get
    from crowdloss.data import DatasetCatalog, MetadataCatalog, datasets_root
    from crowdloss.data.builtin import refresh_builtin_metadata

    refresh_builtin_metadata()  # $CROWDLOSS_DATASETS may have changed since import
    for key in keys:
        for name in _names(cfg_get(cfg, key)):
            if name not in DatasetCatalog:
                registered = DatasetCatalog.list()
                close = difflib.get_close_matches(name, registered, n=3, cutoff=0.6)
                hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise KeyError(f"{key}: dataset {name!r} is not registered{hint} (registered: "
                               f"{', '.join(registered) or 'none'}; to add your own see "
                               "docs/custom_datasets.md)")
            meta = MetadataCatalog.get(name)
            if meta.get("created_on_load"):
                continue
            for field, what in _FILE_KEYS:
                path = meta.get(field)
                if path and not os.path.exists(path):
                    raise FileNotFoundError(
                        f"{key}: dataset {name!r} needs its {what} {path}, which does not "
                        f"exist; see {DATASETS_README} for how to get and link the data "
                        f"(datasets root: {datasets_root()}, set by $CROWDLOSS_DATASETS)")
