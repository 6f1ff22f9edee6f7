"""``ConfigDict``: the nested, attribute-accessible dict every crowdloss config is made of.

cvpods semantics (kept exactly, because playground ``config.py`` files are written against them):

- ``cfg.SOLVER`` and ``cfg["SOLVER"]`` are one store; assigning a plain dict anywhere turns it
  into a ``ConfigDict`` so that ``cfg.A.B.C`` always works.
- ``merge(other)`` walks nested dicts key by key; any other value (list, tuple, scalar) replaces
  the old one wholesale. That is what lets a playground dict change one key of a pipeline-free
  section without restating the rest, while ``STEPS=(18750, 24735)`` replaces the whole tuple.
- ``merge_from_list(["KEY.PATH", "value", ...])`` applies command-line overrides: the key must
  exist, the value is ``ast.literal_eval``-ed and cast to the type of the value it replaces.

Names starting with ``_`` are ordinary Python attributes, never config keys, so subclasses can
keep private state without it leaking into ``config.yaml``.

Every section knows its dotted path (``_path``), so that a leaf read while a ``ReadTracker`` is
started is recorded under its full name (``tracking.py`` says what counts as a read).
"""
from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import yaml

from crowdloss.utils.io import atomic_write

from . import legacy
from .casting import cast_value, decode_value
from .tracking import record_read, untracked

__all__ = ["ConfigDict", "ConfigKeyError", "Override"]


