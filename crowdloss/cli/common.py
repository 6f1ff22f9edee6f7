"""What ``pods_train`` and ``pods_test`` share: flags, experiment loading, the checked launch
(``run_cli``). Each rank's own setup is in process.py.

An experiment dir holds ``config.py`` (a module-level ``config``) and ``net.py`` (a
``build_model(cfg)``). cvpods found them through ``sys.path`` (appending ``..``), so a pip
package named ``config`` silently replaced the experiment; here both files are executed from
their paths under a per-directory package name (``crowdloss_exp_<hash>.config``), and the dir
is put first on ``sys.path`` only so that bare local imports inside them keep working.

Spawned workers receive the parsed flags (the experiment dir and the override list, both
picklable) and load the experiment again themselves, by path.

Before anything is launched, the CLI process loads the experiment, applies the overrides,
decides the device (``preflight.plan_device``) and checks the datasets
(``preflight.check_datasets``). Who writes where: ``pods_train`` holds OUTPUT_DIR's lock for
the whole run (rank 0 takes it before writing anything), so a second training on the same
OUTPUT_DIR stops at once with the holder's pid and host. ``pods_test`` does not need that
lock (evaluating a run's checkpoints while it trains is normal): it writes only under
``OUTPUT_DIR/inference/`` (its log is ``inference/log.txt``, its results
``inference/<checkpoint>/<dataset>/``), under that folder's own lock.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import logging
import os
import sys
import types
from datetime import timedelta
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import torch

__all__ = ["CLIError", "ExperimentError", "Experiment", "Setup", "build_parser", "parse_args",
           "load_experiment", "run_cli", "console_entry"]

logger = logging.getLogger(__name__)


class CLIError(RuntimeError):
    """A user-facing failure: ``pods_train`` / ``pods_test`` print it without a traceback."""


class ExperimentError(CLIError):
    """The experiment dir is missing a file or an expected name."""


class Experiment(NamedTuple):
    dir: str
    config: Any  # the config module's ``config`` object
    build_model: Callable


class Setup(NamedTuple):
    """What ``setup`` returns: the resolved config, net.py's builder, the started report of
    keys the experiment set but nothing read (the worker checks it and stops it)."""
    cfg: Any
    build_model: Callable
    report: Any  # crowdloss.config.UnreadKeyReport


# ---------------------------------------------------------------------------- flags
def build_parser(prog: str, *, test: bool = False) -> argparse.ArgumentParser:
    """The cvpods flag set; ``test=True`` adds ``--start-iter`` / ``--end-iter``."""
    what = "Evaluate checkpoints of" if test else "Train"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{what} the experiment in --dir (default: the current directory), which "
                    "must contain config.py and net.py.",
        epilog="Trailing KEY VALUE pairs override config keys, e.g. SOLVER.IMS_PER_BATCH 4 "
               "MODEL.WEIGHTS /path/model.pth. The distributed timeout can also be set with "
               "$CROWDLOSS_DIST_TIMEOUT (seconds).")
    parser.add_argument("--num-gpus", type=int, default=None,
                        help="processes per machine (default: every visible GPU; 1 without "
                             "CUDA or with MODEL.DEVICE cpu)")
    parser.add_argument("--num-machines", type=int, default=1, help="number of machines")
    parser.add_argument("--machine-rank", type=int, default=0,
                        help="rank of this machine (0 .. num-machines - 1)")
    parser.add_argument("--dist-url", default="auto",
                        help="tcp://HOST:PORT of the rank-0 machine; 'auto' = a free local port "
                             "(one machine only)")
    parser.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                        help="bound on joining and on every collective (default: "
                             "$CROWDLOSS_DIST_TIMEOUT or 1800)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in OUTPUT_DIR")
    parser.add_argument("--dir", default=".", help="experiment dir (default: current directory)")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of every error (by default a user error, such "
                             "as a missing file or a bad value, prints one line; log.txt keeps "
                             "the traceback)")
    if test:
        parser.add_argument("--start-iter", type=int, default=None,
                            help="evaluate every checkpoint with iteration >= this")
        parser.add_argument("--end-iter", type=int, default=None,
                            help="evaluate every checkpoint with iteration <= this")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides")
    return parser


def parse_args(prog: str, argv: Optional[Sequence[str]] = None, *,
               test: bool = False) -> argparse.Namespace:
    """Parse and normalise flags (absolute ``dir``; ``num_gpus`` None = decided by run_cli)."""
    parser = build_parser(prog, test=test)
    args = parser.parse_args(argv)
    flags_late = [o for o in args.opts if o.startswith("--")]
    if flags_late:
        parser.error(f"flags must come before the KEY VALUE overrides; found {flags_late[0]} "
                     f"after {args.opts[0]}")
    if len(args.opts) % 2:
        parser.error(f"overrides must be KEY VALUE pairs; got an odd number: {args.opts}")
    if args.num_gpus is not None and args.num_gpus < 1:
        parser.error(f"--num-gpus must be >= 1, got {args.num_gpus}")
    if args.dist_timeout is not None and args.dist_timeout <= 0:
        parser.error(f"--dist-timeout must be positive, got {args.dist_timeout}")
    args.dir = os.path.abspath(args.dir)
    args.prog = prog
    args.test = test
    return args


def _timeout(args: argparse.Namespace) -> timedelta:
    from crowdloss.engine.dist_env import default_timeout

    if args.dist_timeout is not None:
        return timedelta(seconds=args.dist_timeout)
    return default_timeout()


# ---------------------------------------------------------------------------- experiment
def _exec_file(module_name: str, path: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ExperimentError(f"cannot load {path} as Python source")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before exec: dataclasses / pickle look it up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def load_experiment(exp_dir: str) -> Experiment:
    """Execute ``exp_dir/config.py`` and ``exp_dir/net.py`` from their paths (fresh each call).

    Raises:
        ExperimentError: no such dir, a missing file, or no ``config`` / ``build_model``.
    """
    exp_dir = os.path.abspath(exp_dir)
    if not os.path.isdir(exp_dir):
        raise ExperimentError(f"experiment dir {exp_dir} does not exist")
    paths = {name: os.path.join(exp_dir, f"{name}.py") for name in ("config", "net")}
    for name, path in paths.items():
        if not os.path.isfile(path):
            raise ExperimentError(
                f"{exp_dir} has no {name}.py: run inside an experiment dir (one holding "
                f"config.py and net.py) or pass --dir <experiment dir>")
    # One package per experiment dir, so two experiments never share module names and
    # `from . import x` works too; its __path__ is the dir itself.
    package = "crowdloss_exp_" + hashlib.sha1(exp_dir.encode("utf-8")).hexdigest()[:12]
    pkg = types.ModuleType(package)
    pkg.__path__ = [exp_dir]
    pkg.__file__ = os.path.join(exp_dir, "__init__.py")
    sys.modules[package] = pkg
    if exp_dir in sys.path:
        sys.path.remove(exp_dir)
    sys.path.insert(0, exp_dir)

    config_mod = _exec_file(f"{package}.config", paths["config"])
    if not hasattr(config_mod, "config"):
        raise ExperimentError(f"{paths['config']} defines no module-level `config` object "
                              f"(end it with e.g. `config = CustomFCOSConfig()`)")
    net_mod = _exec_file(f"{package}.net", paths["net"])
    build_model = getattr(net_mod, "build_model", None)
    if not callable(build_model):
        raise ExperimentError(f"{paths['net']} defines no `build_model(cfg)` function")
    return Experiment(exp_dir, config_mod.config, build_model)


# dir -> the experiment run_cli loaded in this process (process.setup takes it from here).
_PRELOADED: Dict[str, Experiment] = {}


# ---------------------------------------------------------------------------- running
def console_entry(run: Callable[[Optional[Sequence[str]]], Any]) -> Callable[..., int]:
    """The console entry point of a tool whose ``run(argv)`` returns results: it returns the
    exit status 0 instead, since setuptools' wrapper passes the return value to ``sys.exit``,
    which would turn a results dict into status 1 (failures exit 1 from ``run_cli`` already)."""

    def main(argv: Optional[Sequence[str]] = None) -> int:
        run(argv)
        return 0

    main.__doc__ = f"Console entry point of ``{run.__module__}``: see ``console_entry``."
    return main


def run_cli(args: argparse.Namespace, worker: Callable[[argparse.Namespace], Any]) -> Any:
    """Check the experiment, overrides, device and datasets here, then ``launch``
    ``worker(args)`` on every rank.

    Failures exit with status 1 and end with one ``<prog>: error: ...`` line on stderr. User
    errors (bad experiment dir, unknown or badly typed override, missing dataset, a rank that
    never joined: see ``preflight.is_user_error``) print only that line, their traceback goes
    to log.txt; anything else (a bug) prints its traceback first. ``--debug`` prints every
    traceback.
    """
    from crowdloss.config import validate_config
    from crowdloss.engine.dist_env import external_launcher
    from crowdloss.engine.launch import check_layout, launch

    from . import preflight
    from .errors import is_user_error, report_failure
    from .process import register_config_datasets

    try:
        # Fail before spawning anything: a typo in an override or a missing dataset should
        # not cost a launch, a model build or a weight download.
        exp = load_experiment(args.dir)
        cfg = copy.deepcopy(exp.config)
        cfg.merge_from_list(list(args.opts))
        validate_config(cfg)
        register_config_datasets(cfg)
        _PRELOADED[args.dir] = exp
        external = external_launcher() is not None
        explicit = ("MODEL.DEVICE" in args.opts[0::2]
                    or preflight.config_sets(exp.config, "MODEL.DEVICE"))
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        plan = preflight.plan_device(cfg.MODEL.DEVICE, explicit=explicit, num_gpus=args.num_gpus,
                                     cuda_count=cuda_count, external=external)
        args.device_plan, args.num_gpus = plan, plan.num_gpus
        testing = bool(getattr(args, "test", False))
        preflight.check_datasets(cfg, ("DATASETS.TEST",) if testing
                                 else ("DATASETS.TRAIN", "DATASETS.TEST"))
        check_layout(args.num_gpus, num_machines=args.num_machines,
                     machine_rank=args.machine_rank, dist_url=args.dist_url)
        return launch(_worker_entry, args.num_gpus, num_machines=args.num_machines,
                      machine_rank=args.machine_rank, dist_url=args.dist_url,
                      args=(worker, args), timeout=_timeout(args), device=plan.device,
                      user_error=is_user_error)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure ends in the one-line form
        report_failure(args.prog, exc, debug=args.debug)


def _worker_entry(worker: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> Any:
    """What every rank runs: ``worker(args)``, its traceback kept in log.txt, locks released."""
    try:
        return worker(args)
    except Exception:
        # DEBUG: the file handlers keep it, the console (INFO) does not repeat it.
        logger.debug("%s failed with:", args.prog, exc_info=True)
        raise
    finally:
        from crowdloss.utils.lock import release_run_locks

        release_run_locks()
