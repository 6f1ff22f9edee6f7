"""Start one process per device, or join a group started by torchrun / SLURM.

``launch(main_func, num_gpus_per_machine, ...)`` is what ``pods_train`` / ``pods_test`` call.
Rank vocabulary: ``rank = machine_rank * num_gpus_per_machine + local_rank``, world size
``num_machines * num_gpus_per_machine``. Four ways in:

1. World size 1: ``main_func(*args)`` runs in this process, no process group at all
   (every helper in ``crowdloss.utils.comm`` is a no-op then).
2. torchrun (``env://``: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set) or SLURM
   (``srun`` with SLURM_NTASKS > 1): this process already IS one rank; the group is joined
   here and ``main_func`` is called directly. No flags needed.
3. Otherwise ``num_gpus_per_machine`` workers are spawned (start method "spawn"): one per GPU
   with NCCL for ``device="cuda"``, CPU workers with gloo for ``device="cpu"`` (``None``: CUDA
   when it has enough devices). With one process per machine (``--num-machines M --num-gpus
   1``) this process is the rank and nothing is spawned.

Failure handling (cvpods hung forever on these): every rank first checks in at a TCPStore
rendezvous bounded by ``timeout``, so a peer that never starts ends the run within that time
with "rank k did not join within T s at tcp://..." (or, on a machine that finds nobody
listening at the rank-0 address, "rank 0 never joined"). A local worker that raises or dies
makes the parent terminate the other local workers and raise :class:`LaunchError` naming the
rank and the cause; remote peers see their gloo connections close (or the collective timeout,
which is the same ``timeout``). Spawned workers die with their launcher however it ends,
``kill -9`` included (``workers.die_with_parent``), so nothing is orphaned. The timeout comes
from ``--dist-timeout`` or ``$CROWDLOSS_DIST_TIMEOUT`` (seconds). Reading the environment
(torchrun / SLURM variables, the timeout, the open-files limit) is ``engine.dist_env``.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
from datetime import timedelta
from typing import Any, Callable, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .dist_env import (DEFAULT_TIMEOUT, default_timeout, expand_nodelist, external_launcher,
                       raise_open_files_limit)
from .rendezvous import _rendezvous, find_free_port
from .workers import (LaunchError, die_with_parent, read_failures, stop_processes,
                      write_failure)

__all__ = [
    "launch",
    "check_layout",
    "LaunchError",
    "default_timeout",
    "find_free_port",
    "expand_nodelist",
    "raise_open_files_limit",
    "DEFAULT_TIMEOUT",
]

logger = logging.getLogger(__name__)

_RANK_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _parse_tcp_url(dist_url: str) -> Tuple[str, int]:
    parsed = urlparse(dist_url)
    if parsed.scheme != "tcp" or not parsed.hostname or parsed.port is None:
        raise ValueError(f"--dist-url {dist_url!r}: expected tcp://HOST:PORT or 'auto'")
    return parsed.hostname, parsed.port


def check_layout(num_gpus_per_machine: int, *, num_machines: int = 1, machine_rank: int = 0,
                 dist_url: Optional[str] = None) -> None:
    """Raise ``ValueError`` (naming the flag) for a layout ``launch`` cannot start."""
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(f"need at least one process: --num-gpus {num_gpus_per_machine}, "
                         f"--num-machines {num_machines}")
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"--machine-rank {machine_rank} must be in [0, {num_machines})")
    if num_machines * num_gpus_per_machine == 1 or external_launcher() is not None:
        return  # no URL needed: in-process, or the external launcher provides it
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; pass "
                             "--dist-url tcp://<rank-0 host>:<port> on every machine")
    else:
        _parse_tcp_url(dist_url)


def _use_cuda(num_local: int) -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() >= num_local


def _backend(device: Optional[str], num_local: int) -> str:
    """"nccl" for CUDA workers, "gloo" for CPU ones; ``device`` None: CUDA if it has enough."""
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"launch device {device!r}: expected 'cuda', 'cpu' or None")
    if device == "cpu" or (device is None and not _use_cuda(num_local)):
        return "gloo"
    if not _use_cuda(num_local):
        raise LaunchError(f"{num_local} CUDA processes on this machine but "
                          f"{torch.cuda.device_count()} visible GPU(s): start at most that many "
                          "per machine, or run CPU workers (MODEL.DEVICE cpu)")
    return "nccl"


def _init_group(*, rank: int, local_rank: int, world_size: int, local_world_size: int,
                host: str, port: int, timeout: timedelta, device: Optional[str] = None) -> None:
    """Set the env vars, pick backend/device, check in, init the default process group."""
    os.environ.update(zip(_RANK_ENV, map(str, (rank, local_rank, world_size, local_world_size,
                                               host, port))))
    backend = _backend(device, local_world_size)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    store = _rendezvous(host, port, rank, world_size, timeout, local_world_size)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=timeout)
    logger.debug("rank %d/%d joined (%s) at tcp://%s:%d", rank, world_size, backend, host, port)


def _run_as_rank(main_func: Callable, args: Sequence[Any], **group_kw: Any) -> Any:
    """Join the group, run ``main_func``, always leave the group."""
    rank = group_kw["rank"]
    _init_group(**group_kw)
    try:
        result = main_func(*args)
        # Keep rank 0 (the store host) alive until every rank is done with the group.
        dist.barrier()
        return result
    except BaseException as exc:
        logger.error("rank %d failed: %s: %s", rank, type(exc).__name__, exc)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawned_worker(local_rank: int, main_func: Callable, args: Sequence[Any],
                    group_kw: dict) -> Any:
    group_kw = dict(group_kw, local_rank=local_rank,
                    rank=group_kw["machine_rank"] * group_kw["local_world_size"] + local_rank)
    group_kw.pop("machine_rank")
    launcher_pid = group_kw.pop("launcher_pid", None)
    error_dir = group_kw.pop("error_dir", None)
    user_error = group_kw.pop("user_error", None)
    if launcher_pid is not None:  # a spawned child (not the in-process one-rank case)
        die_with_parent(launcher_pid)
    try:
        return _run_as_rank(main_func, args, **group_kw)
    except Exception as exc:
        if error_dir is not None:
            write_failure(error_dir, local_rank, group_kw["rank"], exc, user_error)
        raise


def launch(main_func: Callable, num_gpus_per_machine: int, *, num_machines: int = 1,
           machine_rank: int = 0, dist_url: Optional[str] = None, args: Sequence[Any] = (),
           timeout: timedelta = DEFAULT_TIMEOUT, device: Optional[str] = None,
           user_error: Optional[Callable[[BaseException], bool]] = None) -> Any:
    """Run ``main_func(*args)`` on every rank.

    Returns ``main_func``'s result when this process is the rank (world size 1, one process
    per machine, torchrun, SLURM); None when workers were spawned (each worker reports through logs / files).

    Args:
        main_func: a picklable (module-level) function.
        num_gpus_per_machine: processes per machine (one per GPU, or CPU workers).
        num_machines, machine_rank: multi-machine layout; every machine calls ``launch``.
        dist_url: ``tcp://HOST:PORT`` of rank 0, or ``auto`` / None for a free local port
            (one machine only).
        args: positional arguments of ``main_func`` (picklable).
        timeout: bound on joining and on every collective.
        device: "cuda" (NCCL, one GPU per process), "cpu" (gloo), or None (CUDA when this
            machine has a GPU per process, else CPU).
        user_error: a picklable predicate; a spawned worker's exception for which it is true
            makes a ``LaunchError`` with ``user_error=True`` and the worker's own message.

    Raises:
        LaunchError: a rank did not join in time, raised, or died (all local workers are
            terminated first).
    """
    raise_open_files_limit()
    external = external_launcher()
    if external is not None:
        source = external.pop("source")
        logger.info("Started by %s as rank %d of %d", source, external["rank"],
                    external["world_size"])
        return _run_as_rank(main_func, args, timeout=timeout, device=device, **external)

    check_layout(num_gpus_per_machine, num_machines=num_machines, machine_rank=machine_rank,
                 dist_url=dist_url)
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return main_func(*args)

    if dist_url in (None, "auto"):
        host, port = "127.0.0.1", find_free_port()
    else:
        host, port = _parse_tcp_url(dist_url)
    if device is None and torch.cuda.is_available() and not _use_cuda(num_gpus_per_machine):
        logger.warning("--num-gpus %d > %d visible GPUs: using CPU workers (gloo)",
                       num_gpus_per_machine, torch.cuda.device_count())
    _backend(device, num_gpus_per_machine)  # fail here, not in every worker

    group_kw = dict(machine_rank=machine_rank, world_size=world_size,
                    local_world_size=num_gpus_per_machine, host=host, port=port,
                    timeout=timeout, device=device)
    if num_gpus_per_machine == 1:
        # One rank on this machine (multi-machine, one process each): this process is the
        # rank; there is no local worker to supervise, so nothing is spawned.
        saved = {key: os.environ.get(key) for key in _RANK_ENV}
        try:
            return _spawned_worker(0, main_func, tuple(args), group_kw)
        finally:
            for key, value in saved.items():  # leave the caller's environment as it was
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    # SIGTERM (a scheduler or CI killing us) would skip every `finally`; turn it into SystemExit
    # so the workers are always terminated with us.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    # Workers are killed by the kernel when the thread that spawns them ends (prctl's parent
    # death signal follows the thread): this one, which also waits for them below.
    error_dir = tempfile.mkdtemp(prefix="crowdloss-launch-")
    group_kw.update(launcher_pid=os.getpid(), error_dir=error_dir, user_error=user_error)
    failure = None
    try:
        context = mp.start_processes(_spawned_worker, args=(main_func, tuple(args), group_kw),
                                     nprocs=num_gpus_per_machine, join=False,
                                     start_method="spawn")
        try:
            while not context.join(timeout=1.0, grace_period=1.0):
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            failure = exc
        finally:
            stop_processes(context.processes)
        if failure is not None:
            raise _worker_failure(failure, read_failures(error_dir), machine_rank,
                                  num_gpus_per_machine) from None
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return None


def _worker_failure(exc: Exception, records: List[dict], machine_rank: int,
                    nprocs: int) -> LaunchError:
    """The LaunchError for the first failure: a recorded exception, else how a worker died.

    A worker that died without raising (a signal, ``os._exit``) and was noticed first is the
    cause even when others then recorded exceptions (their peers' connections closing).
    """
    died_first = (isinstance(exc, mp.ProcessExitedException)
                  and not any(r["local_rank"] == exc.error_index for r in records))
    if records and not died_first:
        first = records[0]
        where = f"rank {first['rank']} (local rank {first['local_rank']}, pid {first['pid']})"
        trace = first["traceback"].rstrip()
        text = f"{where} raised {first['name']}: {first['message']}"
        if not first["user_error"]:
            text += f"\n{trace}"
        return LaunchError(f"{text}\nThe other local workers were terminated.",
                           user_error=bool(first["user_error"]), message=first["message"],
                           detail=trace, rank=first["rank"])
    rank = machine_rank * nprocs + exc.error_index
    where = f"rank {rank} (local rank {exc.error_index}, pid {exc.error_pid})"
    if isinstance(exc, mp.ProcessExitedException):
        how = str(exc).split(" terminated with ", 1)[-1]
        text = f"{where} died with {how}"
    else:
        trace = str(exc).split("following error:\n", 1)[-1].rstrip()
        last = trace.splitlines()[-1] if trace else "an unknown error"
        return LaunchError(f"{where} raised {last}\n{trace}\nThe other local workers were "
                           "terminated.", detail=trace, rank=rank)
    return LaunchError(f"{text}\nThe other local workers were terminated.", rank=rank)


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)
