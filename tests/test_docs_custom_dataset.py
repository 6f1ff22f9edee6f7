"""docs/custom_datasets.md works as written: its config.py and net.py, copied into a fresh
experiment dir outside the package, register a COCO-json and an odgt dataset and train two
iterations through the real pods_train, then evaluate both."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "custom_datasets.md"


def doc_files():
    """{file name: code} of the blocks marked ``<!-- file: NAME -->`` in the doc."""
    text = DOC.read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```python\n(.*?)```", text, flags=re.S)
    return dict(blocks)


def make_data(root: Path, rng):
    """A few 64x80 images with 1-3 bright 'people' each, annotated in both formats."""
    (root / "images").mkdir(parents=True)
    for split, count in (("train", 4), ("val", 2)):
        images, annotations, odgt = [], [], []
        for k in range(count):
            name = f"{split}_{k}"
            img = rng.integers(0, 60, (64, 80, 3), dtype=np.uint8)
            boxes = []
            for _ in range(int(rng.integers(1, 4))):
                x, y = int(rng.integers(0, 56)), int(rng.integers(0, 24))
                w, h = int(rng.integers(12, 24)), int(rng.integers(24, 40))
                img[y:y + h, x:x + w] = 220
                boxes.append([x, y, w, h])
            cv2.imwrite(str(root / "images" / f"{name}.jpg"), img)
            image_id = 100 + k  # COCO ids are the file's own ints
            images.append({"id": image_id, "file_name": f"{name}.jpg", "height": 64,
                           "width": 80})
            annotations += [{"id": len(annotations) + 1 + j, "image_id": image_id,
                             "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                            for j, b in enumerate(boxes)]
            odgt.append({"ID": name, "gtboxes": [{"tag": "person", "fbox": b, "vbox": b,
                                                  "hbox": b, "extra": {"ignore": 0}}
                                                 for b in boxes]})
        (root / f"{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations,
             "categories": [{"id": 1, "name": "person"}]}))
        (root / f"{split}.odgt").write_text("".join(json.dumps(r) + "\n" for r in odgt))


def test_doc_has_both_files():
    files = doc_files()
    assert set(files) == {"config.py", "net.py"}
    assert "register_coco_instances" in files["net.py"]
    assert "register_crowdhuman_instances" in files["net.py"]


@pytest.mark.slow
def test_custom_datasets_from_the_doc_train_two_iterations(tmp_path):
    exp = tmp_path / "my_experiment"  # outside the package and the playground
    exp.mkdir()
    for name, code in doc_files().items():
        (exp / name).write_text(code)
    make_data(tmp_path / "datasets" / "mydata", np.random.default_rng(0))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               CROWDLOSS_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    entry = "import sys; from crowdloss.cli.train import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", entry, "--dir", str(exp), "OUTPUT_DIR",
                           str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "total_loss" in r] == [0, 1]
    assert all(np.isfinite(r["total_loss"]) for r in rows if "total_loss" in r)
    assert (out / "model_final.pth").is_file()
    log = (out / "log.txt").read_text()
    assert "loaded 4 images from" in log  # the COCO json of the train split
    coco = json.loads((out / "inference" / "mydata_coco_val" / "metrics.json").read_text())
    assert "AP" in coco and "AR100" in coco
    odgt = json.loads((out / "inference" / "mydata_odgt_val" / "metrics.json").read_text())
    assert odgt["counts"]["images"] == 2 and "mMR" in odgt
