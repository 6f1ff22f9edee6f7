"""Resume after real kills: metrics.json holds each iteration once, temp files of killed writes
go, a missing or truncated newest checkpoint falls back to the right one, old names resume.

The killed runs are subprocesses that block at a chosen point (drawing a batch, or halfway
through writing a checkpoint), announce it through a marker file, and get SIGKILL.
"""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from crowdloss.engine.checkpoint import Checkpointer, checkpoint_iteration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine import TinyModel, make_cfg, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAX_ITER, PERIOD = 30, 8  # checkpoints after 8, 16, 24 and 30; metrics written every 20

CHILD = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, {tests!r})
    from test_engine import make_cfg, make_loader, train
    out, block, marker = sys.argv[1], sys.argv[2], sys.argv[3]

    def wait_for_kill():
        open(marker, "w").close()
        time.sleep(600)

    build = make_loader(2)
    def loader(cfg, start_iter=0):
        def gen():
            for k, batch in enumerate(build(cfg, start_iter), start_iter):
                if block == f"iter{{k}}":
                    wait_for_kill()
                yield batch
        return gen()

    if block.startswith("save"):
        real_save, count = torch.save, [0]
        def slow_save(obj, f, *a, **k):
            count[0] += 1
            if count[0] == int(block[4:]):
                f.write(b"\\0" * (1 << 20))  # half a checkpoint on disk, then the kill
                f.flush()
                wait_for_kill()
            real_save(obj, f, *a, **k)
        torch.save = slow_save
    train(make_cfg(out, max_iter={max_iter}, period={period}, loader=loader))
