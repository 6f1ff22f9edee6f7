"""Spawned workers die with their launcher, however it dies (real processes, real signals).

The launcher is started the way the bug report did: ``pods_train --num-gpus 2 ... &`` from a
bash script (a background job of a script ignores SIGINT, the parent-death signal torch's
spawn asks for), then killed with SIGKILL, which runs no cleanup at all.
"""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "tiny_experiment"


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that never comes counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def _snapshot(directory: Path):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()
            if p.is_file()}


def _wait_gone(pids, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.mark.slow
def test_kill_9_of_the_launcher_ends_its_workers(tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(FIXTURE, exp, ignore=shutil.ignore_patterns("__pycache__", "log"))
    out = tmp_path / "out"
    pid_file = tmp_path / "launcher.pid"
    entry = "import sys; from crowdloss.cli.train import main; sys.exit(main(sys.argv[1:]))"
    script = tmp_path / "run.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        cd {exp}
        {sys.executable} -c '{entry}' --num-gpus 2 --dist-timeout 60 \\
            SOLVER.IMS_PER_DEVICE 1 SOLVER.LR_SCHEDULER.MAX_ITER 10000000 \\
            SOLVER.CHECKPOINT_PERIOD 200 OUTPUT_DIR {out} > {tmp_path}/launcher.log 2>&1 &
        echo $! > {pid_file}
        wait
        """))
    bash = subprocess.Popen(["bash", str(script)], env=_env(), start_new_session=True)
    workers = []
    try:
        deadline = time.monotonic() + 120
        while True:  # both ranks set up and training: metrics.json grows
            assert bash.poll() is None, (tmp_path / "launcher.log").read_text()
            assert time.monotonic() < deadline, "training did not start"
            metrics = out / "metrics.json"
            if pid_file.is_file() and (out / "log.txt.rank1").is_file() and metrics.is_file():
                size = metrics.stat().st_size
                time.sleep(1.0)
                if metrics.stat().st_size > size:
                    break
            time.sleep(0.3)
        launcher = int(pid_file.read_text())
        workers = _children(launcher)  # 2 ranks + multiprocessing's resource tracker
        assert len(workers) >= 2, workers
        os.kill(launcher, signal.SIGKILL)
        survivors = _wait_gone(workers, 5.0)
        assert not survivors, f"workers {survivors} outlived their launcher {launcher}"
        before = _snapshot(out)
        time.sleep(2.0)
        assert _snapshot(out) == before, "something still writes into OUTPUT_DIR"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if bash.poll() is None:
            bash.kill()
        bash.wait(timeout=30)


_CHILD = """
import os, sys, time
from pathlib import Path
parent = os.getppid()
time.sleep(float(sys.argv[2]))  # what a spawned child spends importing torch
from crowdloss.engine.workers import die_with_parent
how = die_with_parent(parent, use_prctl=sys.argv[3] == "prctl", poll_s=0.2)
Path(sys.argv[1], "armed").write_text(how)
while True:
    with open(Path(sys.argv[1], "ticks"), "a") as f:
        f.write("x")
    time.sleep(0.05)
"""

_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
print(child.pid, flush=True)
time.sleep(600)
"""


def _start_pair(tmp_path, delay, mode):
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, _CHILD, str(tmp_path), str(delay),
                               mode], env=_env(), stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    return parent, child


@pytest.mark.parametrize("mode", ["prctl", "watchdog"])
def test_child_dies_with_its_parent(tmp_path, mode):
    # "watchdog" is what a system without prctl gets: a thread polling the parent pid.
    parent, child = _start_pair(tmp_path, 0.0, mode)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ticks").is_file():
            assert time.monotonic() < deadline and _alive(child), "child did not start"
            time.sleep(0.05)
        assert (tmp_path / "armed").read_text() == mode
        parent.kill()
        parent.wait()
        assert not _wait_gone([child], 3.0), f"child {child} outlived its parent ({mode})"
        size = (tmp_path / "ticks").stat().st_size
        time.sleep(0.5)
        assert (tmp_path / "ticks").stat().st_size == size
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()


def test_child_orphaned_before_arming_exits_at_once(tmp_path):
    # The race: the launcher dies while its child is still starting up, before the child
    # could ask for the parent-death signal; the kernel would never send it.
    parent, child = _start_pair(tmp_path, 1.5, "prctl")
    try:
        time.sleep(0.3)
        parent.kill()
        parent.wait()
        assert not _wait_gone([child], 10.0), "an orphaned child armed itself and kept running"
        assert not (tmp_path / "armed").exists() and not (tmp_path / "ticks").exists()
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
