"""pods_train / pods_test end to end on the tiny experiment (subprocesses, CPU, gloo)."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from crowdloss.cli.common import ExperimentError, load_experiment, parse_args
from crowdloss.engine.launch import find_free_port

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "tiny_experiment"
TIMEOUT = 120  # per subprocess; a hang fails the test instead of blocking CI


def _make_decoy(root: Path) -> Path:
    """A directory of modules named like experiment files that fail loudly if imported."""
    decoy = root / "decoy_site_packages"
    decoy.mkdir(parents=True, exist_ok=True)
    for name in ("config", "net"):
        (decoy / f"{name}.py").write_text(
            f"raise ImportError('decoy {name}.py on PYTHONPATH was imported')\n")
    return decoy


def _copy_experiment(root: Path, name: str = "tiny") -> Path:
    exp = root / name
    shutil.copytree(FIXTURE, exp, ignore=shutil.ignore_patterns("__pycache__", "log"))
    return exp


def _env(root: Path, **extra) -> dict:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join([str(_make_decoy(root)), str(REPO)])
    env["CROWDLOSS_OUTPUT"] = str(root / "output")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _cli(tool: str, args, *, cwd, env, check=True, background=False):
    # Exactly what the installed console script does: sys.exit(main()), so the exit status a
    # user's shell sees is what the tests check.
    entry = f"import sys; from crowdloss.cli.{tool} import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", entry, *map(str, args)]
    if background:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _weights(path: Path) -> dict:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data.get("model", data)


def _assert_same(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-5, msg=key)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One single-process training run (IMS_PER_DEVICE 2), shared by the pods_test tests."""
    root = tmp_path_factory.mktemp("trained")
    exp = _copy_experiment(root)
    out = root / "out"
    _cli("train", ["OUTPUT_DIR", out], cwd=exp,
         env=_env(root, TINY_DUMP_WEIGHTS="1"))
    return root, exp, out


# ---------------------------------------------------------------------------- pods_train
def test_train_in_experiment_dir_is_not_shadowed(trained):
    root, exp, out = trained
    names = sorted(p.name for p in out.iterdir())
    for expected in ("config.yaml", "config_diff.yaml", "log.txt", "last_checkpoint",
                     "model_iter_0000002.pth", "model_iter_0000004.pth", "model_final.pth"):
        assert expected in names, names
    assert (exp / "log").resolve() == out.resolve()
    log = (out / "log.txt").read_text()
    assert "torch " + torch.__version__ in log and "Rank 0 of 1" in log
    assert "MAX_ITER: 6" in (out / "config_diff.yaml").read_text()


def test_train_with_dir_flag_default_output_and_resume(tmp_path):
    exp = _copy_experiment(tmp_path, "exp_elsewhere")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = _env(tmp_path)
    _cli("train", ["--dir", exp, "SOLVER.LR_SCHEDULER.MAX_ITER", 2, "DATASETS.TEST", "()",
                   "SEED", -1, "MODEL.DEVICE", "cuda"], cwd=elsewhere, env=env)
    out = tmp_path / "output" / "exp_elsewhere"  # $CROWDLOSS_OUTPUT/<experiment name>
    assert (out / "model_final.pth").is_file()
    assert "MAX_ITER: 2" in (out / "config_diff.yaml").read_text()
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["SEED"] >= 0  # SEED -1 drew a seed, recorded for reproduction
    log = (out / "log.txt").read_text()
    if not torch.cuda.is_available():
        assert resolved["MODEL"]["DEVICE"] == "cpu" and "CUDA is not available" in log
    # --resume continues from model_final (iteration 1) up to the new MAX_ITER.
    _cli("train", ["--dir", exp, "--resume", "SOLVER.LR_SCHEDULER.MAX_ITER", 4,
                   "DATASETS.TEST", "()"], cwd=elsewhere, env=env)
    assert "Resuming at iteration 2" in (out / "log.txt").read_text()
    assert _weights(out / "model_final.pth").keys() == {"linear.weight", "linear.bias"}


