"""Rank check-in before the process group: every rank must join within one deadline.

``torch.distributed``'s own rendezvous waits silently (cvpods hung forever on a missing peer)
and its TCPStore client retries its connect once after the timeout, so a lone machine waited
twice ``--dist-timeout`` and then blamed itself. Here each rank sets a key in a TCPStore and
waits for all keys until one deadline, then names the ranks that never came.
"""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from typing import Optional

import torch.distributed as dist

from .workers import LaunchError

__all__ = ["find_free_port"]

_JOIN_KEY = "crowdloss/joined/{}"


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _wait_for_listener(host: str, port: int, deadline: float) -> bool:
    """Whether something accepts TCP connections at host:port before ``deadline``.

    Probing with a plain socket first keeps the wait inside the deadline: a TCPStore client
    retries its connect once more after its timeout (twice the time) and prints C++ stack
    traces on each attempt.
    """
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror as exc:
        raise LaunchError(f"cannot resolve the rank-0 host {host!r} of tcp://{host}:{port}: "
                          f"{exc}") from None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            with socket.create_connection((host, port), timeout=min(1.0, remaining)):
                return True
        except OSError:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _rendezvous(host: str, port: int, rank: int, world_size: int, timeout: timedelta,
                local_world_size: Optional[int] = None):
    """TCPStore check-in that names the ranks missing after ``timeout``.

    Rank 0 hosts the store, except under torchrun's agent store
    (TORCHELASTIC_USE_AGENT_STORE=True), where the agent already listens on MASTER_PORT and
    every rank is a client; keys are then prefixed by the restart attempt so that a restarted
    group never sees the previous attempt's keys. Every wait shares one deadline, ``timeout``
    from now.
    """
    url = f"tcp://{host}:{port}"
    seconds = timeout.total_seconds()
    deadline = time.monotonic() + seconds
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    is_server = rank == 0 and not agent_store
    if not is_server and not _wait_for_listener(host, port, deadline):
        first = "rank 0" if not local_world_size or local_world_size < 2 else \
            f"ranks 0-{local_world_size - 1} (machine 0)"
        raise LaunchError(
            f"{first} never joined: rank {rank} found nobody listening at {url} within "
            f"{seconds:g} s (start the --machine-rank 0 machine with the same --dist-url and "
            "--num-machines, check the address and firewall, or raise --dist-timeout)")
    try:
        store = dist.TCPStore(host, port, world_size, is_server,
                              timeout=timedelta(seconds=max(1.0, deadline - time.monotonic())),
                              wait_for_workers=False)
        store.set_timeout(timeout)  # later store operations get the full timeout again
    except Exception as exc:  # noqa: BLE001 - the store raises RuntimeError/DistNetworkError
        who = "could not listen" if is_server else "could not reach rank 0"
        raise LaunchError(f"rank {rank} {who} at {url} within {seconds:g} s: {exc}") from exc
    if agent_store:
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"crowdloss/attempt_{attempt}", store)
    store.set(_JOIN_KEY.format(rank), "1")
    keys = [_JOIN_KEY.format(r) for r in range(world_size)]
    while True:
        missing = [r for r, key in enumerate(keys) if not store.check([key])]
        if not missing:
            return store
        if time.monotonic() > deadline:
            names = ("rank " if len(missing) == 1 else "ranks ") + ", ".join(map(str, missing))
            raise LaunchError(f"{names} did not join within {seconds:g} s at {url} "
                              f"(world size {world_size}; start every machine with the same "
                              f"--dist-url and --num-machines, or raise --dist-timeout)")
        time.sleep(0.1)
