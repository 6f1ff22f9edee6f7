"""`import crowdloss` (and every subpackage a run touches) stays light and torchvision-free."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULES = ["crowdloss", "crowdloss.config", "crowdloss.engine", "crowdloss.engine.runner",
           "crowdloss.data", "crowdloss.ops", "crowdloss.modeling.meta_arch",
           "crowdloss.modeling.backbone", "crowdloss.evaluation",
           "crowdloss.evaluation.evaluator", "crowdloss.cli.train", "crowdloss.cli.test",
           "crowdloss.engine.weight_formats", "crowdloss.engine.train_loop",
           "crowdloss.engine.dist_env", "crowdloss.modeling.dense_outputs"]
FORBIDDEN = ["torchvision", "timm", "tensorboard", "tensorboardX", "matplotlib"]


def test_imports_pull_in_no_optional_heavy_package():
    code = (f"import importlib, sys\n"
            f"for m in {MODULES!r}: importlib.import_module(m)\n"
            f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
            f"assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