def test_unknown_override_key_fails_cleanly(tmp_path):
    exp = _copy_experiment(tmp_path)
    proc = _cli("train", ["SOLVER.NOT_A_KEY", 3], cwd=exp, env=_env(tmp_path), check=False)
    assert proc.returncode != 0
    assert "SOLVER.NOT_A_KEY" in proc.stderr and "pods_train: error" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_works(capsys):
    from crowdloss.cli import test as pods_test
    from crowdloss.cli import train as pods_train

    for module, flag in ((pods_train, "--resume"), (pods_test, "--start-iter")):
        with pytest.raises(SystemExit) as info:
            module.main(["--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        for text in ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url", "--dir",
                     "--dist-timeout", "KEY VALUE", flag):
            assert text in out


def test_experiment_loading_errors(tmp_path):
    with pytest.raises(ExperimentError, match="has no config.py"):
        load_experiment(tmp_path)
    (tmp_path / "config.py").write_text("x = 1\n")
    (tmp_path / "net.py").write_text("def build_model(cfg):\n    return None\n")
    with pytest.raises(ExperimentError, match="no module-level `config`"):
        load_experiment(tmp_path)
    (tmp_path / "config.py").write_text("config = {}\n")
    (tmp_path / "net.py").write_text("model = None\n")
    with pytest.raises(ExperimentError, match=r"no `build_model\(cfg\)`"):
        load_experiment(tmp_path)


def test_experiment_modules_are_loaded_by_path(tmp_path):
    exp = _copy_experiment(tmp_path)
    (exp / "helper_mod.py").write_text("VALUE = 41\n")  # a bare local import must work
    (exp / "net.py").write_text((exp / "net.py").read_text() + "\nfrom helper_mod import VALUE\n")
    loaded = load_experiment(exp)
    assert loaded.config.SOLVER.LR_SCHEDULER.MAX_ITER == 6
    module = sys.modules[loaded.build_model.__module__]
    assert module.__name__.startswith("crowdloss_exp_") and module.__name__.endswith(".net")
    assert Path(module.__file__) == exp / "net.py" and module.VALUE == 41
    assert "config" not in sys.modules or not str(getattr(sys.modules["config"], "__file__", "")
                                                    ).startswith(str(exp))


def test_parse_args_flags():
    args = parse_args("pods_test", ["--num-gpus", "3", "--start-iter", "5", "--dir", "x",
                                    "MODEL.WEIGHTS", "w.pth"], test=True)
    assert (args.num_gpus, args.start_iter, args.end_iter) == (3, 5, None)
    assert args.opts == ["MODEL.WEIGHTS", "w.pth"] and os.path.isabs(args.dir)
    with pytest.raises(SystemExit):
        parse_args("pods_train", ["SOLVER.IMS_PER_BATCH"])  # odd number of override items
    with pytest.raises(SystemExit):
        parse_args("pods_train", ["SEED", "1", "--resume"])  # flag after the overrides


# ---------------------------------------------------------------------------- pods_test
def _result_rows(stdout: str):
    lines = [ln for ln in stdout.splitlines() if ln.startswith(("checkpoint ", "model_"))]
    assert lines and lines[0].startswith("checkpoint "), stdout
    return lines[1:]


def test_pods_test_with_explicit_weights(trained):
    root, exp, out = trained
    proc = _cli("test", ["OUTPUT_DIR", out, "MODEL.WEIGHTS", out / "model_iter_0000002.pth"],
                cwd=exp, env=_env(root))
    rows = _result_rows(proc.stdout)
    assert len(rows) == 1 and rows[0].split()[:2] == ["model_iter_0000002.pth", "2"]
    # The load is always summarised, and the file's origin matches this run: no warning.
    assert f"Loaded weights from {out / 'model_iter_0000002.pth'} (format crowdloss)" in proc.stdout
    assert "Weights: 2/2 model tensors matched (100.0% of values), 0 missing, 0 skipped " \
           "(shape), 0 unexpected" in proc.stdout
    assert "WARNING" not in proc.stdout, proc.stdout


def test_pods_test_newest_checkpoint(trained):
    root, exp, out = trained
    proc = _cli("test", ["OUTPUT_DIR", out], cwd=exp, env=_env(root))
    rows = _result_rows(proc.stdout)
    assert len(rows) == 1 and rows[0].split()[:2] == ["model_final.pth", "6"]


def test_pods_test_scores_the_weight_average_of_an_ema_run(tmp_path):
    exp = _copy_experiment(tmp_path)
    out = tmp_path / "out"
    _cli("train", ["OUTPUT_DIR", out, "SOLVER.EMA.ENABLED", "True", "SOLVER.EMA.DECAY", "0.5"],
         cwd=exp, env=_env(tmp_path))
    data = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert data["ema"]["updates"] == 6
    assert any(not torch.equal(v, data["ema"]["trained"][k]) for k, v in data["model"].items())
    for flag, scored in (("True", "average"), ("False", "trained weights")):
        proc = _cli("test", ["OUTPUT_DIR", out, "TEST.EMA_WEIGHTS", flag], cwd=exp,
                    env=_env(tmp_path))
        assert f"model_final.pth holds the moving average of the weights (SOLVER.EMA, decay 0.5 " \
               f"over 6 updates) and the trained weights: the {scored} are scored " \
               f"(TEST.EMA_WEIGHTS {flag})" in proc.stdout, proc.stdout


def test_pods_test_iteration_range(trained):
    root, exp, out = trained
    config_before = (out / "config.yaml").read_bytes()
    # Names, --start-iter and the table count iterations done: 4 includes model_iter_0000004.
    proc = _cli("test", ["--start-iter", 4, "--end-iter", 6, "OUTPUT_DIR", out], cwd=exp,
                env=_env(root))
    rows = _result_rows(proc.stdout)
    assert [r.split()[:2] for r in rows] == [["model_iter_0000004.pth", "4"],
                                             ["model_final.pth", "6"]]
    mses = [float(r.split()[3]) for r in rows]  # columns: checkpoint iter count mse
    assert all(m >= 0 for m in mses)
    # pods_test keeps its own config copy; the training run's config.yaml is untouched.
    assert (out / "config.yaml").read_bytes() == config_before
    assert (out / "inference" / "config.yaml").is_file()
    # Each checkpoint's result files in their own folder (not one inference/ overwritten).
    errors = [json.loads((out / "inference" / name / "tiny_regression_val" / "errors.json")
                         .read_text()) for name in ("model_iter_0000004", "model_final")]
    assert [sum(e) / len(e) for e in errors] == pytest.approx(mses, abs=1e-4)


def test_pods_test_rejects_weights_of_another_model(trained, tmp_path):
    """0 of the model's tensors in the file, or all of the wrong shape: no row, exit status 1."""
    root, exp, out = trained
    torch.save({"model": {"backbone.conv.weight": torch.zeros(4, 3)}}, tmp_path / "other.pth")
    proc = _cli("test", ["OUTPUT_DIR", out, "MODEL.WEIGHTS", tmp_path / "other.pth"], cwd=exp,
                env=_env(root), check=False)
    assert proc.returncode == 1, proc.stdout
    assert f"Loaded weights from {tmp_path / 'other.pth'} (format crowdloss)" in proc.stdout
    assert "Weights: 0/2 model tensors matched (0.0% of values), 2 missing" in proc.stdout
    assert "fills only 0.0% of the model's values" in proc.stderr
    assert "MODEL.WEIGHTS_MIN_COVERAGE.TEST = 1" in proc.stderr and "Traceback" not in proc.stderr
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("other.pth ")]
    assert rows == [["other.pth", "-", "FAILED"]]  # the table still comes, with no number