class ConfigKeyError(KeyError):
    """A ``KeyError`` whose message prints as written (``KeyError`` would repr-quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Override(NamedTuple):
    """One applied ``KEY VALUE`` override: the canonical key, the leaf keys it set, a message."""
    key: str
    leaf_keys: Tuple[str, ...]
    message: str


class ConfigDict(dict):
    """A dict whose keys are also attributes; nested dicts become ``ConfigDict`` too.

    Args:
        d: initial mapping (merged, so nested dicts are converted and leaves deep-copied).
        **kwargs: more initial keys, applied after ``d``.
    """

    # Dotted path of this section in its root config; () for a root (or a detached section).
    _path: Tuple[str, ...] = ()

    def __init__(self, d: Optional[Mapping] = None, **kwargs: Any):
        super().__init__()
        if d is not None:
            self.merge(d)
        if kwargs:
            self.merge(kwargs)

    # ---- read tracking ---------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        value = dict.__getitem__(self, key)
        if not isinstance(value, ConfigDict):
            record_read(self._path, key)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        if dict.__contains__(self, key):
            return self[key]
        return default

    def _set_path(self, path: Tuple[str, ...]) -> None:
        object.__setattr__(self, "_path", path)
        for k, v in dict.items(self):
            if isinstance(v, ConfigDict):
                v._set_path(path + (str(k),))

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # pickle restores items before this state: re-derive the children's paths afterwards.
        self.__dict__.update(state)
        self._set_path(self._path)

    # ---- one store for attributes and keys -------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup failed, i.e. for config keys and genuine typos.
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            close = difflib.get_close_matches(name, [str(k) for k in self.keys()], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise AttributeError(f"config has no key '{name}'{hint}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def __delattr__(self, name: str) -> None:
        if name.startswith("_"):
            object.__delattr__(self, name)
        else:
            try:
                del self[name]
            except KeyError:
                raise AttributeError(f"config has no key '{name}'") from None

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, Mapping) and not isinstance(value, ConfigDict):
            value = ConfigDict(value)
        if isinstance(value, ConfigDict):
            value._set_path(self._path + (str(key),))
        super().__setitem__(key, value)

    def update(self, other: Any = (), **kwargs: Any) -> None:  # dict.update bypasses __setitem__
        for k, v in dict(other, **kwargs).items():
            self[k] = v

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def copy(self) -> "ConfigDict":
        """A deep copy: a shallow one would share nested sections, a classic config bug."""
        with untracked():
            return copy.deepcopy(self)

    # ---- merging ---------------------------------------------------------------------------
    def merge(self, other: Optional[Mapping] = None, **kwargs: Any) -> "ConfigDict":
        """Merge ``other`` (then ``kwargs``) into self: dicts key by key, anything else replaces.

        Leaves are deep-copied, so later in-place edits never reach the dict that was merged in
        (e.g. a module-level ``_config_dict`` shared by every instance).
        """
        with untracked():
            for source in (other or {}, kwargs):
                if not isinstance(source, Mapping):
                    raise TypeError(f"can only merge a mapping into a config, got "
                                    f"{type(source).__name__}")
                for k, v in source.items():
                    if isinstance(v, Mapping):
                        if not isinstance(dict.get(self, k), ConfigDict):
                            self[k] = ConfigDict()
                        dict.__getitem__(self, k).merge(v)
                    else:
                        self[k] = copy.deepcopy(v)
        return self

    def merge_from_list(self, overrides: Sequence[Any]) -> List[str]:
        """Apply ``KEY VALUE`` pairs (e.g. from the command line); see ``apply_overrides``.

        Returns:
            one message per applied override, ``"KEY: old -> new"``.
        """
        return [o.message for o in self.apply_overrides(overrides)]

    def apply_overrides(self, overrides: Sequence[Any]) -> List[Override]:
        """Apply ``KEY VALUE`` pairs and say which leaf keys each one set.

        Keys may use dots (``SOLVER.OPTIMIZER.BASE_LR``), cvpods' legacy flat names
        (``SOLVER.BASE_LR``, ``INPUT.MIN_SIZE_TEST``) and the ``MODEL.LLA.TopK`` spelling.
        String values are ``ast.literal_eval``-ed (kept as strings when that fails) and cast to
        the type of the value they replace. A dict value merges into a section and sets each of
        its leaves; a legacy ``INPUT.*_SIZE_*`` key sets the pipeline list that holds it.

        Raises:
            ValueError: odd-length list, or a value that cannot become the expected type.
            KeyError: a key that does not exist (the message lists the closest keys).
        """
        overrides = list(overrides)
        if len(overrides) % 2:
            raise ValueError(f"overrides must be KEY VALUE pairs, got an odd number of items: "
                             f"{overrides}")
        applied = []
        with untracked():
            for full_key, raw in zip(overrides[0::2], overrides[1::2]):
                if not isinstance(full_key, str) or not full_key:
                    raise ValueError(f"override key must be a non-empty string, got {full_key!r}")
                container, leaf, name = self._resolve_key(legacy.canonical_key(full_key))
                # "INPUT.AUG.TEST_PIPELINES[0].max_size" lives in the list INPUT.AUG.TEST_PIPELINES.
                key = name.split("[", 1)[0]
                value = decode_value(raw)
                if leaf in container:
                    old = container[leaf]
                    value = cast_value(value, old, key=full_key, raw=raw)
                else:  # a legacy pipeline kwarg the entry does not spell out yet
                    old = None
                if isinstance(value, Mapping) and isinstance(old, ConfigDict):
                    old_copy = copy.deepcopy(old)
                    old.merge(value)
                    leaves = tuple(f"{key}.{k}" for k in ConfigDict(value).flat_keys())
                    message = f"{name}: {old_copy.to_dict()} -> {old.to_dict()}"
                else:
                    container[leaf] = value
                    leaves = (key,)
                    message = f"{name}: {old!r} -> {value!r}"
                applied.append(Override(key, leaves, message))
        return applied

    def _resolve_key(self, full_key: str) -> Tuple[Any, str, str]:
        """(container, leaf key, display name) of an existing key, else a ``ConfigKeyError``."""
        node: Any = self
        parts = full_key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, Mapping) or part not in node:
                break
            if i == len(parts) - 1:
                return node, part, full_key
            node = node[part]
        target = legacy.resolve_legacy_key(self, full_key)
        if target is not None:
            return target
        raise ConfigKeyError(_unknown_key_message(full_key, self.flat_keys()))

    # ---- inspection --------------------------------------------------------------------------
    def flat_keys(self, prefix: str = "") -> List[str]:
        """Every leaf key as a dotted path (``["MODEL.DEVICE", ...]``)."""
        keys = []
        for k, v in self.items():
            path = f"{prefix}{k}"
            keys.extend(v.flat_keys(path + ".") if isinstance(v, ConfigDict) else [path])
        return keys

    def to_dict(self) -> Dict[str, Any]:
        """A plain nested ``dict`` (containers rebuilt, leaves shared)."""
        return _plain(self)

    def diff(self, other: Mapping) -> Dict[str, Any]:
        """Keys of self whose values differ from ``other`` (or that ``other`` lacks), nested.

        Tuples and lists compare equal when their items do, so a value that went through YAML
        or the command line is not reported as a change.
        """
        result = {}
        with untracked():
            for k, v in self.items():
                if k not in other:
                    result[k] = _plain(v)
                elif isinstance(v, Mapping) and isinstance(other[k], Mapping):
                    sub = ConfigDict.diff(v, other[k])
                    if sub:
                        result[k] = sub
                elif _normalize(v) != _normalize(other[k]):
                    result[k] = _plain(v)
        return result

    def dump(self, path: Optional[str] = None) -> str:
        """The config as YAML (``yaml.safe_dump``); also written atomically to ``path`` if given.

        Tuples become lists, ``inf`` is written as ``.inf`` (YAML's spelling, read back as
        ``float('inf')``), callables attached to the config (``cfg.build_backbone``) as their
        qualified name.
        """
        return dump_yaml(self.to_dict(), path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)})"

    def __str__(self) -> str:
        return self.dump()


# ---- helpers (module level so BaseConfig, output and rescale share them) ----------------------
def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _normalize(value: Any) -> Any:
    """What YAML can hold: dicts, lists, scalars; callables and others by name."""
    if isinstance(value, Mapping):
        return {str(k): _normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def dump_yaml(data: Mapping, path: Optional[str] = None) -> str:
    """``yaml.safe_dump`` of ``data`` in insertion order; written atomically when ``path``."""
    text = yaml.safe_dump(_normalize(data), sort_keys=False, default_flow_style=None, width=100)
    if path is not None:
        # A reader (or a crash) never sees a half-written config.
        atomic_write(path, text)
    return text


def _unknown_key_message(full_key: str, known: Iterable[str]) -> str:
    known = list(known)
    leaf = full_key.rsplit(".", 1)[-1]
    # Same leaf name under another section first (MODEL.TOPK -> MODEL.LLA.TOPK), then spelling.
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1].upper() == leaf.upper()]
    close = difflib.get_close_matches(full_key, known, n=5, cutoff=0.6)
    suggestions = list(dict.fromkeys(same_leaf[:5] + close))[:6]
    hint = f"; closest existing keys: {', '.join(suggestions)}" if suggestions else ""
    return f"config key '{full_key}' does not exist{hint}"
