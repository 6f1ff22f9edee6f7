"""The one atomic file writer every crowdloss output goes through.

A reader (another rank, a ``--resume``, a user's script) or a crash must never see half a
file: content goes to a hidden temp file in the same directory (``.<name>.tmp.<pid>``, which
no ``*.pth`` / ``*.json`` listing matches), is flushed and fsynced, then ``os.replace``d over
the target, and the directory entry is fsynced where the filesystem allows it.
"""
from __future__ import annotations

import os
from typing import Callable, IO, Union

__all__ = ["atomic_write", "TEMP_MARKER"]

# Every temp name contains this; engine code removes leftovers of killed writers by it.
TEMP_MARKER = ".tmp."


def atomic_write(path: Union[str, os.PathLike], content: Union[bytes, str, Callable[[IO], None]],
                 ) -> str:
    """Write ``content`` to ``path`` atomically and return ``path``.

    Args:
        path: target file; its directory is created if needed.
        content: ``bytes``, ``str`` (UTF-8), or a callable that writes into the binary file
            object it receives (``lambda f: torch.save(obj, f)``).

    On any error the temp file is removed and ``path`` keeps its previous content.
    """
    path = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{base}{TEMP_MARKER}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable; not every filesystem lets us open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path
