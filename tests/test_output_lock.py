"""One writer per OUTPUT_DIR: the lock file (real processes) and pods_test beside a training."""
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crowdloss.utils.lock import LOCK_NAME, DirectoryLock, DirectoryLockedError

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "tiny_experiment"
ENTRY = "import sys; from crowdloss.cli.{} import main; sys.exit(main(sys.argv[1:]))"


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


_HOLD = """
import sys, time
from crowdloss.utils.lock import DirectoryLock
DirectoryLock(sys.argv[1], purpose="holder-test").acquire()
print("held", flush=True)
time.sleep(600)
"""


def _hold_in_subprocess(directory):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(directory)], env=_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_with_pid_host_and_start(tmp_path):
    holder = _hold_in_subprocess(tmp_path)
    try:
        with pytest.raises(DirectoryLockedError) as info:
            DirectoryLock(tmp_path, purpose="second").acquire()
        text = str(info.value)
        assert f"in use by holder-test pid {holder.pid} on host {socket.gethostname()}" in text
        assert " since 20" in text and str(tmp_path) in text
        assert info.value.holder["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL ran no cleanup, yet the kernel dropped the lock with its process.
    lock = DirectoryLock(tmp_path, purpose="after").acquire()
    assert lock.held
    lock.release()
    assert not lock.held and (tmp_path / LOCK_NAME).read_text() == ""


def test_reentrant_in_one_process(tmp_path):
    outer = DirectoryLock(tmp_path).acquire()
    inner = DirectoryLock(tmp_path).acquire()  # the same process: counted, not refused
    inner.release()
    assert outer.held
    probe = subprocess.run([sys.executable, "-c", _HOLD, str(tmp_path)], env=_env(),
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "in use by crowdloss" in probe.stderr
    outer.release()
    assert not outer.held


def test_exclusive_file_fallback_takes_over_a_dead_holder(tmp_path):
    # What a filesystem without POSIX locks gets: an O_EXCL file with the holder's pid.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    excl = tmp_path / (LOCK_NAME + ".excl")
    excl.write_text(f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}"}}\n')
    lock = DirectoryLock(tmp_path, use_os_lock=False).acquire()  # stale: taken over
    assert f'"pid": {os.getpid()}' in excl.read_text()
    with pytest.raises(DirectoryLockedError, match=f"pid {os.getpid()}"):
        # A live holder (this process, seen through a fresh registry entry) is respected.
        DirectoryLock(tmp_path / ".", use_os_lock=False)._acquire_excl()
    lock.release()
    assert not excl.exists()
    excl.write_text('{"pid": 1, "host": "some-other-node"}\n')
    with pytest.raises(DirectoryLockedError, match="some-other-node.*delete .*excl"):
        DirectoryLock(tmp_path, use_os_lock=False).acquire()


def _copy_experiment(tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(FIXTURE, exp, ignore=shutil.ignore_patterns("__pycache__", "log"))
    return exp


def _wait_for(predicate, proc, seconds=120):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.slow
def test_second_training_on_one_output_dir_stops_and_pods_test_runs_beside(tmp_path):
    exp, out = _copy_experiment(tmp_path), tmp_path / "out"
    train = [sys.executable, "-c", ENTRY.format("train"), "SOLVER.LR_SCHEDULER.MAX_ITER",
             "10000000", "SOLVER.CHECKPOINT_PERIOD", "500", "DATASETS.TEST", "()",
             "OUTPUT_DIR", str(out)]
    first = subprocess.Popen(train, cwd=exp, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "last_checkpoint").is_file(), first)
        config_hash = hashlib.sha1((out / "config.yaml").read_bytes()).hexdigest()
        second = subprocess.run(train, cwd=exp, env=_env(), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert lines[-1].startswith(f"pods_train: error: {out} is in use by pods_train pid "
                                    f"{first.pid} on host {socket.gethostname()} since ")
        assert "Traceback" not in second.stderr
        assert (out / "log.txt").read_text().count("Command line:") == 1  # wrote nothing

        # pods_test evaluates the newest checkpoint while the training goes on, and writes
        # only under inference/.
        test = subprocess.run([sys.executable, "-c", ENTRY.format("test"), "DATASETS.TEST",
                               "('tiny_regression_val',)", "OUTPUT_DIR", str(out)], cwd=exp,
                              env=_env(), capture_output=True, text=True, timeout=120)
        assert test.returncode == 0, test.stderr
        assert "Results per checkpoint" in test.stdout
        assert first.poll() is None
        assert hashlib.sha1((out / "config.yaml").read_bytes()).hexdigest() == config_hash
        assert "Evaluating" not in (out / "log.txt").read_text()  # pods_test logs elsewhere
        assert (out / "inference" / "log.txt").is_file()
        assert (out / "inference" / "config.yaml").is_file()
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
