"""Evaluation inputs: the GT rules it shares with the data loader, image sizes that disagree,
and a test pass over a dataset with bad image files (real corrupt files written here)."""
import json
import logging

import pytest
import torch

from crowdloss.data import (DatasetCatalog, build_test_loader, get_dataset_dicts,
                            load_crowdhuman_odgt, register_crowdhuman_instances)
from crowdloss.evaluation.crowdhuman import evaluate_crowdhuman, main
from crowdloss.evaluation.evaluator import CrowdHumanEvaluator
from crowdloss.evaluation.inference import inference_on_dataset
from crowdloss.evaluation.results_io import load_gt
from crowdloss.structures import Instances
from bad_files import (loader_cfg as _cfg, write_corrupt_middle, write_cut_300, write_good,
                       write_truncated_third)


def write_lines(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in records))
    return str(path)


@pytest.fixture
def log(caplog):
    loggers = [logging.getLogger(n) for n in ("crowdloss.data", "crowdloss.evaluation")]
    for lg in loggers:
        lg.addHandler(caplog.handler)
        lg.setLevel(logging.INFO)
    yield caplog
    for lg in loggers:
        lg.removeHandler(caplog.handler)
        lg.setLevel(logging.NOTSET)


# ------------------------------------------------------------- one parser, one ignore rule
def test_loader_and_evaluator_share_the_ignore_rule_and_box_fallback(tmp_path):
    root = tmp_path / "Images"
    root.mkdir()
    write_good(root / "a.jpg", 100, 120)
    boxes = [
        {"tag": "person", "fbox": [0, 0, 30, 60], "vbox": [0, 0, 30, 40]},
        {"tag": "person", "fbox": [40, 0, 30, 60], "vbox": [40, 0, 30, 40],
         "extra": {"ignore": 1}},
        {"tag": "mask", "fbox": [80, 0, 30, 30]},  # no vbox: the fbox is the ignore region
        {"tag": "person", "fbox": [0, 60, 30, 30], "vbox": [0, 60, 20, 20],
         "extra": {"ignore": 0, "occ": 1}},
    ]
    gt = write_lines(tmp_path / "gt.odgt", [{"ID": "a", "gtboxes": boxes}])
    dicts = load_crowdhuman_odgt(gt, root, box_type="vbox")
    (g,) = load_gt(gt, box_key="vbox")
    assert [a["category_id"] == 0 for a in dicts[0]["annotations"]] == g.valid.tolist() \
        == [True, False, False, True]
    xyxy = g.boxes.copy()
    xyxy[:, 2:] += xyxy[:, :2]
    assert [a["bbox"] for a in dicts[0]["annotations"]] == xyxy.tolist()
    assert xyxy[2].tolist() == [80, 0, 110, 30]
    # the evaluator takes the same file in vbox mode (it used to stop at the mask box)
    dt = [{"ID": "a", "dtboxes": [{"box": [0, 0, 30, 40], "score": 0.9}]}]
    r = evaluate_crowdhuman(gt, dt, box_key="vbox", image_root=str(root))
    assert (r.counts["valid_gt"], r.counts["ignore_regions"], r.counts["tp"]) == (2, 2, 1)


@pytest.mark.parametrize("raw, message", [
    ("[1, NaN, 20, 30]", "finite"), ("[1, 1, Infinity, 30]", "finite"),
    ("[1, 1, -20, 30]", "negative width"),
])
def test_evaluator_rejects_what_the_loader_rejects(tmp_path, raw, message):
    gt = tmp_path / "gt.odgt"
    gt.write_text('{"ID": "a", "height": 100, "width": 120, "gtboxes": [{"tag": "person", '
                  '"fbox": %s}]}\n' % raw)
    with pytest.raises(ValueError, match=rf"gt\.odgt:1 gtboxes\[0\].*{message}"):
        evaluate_crowdhuman(str(gt), [])


def test_unknown_tag_is_an_error_in_evaluation_unless_mapped(tmp_path, capsys):
    gt = write_lines(tmp_path / "gt.odgt", [{"ID": "a", "height": 100, "width": 120, "gtboxes": [
        {"tag": "person", "fbox": [0, 0, 30, 60]}, {"tag": "persn", "fbox": [40, 0, 30, 60]}]}])
    dt = write_lines(tmp_path / "dt.odgt", [{"ID": "a", "dtboxes": [
        {"box": [0, 0, 30, 60], "score": 0.9}, {"box": [40, 0, 30, 60], "score": 0.8}]}])
    # it used to become an ignore region: valid GT 2 -> 1 and a silently different Recall
    with pytest.raises(ValueError, match=r"gt\.odgt:1 gtboxes\[1\]: unknown tag 'persn'"):
        evaluate_crowdhuman(gt, dt)
    r = evaluate_crowdhuman(gt, dt, tag_map={"persn": "person"})
    assert r.counts["valid_gt"] == 2 and r.metrics["Recall"] == 1.0
    r = main(["--gt", gt, "--dt", dt, "--tag-map", "persn=mask"])
    assert (r.counts["valid_gt"], r.counts["ignore_regions"], r.counts["ignored_dt"]) == (1, 1, 1)
    with pytest.raises(SystemExit):
        main(["--gt", gt, "--dt", dt, "--tag-map", "persn"])
    assert "not TAG=person" in capsys.readouterr().err


