"""evaluator_type -> builder, for evaluators beyond the two ``build_evaluator`` knows by name.

A builder is ``f(cfg, dataset_name, output_dir) -> DatasetEvaluator``; a dataset selects it by
its metadata's ``evaluator_type``. crowdloss registers "voc" and "per_class_ap"
(``crowdloss.evaluation.class_ap``), imported on first use; a user's ``net.py`` may register
its own with :func:`register_evaluator_type`.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Optional

__all__ = ["register_evaluator_type", "evaluator_builder", "registered_evaluator_types"]

_BUILDERS: Dict[str, Callable] = {}
# Types whose module registers them on import (so importing the evaluation package stays cheap).
_BUILTIN_MODULES = {"voc": "crowdloss.evaluation.class_ap",
                    "per_class_ap": "crowdloss.evaluation.class_ap"}


def register_evaluator_type(kind: str, builder: Callable, *, replace: bool = False) -> None:
    """Make datasets with ``evaluator_type == kind`` use ``builder(cfg, name, output_dir)``."""
    if not callable(builder):
        raise TypeError(f"evaluator type '{kind}': the builder must be callable")
    if kind in _BUILDERS and not replace and _BUILDERS[kind] is not builder:
        raise KeyError(f"evaluator type '{kind}' is already registered (pass replace=True)")
    _BUILDERS[kind] = builder


def evaluator_builder(kind: str) -> Optional[Callable]:
    """The builder registered for ``kind``, or None."""
    if kind not in _BUILDERS and kind in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[kind])
    return _BUILDERS.get(kind)


def registered_evaluator_types() -> List[str]:
    return sorted(set(_BUILDERS) | set(_BUILTIN_MODULES))
