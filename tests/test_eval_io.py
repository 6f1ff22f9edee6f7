"""Result files, bad-input errors, the standalone command and the plots."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from crowdloss.evaluation.crowdhuman import evaluate_crowdhuman, format_results, main
from crowdloss.evaluation.results_io import (load_dt, load_gt, make_dt_record,
                                             odgt_to_coco_results, write_odgt)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def gt_line(image_id, boxes, size=True):
    rec = {"ID": image_id, "gtboxes": [{"tag": "person", "fbox": b, "extra": {"ignore": 0}}
                                       for b in boxes]}
    if size:
        rec.update(height=100, width=120)
    return json.dumps(rec)


def dt_line(image_id, dets, **extra):
    return json.dumps({"ID": image_id, **extra,
                       "dtboxes": [{"box": b, "score": s, "tag": 1} for b, s in dets]})


@pytest.fixture
def gt_file(tmp_path):
    return write_lines(tmp_path / "gt.odgt", [gt_line("a", [[0, 0, 20, 40], [50, 0, 20, 40]]),
                                              gt_line("b", [[10, 10, 30, 60]])])


@pytest.mark.parametrize("line, message", [
    ('{"ID": "a", "dtboxes": [', "dt.odgt:2: not a JSON object"),
    (dt_line("a", [[[0, 0, "20", 40], 0.9]]), r"dt.odgt:2: dtboxes\[0\].box .*4 finite numbers"),
    (dt_line("a", [[[0, 0, 20, 40], 0.9], [[0, 0, -1, 40], 0.9]]),
     r"dt.odgt:2: dtboxes\[1\].box .*negative width"),
    (dt_line("a", [[[0, 0, 20, 40], "high"]]), r"dt.odgt:2: dtboxes\[0\].score"),
    (dt_line("zzz", [[[0, 0, 20, 40], 0.9]]), "dt.odgt:2: ID 'zzz' is not in the GT"),
    (dt_line("b", []), "dt.odgt:2: duplicated ID 'b' \\(first at .*dt.odgt:1\\)"),
    ('["a"]', "dt.odgt:2: expected a JSON object"),
    ('{"ID": "a", "dtboxes": [{"score": 1}]}', r"dt.odgt:2: dtboxes\[0\] needs keys"),
])
def test_bad_results_lines_name_file_line_and_problem(tmp_path, gt_file, line, message):
    dt_file = write_lines(tmp_path / "dt.odgt", [dt_line("b", []), line])
    with pytest.raises(ValueError, match=message):
        evaluate_crowdhuman(gt_file, dt_file)


def test_bad_gt_lines(tmp_path):
    dup = write_lines(tmp_path / "g.odgt", [gt_line("a", []), "", gt_line("a", [])])
    with pytest.raises(ValueError, match="g.odgt:3: duplicated ID 'a'"):
        load_gt(dup)
    bad = write_lines(tmp_path / "g2.odgt", [json.dumps({"ID": "a", "gtboxes": [{"fbox": [
        0, 0, 1, 1]}]})])
    with pytest.raises(ValueError, match=r"g2.odgt:1 gtboxes\[0\]: .* a 'tag'"):
        load_gt(bad)
    no_box = write_lines(tmp_path / "g4.odgt", [json.dumps({"ID": "a", "gtboxes": [
        {"tag": "person", "vbox": [0, 0, 1, 1]}]})])
    with pytest.raises(ValueError, match=r"g4.odgt:1 gtboxes\[0\]: 'fbox' = None"):
        load_gt(no_box)
    with pytest.raises(FileNotFoundError, match="nope.odgt"):
        load_gt(tmp_path / "nope.odgt")
    empty = write_lines(tmp_path / "g3.odgt", [""])
    with pytest.raises(ValueError, match="g3.odgt.*has no images"):
        evaluate_crowdhuman(empty, [])


def test_image_sizes_gt_then_results_else_error_naming_the_id(tmp_path):
    gt_nosize = write_lines(tmp_path / "gt.odgt", [gt_line("a", [[110, 0, 20, 40]], size=False)])
    # no size anywhere -> error naming the ID
    dt_nosize = write_lines(tmp_path / "d0.odgt", [dt_line("a", [[[110, 0, 10, 40], 0.9]])])
    with pytest.raises(ValueError, match="image 'a' has no height/width"):
        evaluate_crowdhuman(gt_nosize, dt_nosize)
    # the results record's size clips the GT (110..130 -> 110..120): TP
    dt_sized = write_lines(tmp_path / "d1.odgt", [dt_line("a", [[[110, 0, 10, 40], 0.9]],
                                                          height=100, width=120)])
    assert evaluate_crowdhuman(gt_nosize, dt_sized).counts["tp"] == 1
    # image_sizes (the evaluator's inputs, read from the image) win over the results record's
    # size, and a disagreement is an error naming the ID
    assert evaluate_crowdhuman(gt_nosize, dt_sized, image_sizes={"a": (100, 120)}
                               ).counts["tp"] == 1
    with pytest.raises(ValueError, match=r"d1.odgt:1: image 'a' is 100x120 .* detections "
                                         r"record but 100x200 in the image"):
        evaluate_crowdhuman(gt_nosize, dt_sized, image_sizes={"a": (100, 200)})


def test_image_root_reads_sizes_from_image_headers(tmp_path):
    import cv2

    root = tmp_path / "Images"
    root.mkdir()
    cv2.imwrite(str(root / "a.jpg"), np.zeros((100, 120, 3), np.uint8))
    gt_nosize = write_lines(tmp_path / "gt.odgt", [gt_line("a", [[110, 0, 20, 40]], size=False)])
    dt_nosize = write_lines(tmp_path / "dt.odgt", [dt_line("a", [[[110, 0, 10, 40], 0.9]])])
    r = evaluate_crowdhuman(gt_nosize, dt_nosize, image_root=str(root))
    assert r.counts["tp"] == 1


def test_crowddet_style_results_lines_are_accepted(tmp_path, gt_file):
    line = dt_line("a", [[[0, 0, 20, 40], 0.9]], height=100, width=120,
                   gtboxes=[{"box": [0, 0, 20, 40], "tag": 1}])
    r = evaluate_crowdhuman(gt_file, write_lines(tmp_path / "dt.odgt", [line]))
    assert r.counts["tp"] == 1 and r.counts["images"] == 2


def test_make_dt_record_round_trips_through_the_file(tmp_path, gt_file):
    boxes = np.array([[0.123, 0.456, 20.5, 40.25], [50, 0, 70, 40]], np.float32)
    rec = make_dt_record("a", 100, 120, boxes, np.array([0.9, 0.8], np.float32))
    assert rec["dtboxes"][0]["box"] == [0.12, 0.46, 20.38, 39.79] and rec["dtboxes"][0]["tag"] == 1
    path = write_odgt(str(tmp_path / "res.odgt"), [rec])
    in_memory = evaluate_crowdhuman(gt_file, load_dt([rec]))
    from_file = evaluate_crowdhuman(gt_file, path)
    assert in_memory.to_dict() == from_file.to_dict()
    coco = odgt_to_coco_results([rec])
    assert coco[1] == {"image_id": "a", "category_id": 1, "bbox": [50.0, 0.0, 20.0, 40.0],
                       "score": rec["dtboxes"][1]["score"]}


def test_format_results_percent_table_and_copypaste(gt_file, tmp_path):
    dt_file = write_lines(tmp_path / "dt.odgt", [dt_line("a", [[[0, 0, 20, 40], 0.9],
                                                               [[50, 0, 20, 40], 0.8]])])
    r = evaluate_crowdhuman(gt_file, dt_file)
    text = format_results(r)
    assert "copypaste: mMR,AP,Recall,JI" in text
    assert f"{100 * r.metrics['Recall']:.2f}" == "66.67" and "66.67" in text


def test_cli_json_and_plots(tmp_path, gt_file, capsys):
    dt_file = write_lines(tmp_path / "dt.odgt", [
        dt_line("a", [[[0, 0, 20, 40], 0.9], [[50, 0, 20, 40], 0.6], [[80, 50, 9, 9], 0.7]]),
        dt_line("b", [[[10, 10, 30, 60], 0.3], [[0, 50, 9, 9], 0.8]])])
    out_json, plot_dir = tmp_path / "res.json", tmp_path / "plots"
    res = main(["--gt", gt_file, "--dt", dt_file, "--json", str(out_json),
                "--plot", str(plot_dir)])
    printed = capsys.readouterr().out
    assert "copypaste:" in printed
    saved = json.loads(out_json.read_text())
    assert saved["AP"] == res.metrics["AP"] and saved["JI"] == res.metrics["JI"]
    assert saved["counts"] == {"images": 2, "valid_gt": 3, "ignore_regions": 0,
                               "detections": 5, "tp": 3, "fp": 2, "ignored_dt": 0}
    assert saved["ji_threshold"] == res.ji_threshold and len(saved["mr_points"]) == 9
    for name in ("mr_fppi.png", "precision_recall.png"):
        data = (plot_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_cli_module_runs_without_torch(tmp_path, gt_file):
    dt_file = write_lines(tmp_path / "dt.odgt", [dt_line("a", [[[0, 0, 20, 40], 0.9]])])
    code = ("import runpy, sys; sys.argv = ['x', '--gt', %r, '--dt', %r]; "
            "runpy.run_module('crowdloss.evaluation.crowdhuman', run_name='__main__'); "
            "assert 'torch' not in sys.modules, 'torch imported'") % (gt_file, dt_file)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "copypaste: mMR,AP,Recall,JI" in out.stdout


@pytest.mark.parametrize("dets_a, dets_b", [
    # perfect: every miss rate on the curve is 0 (nothing to draw on log axes)
    ([[[0, 0, 20, 40], 0.9], [[50, 0, 20, 40], 0.8]], [[[10, 10, 30, 60], 0.7]]),
    # untrained: only false positives, recall 0 everywhere
    ([[[90, 80, 9, 9], 0.9]], [[[0, 80, 5, 5], 0.2]]),
    # no detection at all: empty curves
    ([], []),
])
def test_plots_survive_degenerate_curves(tmp_path, gt_file, dets_a, dets_b):
    from crowdloss.evaluation.plots import plot_crowdhuman

    dt_file = write_lines(tmp_path / "dt.odgt", [dt_line("a", dets_a), dt_line("b", dets_b)])
    paths = plot_crowdhuman(evaluate_crowdhuman(gt_file, dt_file), str(tmp_path / "plots"))
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in paths)
