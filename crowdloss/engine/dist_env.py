"""What the environment says about a distributed run: torchrun / SLURM variables, timeouts, limits.

``external_launcher()`` reads the rank layout torchrun (``env://``) or ``srun`` exported;
``expand_nodelist`` turns SLURM's compressed host list into host names (the first hosts rank
0); ``default_timeout()`` is ``$CROWDLOSS_DIST_TIMEOUT``; ``raise_open_files_limit()`` lifts
the descriptor limit data-loader workers need. ``engine.launch`` acts on them.
"""
from __future__ import annotations

import logging
import os
import re
from datetime import timedelta
from typing import List, Optional

from .workers import LaunchError

__all__ = ["DEFAULT_TIMEOUT", "DEFAULT_SLURM_PORT", "default_timeout", "expand_nodelist",
           "raise_open_files_limit", "external_launcher"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)
# torch's own default rendezvous port; used for SLURM when MASTER_PORT is not exported.
DEFAULT_SLURM_PORT = 29500


def default_timeout() -> timedelta:
    """``$CROWDLOSS_DIST_TIMEOUT`` seconds if set, else 30 minutes."""
    value = os.environ.get("CROWDLOSS_DIST_TIMEOUT", "").strip()
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"CROWDLOSS_DIST_TIMEOUT={value!r}: expected a number of "
                         "seconds") from None
    if seconds <= 0:
        raise ValueError(f"CROWDLOSS_DIST_TIMEOUT={value!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


def expand_nodelist(nodelist: str) -> List[str]:
    """Expand a SLURM host list: ``"node[01-03,07],gpu5"`` -> node01 node02 node03 node07 gpu5.

    Handles one bracket group per host (what SLURM prints for plain clusters), keeping the
    zero padding of each range.
    """
    hosts: List[str] = []
    # Split on commas that are outside brackets.
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        item = item.strip()
        if not item:
            continue
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if match is None:
            hosts.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise ValueError(f"SLURM node list {nodelist!r}: cannot parse range {part!r}")
            for num in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{str(num).zfill(len(lo))}{suffix}")
    if not hosts:
        raise ValueError(f"SLURM node list {nodelist!r} names no host")
    return hosts


def raise_open_files_limit(target: int = 1 << 20) -> None:
    """Raise RLIMIT_NOFILE's soft limit towards the hard limit; never raises.

    Many data-loader workers sharing tensors need many descriptors; cvpods forced this with a
    bare ``setrlimit`` that crashed on machines with a low hard limit.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        goal = target if hard == resource.RLIM_INFINITY else min(hard, target)
        if soft != resource.RLIM_INFINITY and soft < goal:
            resource.setrlimit(resource.RLIMIT_NOFILE, (goal, hard))
            logger.debug("Raised the open-files limit from %d to %d", soft, goal)
    except (ValueError, OSError) as exc:
        logger.warning("Could not raise the open-files limit (%s); keeping the current one", exc)


def external_launcher() -> Optional[dict]:
    """Rank info when torchrun or srun started this process, else None."""
    env = os.environ
    if all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        world = int(env["WORLD_SIZE"])
        return dict(source="torchrun (env://)", rank=int(env["RANK"]),
                    local_rank=int(env.get("LOCAL_RANK", 0)), world_size=world,
                    local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
                    host=env["MASTER_ADDR"], port=int(env["MASTER_PORT"]))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        world = int(env["SLURM_NTASKS"])
        nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodes:
            raise LaunchError("SLURM job without SLURM_JOB_NODELIST / SLURM_NODELIST")
        per_node = env.get("SLURM_NTASKS_PER_NODE", "")
        num_nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
        local_world = int(per_node) if per_node.isdigit() else max(1, world // num_nodes)
        return dict(source="SLURM", rank=int(env["SLURM_PROCID"]),
                    local_rank=int(env.get("SLURM_LOCALID", 0)), world_size=world,
                    local_world_size=local_world, host=expand_nodelist(nodes)[0],
                    port=int(env.get("MASTER_PORT", DEFAULT_SLURM_PORT)))
    return None
