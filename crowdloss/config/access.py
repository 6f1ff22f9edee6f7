"""The one way crowdloss code reads a config value by its dotted name.

``cfg_get(cfg, "MODEL.FCOS.NUM_CLASSES")`` works on a ``ConfigDict``, a plain nested ``dict``
or an attribute namespace. Without a default, a missing key is an error that names the whole
key and the section it is missing from: every key a component reads should be declared in a
config class, so a missing one is a bug, not something to paper over with a default.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config_dict import ConfigKeyError

__all__ = ["cfg_get", "MISSING"]

MISSING = object()


def cfg_get(cfg: Any, key: str, default: Any = MISSING) -> Any:
    """Read the dotted ``key`` ("MODEL.RESNETS.DEPTH") from ``cfg``.

    Args:
        cfg: a ``ConfigDict``, nested dict or object with attributes.
        key: dotted path.
        default: returned when the key is missing; omitted, a missing key raises.

    Raises:
        ConfigKeyError: the key is missing and no default was given (a ``KeyError``).
    """
    node = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, Mapping):
            if part in node:
                node = node[part]
                continue
        else:
            try:
                node = getattr(node, part)
                continue
            except (AttributeError, KeyError):
                pass
        if default is not MISSING:
            return default
        raise ConfigKeyError(
            f"config key '{key}' is missing (no '{part}' under "
            f"'{'.'.join(parts[:i]) or '<root>'}'); declare it in the config class")
    return node
