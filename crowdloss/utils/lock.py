"""One writer per output directory: a lock file held for as long as a run writes there.

Two trainings writing one OUTPUT_DIR interleave their checkpoints, ``metrics.json`` lines and
``last_checkpoint`` without any error. :class:`DirectoryLock` makes the second one stop at once
with the holder's pid, host, start time and command line.

Mechanism: a POSIX record lock (``fcntl.lockf``) on ``<dir>/.crowdloss.lock``, whose content
says who holds it. The kernel drops it when the holder dies, however it dies, so it is never
stale; unlike ``flock`` it is not inherited by forked children (DataLoader workers), which
would otherwise keep it after the run ends, and NFS forwards it to the server. Where the
filesystem refuses locks, an ``O_EXCL``-created ``.crowdloss.lock.excl`` file stands in; it is
stale when its holder ran on this host and its pid is gone, and is then taken over (a holder
on another host has to be removed by hand, the error says so).

Within one process a lock is re-entrant (a count), so library code may take it again.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
import threading
from typing import Dict, Optional

__all__ = ["DirectoryLock", "DirectoryLockedError", "LOCK_NAME", "lock_for_run",
           "release_run_locks"]

LOCK_NAME = ".crowdloss.lock"

_HELD: Dict[str, "DirectoryLock"] = {}  # lock path -> the lock this process holds
_HELD_GUARD = threading.Lock()


class DirectoryLockedError(RuntimeError):
    """Another live process holds the directory; ``holder`` is what its lock file says."""

    def __init__(self, message: str, holder: Optional[dict] = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


def _holder_info(purpose: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.loads(f.read() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


class DirectoryLock:
    """Exclusive use of ``directory`` by this process (see the module docstring).

    Args:
        directory: the directory to lock (created if missing).
        purpose: what holds it ("pods_train", "pods_test"), shown to whoever is refused.
        use_os_lock: False forces the ``O_EXCL`` fallback (what a filesystem without locks gets).
    """

    def __init__(self, directory: str, *, purpose: str = "crowdloss", use_os_lock: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self.path = os.path.join(self.directory, LOCK_NAME)
        self.purpose = purpose
        self._use_os_lock = use_os_lock
        self._fd: Optional[int] = None
        self._excl_path: Optional[str] = None
        self._count = 0
        self._delegate: Optional["DirectoryLock"] = None  # the instance that really holds it

    # ------------------------------------------------------------------ public
    def acquire(self) -> "DirectoryLock":
        """Take the lock or raise :class:`DirectoryLockedError` naming the holder."""
        with _HELD_GUARD:
            held = _HELD.get(self.path)
            if held is not None:  # this process has it already: count, do not deadlock
                held._count += 1
                self._delegate = held if held is not self else None
                return self
            self._delegate = None
            os.makedirs(self.directory, exist_ok=True)
            if not (self._use_os_lock and self._acquire_os_lock()):
                self._acquire_excl()
            self._count = 1
            _HELD[self.path] = self
        return self

    def release(self) -> None:
        """Give the lock up (the last of nested acquisitions really releases it)."""
        with _HELD_GUARD:
            owner, self._delegate = self._delegate or self, None
            if owner._count == 0:
                return
            owner._count -= 1
            if owner._count:
                return
            _HELD.pop(owner.path, None)
            owner._drop()

    @property
    def held(self) -> bool:
        return (self._delegate or self)._count > 0

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ lockf
    def _acquire_os_lock(self) -> bool:
        """True when taken; False when this filesystem has no locks (use the fallback).

        The file is opened once and never by anything else in this process while held: a
        POSIX lock ends when its process closes ANY descriptor of the file.
        """
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._locked_error(_read_holder(self.path)) from None
                return False  # ENOLCK, EOPNOTSUPP, ENOSYS...: no locks here
            # Someone may have deleted and re-created the file between open and lockf: the
            # lock must be on the file the path names now.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(_holder_info(self.purpose)) + "\n").encode("utf-8"))
            os.fsync(fd)
            self._fd = fd
            return True

    # ------------------------------------------------------------------ O_EXCL fallback
    def _acquire_excl(self) -> None:
        path = self.path + ".excl"
        for _ in range(2):  # the second try follows the removal of a stale file
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_holder(path)
                same_host = holder.get("host") == socket.gethostname()
                pid = holder.get("pid")
                if same_host and isinstance(pid, int) and not _pid_alive(pid):
                    try:
                        os.remove(path)  # stale: its holder died without releasing
                    except FileNotFoundError:
                        pass
                    continue
                raise self._locked_error(holder, stale_hint=not same_host) from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(_holder_info(self.purpose)) + "\n")
            self._excl_path = path
            return
        raise self._locked_error(_read_holder(path))

    # ------------------------------------------------------------------ helpers
    def _drop(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)  # nobody holds it: no stale holder to show
            except OSError:
                pass
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
        if self._excl_path is not None:
            try:
                os.remove(self._excl_path)
            except FileNotFoundError:
                pass
            self._excl_path = None

    def _locked_error(self, holder: dict, stale_hint: bool = False) -> DirectoryLockedError:
        who = holder.get("purpose", "another run")
        where = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        since = f" since {holder['started']}" if holder.get("started") else ""
        command = f" ({holder['command']})" if holder.get("command") else ""
        message = (f"{self.directory} is in use by {who} {where}{since}{command}; wait for it "
                   "to finish or stop it, or write elsewhere (OUTPUT_DIR /another/dir)")
        if stale_hint:
            message += (f". If that process is gone (it ran on another host, which cannot be "
                        f"checked from here), delete {self.path}.excl")
        return DirectoryLockedError(message, holder)


# ---------------------------------------------------------------------------- one per run
_RUN_LOCKS: list = []  # what lock_for_run took in this process


def lock_for_run(directory: str, *, purpose: str) -> None:
    """Rank 0 locks ``directory`` for this run; every rank learns the outcome (a collective,
    when distributed), so a refused run stops on every rank before anything is written.

    Raises:
        DirectoryLockedError: on every rank, naming the holder.
    """
    from . import comm

    refusal = None
    if comm.is_main_process():
        try:
            _RUN_LOCKS.append(DirectoryLock(directory, purpose=purpose).acquire())
        except DirectoryLockedError as exc:
            refusal = (str(exc), exc.holder)
    if comm.get_world_size() > 1:
        refusal = comm.all_gather(refusal)[0]
    if refusal:
        raise DirectoryLockedError(*refusal)


def release_run_locks() -> None:
    """Release what :func:`lock_for_run` took here (the kernel does it at exit anyway)."""
    while _RUN_LOCKS:
        _RUN_LOCKS.pop().release()
