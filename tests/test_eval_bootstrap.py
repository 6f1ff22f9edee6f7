"""Bootstrap over val images: resampling reuses each image's TP flags exactly."""
import numpy as np
import pytest

from crowdloss.evaluation.bootstrap import (bootstrap_metrics, main, split_halves,
                                           subset_metrics)
from crowdloss.evaluation.crowdhuman import evaluate_crowdhuman


def _scene(n=12, seed=0):
    """n images with 1-5 persons each; noisy detections, some missed, some false."""
    rng = np.random.default_rng(seed)
    gts, dts = [], []
    for i in range(n):
        boxes = [[float(x), 10.0, 20.0, 50.0] for x in rng.choice(np.arange(0, 280, 25),
                                                                     rng.integers(1, 6), False)]
        gts.append({"ID": f"im{i}", "height": 100, "width": 300,
                    "gtboxes": [{"tag": "person", "fbox": b, "extra": {"ignore": 0}}
                                for b in boxes]})
        dets = [{"box": [b[0] + rng.normal(0, 3), b[1], b[2], b[3]], "score": float(rng.random()),
                 "tag": 1} for b in boxes if rng.random() < 0.8]
        dets += [{"box": [float(rng.uniform(0, 280)), 40.0, 20.0, 50.0],
                  "score": float(rng.random()), "tag": 1} for _ in range(rng.integers(0, 3))]
        dts.append({"ID": f"im{i}", "height": 100, "width": 300, "dtboxes": dets})
    return gts, dts


def _keys(m):
    return {k: m[k] for k in ("AP", "mMR", "Recall")}


def test_subsets_equal_evaluating_those_images():
    gts, dts = _scene()
    full = evaluate_crowdhuman(gts, dts)
    assert subset_metrics(full, range(12)) == pytest.approx(_keys(full.metrics), abs=1e-12)
    first = evaluate_crowdhuman(gts[:5], dts[:5])
    assert subset_metrics(full, range(5)) == pytest.approx(_keys(first.metrics), abs=1e-12)
    # repeats: image 3 twice is the val set holding two copies of it (renamed)
    twice_gt = [gts[3], dict(gts[3], ID="copy"), gts[7]]
    twice_dt = [dts[3], dict(dts[3], ID="copy"), dts[7]]
    twice = evaluate_crowdhuman(twice_gt, twice_dt)
    assert subset_metrics(full, [3, 3, 7]) == pytest.approx(_keys(twice.metrics), abs=1e-12)


def test_bootstrap_spread_shrinks_with_more_images_and_vanishes_for_identical_ones():
    gts, dts = _scene(40, seed=1)
    result = evaluate_crowdhuman(gts, dts)
    small = bootstrap_metrics(result, num_samples=200, num_images=10)
    large = bootstrap_metrics(result, num_samples=200)
    assert 0 < large["AP"]["std"] < small["AP"]["std"]
    assert small["AP"]["p05"] <= small["AP"]["mean"] <= small["AP"]["p95"]
    same = evaluate_crowdhuman([dict(gts[0], ID=f"c{i}") for i in range(6)],
                               [dict(dts[0], ID=f"c{i}") for i in range(6)])
    assert bootstrap_metrics(same, num_samples=20)["AP"]["std"] == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="num_samples"):
        bootstrap_metrics(result, num_samples=1)


def test_split_halves_are_the_same_for_every_model_of_a_val_set():
    gts, dts = _scene(20, seed=2)
    first = split_halves(evaluate_crowdhuman(gts, dts), num_splits=8)
    assert first["images"] == 20 and len(first["AP"]) == 8
    assert split_halves(evaluate_crowdhuman(gts, dts), num_splits=8) == first  # deterministic
    # Another model that differs on image 0 only: in each halving the half without image 0
    # scores the same for both models, which holds only if both got the same halves.
    other = [dict(d) for d in dts]
    other[0] = dict(dts[0], dtboxes=[dict(b, score=1.0 - b["score"]) for b in dts[0]["dtboxes"]]
                    + [{"box": [0.0, 0.0, 30.0, 90.0], "score": 0.99, "tag": 1}])
    second = split_halves(evaluate_crowdhuman(gts, other), num_splits=8)
    for a, b in zip(first["AP"], second["AP"]):
        assert (a[0] == b[0]) != (a[1] == b[1])  # exactly one half is untouched
    # all images alike: each half scores what the whole set does
    same = evaluate_crowdhuman([dict(gts[1], ID=f"c{i}") for i in range(6)],
                               [dict(dts[1], ID=f"c{i}") for i in range(6)])
    halves = split_halves(same, num_splits=3)
    assert np.allclose(halves["Recall"], same.metrics["Recall"])
    with pytest.raises(ValueError, match="num_splits"):
        split_halves(same, num_splits=0)


def test_command_line(tmp_path, capsys):
    import json

    gts, dts = _scene()
    for name, records in (("gt.odgt", gts), ("dt.odgt", dts)):
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = main(["--gt", str(tmp_path / "gt.odgt"), "--dt", str(tmp_path / "dt.odgt"),
                "--first", "4", "--samples", "20"])
    assert out["images"] == 12 and set(out) >= {"bootstrap_12", "first_4", "bootstrap_4"}
    assert json.loads(capsys.readouterr().out)["metrics"]["AP"] == out["metrics"]["AP"]
