"""Dataset catalog: names (``crowdhuman_train``, ``coco_2017_val``...) -> loaders + metadata.

A dataset is registered as a zero-argument function returning a list of dataset dicts
(see docs/internals.md), so nothing is read from disk until the name is used.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Callable, Dict, List

__all__ = ["DatasetCatalog", "MetadataCatalog", "datasets_root", "CONFIGURABLE_LOADERS"]


def datasets_root() -> Path:
    """Where dataset links live: ``$CROWDLOSS_DATASETS``, else ``<repo>/datasets``."""
    env = os.environ.get("CROWDLOSS_DATASETS")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "datasets"


class _Catalog:
    def __init__(self, kind: str):
        self._kind = kind
        self._items: Dict[str, Any] = {}

    def _missing(self, name: str) -> KeyError:
        close = difflib.get_close_matches(name, list(self._items), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return KeyError(f"{self._kind} '{name}' is not registered{hint} "
                        f"(registered: {', '.join(sorted(self._items)) or 'none'})")

    def list(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def remove(self, name: str) -> None:
        self._items.pop(name, None)


class _DatasetCatalog(_Catalog):
    def register(self, name: str, func: Callable[[], List[dict]]) -> None:
        if not callable(func):
            raise TypeError(f"dataset '{name}' must be registered with a callable")
        if name in self._items:
            raise KeyError(f"dataset '{name}' is already registered")
        self._items[name] = func

    def get(self, name: str) -> List[dict]:
        if name not in self._items:
            raise self._missing(name)
        return self._items[name]()


class _MetadataCatalog(_Catalog):
    def get(self, name: str) -> Dict[str, Any]:
        """Metadata dict of ``name`` (created empty on first use, like detectron2)."""
        return self._items.setdefault(name, {"name": name})

    def set(self, name: str, **kwargs: Any) -> Dict[str, Any]:
        meta = self.get(name)
        meta.update(kwargs)
        return meta


DatasetCatalog = _DatasetCatalog("dataset")
MetadataCatalog = _MetadataCatalog("metadata")

# Datasets whose loader takes the DATASETS options: name -> f(*, box_type, skip_bad_images,
# tag_map). ``get_dataset_dicts(names, cfg)`` prefers these over the zero-argument loaders.
CONFIGURABLE_LOADERS: Dict[str, Callable[..., List[dict]]] = {}
