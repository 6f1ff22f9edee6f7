"""Which config keys a run reads, and the report of keys an experiment set that nothing read.

A key written in an experiment's ``config.py`` (or on the command line) that no component reads
has no effect, silently: a typo'd section, a key of another detector (``MODEL.FCOS.IOU_LOSS_TYPE``
under LLA, which always uses GIoU), a branch that is switched off (``SOLVER.CLIP_GRADIENTS.
CLIP_VALUE`` with ``ENABLED False``). To catch these, ``ConfigDict`` records the dotted path of
every LEAF value read while a ``ReadTracker`` is started:

- counted as a read: attribute access (``cfg.MODEL.FCOS.NUM_CLASSES``), ``cfg["MODEL"]["X"]``,
  ``cfg.get("X")`` of a present key, ``cfg_get(cfg, "A.B")`` (which does ``[]``);
- not counted: reaching a section (only its leaves count), ``"X" in cfg`` (a presence probe does
  not use the value), iterating (``items()``, ``to_dict()``, ``dump()``), and ConfigDict's own
  bookkeeping (merging, diffing, overrides), which runs inside ``untracked()``. Code that
  validates or rewrites values without consuming them (``validate_config``, the schedule part
  of ``rescale_for_world_size``) also runs inside ``untracked()``.

The tracker is process-wide and thread-safe (a lock around one set insertion); ``untracked()``
is per thread. Data-loader worker processes start without a tracker: nothing is recorded there,
which is fine because the built-in dataset mapper and loaders read their keys when they are
BUILT, in the main process (tests/test_config_tracking.py checks that drawing batches reads
nothing more). The convention for every component: read your keys when you are built.

``UnreadKeyReport`` (used by ``pods_train`` / ``pods_test``) compares the keys an experiment set
(``BaseConfig.experiment_keys()`` + the overrides' keys) with the keys read, at check points
chosen so that a key read only by a later stage is never reported early (see docs/config.md).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple

__all__ = ["ReadTracker", "untracked", "UnreadKeyReport", "UnreadKeysError", "UNREAD_KEYS_ACTIONS",
           "TRAIN_ONLY_KEYS", "BUILD_TIME_KEYS", "ADDED_KEYS", "matches_prefix", "is_test_time_key"]

logger = logging.getLogger(__name__)

# Started trackers (innermost last); a tuple so readers never see a list being mutated.
_ACTIVE: Tuple["ReadTracker", ...] = ()
_LOCAL = threading.local()

UNREAD_KEYS_ACTIONS = ("warn", "error", "off")

# Keys only training reads: pods_test (and a resumed run that has nothing left to train) cannot
# judge them, so they are left out of its report.
TRAIN_ONLY_KEYS = ("SOLVER", "DATASETS.TRAIN", "INPUT.AUG.TRAIN_PIPELINES",
                   "DATALOADER.ASPECT_RATIO_GROUPING", "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
                   "DATALOADER.SEED", "TEST.EVAL_PERIOD")
# Keys only an evaluation reads: a training run that evaluates nothing (TEST.EVAL_PERIOD -1,
# pods_test scores the model) leaves them to pods_test's report.
EVAL_ONLY_KEYS = ("DATASETS.TEST", "INPUT.AUG.TEST_PIPELINES", "TEST")
# Keys whose readers (model, optimizer, scheduler, hooks, train loader) have all run once the
# runner is built and its train loader exists: checked before the first iteration.
BUILD_TIME_KEYS = ("MODEL", "SOLVER")
# Keys added to the config classes after runs and checkpoints were recorded, each with the value
# that behaves as the configs did before it existed: a record without the key (a benchmark run's
# fingerprint, a checkpoint's config) equals a config that has the key at that value. Append
# here when adding a key whose default keeps the old behaviour.
ADDED_KEYS = {"MODEL.CHANNELS_LAST": False, "TEST.COCO_METRICS": False, "DATALOADER.SEED": -1,
              "SOLVER.EMA.ENABLED": False, "SOLVER.EMA.DECAY": 0.9998, "TEST.EMA_WEIGHTS": True,
              "MODEL.FCOS.BBOX_BIAS_INIT": 0.0}


def is_test_time_key(key: str) -> bool:
    """Whether ``key`` only changes how a trained model is evaluated, never what training
    produces: the evaluation sections (``EVAL_ONLY_KEYS``, except ``TEST.EVAL_PERIOD``, which
    evaluates during training) and the models' inference settings, named so by convention
    (``MODEL....*_TEST``, ``MODEL....TEST_*``, ``MODEL.WEIGHTS_MIN_COVERAGE.TEST``)."""
    if key == "TEST.EVAL_PERIOD":
        return False
    if matches_prefix(key, EVAL_ONLY_KEYS):
        return True
    leaf = key.rsplit(".", 1)[-1]
    return key.startswith("MODEL.") and (leaf == "TEST" or leaf.endswith("_TEST")
                                         or leaf.startswith("TEST_"))


class UnreadKeysError(ValueError):
    """``UNREAD_KEYS "error"`` and an experiment set keys that nothing read."""


def matches_prefix(key: str, prefixes: Iterable[str]) -> bool:
    """``key`` is one of ``prefixes`` or lies under one (``"SOLVER"`` covers ``"SOLVER.X.Y"``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


class ReadTracker:
    """Collects the dotted keys read from any ``ConfigDict`` between ``start()`` and ``stop()``.

    Usable as a context manager. Trackers nest: every started tracker records every read.
    """

    def __init__(self) -> None:
        self._keys: set = set()
        self._lock = threading.Lock()

    def start(self) -> "ReadTracker":
        global _ACTIVE
        if self not in _ACTIVE:
            _ACTIVE = _ACTIVE + (self,)
        return self

    def stop(self) -> None:
        global _ACTIVE
        _ACTIVE = tuple(t for t in _ACTIVE if t is not self)

    def __enter__(self) -> "ReadTracker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def keys(self) -> FrozenSet[str]:
        with self._lock:
            return frozenset(self._keys)

    def _add(self, key: str) -> None:
        with self._lock:
            self._keys.add(key)


def record_read(path: Tuple[str, ...], key) -> None:
    """Called by ``ConfigDict`` for every leaf read; a no-op unless a tracker is started."""
    if not _ACTIVE or getattr(_LOCAL, "paused", 0):
        return
    dotted = ".".join(path + (str(key),))
    for tracker in _ACTIVE:
        tracker._add(dotted)


@contextlib.contextmanager
def untracked() -> Iterator[None]:
    """Reads in this block (this thread only) are not recorded: bookkeeping, not use."""
    _LOCAL.paused = getattr(_LOCAL, "paused", 0) + 1
    try:
        yield
    finally:
        _LOCAL.paused -= 1


class UnreadKeyReport:
    """Tracks a run's reads and reports the keys it set but never read.

    Args:
        set_keys: dotted leaf keys the experiment set (its config class's keys + overrides).
        action: ``"warn"`` (one warning line per check), ``"error"`` (raise
            ``UnreadKeysError``) or ``"off"``.
    """

    def __init__(self, set_keys: Iterable[str], *, action: str = "warn") -> None:
        if action not in UNREAD_KEYS_ACTIONS:
            raise ValueError(f"UNREAD_KEYS = {action!r}; expected one of {UNREAD_KEYS_ACTIONS}")
        self.set_keys: List[str] = sorted(set(set_keys))
        self.action = action
        self.tracker = ReadTracker()
        self.reported: List[str] = []

    @classmethod
    def for_config(cls, cfg, override_keys: Sequence[str] = (), *,
                   action: str = "warn") -> "UnreadKeyReport":
        """The keys ``cfg``'s experiment class set (if it is a ``BaseConfig``) + the overrides'."""
        keys = list(override_keys)
        experiment_keys = getattr(cfg, "experiment_keys", None)
        if callable(experiment_keys):
            keys += experiment_keys()
        return cls(keys, action=action)

    def start(self) -> "UnreadKeyReport":
        self.tracker.start()
        return self

    def stop(self) -> None:
        self.tracker.stop()

    def unread(self, *, only: Optional[Sequence[str]] = None,
               exclude: Sequence[str] = ()) -> List[str]:
        """Set keys not read so far, restricted to ``only`` and outside ``exclude`` prefixes."""
        read = self.tracker.keys
        return [k for k in self.set_keys
                if k not in read and (only is None or matches_prefix(k, only))
                and not matches_prefix(k, exclude)]

    def check(self, stage: str, *, only: Optional[Sequence[str]] = None,
              exclude: Sequence[str] = ()) -> List[str]:
        """Report (once each) the unread keys of this scope; returns them.

        Raises:
            UnreadKeysError: ``action`` is "error" and some key is unread.
        """
        keys = [k for k in self.unread(only=only, exclude=exclude) if k not in self.reported]
        self.reported += keys
        if not keys or self.action == "off":
            return keys
        message = (f"config keys set by this experiment but never read ({stage}): "
                   f"{', '.join(keys)}")
        if self.action == "error":
            error = UnreadKeysError(f"{message}. They have no effect: remove them or fix their "
                                    f"names (UNREAD_KEYS is 'error'; 'warn' only warns)")
            logger.error("%s", error)  # into log.txt too, not only the console
            raise error
        logger.warning("%s. They have no effect (UNREAD_KEYS 'error' makes this fatal, 'off' "
                       "silences it)", message)
        return keys