def test_pods_test_range_reports_every_checkpoint_even_when_one_fails(trained, tmp_path):
    root, exp, out = trained
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    broken = copy / "model_iter_0000004.pth"
    broken.write_bytes(broken.read_bytes()[:100])  # cut short
    proc = _cli("test", ["--start-iter", 1, "OUTPUT_DIR", copy], cwd=exp, env=_env(root),
                check=False)
    assert proc.returncode == 1
    rows = [r.split() for r in _result_rows(proc.stdout)]
    assert [r[:2] for r in rows] == [["model_iter_0000002.pth", "2"],
                                     ["model_iter_0000004.pth", "4"], ["model_final.pth", "6"]]
    assert rows[1][2:] == ["FAILED", "FAILED"] and "FAILED" not in rows[0] + rows[2]
    assert "1 of 3 checkpoint(s) could not be evaluated: model_iter_0000004.pth" in proc.stderr


def test_pods_test_without_checkpoint_fails_cleanly(tmp_path):
    exp = _copy_experiment(tmp_path)
    proc = _cli("test", ["OUTPUT_DIR", tmp_path / "empty"], cwd=exp, env=_env(tmp_path),
                check=False)
    assert proc.returncode != 0
    assert "no checkpoint to evaluate" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- distributed
def _check_ranks_match(out: Path, reference: dict, world: int = 2):
    final = _weights(out / "model_final.pth")
    _assert_same(final, reference)
    for rank in range(world):
        _assert_same(torch.load(out / f"weights.rank{rank}.pth.dump", weights_only=True), final,
                     atol=0)


