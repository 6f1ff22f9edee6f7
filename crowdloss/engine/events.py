"""Training metrics: an in-memory store plus writers for metrics.json, TensorBoard and console.

The runner opens one :class:`EventStorage` for the whole run; hooks and the model put scalars
into it (``get_event_storage().put_scalar``) and a :class:`PeriodicWriter` hook flushes it
through the writers below every 20 iterations.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import statistics
import time
from collections import defaultdict, deque
from typing import Any, Deque, Dict, List, Optional, Tuple

import torch

from crowdloss.utils.io import atomic_write

__all__ = [
    "HistoryBuffer",
    "EventStorage",
    "get_event_storage",
    "EventWriter",
    "JSONWriter",
    "resume_metrics_file",
    "TensorboardWriter",
    "CommonMetricPrinter",
]

_STORAGE_STACK: List["EventStorage"] = []


def get_event_storage() -> "EventStorage":
    """The storage of the innermost ``with EventStorage(...)`` block."""
    if not _STORAGE_STACK:
        raise RuntimeError("get_event_storage() must be called inside a `with EventStorage(...)`")
    return _STORAGE_STACK[-1]


class HistoryBuffer:
    """The last ``max_length`` (value, iteration) pairs of one scalar, plus a running mean."""

    def __init__(self, max_length: int = 1000) -> None:
        self._data: Deque[Tuple[float, int]] = deque(maxlen=max_length)
        self._count = 0
        self._sum = 0.0

    def update(self, value: float, iteration: int) -> None:
        self._data.append((value, iteration))
        self._count += 1
        self._sum += value

    def latest(self) -> float:
        return self._data[-1][0]

    def median(self, window: int) -> float:
        return statistics.median(v for v, _ in list(self._data)[-window:])

    def avg(self, window: int) -> float:
        values = [v for v, _ in list(self._data)[-window:]]
        return sum(values) / len(values)

    def global_avg(self) -> float:
        return self._sum / max(self._count, 1)

    def values(self) -> List[Tuple[float, int]]:
        return list(self._data)


class EventStorage:
    """Per-iteration scalars. ``iter`` is the 0-based iteration being run."""

    def __init__(self, start_iter: int = 0) -> None:
        self.iter = start_iter
        self._history: Dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest: Dict[str, Tuple[float, int]] = {}
        self._unwritten: Dict[int, Dict[str, float]] = defaultdict(dict)

    def put_scalar(self, name: str, value, smoothing_hint: bool = True) -> None:
        """Record ``value`` for this iteration; ``smoothing_hint`` asks writers for a median."""
        value = float(value.detach().item() if isinstance(value, torch.Tensor) else value)
        self._history[name].update(value, self.iter)
        self._latest[name] = (value, self.iter)
        self._unwritten[self.iter][name] = value
        self._smoothing_hints.setdefault(name, smoothing_hint)

    def put_scalars(self, *, smoothing_hint: bool = True, **kwargs) -> None:
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint)

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._history:
            raise KeyError(f"No scalar named {name!r} was recorded; have {sorted(self._history)}")
        return self._history[name]

    def histories(self) -> Dict[str, HistoryBuffer]:
        return dict(self._history)

    def latest(self) -> Dict[str, Tuple[float, int]]:
        return dict(self._latest)

    def latest_with_smoothing_hint(self, window: int = 20) -> Dict[str, Tuple[float, int]]:
        """Latest values, replaced by the median of the last ``window`` where hinted."""
        out = {}
        for name, (value, it) in self._latest.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(window)
            out[name] = (value, it)
        return out

    def unwritten_records(self, up_to: int) -> List[Dict[str, float]]:
        """Copies of the scalars not yet popped for iterations <= ``up_to``, as metrics.json
        records; a checkpoint keeps them so that a kill before the next write loses none."""
        return [{"iteration": it, **self._unwritten[it]}
                for it in sorted(self._unwritten) if it <= up_to and self._unwritten[it]]

    def pop_unwritten(self) -> Dict[int, Dict[str, float]]:
        """Scalars put since the last call, grouped by iteration (for append-only writers)."""
        out, self._unwritten = dict(self._unwritten), defaultdict(dict)
        return out

    def step(self) -> None:
        self.iter += 1

    def __enter__(self) -> "EventStorage":
        _STORAGE_STACK.append(self)
        return self

    def __exit__(self, *exc) -> None:
        assert _STORAGE_STACK[-1] is self
        _STORAGE_STACK.pop()


class EventWriter:
    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONWriter(EventWriter):
    """Appends one JSON object per iteration to ``metrics.json`` (``{"iteration": i, ...}``,
    ``i`` 0-based as in detectron2). The file is opened at the first write, so that a resume
    can rewrite it (:func:`resume_metrics_file`) after the writer was built."""

    def __init__(self, json_file: str) -> None:
        self._path = json_file
        self._file = None

    def write(self) -> None:
        if self._file is None:
            os.makedirs(os.path.dirname(os.path.abspath(self._path)), exist_ok=True)
            self._file = open(self._path, "a", encoding="utf-8")
        for it, scalars in sorted(get_event_storage().pop_unwritten().items()):
            self._file.write(json.dumps({"iteration": it, **scalars}, sort_keys=True) + "\n")
        self._file.flush()
        try:
            os.fsync(self._file.fileno())
        except OSError:  # some filesystems (e.g. pipes, certain FUSE mounts) refuse fsync
            pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def resume_metrics_file(json_file: str, start_iter: int,
                        saved: Optional[List[Dict[str, Any]]] = None) -> Tuple[int, int, int]:
    """Make ``metrics.json`` hold each iteration below ``start_iter`` once, and nothing else.

    A resumed run re-runs iterations ``start_iter...``: their records from before the kill are
    dropped (else they appear twice), as is a line cut short by the kill. Records of the same
    iteration are merged. ``saved`` (the checkpoint's ``metrics``: what was not yet written
    when it was saved) fills the iterations the killed run never flushed. Rewritten atomically.

    Returns:
        (records kept, records dropped, records restored from ``saved``).
    """
    by_iter: Dict[int, Dict[str, Any]] = {}
    dropped = 0
    if os.path.isfile(json_file):
        with open(json_file, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    it = int(record["iteration"])
                except (ValueError, KeyError, TypeError):
                    dropped += 1  # the half line a kill mid-write leaves
                    continue
                if it < start_iter:
                    by_iter.setdefault(it, {}).update(record)
                else:
                    dropped += 1
    elif not saved:
        return 0, 0, 0
    kept = len(by_iter)
    restored = 0
    for record in saved or []:
        it = int(record.get("iteration", start_iter))
        if it >= start_iter:
            continue
        if it not in by_iter:
            restored += 1
        for key, value in record.items():
            by_iter.setdefault(it, {}).setdefault(key, value)
    text = "".join(json.dumps(by_iter[it], sort_keys=True) + "\n" for it in sorted(by_iter))
    atomic_write(json_file, text)
    logging.getLogger("crowdloss.engine").info(
        "%s: kept %d iterations before %d, dropped %d records of later ones (re-run now), "
        "restored %d from the checkpoint", json_file, kept, start_iter, dropped, restored)
    return kept, dropped, restored


class TensorboardWriter(EventWriter):
    """Scalars to TensorBoard event files in ``log_dir`` (``tensorboard`` is a requirement);
    without tensorboard (nor tensorboardX) it logs a one-line notice and writes nothing."""

    def __init__(self, log_dir: str, window_size: int = 20) -> None:
        self._window = window_size
        self._last_written = -1
        self._writer = None
        try:  # lazy: `import crowdloss` must never import tensorboard
            from torch.utils.tensorboard import SummaryWriter
        except Exception as exc:  # ImportError, or a tensorboard that fails to import
            try:
                from tensorboardX import SummaryWriter  # type: ignore[no-redef]
            except Exception:
                logging.getLogger("crowdloss.engine").info(
                    "TensorBoard events off: %s (pip install tensorboard)",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                return
        self._writer = SummaryWriter(log_dir)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def write(self) -> None:
        if self._writer is None:
            return
        newest = self._last_written
        latest = get_event_storage().latest_with_smoothing_hint(self._window)
        for name, (value, it) in latest.items():
            if it > self._last_written:
                self._writer.add_scalar(name, value, it)
                newest = max(newest, it)
        self._last_written = newest

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Console line: ``eta  iter n/max  <losses>  total_loss  time  data_time  lr  max_mem``.

    ``iter`` counts completed iterations (1-based), losses and times are medians of the last
    ``window_size`` iterations, ``max_mem`` is CUDA's peak allocation in MiB (omitted on CPU).
    """

    def __init__(self, max_iter: int, window_size: int = 20) -> None:
        self.logger = logging.getLogger("crowdloss.engine")
        self._max_iter = max_iter
        self._window = window_size
        self._last: Optional[Tuple[int, float]] = None  # (iteration, wall time) for a rough eta

    def _eta(self, storage: EventStorage) -> str:
        remaining = self._max_iter - storage.iter - 1
        try:
            seconds = storage.history("time").median(1000) * remaining
        except KeyError:  # before the timer recorded anything: use wall time between writes
            seconds = None
            if self._last is not None and storage.iter > self._last[0]:
                per_iter = (time.perf_counter() - self._last[1]) / (storage.iter - self._last[0])
                seconds = per_iter * remaining
            self._last = (storage.iter, time.perf_counter())
        if seconds is None:
            return "N/A"
        return str(datetime.timedelta(seconds=int(seconds)))

    def format_line(self, storage: EventStorage) -> str:
        def median(name: str) -> Optional[float]:
            try:
                return storage.history(name).median(self._window)
            except KeyError:
                return None

        parts = [f"eta: {self._eta(storage)}", f"iter: {storage.iter + 1}/{self._max_iter}"]
        hist = storage.histories()
        losses = sorted(k for k in hist if k.startswith("loss"))
        parts += [f"{k}: {hist[k].median(self._window):.4g}" for k in losses]
        if "total_loss" in hist:
            parts.append(f"total_loss: {hist['total_loss'].median(self._window):.4g}")
        for key in ("time", "data_time"):
            value = median(key)
            if value is not None:
                parts.append(f"{key}: {value:.4f}")
        if "lr" in hist:
            parts.append(f"lr: {hist['lr'].latest():.5g}")
        if torch.cuda.is_available():
            parts.append(f"max_mem: {torch.cuda.max_memory_allocated() / 1024 / 1024:.0f}M")
        return "  ".join(parts)

    def write(self) -> None:
        self.logger.info(self.format_line(get_event_storage()))
