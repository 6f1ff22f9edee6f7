"""Shared test setup: CPU only, few threads, outputs never land in the repo."""
import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_output(tmp_path, monkeypatch):
    # Experiments derive OUTPUT_DIR from CROWDLOSS_OUTPUT; keep every test's files in tmp.
    monkeypatch.setenv("CROWDLOSS_OUTPUT", str(tmp_path / "output"))