@pytest.mark.slow
def test_two_processes_one_machine_match_single_process(trained, tmp_path):
    root, exp, ref_out = trained
    out = tmp_path / "out"
    start = time.monotonic()
    _cli("train", ["--num-gpus", 2, "--dist-timeout", 60, "SOLVER.IMS_PER_DEVICE", 1,
                   "OUTPUT_DIR", out], cwd=exp, env=_env(tmp_path, TINY_DUMP_WEIGHTS="1"))
    print(f"2 processes x 1 machine: {time.monotonic() - start:.1f} s")
    _check_ranks_match(out, _weights(ref_out / "model_final.pth"))
    assert (out / "log.txt.rank1").is_file()


@pytest.mark.slow
def test_two_machines_match_single_process(trained, tmp_path):
    root, exp, ref_out = trained
    out = tmp_path / "out"
    url = f"tcp://127.0.0.1:{find_free_port()}"
    env = _env(tmp_path, TINY_DUMP_WEIGHTS="1")
    start = time.monotonic()
    procs = [_cli("train", ["--num-gpus", 1, "--num-machines", 2, "--machine-rank", rank,
                            "--dist-url", url, "SOLVER.IMS_PER_DEVICE", 1, "OUTPUT_DIR", out],
                  cwd=exp, env=env, background=True) for rank in (0, 1)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"{stdout}\n{stderr}"
    print(f"1 process x 2 machines: {time.monotonic() - start:.1f} s")
    _check_ranks_match(out, _weights(ref_out / "model_final.pth"))


@pytest.mark.slow
def test_torchrun_style_env_matches_single_process(trained, tmp_path):
    root, exp, ref_out = trained
    out = tmp_path / "out"
    port = str(find_free_port())
    start = time.monotonic()
    procs = []
    for rank in (0, 1):
        env = _env(tmp_path, TINY_DUMP_WEIGHTS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port)
        procs.append(_cli("train", ["SOLVER.IMS_PER_DEVICE", 1, "OUTPUT_DIR", out], cwd=exp,
                          env=env, background=True))
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"{stdout}\n{stderr}"
    print(f"torchrun-style 2 ranks: {time.monotonic() - start:.1f} s")
    _check_ranks_match(out, _weights(ref_out / "model_final.pth"))


@pytest.mark.slow
def test_missing_machine_ends_with_clear_message(tmp_path):
    exp = _copy_experiment(tmp_path)
    url = f"tcp://127.0.0.1:{find_free_port()}"
    start = time.monotonic()
    proc = _cli("train", ["--num-machines", 2, "--machine-rank", 0, "--num-gpus", 1,
                          "--dist-url", url, "--dist-timeout", 2], cwd=exp, env=_env(tmp_path),
                check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert f"rank 1 did not join within 2 s at {url}" in proc.stderr
    assert elapsed < 60, elapsed


def test_cpu_threads_share_the_cores_among_local_workers(monkeypatch):
    from crowdloss.cli.process import cpu_threads_per_process
    from crowdloss.utils import comm

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads_per_process() is None  # the user's setting wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert cpu_threads_per_process() == 8
    monkeypatch.setattr(comm, "get_local_size", lambda: 3)
    assert cpu_threads_per_process() == 2
    monkeypatch.setattr(comm, "get_local_size", lambda: 16)
    assert cpu_threads_per_process() == 1
