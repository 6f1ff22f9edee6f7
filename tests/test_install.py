"""The README's install path (Makefile): torch is never resolved as a bare PyPI requirement.

A dry run (``make -n``) shows the commands without running them: a venv that already has torch
keeps it; else a torch wheel pip finds locally is installed alone (then its dependencies); else
torch comes from TORCH_INDEX (PyTorch's CPU wheels unless the user names another index).
"""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dry_run(tmp_path, *overrides):
    if shutil.which("make") is None:
        pytest.fail("make is needed to check the README's install commands")
    out = subprocess.run(["make", "-n", "-B", "install", f"VENV={tmp_path / 'venv'}", *overrides],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return " ".join(out.split())  # one line: continuation lines joined


def test_torch_is_pinned_and_comes_from_a_known_place(tmp_path):
    cmd = dry_run(tmp_path)
    torch_lines = cmd.split("pip install -r requirements.txt")[0]
    # 1. keep an installed torch; 2. a local wheel alone, no index; 3. the CPU index.
    assert 'python -c "import torch"' in torch_lines
    assert '--no-index --no-deps "torch==2.13.0"' in torch_lines
    assert '"torch==2.13.0" --index-url "https://download.pytorch.org/whl/cpu"' in torch_lines
    # No pip call names an unpinned torch.
    for call in torch_lines.split("pip install")[1:]:
        assert '"torch==' in call, call


def test_torch_index_override_reaches_the_fallback(tmp_path):
    cmd = dry_run(tmp_path, "TORCH_INDEX=https://download.pytorch.org/whl/cu126",
                  "TORCH_VERSION=2.9.1")
    assert '"torch==2.9.1" --index-url "https://download.pytorch.org/whl/cu126"' in cmd
