"""Shared test setup: CPU only, few threads, outputs never land in the repo."""
import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def one_thread():
    """One intra-op thread during the test. Toy-sized tensors and detector steps of many small
    ops only lose to thread hand-offs on a busy 2-core machine (measured in these tests: 3x the
    CPU time for an R-CNN step, over 10x for the ranking losses' reference loop, x50 for NMS).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_output(tmp_path, monkeypatch):
    # Experiments derive OUTPUT_DIR from CROWDLOSS_OUTPUT; keep every test's files in tmp.
    monkeypatch.setenv("CROWDLOSS_OUTPUT", str(tmp_path / "output"))
