"""What pods_train / pods_test settle before launching: device and process count (CUDA mocked:
no GPU here), datasets, and how failures are reported (real CLI processes)."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crowdloss.cli import process
from crowdloss.cli.errors import is_user_error
from crowdloss.cli.preflight import check_datasets, plan_device
from crowdloss.cli.train import run as pods_train
from crowdloss.engine import launch as launch_mod
from crowdloss.engine.launch import LaunchError, find_free_port
from crowdloss.utils.lock import release_run_locks

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "tiny_experiment"
CROWDHUMAN_EXP = REPO / "playground/detection/crowdhuman/retinanet.res50.fpn.crowdhuman.800size.30k"
ENTRY = "import sys; from crowdloss.cli.{} import main; sys.exit(main(sys.argv[1:]))"


# ---------------------------------------------------------------------------- device
@pytest.mark.parametrize("requested, explicit, num_gpus, cuda, expected", [
    # The device follows the machine: every GPU by default...
    ("cuda", False, None, 4, ("cuda", "cuda", 4, None, None)),
    ("cuda", False, 2, 4, ("cuda", "cuda", 2, None, None)),
    # ...unless CPU is asked for: CPU workers over gloo even with GPUs, one by default.
    ("cpu", True, None, 4, ("cpu", "cpu", 1, None, None)),
    ("cpu", True, 3, 4, ("cpu", "cpu", 3, None, None)),
    # No CUDA: the inherited default quietly runs on CPU, an explicit request warns.
    ("cuda", False, None, 0, ("cpu", "cpu", 1, None, "no CUDA device: running on cpu")),
    ("cuda", True, 2, 0, ("cpu", "cpu", 2, "MODEL.DEVICE is 'cuda' but CUDA is not available; "
                                            "using cpu", None)),
    ("cuda:1", True, None, 2, ("cuda", "cuda:1", 1, None, None)),
])
def test_plan_device(requested, explicit, num_gpus, cuda, expected):
    plan = plan_device(requested, explicit=explicit, num_gpus=num_gpus, cuda_count=cuda)
    assert tuple(plan) == expected


def test_plan_device_refusals():
    with pytest.raises(ValueError, match="--num-gpus 8 but 4 GPU.*MODEL.DEVICE cpu"):
        plan_device("cuda", explicit=False, num_gpus=8, cuda_count=4)
    with pytest.raises(ValueError, match="'cuda:5' but only 2 GPU"):
        plan_device("cuda:5", explicit=True, num_gpus=None, cuda_count=2)
    with pytest.raises(ValueError, match="names one GPU but --num-gpus is 2"):
        plan_device("cuda:0", explicit=True, num_gpus=2, cuda_count=2)
    with pytest.raises(ValueError, match="expected 'cuda', 'cuda:N' or 'cpu'"):
        plan_device("tpu", explicit=True, num_gpus=None, cuda_count=0)
    # torchrun / SLURM: one rank per process, nothing to count here.
    assert plan_device("cuda", explicit=False, num_gpus=8, cuda_count=4, external=True).device \
        == "cuda"


def _fake_cuda(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def _copy_experiment(tmp_path, name="exp"):
    exp = tmp_path / name
    shutil.copytree(FIXTURE, exp, ignore=shutil.ignore_patterns("__pycache__", "log"))
    return exp


@pytest.mark.parametrize("cuda, flags, opts, expected", [
    (4, [], [], ("cuda", 4, "cuda")),
    (4, [], ["MODEL.DEVICE", "cpu"], ("cpu", 1, "cpu")),
    (4, ["--num-gpus", "2"], ["MODEL.DEVICE", "cpu"], ("cpu", 2, "cpu")),
    (0, [], [], ("cpu", 1, "cpu")),
    (0, [], ["MODEL.DEVICE", "cuda"], ("cpu", 1, "cpu")),
])
def test_cli_launches_with_the_planned_device(tmp_path, monkeypatch, cuda, flags, opts,
                                              expected):
    _fake_cuda(monkeypatch, cuda)
    seen = {}

    def fake_launch(main_func, num_gpus, **kw):  # no GPU here: record what would start
        seen.update(kw, num_gpus=num_gpus)
        return "launched"

    monkeypatch.setattr(launch_mod, "launch", fake_launch)
    exp = _copy_experiment(tmp_path)
    assert pods_train(["--dir", str(exp), *flags, *opts]) == "launched"
    worker, args = seen["args"]
    assert (seen["device"], seen["num_gpus"], args.device_plan.model_device) == expected
    # The worker applies it: MODEL.DEVICE follows the plan whatever the config said.
    args.opts = list(args.opts) + ["OUTPUT_DIR", str(tmp_path / "out")]
    try:
        cfg, _, report = process.setup(args)
        report.stop()
    finally:
        release_run_locks()
    assert cfg.MODEL.DEVICE == expected[2]


def test_cli_refuses_more_cuda_processes_than_gpus(tmp_path, monkeypatch, capsys):
    _fake_cuda(monkeypatch, 2)
    with pytest.raises(SystemExit) as info:
        pods_train(["--dir", str(_copy_experiment(tmp_path)), "--num-gpus", "4"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "pods_train: error: --num-gpus 4 but 2 GPU(s) are visible" in err
    assert "Traceback" not in err


def test_launch_backend_follows_the_device(monkeypatch):
    _fake_cuda(monkeypatch, 1)
    assert launch_mod._backend("cpu", 2) == "gloo"  # CPU asked: gloo even with GPUs
    assert launch_mod._backend("cuda", 1) == "nccl"
    assert launch_mod._backend(None, 1) == "nccl"
    assert launch_mod._backend(None, 2) == "gloo"  # not enough GPUs: CPU workers, as before
    with pytest.raises(LaunchError, match="2 CUDA processes on this machine but 1 visible"):
        launch_mod._backend("cuda", 2)


# ---------------------------------------------------------------------------- datasets
def test_check_datasets_names_missing_files_and_close_names(tmp_path, monkeypatch):
    from crowdloss.config import RetinaNetConfig
    from crowdloss.data import MetadataCatalog

    cfg = RetinaNetConfig()
    cfg.DATASETS.TRAIN = ("crowdhumen_train",)
    with pytest.raises(KeyError, match=r"DATASETS.TRAIN: dataset 'crowdhumen_train' is not "
                                       r"registered; did you mean 'crowdhuman_train'"):
        check_datasets(cfg)
    # Built-in paths follow the datasets root of the moment (refreshed before the check).
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(tmp_path / "nope"))
    try:
        cfg.DATASETS.TRAIN = ("crowdhuman_train",)
        with pytest.raises(FileNotFoundError, match=r"nope/crowdhuman/annotations/annotation_"
                                                    r"train.odgt, which does not exist; see "
                                                    r"datasets/README.md"):
            check_datasets(cfg)
        cfg.DATASETS.TRAIN = ("synthcrowd_train",)  # generated on first load: not checked
        cfg.DATASETS.TEST = ()
        check_datasets(cfg)
    finally:
        from crowdloss.data.catalog import datasets_root

        MetadataCatalog.set("crowdhuman_train", gt_file=str(
            datasets_root() / "crowdhuman" / "annotations" / "annotation_train.odgt"))


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", CROWDLOSS_OUTPUT=str(tmp_path / "output"), **extra)
    return env


def _cli(tool, args, cwd, env, timeout=180):
    return subprocess.run([sys.executable, "-c", ENTRY.format(tool), *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_missing_dataset_fails_before_the_model_is_built(tmp_path):
    empty = tmp_path / "datasets"
    empty.mkdir()
    env = _env(tmp_path, CROWDLOSS_DATASETS=str(empty))
    proc = _cli("train", [], CROWDHUMAN_EXP, env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"pods_train: error: DATASETS.TRAIN: dataset 'crowdhuman_train' needs its annotation "
        f"file {empty}/crowdhuman/annotations/annotation_train.odgt, which does not exist; see "
        f"datasets/README.md for how to get and link the data (datasets root: {empty}, set by "
        f"$CROWDLOSS_DATASETS)"]
    # Nothing was built, downloaded or written: no OUTPUT_DIR, no log link.
    assert not (tmp_path / "output").exists() and "Model:" not in proc.stdout
    assert not (CROWDHUMAN_EXP / "log").is_symlink()
    proc = _cli("test", ["DATASETS.TEST", "('crowdhuman_vall',)"], CROWDHUMAN_EXP, env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "pods_test: error: DATASETS.TEST: dataset 'crowdhuman_vall' is not registered; did you "
        "mean 'crowdhuman_val'")


# ---------------------------------------------------------------------------- tracebacks
_RAISING_NET = """
def build_model(cfg):
    raise {exc}
