"""Rank-aware logging setup (``log.txt`` on rank 0, ``log.txt.rank<N>`` elsewhere)."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

__all__ = ["setup_logger"]

_FORMAT = "[%(asctime)s %(name)s %(levelname)s]: %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"


def _has_handler(logger: logging.Logger, key: str) -> bool:
    return any(getattr(h, "_crowdloss_key", None) == key for h in logger.handlers)


def setup_logger(
    output_dir: Optional[str] = None, distributed_rank: int = 0, name: str = "crowdloss"
) -> logging.Logger:
    """Configure and return the ``name`` logger.

    Idempotent: calling it again with the same arguments adds no duplicate handler, so the CLI
    and library code may both call it.

    Args:
        output_dir: directory for ``log.txt``; a path ending in ``.txt`` or ``.log`` is used as the
            file itself. ``None`` logs to the console only.
        distributed_rank: this process's global rank. Only rank 0 writes to the console (the
            other ranks would repeat every line); every rank writes its own file.
        name: logger name; children (``crowdloss.engine`` ...) propagate into it.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    formatter = logging.Formatter(_FORMAT, datefmt=_DATEFMT)

    if distributed_rank == 0 and not _has_handler(logger, "console"):
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(formatter)
        console._crowdloss_key = "console"  # type: ignore[attr-defined]
        logger.addHandler(console)

    if output_dir:
        if output_dir.endswith((".txt", ".log")):
            filename = output_dir
        else:
            filename = os.path.join(output_dir, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        filename = os.path.abspath(filename)
        key = "file:" + filename
        if not _has_handler(logger, key):
            os.makedirs(os.path.dirname(filename), exist_ok=True)
            handler = logging.FileHandler(filename, mode="a", encoding="utf-8")
            handler.setLevel(logging.DEBUG)
            handler.setFormatter(formatter)
            handler._crowdloss_key = key  # type: ignore[attr-defined]
            logger.addHandler(handler)
    return logger