# ---------------------------------------------------------- image sizes: GT / image win
def test_results_file_size_cannot_override_the_image_or_the_gt(tmp_path):
    root = tmp_path / "Images"
    root.mkdir()
    write_good(root / "a.jpg", 100, 120)
    box = {"tag": "person", "fbox": [100, 0, 30, 60]}
    gt_nosize = write_lines(tmp_path / "gt.odgt", [{"ID": "a", "gtboxes": [box]}])
    gt_sized = write_lines(tmp_path / "gts.odgt",
                           [{"ID": "a", "height": 100, "width": 120, "gtboxes": [box]}])
    # a detection that only matches if the image were 200 wide (no clipping at 120)
    dt = write_lines(tmp_path / "dt.odgt", [{"ID": "a", "height": 100, "width": 200,
                                             "dtboxes": [{"box": [100, 0, 30, 60],
                                                          "score": 0.9}]}])
    with pytest.raises(ValueError, match=r"dt\.odgt:1: image 'a' is 100x200 .* detections record "
                                         r"but 100x120 in .*a\.jpg"):
        main(["--gt", gt_nosize, "--dt", dt, "--image-root", str(root)])
    with pytest.raises(ValueError, match=r"image 'a' is 100x200 .* but 100x120 in the GT file"):
        evaluate_crowdhuman(gt_sized, dt)
    # nothing else knows the size: the results record's is used (docs/metrics.md, "Inputs")
    assert evaluate_crowdhuman(gt_nosize, dt).counts["tp"] == 1
    same = write_lines(tmp_path / "dt2.odgt", [{"ID": "a", "height": 100, "width": 120,
                                                "dtboxes": [{"box": [100, 0, 30, 60],
                                                             "score": 0.9}]}])
    assert main(["--gt", gt_nosize, "--dt", same, "--image-root", str(root)]).counts["tp"] == 1


# ------------------------------------------- a test pass over a dataset with bad images
class GTEcho(torch.nn.Module):
    """Predicts each input's valid GT boxes (the test pipeline does not resize)."""

    def forward(self, inputs):
        outs = []
        for x in inputs:
            inst = x["instances"]
            keep = inst.gt_classes >= 0
            boxes = inst.gt_boxes[keep]
            outs.append({"instances": Instances(
                (x["height"], x["width"]), pred_boxes=boxes,
                scores=torch.linspace(0.9, 0.5, len(boxes)),
                pred_classes=torch.zeros(len(boxes), dtype=torch.long))})
        return outs


def test_test_pass_survives_bad_images_and_counts_their_gt_as_missed(tmp_path, log):
    root = tmp_path / "Images"
    root.mkdir()
    write_good(root / "g0.jpg", seed=0)
    write_good(root / "g1.jpg", seed=1)
    write_truncated_third(root / "third.jpg")   # load time: no end marker
    write_cut_300(root / "cut.jpg")             # load time: no end marker
    write_corrupt_middle(root / "mid.jpg")      # map time: libjpeg "Corrupt JPEG data"
    ids = ["g0", "third", "g1", "cut", "mid", "missing"]
    person = lambda x: {"tag": "person", "fbox": [x, 5, 20, 40]}
    gt = write_lines(tmp_path / "val.odgt", [
        {"ID": i, "gtboxes": [person(5), person(40)] + ([] if k % 2 else [person(60)])}
        for k, i in enumerate(ids)])
    DatasetCatalog.remove("bad_val")
    register_crowdhuman_instances("bad_val", gt, root)
    try:
        cfg = _cfg(True, "bad_val")
        with pytest.raises(Exception, match=r"third\.jpg"):
            get_dataset_dicts("bad_val", _cfg(False, "bad_val"))
        loader = build_test_loader(cfg, "bad_val")
        ev = CrowdHumanEvaluator("bad_val", output_dir=str(tmp_path / "out"), plot=False)
        res = inference_on_dataset(GTEcho(), loader, ev)["crowdhuman"]
    finally:
        DatasetCatalog.remove("bad_val")
    counts = ev.result.counts
    # 15 valid GT; only g0 (3) and g1 (3) were predicted, perfectly
    assert counts["valid_gt"] == 15 and counts["tp"] == 6 and counts["fp"] == 0
    assert counts["skipped_images"] == 4 and counts["skipped_valid_gt"] == 9
    assert res["Recall"] == pytest.approx(6 / 15, abs=1e-12)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["counts"]["skipped_images"] == 4
    text = log.text
    for name in ("third.jpg", "cut.jpg", "mid.jpg", "missing"):
        assert name in text
    assert "4 of 6 GT images were not predicted" in text and "9 valid GT" in text


def test_skipped_image_counts_like_an_image_without_detections(tmp_path):
    """Valid input, same numbers: an unpredicted image scores exactly as an empty record."""
    gt = write_lines(tmp_path / "gt.odgt", [
        {"ID": "a", "height": 100, "width": 120, "gtboxes": [{"tag": "person",
                                                              "fbox": [0, 0, 30, 60]}]},
        {"ID": "b", "height": 100, "width": 120, "gtboxes": [{"tag": "person",
                                                              "fbox": [50, 0, 30, 60]}]}])
    dets = [{"ID": "a", "dtboxes": [{"box": [0, 0, 30, 60], "score": 0.9},
                                    {"box": [60, 50, 30, 30], "score": 0.4}]}]
    empty = evaluate_crowdhuman(gt, dets + [{"ID": "b", "dtboxes": []}])
    skipped = evaluate_crowdhuman(gt, dets, skipped_images=["b"])
    assert skipped.to_dict() == empty.to_dict()
    with pytest.raises(ValueError, match="listed as skipped but have detections"):
        evaluate_crowdhuman(gt, dets, skipped_images=["a"])