""").format(tests=str(REPO / "tests"), max_iter=MAX_ITER, period=PERIOD)


def start_child(out: Path, block: str):
    marker = out.parent / f"{out.name}.blocked"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out), block, str(marker)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, marker


def kill_when_blocked(proc, marker: Path, block: str) -> None:
    deadline = time.time() + 300
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"child never reached {block}:\n{proc.communicate()[0]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """Output dirs of runs SIGKILLed at each point (started together: one wait, not four)."""
    root = tmp_path_factory.mktemp("killed")
    blocks = ("iter22", "iter10", "iter27", "save2")
    children = {b: start_child(root / b, b) for b in blocks}
    try:
        for block, (proc, marker) in children.items():
            kill_when_blocked(proc, marker, block)
    finally:
        for proc, _ in children.values():
            if proc.poll() is None:
                proc.kill()
    return root


def copy_of(killed: Path, block: str, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(killed / block, out)
    return out


@contextmanager
def engine_warnings():
    """crowdloss.engine warnings (the package logger may not propagate to caplog)."""
    got = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = got.append
    log = logging.getLogger("crowdloss.engine")
    log.addHandler(handler)
    try:
        yield got
    finally:
        log.removeHandler(handler)


def records(out: Path):
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    runner = train(make_cfg(out, max_iter=MAX_ITER, period=PERIOD))
    return runner.model.state_dict(), records(out)


def assert_same_run(out: Path, resumed, uninterrupted):
    weights, full_records = uninterrupted
    for key, value in weights.items():
        assert torch.equal(resumed.model.state_dict()[key], value), key  # bitwise
    got = records(out)
    assert [r["iteration"] for r in got] == list(range(MAX_ITER))  # each iteration once
    for mine, ref in zip(got, full_records):  # the very values of the uninterrupted run
        assert {k: v for k, v in mine.items() if "time" not in k} == \
            {k: v for k, v in ref.items() if "time" not in k}, mine["iteration"]


@pytest.mark.slow  # the killed runs start python + torch four times
@pytest.mark.parametrize("block,resume_at,before", [
    # Killed after the write at 20 and the checkpoint after 16: 16-19 were written twice.
    ("iter22", 16, list(range(20))),
    # Killed after the checkpoint after 8, before any write: 0-7 were never written.
    ("iter10", 8, None),
])
def test_metrics_hold_each_iteration_once_after_kill_and_resume(tmp_path, killed, uninterrupted,
                                                                block, resume_at, before):
    out = copy_of(killed, block, tmp_path)
    if before is None:
        assert not (out / "metrics.json").exists()
    else:
        assert [r["iteration"] for r in records(out)] == before
    resumed = train(make_cfg(out, max_iter=MAX_ITER, period=PERIOD), seed=99, resume=True)
    assert resumed.start_iter == resume_at
    assert_same_run(out, resumed, uninterrupted)


@pytest.mark.slow  # the killed runs start python + torch four times
def test_kill_during_checkpoint_write_leaves_temp_file_removed_at_start(tmp_path, killed,
                                                                      uninterrupted):
    out = copy_of(killed, "save2", tmp_path)  # the second save (after 16) never completed
    temps = [p.name for p in out.iterdir() if ".tmp." in p.name]
    assert len(temps) == 1 and temps[0].startswith(".model_iter_0000016.pth.tmp.")
    assert (out / "last_checkpoint").read_text() == "model_iter_0000008.pth"
    resumed = train(make_cfg(out, max_iter=MAX_ITER, period=PERIOD), seed=99, resume=True)
    assert resumed.start_iter == 8
    assert not [p for p in out.iterdir() if ".tmp." in p.name]
    assert_same_run(out, resumed, uninterrupted)


@pytest.mark.slow  # the killed runs start python + torch four times
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, killed,
                                                                    uninterrupted):
    out = copy_of(killed, "iter27", tmp_path)  # checkpoints after 8, 16 and 24
    newest = out / "model_iter_0000024.pth"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short
    with engine_warnings() as records_:
        resumed = train(make_cfg(out, max_iter=MAX_ITER, period=PERIOD), seed=99, resume=True)
    assert resumed.start_iter == 16
    text = "\n".join(r.getMessage() for r in records_)
    assert "Cannot resume from" in text and str(newest) in text
    assert "falling back to " + str(out / "model_iter_0000016.pth") in text
    assert_same_run(out, resumed, uninterrupted)


def test_missing_pointer_target_takes_most_iterations_not_newest_mtime(tmp_path):
    model = TinyModel()
    ck = Checkpointer(model, str(tmp_path))
    ck.save("model_iter_0000008", iteration=7)
    ck.save("model_iter_0000016", iteration=15)
    old = tmp_path / "model_iter_0000008.pth"
    os.utime(old, (time.time() + 100, time.time() + 100))  # copied / touched later
    (tmp_path / "last_checkpoint").write_text("model_iter_0000024.pth")  # deleted by hand
    assert ck.get_checkpoint_file() == str(tmp_path / "model_iter_0000016.pth")


@pytest.mark.slow  # the killed runs start python + torch four times
def test_old_zero_based_names_resume_and_count_correctly(tmp_path, killed, uninterrupted):
    out = copy_of(killed, "iter10", tmp_path)
    # What the old naming wrote after 8 iterations: model_iter_0000007.pth (iteration 7 inside).
    os.rename(out / "model_iter_0000008.pth", out / "model_iter_0000007.pth")
    (out / "last_checkpoint").write_text("model_iter_0000007.pth")
    assert checkpoint_iteration(str(out / "model_iter_0000007.pth")) == 8
    resumed = train(make_cfg(out, max_iter=MAX_ITER, period=PERIOD), seed=99, resume=True)
    assert resumed.start_iter == 8
    assert_same_run(out, resumed, uninterrupted)
    # New names from then on; every file's number is its iterations done.
    assert checkpoint_iteration(str(out / "model_iter_0000016.pth")) == 16
    assert checkpoint_iteration(str(out / "model_final.pth")) == MAX_ITER


def test_live_writers_temp_file_is_left_alone(tmp_path):
    live = tmp_path / f".model_iter_0000001.pth.tmp.{os.getppid()}"
    dead = tmp_path / ".model_iter_0000002.pth.tmp.999999999"
    live.write_bytes(b"x")
    dead.write_bytes(b"y")
    removed = Checkpointer(TinyModel(), str(tmp_path)).remove_stale_temp_files()
    assert removed == [dead.name] and live.exists() and not dead.exists()