"""


def _experiment_raising(tmp_path, exc):
    exp = _copy_experiment(tmp_path)
    net = (exp / "net.py").read_text().replace("def build_model(cfg):",
                                               "def _original_build_model(cfg):")
    (exp / "net.py").write_text(net + _RAISING_NET.format(exc=exc))
    return exp


@pytest.mark.slow
def test_user_error_is_one_line_and_its_traceback_goes_to_the_log(tmp_path):
    exp = _experiment_raising(tmp_path, "ValueError('MODEL.FOO = -1; expected > 0')")
    out = tmp_path / "out"
    proc = _cli("train", ["OUTPUT_DIR", out], exp, _env(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["pods_train: error: MODEL.FOO = -1; expected > 0"]
    log = (out / "log.txt").read_text()
    assert "Traceback" in log and "raise ValueError" in log
    debug = _cli("train", ["--debug", "OUTPUT_DIR", out], exp, _env(tmp_path))
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == \
        "pods_train: error: MODEL.FOO = -1; expected > 0"


def test_a_bug_keeps_its_traceback(tmp_path):
    exp = _experiment_raising(tmp_path, "TypeError('unsupported operand')")
    proc = _cli("train", ["OUTPUT_DIR", tmp_path / "out"], exp, _env(tmp_path))
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "build_model" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        "pods_train: error: TypeError: unsupported operand"


@pytest.mark.slow
def test_user_error_in_spawned_workers_is_one_line(tmp_path):
    exp = _experiment_raising(tmp_path, "FileNotFoundError('weights /x/y.pth not found')")
    proc = _cli("train", ["--num-gpus", 2, "--dist-timeout", 60, "SOLVER.IMS_PER_DEVICE", 1,
                          "OUTPUT_DIR", tmp_path / "out"], exp, _env(tmp_path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last in (f"pods_train: error: rank {r}: weights /x/y.pth not found" for r in (0, 1))


@pytest.mark.slow
def test_lone_machine_ends_within_the_timeout_naming_the_absent_ranks(tmp_path):
    exp = _copy_experiment(tmp_path)
    url = f"tcp://127.0.0.1:{find_free_port()}"
    start = time.monotonic()
    proc = _cli("train", ["--num-machines", 2, "--machine-rank", 1, "--num-gpus", 2,
                          "--dist-url", url, "--dist-timeout", 3, "SOLVER.IMS_PER_DEVICE", 1,
                          "SOLVER.IMS_PER_BATCH", 4, "OUTPUT_DIR", tmp_path / "out"], exp,
                _env(tmp_path))
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "frame #" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pods_train: error: ranks 0-1 (machine 0) never joined: rank ")
    assert f"found nobody listening at {url} within 3 s" in last, last
    print(f"lone machine rank ended after {elapsed:.1f} s (timeout 3 s, startup included)")


def test_is_user_error():
    from crowdloss.config.config_dict import ConfigKeyError

    assert is_user_error(FileNotFoundError("x"))
    assert is_user_error(ValueError("SOLVER.X = 3; expected a list"))
    assert is_user_error(ConfigKeyError("unknown key"))
    assert is_user_error(KeyError("dataset 'x' is not registered"))
    assert not is_user_error(KeyError("x"))  # a dict lookup that failed: a bug
    assert not is_user_error(TypeError("x")) and not is_user_error(AttributeError("x"))
    # A library's ValueError explains nothing without its traceback: a bug report, not a
    # user error (crowdloss's own validators, and the experiment's code, are).
    try:
        torch.nn.functional.group_norm(torch.zeros(1, 4, 1, 1), 4)
    except ValueError as exc:
        assert not is_user_error(exc)
    try:
        check_datasets({"DATASETS": {"TRAIN": ("no_such_dataset_xyz",)}}, ("DATASETS.TRAIN",))
    except KeyError as exc:
        assert is_user_error(exc)
    assert is_user_error(LaunchError("rank 1 did not join within 3 s"))
    assert not is_user_error(LaunchError("rank 1 raised TypeError", detail="Traceback..."))
    assert is_user_error(LaunchError("rank 1: x", user_error=True, detail="Traceback..."))
