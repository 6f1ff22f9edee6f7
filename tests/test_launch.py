"""crowdloss.engine.launch: in-process, spawned CPU workers (gloo), failures, env detection."""
import logging
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from crowdloss.engine import dist_env
from crowdloss.engine import launch as launch_mod
from crowdloss.engine.dist_env import default_timeout, expand_nodelist, raise_open_files_limit
from crowdloss.engine.launch import LaunchError, find_free_port, launch


# ---- worker functions (module level so "spawn" can pickle them) ------------------------------
def _record_pid(out_dir):
    Path(out_dir, f"pid.{os.environ['RANK']}").write_text(str(os.getpid()))


def _sum_ranks(out_dir):
    _record_pid(out_dir)
    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    env = {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    Path(out_dir, f"sum.{dist.get_rank()}").write_text(f"{value.item()} {env}")


def _rank1_raises(out_dir):
    _record_pid(out_dir)
    if dist.get_rank() == 1:
        raise ValueError("boom from the test")
    time.sleep(120)  # rank 0 would hang here if nobody ended it


def _rank1_exits(out_dir):
    _record_pid(out_dir)
    if dist.get_rank() == 1:
        os._exit(3)
    time.sleep(120)


def _square(x):
    return x * x, dist.is_initialized()


def _assert_gone(out_dir):
    pids = [int(p.read_text()) for p in Path(out_dir).glob("pid.*")]
    assert pids, "workers never started"
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"worker pid {pid} is still alive"
    return pids


# ---- tests ---------------------------------------------------------------------------------
def test_world_size_one_runs_in_process():
    assert launch(_square, 1, args=(7,)) == (49, False)


@pytest.mark.slow
def test_two_cpu_workers_join_and_reduce(tmp_path):
    start = time.monotonic()
    launch(_sum_ranks, 2, dist_url="auto", args=(str(tmp_path),), timeout=timedelta(seconds=30))
    for rank in (0, 1):
        text = (tmp_path / f"sum.{rank}").read_text()
        assert text.startswith("3.0 ")
        assert f"'RANK': '{rank}'" in text and f"'LOCAL_RANK': '{rank}'" in text
        assert "'WORLD_SIZE': '2'" in text and "'LOCAL_WORLD_SIZE': '2'" in text
    _assert_gone(tmp_path)
    print(f"2 CPU workers: {time.monotonic() - start:.1f} s")


@pytest.mark.slow
def test_missing_peer_times_out_with_clear_message(tmp_path):
    port = find_free_port()
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(_sum_ranks, 1, num_machines=2, machine_rank=0, dist_url=f"tcp://127.0.0.1:{port}",
               args=(str(tmp_path),), timeout=timedelta(seconds=2))
    elapsed = time.monotonic() - start
    assert f"rank 1 did not join within 2 s at tcp://127.0.0.1:{port}" in str(info.value)
    assert elapsed < 30, elapsed
    # One process per machine runs in this process; its rank env must not leak into ours.
    assert "RANK" not in os.environ and "MASTER_PORT" not in os.environ
    print(f"missing peer detected after {elapsed:.1f} s")


@pytest.mark.slow
def test_raising_worker_ends_the_others(tmp_path):
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(_rank1_raises, 2, args=(str(tmp_path),), timeout=timedelta(seconds=20))
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "rank 1 (local rank 1" in message and "ValueError: boom from the test" in message
    assert elapsed < 60, elapsed  # rank 0 sleeps 120 s unless it is terminated
    _assert_gone(tmp_path)


@pytest.mark.slow
def test_dying_worker_ends_the_others(tmp_path):
    with pytest.raises(LaunchError, match=r"rank 1 \(local rank 1, pid \d+\) died with exit code 3"):
        launch(_rank1_exits, 2, args=(str(tmp_path),), timeout=timedelta(seconds=20))
    _assert_gone(tmp_path)


def test_bad_urls_and_layouts():
    with pytest.raises(ValueError, match="auto only works on one machine"):
        launch(_square, 1, num_machines=2, dist_url="auto", args=(1,))
    with pytest.raises(ValueError, match="expected tcp://HOST:PORT"):
        launch(_square, 2, dist_url="127.0.0.1:1234", args=(1,))
    with pytest.raises(ValueError, match="--machine-rank 2"):
        launch(_square, 1, num_machines=2, machine_rank=2, dist_url="tcp://h:1", args=(1,))


def test_setrlimit_failure_does_not_raise(monkeypatch, caplog):
    import resource

    def refuse(*_):
        raise ValueError("not allowed to raise the limit")

    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    with caplog.at_level(logging.WARNING, logger="crowdloss.engine.dist_env"):
        raise_open_files_limit()
    assert "not allowed to raise the limit" in caplog.text
    monkeypatch.setattr(resource, "setrlimit", lambda *_: (_ for _ in ()).throw(OSError("EPERM")))
    raise_open_files_limit()  # OSError is swallowed too


def test_expand_nodelist():
    assert expand_nodelist("node[01-03,07]") == ["node01", "node02", "node03", "node07"]
    assert expand_nodelist("gpu5") == ["gpu5"]
    assert expand_nodelist("a[9-10],b1") == ["a9", "a10", "b1"]
    with pytest.raises(ValueError, match="cannot parse range"):
        expand_nodelist("n[x-2]")


def _clear_launcher_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("SLURM_") or key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                               "MASTER_PORT", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(key)


def test_detects_torchrun_and_slurm(monkeypatch):
    _clear_launcher_env(monkeypatch)
    assert dist_env.external_launcher() is None
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # sbatch script, one task: we spawn ourselves
    assert dist_env.external_launcher() is None
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[03-04]")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    info = dist_env.external_launcher()
    assert info == dict(source="SLURM", rank=5, local_rank=1, world_size=8, local_world_size=4,
                        host="node03", port=dist_env.DEFAULT_SLURM_PORT)
    monkeypatch.setenv("MASTER_PORT", "4242")
    assert dist_env.external_launcher()["port"] == 4242
    _clear_launcher_env(monkeypatch)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1234")
    assert dist_env.external_launcher() == dict(
        source="torchrun (env://)", rank=3, local_rank=1, world_size=4, local_world_size=2,
        host="10.0.0.1", port=1234)


def test_default_timeout_from_env(monkeypatch):
    monkeypatch.delenv("CROWDLOSS_DIST_TIMEOUT", raising=False)
    assert default_timeout() == timedelta(minutes=30)
    monkeypatch.setenv("CROWDLOSS_DIST_TIMEOUT", "7.5")
    assert default_timeout() == timedelta(seconds=7.5)
    monkeypatch.setenv("CROWDLOSS_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="CROWDLOSS_DIST_TIMEOUT='soon'"):
        default_timeout()


def test_torchrun_agent_store_makes_every_rank_a_client(monkeypatch):
    # torchrun's agent already listens on MASTER_PORT; rank 0 must not try to bind it again.
    port = find_free_port()
    agent = dist.TCPStore("127.0.0.1", port, 2, True, timeout=timedelta(seconds=5),
                          wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    store = launch_mod._rendezvous("127.0.0.1", port, 0, 1, timedelta(seconds=5))
    store.set("probe", "1")
    assert agent.check(["crowdloss/attempt_2/crowdloss/joined/0"])
    assert agent.check(["crowdloss/attempt_2/probe"])


def _sleep_forever(out_dir):
    _record_pid(out_dir)
    time.sleep(300)


@pytest.mark.slow
def test_sigterm_to_the_launcher_ends_its_workers(tmp_path):
    import signal
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo / "tests"), str(repo)]))
    script = ("import test_launch as t; from crowdloss.engine.launch import launch; "
              f"launch(t._sleep_forever, 2, args=({str(tmp_path)!r},))")
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while len(list(tmp_path.glob("pid.*"))) < 2:
            assert parent.poll() is None, parent.stderr.read().decode()
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.2)
        time.sleep(0.5)  # both pid files fully written
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) != 0
    finally:
        if parent.poll() is None:
            parent.kill()
    _assert_gone(tmp_path)


def test_unreachable_master_is_named():
    # A lone machine: nobody ever listens at rank 0's address. It must end within the
    # timeout (a TCPStore client alone retries once more: twice the time) and name rank 0 as
    # the one that never joined, not itself.
    port = find_free_port()  # nobody listens there
    start = time.monotonic()
    with pytest.raises(LaunchError, match=rf"^rank 0 never joined: rank 1 found nobody listening "
                                          rf"at tcp://127.0.0.1:{port} within 1 s"):
        launch_mod._rendezvous("127.0.0.1", port, 1, 2, timedelta(seconds=1))
    assert time.monotonic() - start < 1.8
    with pytest.raises(LaunchError, match=r"^ranks 0-3 \(machine 0\) never joined: rank 5"):
        launch_mod._rendezvous("127.0.0.1", port, 5, 8, timedelta(seconds=0.5), 4)
