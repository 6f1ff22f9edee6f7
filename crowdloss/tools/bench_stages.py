"""One stage of a benchmark run (``pods_train`` or ``pods_test`` in a child process): its
wall and CPU time, and, when it fails, why, in one line the report can print.

A failed seed is part of a result (LLA at 2600 iterations on synthcrowd: one seed in seven
stopped by the dead-box check, docs/benchmark.md), so the runner keeps the reason in the run's
record and the report names the seed and the reason instead of only leaving it out.
"""
from __future__ import annotations

import os
import subprocess
import time
from typing import List

__all__ = ["timed", "add_time", "failure_reason"]


def timed(cmd: List[str], log: str, env: dict) -> dict:
    """Run ``cmd`` with stdout + stderr appended to ``log``; its exit code, and wall and CPU
    seconds (the child and the children it waited for, e.g. data loader workers, from
    ``wait4``)."""
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - start,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def add_time(record: dict, stage: str, t: dict) -> None:
    """Add one invocation's times to ``record[stage]`` (a resumed run has several)."""
    acc = record.setdefault(stage, {"wall_s": 0.0, "cpu_s": 0.0, "invocations": 0})
    acc["wall_s"] += t["wall_s"]
    acc["cpu_s"] += t["cpu_s"]
    acc["invocations"] += 1


def failure_reason(stage: str, log: str, *, max_chars: int = 400) -> str:
    """``"<stage>: <the last line of log that names an error>"`` (else its last line): the CLIs
    end a failure with ``pods_train: error: <Type>: <message>``. A longer line is cut at
    ``max_chars`` and points at the log for the rest."""
    try:
        with open(log, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError as exc:
        return f"{stage}: (its log {log} could not be read: {exc})"
    errors = [line for line in lines if "error" in line.lower()]
    line = (errors or lines or ["no output"])[-1]
    if len(line) > max_chars:
        line = f"{line[:max_chars]} ... (the rest in {log})"
    return f"{stage}: {line}"
