"""Lifetime and failure reports of the worker processes ``launch`` spawns.

- :func:`die_with_parent`: a spawned worker must end when its launcher ends, however the
  launcher ends (``kill -9`` included), so that no orphan keeps training and writing into
  OUTPUT_DIR. On Linux the kernel does it (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); elsewhere, or
  when prctl fails, a watchdog thread polls the parent pid.
- :func:`write_failure` / :func:`read_failures`: what a worker raised (type, message,
  traceback, and whether it is a user error such as a missing file) crosses to the launcher
  as one small JSON file per rank, so the launcher can report the first failure in one line
  instead of parsing a traceback string.
- :func:`stop_processes`: SIGTERM, then SIGKILL after a grace period, then reap.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, List, Optional, Sequence

__all__ = ["LaunchError", "error_message", "die_with_parent", "write_failure", "read_failures",
           "stop_processes"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class LaunchError(RuntimeError):
    """A rank failed to start, failed to join, raised, or died.

    Attributes:
        user_error: the failing worker raised what the launch's ``user_error`` predicate calls
            a user error (a missing file, a bad value): report ``message``, not ``detail``.
        message: the worker's own error message (the whole text for other failures).
        detail: the worker's traceback, when one was recorded.
        rank: the global rank that failed first, when known.
    """

    def __init__(self, text: str, *, user_error: bool = False, message: Optional[str] = None,
                 detail: Optional[str] = None, rank: Optional[int] = None) -> None:
        super().__init__(text)
        self.user_error = user_error
        self.message = text if message is None else message
        self.detail = detail
        self.rank = rank


def _set_pdeathsig(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent thread exits."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc symbol, or a sandbox that refuses prctl
        return False


def _watchdog(parent_pid: int, poll_s: float) -> None:
    while True:
        time.sleep(poll_s)
        if os.getppid() != parent_pid:  # re-parented: the launcher is gone
            os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(parent_pid: int, *, use_prctl: bool = True, poll_s: float = 1.0) -> str:
    """End this process (SIGKILL) as soon as ``parent_pid``, its launcher, is gone.

    SIGKILL rather than SIGINT (what torch's spawn asks for): a job started with ``&`` from a
    script ignores SIGINT, and Python code may catch KeyboardInterrupt.

    The launcher may die before this runs (a spawned child spends seconds importing torch
    first); the kernel would then never send the signal, so the parent pid is checked after
    arming it, and a child that is already orphaned exits at once.

    Args:
        parent_pid: the pid of the launcher that started this process.
        use_prctl: False forces the watchdog (what non-Linux systems get).
        poll_s: the watchdog's polling period.

    Returns:
        "prctl" or "watchdog": how the death of the parent will be noticed.
    """
    armed = use_prctl and _set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:
        sys.stderr.write(f"crowdloss: launcher pid {parent_pid} is gone; worker {os.getpid()} "
                         "exits\n")
        sys.stderr.flush()
        os._exit(1)
    if armed:
        return "prctl"
    threading.Thread(target=_watchdog, args=(parent_pid, poll_s), daemon=True,
                     name="crowdloss-parent-watchdog").start()
    return "watchdog"


def error_message(exc: BaseException) -> str:
    """``str(exc)``, except a KeyError's text without the quotes its str() adds."""
    # KeyError's str() is the repr of its argument ('"dataset ..."'); show the text itself.
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


def write_failure(error_dir: str, local_rank: int, rank: int, exc: BaseException,
                  user_error: Optional[Callable[[BaseException], bool]] = None) -> None:
    """Record what this worker raised as ``<error_dir>/rank<local_rank>.json`` (never raises)."""
    try:
        record = dict(rank=rank, local_rank=local_rank, pid=os.getpid(), time=time.time(),
                      type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                      name=type(exc).__name__, message=error_message(exc),
                      traceback=traceback.format_exc(),
                      user_error=bool(user_error(exc)) if user_error is not None else False)
        path = os.path.join(error_dir, f"rank{local_rank}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
    except Exception:  # noqa: BLE001 - reporting must never mask the original error
        pass


def read_failures(error_dir: str) -> List[dict]:
    """Every recorded failure, the earliest first (the cause; later ones are usually echoes)."""
    records = []
    try:
        names = os.listdir(error_dir)
    except OSError:
        return []
    for name in names:
        if name.startswith("rank") and name.endswith(".json"):
            try:
                with open(os.path.join(error_dir, name), encoding="utf-8") as f:
                    records.append(json.load(f))
            except (OSError, ValueError):
                continue
    return sorted(records, key=lambda r: r.get("time", 0.0))


def stop_processes(processes: Sequence[Any], grace: float = 3.0) -> None:
    """SIGTERM every live worker, SIGKILL what is left after ``grace`` s, reap all."""
    alive = [p for p in processes if p.is_alive()]
    for proc in alive:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in alive:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
