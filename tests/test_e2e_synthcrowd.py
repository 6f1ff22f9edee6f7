"""End to end: the README's demo experiment through pods_train / pods_test on a small synthcrowd.

The real LLA synthcrowd experiment dir, the real console-script entry points, the real data,
model, engine and evaluator; only the dataset size and the schedule are shrunk by overrides.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crowdloss.data.synthetic import generate_synthcrowd

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "playground/detection/synthcrowd/lla.res18.fpn.synthcrowd.256size.2600"
SCHEDULE = ["SOLVER.LR_SCHEDULER.MAX_ITER", "24", "SOLVER.LR_SCHEDULER.STEPS", "(16, 20)",
            "SOLVER.LR_SCHEDULER.WARMUP_ITERS", "5", "SOLVER.CHECKPOINT_PERIOD", "12",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.IMS_PER_DEVICE", "2"]


def _run(tool, args, env):
    entry = f"import sys; from crowdloss.cli.{tool} import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", entry, *args], cwd=DEMO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{tool} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_demo_experiment_trains_and_evaluates(tmp_path):
    datasets = tmp_path / "datasets"
    generate_synthcrowd(str(datasets / "synthcrowd"), num_train=16, num_val=6, seed=3)
    out = tmp_path / "out"
    env = dict(os.environ, CROWDLOSS_DATASETS=str(datasets), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    train = _run("train", ["OUTPUT_DIR", str(out), *SCHEDULE], env)
    # TEST.EVAL_PERIOD -1: pods_train does not score the model pods_test is about to score.
    assert "copypaste" not in train.stdout and "Evaluation results" not in train.stdout
    # No MODEL.DEVICE in the config: the device follows the machine, without a warning.
    assert "WARNING" not in train.stdout, train.stdout

    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "config_diff.yaml", "log.txt", "metrics.json", "last_checkpoint",
            "model_iter_0000012.pth", "model_final.pth"} <= names, names
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    assert losses and all(0 < v < 100 for v in losses)

    proc = _run("test", ["OUTPUT_DIR", str(out)], env)
    table = proc.stdout[proc.stdout.index("checkpoint "):].splitlines()
    header, row = table[0].split(), table[1].split()
    assert row[:2] == ["model_final.pth", "24"]
    metrics = dict(zip(header[2:], map(float, row[2:])))  # percent, as the README tables
    assert 0.0 <= metrics["synthcrowd_val/crowdhuman/AP"] <= 100.0
    assert 0.0 <= metrics["synthcrowd_val/crowdhuman/Recall"] <= 100.0
    # pods_test prints its table once, nothing else: no per-evaluation copy-paste block.
    assert "copypaste" not in proc.stdout
    # pods_test's own files: inference/<checkpoint>/<dataset>/ (the run's stay untouched).
    tested = out / "inference" / "model_final" / "synthcrowd_val"
    files = {p.name for p in tested.iterdir()}
    assert {"crowdhuman_results.odgt", "coco_instances_results.json", "coco_image_ids.json",
            "metrics.json", "mr_fppi.png", "precision_recall.png"} <= files, files
    assert not (out / "inference" / "synthcrowd_val").exists()  # no evaluation in training
    lines = (tested / "crowdhuman_results.odgt").read_text().splitlines()
    assert len(lines) == 6  # one record per val image, each with <= 300 boxes
    assert all(len(json.loads(line)["dtboxes"]) <= 300 for line in lines)
