"""End to end: pods_train / --resume / pods_test on a small synthcrowd with damaged images.

Train and val each get one image that the load-time check catches (truncated) and one that
only the decode catches (corrupt data, end marker intact). Without DATASETS.SKIP_BAD_IMAGES
the run stops naming the file; with it, training skips them (the decode-time one in a data
loader worker), a resumed run ends with the very same weights, and the evaluation after
training counts the skipped val images' GT as missed.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crowdloss.data.synthetic import generate_synthcrowd

from bad_files import corrupt_middle, truncate

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "playground/detection/synthcrowd/fcos.res18.fpn.synthcrowd.256size.2600"
SMALL = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.IMS_PER_DEVICE", "2",
         "SOLVER.LR_SCHEDULER.WARMUP_ITERS", "2", "SOLVER.LR_SCHEDULER.STEPS", "(50, 60)",
         "SOLVER.CHECKPOINT_PERIOD", "100"]


def _run(tool, args, env, check=True):
    entry = f"import sys; from crowdloss.cli.{tool} import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", entry, *map(str, args)], cwd=EXP, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"{tool}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_bad_images_train_resume_and_evaluate(tmp_path):
    root = tmp_path / "datasets" / "synthcrowd"
    generate_synthcrowd(str(root), num_train=6, num_val=4, seed=5, workers=1)
    images = root / "Images"
    truncate(images / "synth_train_000001.jpg")
    corrupt_middle(images / "synth_train_000004.jpg")
    truncate(images / "synth_val_000001.jpg")
    corrupt_middle(images / "synth_val_000002.jpg")
    env = dict(os.environ, CROWDLOSS_DATASETS=str(root.parent), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))

    proc = _run("train", ["OUTPUT_DIR", tmp_path / "fail", *SMALL,
                          "SOLVER.LR_SCHEDULER.MAX_ITER", 4], env, check=False)
    assert proc.returncode != 0
    assert "synth_train_000001.jpg" in proc.stdout + proc.stderr

    # (no evaluation after training, TEST.EVAL_PERIOD -1: pods_test below runs it once)
    skip = ["DATASETS.SKIP_BAD_IMAGES", "True", *SMALL]
    train = skip
    full, part = tmp_path / "full", tmp_path / "part"
    _run("train", ["OUTPUT_DIR", full, *train, "SOLVER.LR_SCHEDULER.MAX_ITER", 4], env)
    _run("train", ["OUTPUT_DIR", part, *train, "SOLVER.LR_SCHEDULER.MAX_ITER", 2], env)
    _run("train", ["--resume", "OUTPUT_DIR", part, *train, "SOLVER.LR_SCHEDULER.MAX_ITER", 4],
         env)
    log = (full / "log.txt").read_text()
    assert "synth_train_000001.jpg" in log and "synth_train_000004.jpg" in log
    assert "Resuming at iteration 2" in (part / "log.txt").read_text()
    a, b = _weights(full / "model_final.pth"), _weights(part / "model_final.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # pods_test: 2 of 4 val images skipped (one at load, one at decode), their GT missed
    proc = _run("test", ["OUTPUT_DIR", full, *skip], env)
    metrics = json.loads((full / "inference" / "model_final" / "synthcrowd_val" / "metrics.json")
                         .read_text())
    assert metrics["counts"]["skipped_images"] == 2 and metrics["counts"]["images"] == 4
    assert metrics["counts"]["skipped_valid_gt"] > 0
    text = proc.stdout + proc.stderr
    assert "synth_val_000001.jpg" in text and "synth_val_000002.jpg" in text
    assert "2 of 4 GT images were not predicted" in text
