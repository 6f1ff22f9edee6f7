"""Override values: the text of a ``KEY VALUE`` pair -> a value of the type it replaces.

``decode_value`` parses Python literals (numbers, tuples, bools...) and keeps other text as
is; ``cast_value`` converts the result to the type of the current value (rules in its
docstring), with an error naming the key, the value given and the type expected.
"""
from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["decode_value", "cast_value"]


def decode_value(raw: Any) -> Any:
    """``ast.literal_eval`` for strings (numbers, tuples, bools...); other strings stay as is."""
    if not isinstance(raw, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


def _fail(key: str, raw: Any, original: Any, why: str = "") -> ValueError:
    return ValueError(f"cannot set config key {key} to {raw!r}: expected a value of type "
                      f"{type(original).__name__} like the current {original!r}{why}")


def cast_value(value: Any, original: Any, *, key: str, raw: Any = None) -> Any:
    """Cast a decoded override ``value`` to the type of the ``original`` value it replaces.

    Rules: bools accept True/False in any case and 0/1; ints accept integral floats (``1e4``);
    floats accept ints and ``inf``/``nan``; strings take the raw text verbatim; tuples and lists
    accept either sequence kind or a single scalar (wrapped, e.g. ``STEPS 20000`` -> ``(20000,)``);
    dict sections accept dicts (merged by the caller). ``None`` originals accept anything.
    """
    raw = value if raw is None else raw
    if original is None:
        return value
    if isinstance(original, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _fail(key, raw, original, " (use True or False)")
    if isinstance(original, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _fail(key, raw, original)
    if isinstance(original, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _fail(key, raw, original)
    if isinstance(original, str):
        if isinstance(raw, (str, os.PathLike)):
            # The literal text the user typed: "1e-3" as a path stays "1e-3", not "0.001".
            return value if isinstance(value, str) else os.fspath(raw)
        raise _fail(key, raw, original)
    if isinstance(original, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(original)(value)
        if isinstance(value, (bool, int, float, str)):
            return type(original)([value])
        raise _fail(key, raw, original)
    if isinstance(original, Mapping):
        if isinstance(value, Mapping):
            return value
        raise _fail(key, raw, original, " (a dict section)")
    if isinstance(value, type(original)):
        return value
    try:
        return type(original)(value)
    except Exception:
        raise _fail(key, raw, original) from None
