"""MODEL.WEIGHTS_CLASSES: a COCO checkpoint's classifier channels re-ordered to the model's
classes by name, per anchor; new classes keep the prior init; coverage counts the fraction."""
import logging
from pathlib import Path

import pytest
import torch

import pytorch_retinanet_reference as ref
from crowdloss.config import PyTorchRetinaNetConfig
from crowdloss.data import COCO_CLASSES, MetadataCatalog
from crowdloss.engine.class_remap import (ClassChannels, ClassRemap, class_remap_from_config,
                                          remap_class_channels, resolve_class_names)
from crowdloss.engine.weights import WeightsError, load_state
from crowdloss.modeling.meta_arch import RetinaNet
from crowdloss.tools.build_csv import coco_names

A = 9


def build(classes):
    cfg = PyTorchRetinaNetConfig()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RETINANET.NUM_CLASSES = len(classes)
    torch.manual_seed(0)
    return RetinaNet.from_config(cfg), cfg


@pytest.fixture(scope="module")
def coco_sd():
    return ref.state_dict(18, 80, seed=11)


def _per_anchor(t, k):
    return t.reshape(A, k, *t.shape[1:])


def test_coco_to_seed_classes_keeps_80_of_81(coco_sd, caplog):
    target = coco_names("darknet") + ["head"]  # the seed's names file: six other spellings
    model, cfg = build(target)
    fresh = {k: v.clone() for k, v in model.state_dict().items() if "cls_score" in k}
    with caplog.at_level(logging.INFO, logger="crowdloss.engine"):
        summary = load_state(model, coco_sd, source="coco.pt", min_coverage=0.99,
                             class_remap=ClassRemap(tuple(COCO_CLASSES), tuple(target)))
    w = _per_anchor(model.head.cls_score.weight.detach(), 81)
    b = _per_anchor(model.head.cls_score.bias.detach(), 81)
    src_w = _per_anchor(coco_sd["classificationModel.output.weight"], 80)
    src_b = _per_anchor(coco_sd["classificationModel.output.bias"], 80)
    assert torch.equal(w[:, :80], src_w) and torch.equal(b[:, :80], src_b)  # every anchor
    assert torch.equal(w[:, 80], _per_anchor(fresh["head.cls_score.weight"], 81)[:, 80])
    prior = -torch.log(torch.tensor((1 - 0.01) / 0.01))
    assert torch.allclose(b[:, 80], prior.expand(A))  # head: the prior-probability init
    assert summary.partial == {"head.cls_score.weight": 80 / 81, "head.cls_score.bias": 80 / 81}
    assert not summary.shape_skipped and 0.99 < summary.coverage < 1.0
    assert "80 of the model's 81 classes kept" in caplog.text and "new" in caplog.text
    assert "motorbike <- motorcycle" in caplog.text


def test_coco_to_person_head_and_the_coverage_rule(coco_sd):
    model, _ = build(["person", "head"])
    remap = ClassRemap(tuple(COCO_CLASSES), ("person", "head"))
    summary = load_state(model, coco_sd, source="coco.pt", class_remap=remap)
    w = _per_anchor(model.head.cls_score.weight.detach(), 2)
    assert torch.equal(w[:, 0], _per_anchor(coco_sd["classificationModel.output.weight"], 80)[:, 0])
    assert summary.partial["head.cls_score.bias"] == 0.5
    # the file fills half of the classifier: evaluation's "all of it" refuses it
    model, _ = build(["person", "head"])
    with pytest.raises(WeightsError, match="at least 100%"):
        load_state(model, coco_sd, source="coco.pt", min_coverage=1.0, class_remap=remap)


def test_without_remap_the_classifier_is_skipped_with_a_hint(coco_sd, caplog):
    model, _ = build(["person", "head"])
    with caplog.at_level(logging.WARNING, logger="crowdloss.engine"):
        summary = load_state(model, coco_sd, source="coco.pt")
    assert {m for m, *_ in summary.shape_skipped} == {"head.cls_score.weight",
                                                      "head.cls_score.bias"}
    assert "MODEL.WEIGHTS_CLASSES" in caplog.text


def test_wrong_source_list_is_an_error(coco_sd):
    model, _ = build(["person", "head"])
    with pytest.raises(ValueError, match=r"720 channels.*lists 79 classes.*711"):
        load_state(model, coco_sd, source="coco.pt",
                   class_remap=ClassRemap(tuple(COCO_CLASSES[:79]), ("person", "head")))
    with pytest.raises(ValueError, match="appears twice"):
        load_state(model, coco_sd, source="coco.pt",
                   class_remap=ClassRemap(tuple(COCO_CLASSES), ("person", "Person")))


def test_softmax_background_channel_is_copied():
    src = torch.arange(2 * 4, dtype=torch.float32).reshape(8, 1)  # A=2, K=3 + background
    model_state = {"head.cls_score.0.weight": torch.full((6, 1), -1.0)}  # A=2, K=2 + bg
    out, partial = remap_class_channels(
        {"cls_score.0.weight": src}, model_state,
        {"head.cls_score.0.weight": ClassChannels(2, 2, True)},
        ClassRemap(("a", "b", "c"), ("c", "new")))
    got = out["cls_score.0.weight"].reshape(2, 3)
    assert got.tolist() == [[2.0, -1.0, 3.0], [6.0, -1.0, 7.0]]  # c, fresh, background
    assert partial == {"head.cls_score.0.weight": 2 / 3}


def test_names_from_config(tmp_path):
    assert resolve_class_names(()) is None and resolve_class_names("") is None
    assert resolve_class_names(("coco",)) == tuple(COCO_CLASSES)  # an override "coco"
    (tmp_path / "c.csv").write_text("person,0\nhead,1\n")
    assert resolve_class_names([str(tmp_path / "c.csv")]) == ("person", "head")
    (tmp_path / "n.txt").write_text("a\nb\n")
    assert resolve_class_names(str(tmp_path / "n.txt")) == ("a", "b")
    cfg = PyTorchRetinaNetConfig()
    assert class_remap_from_config(cfg) is None
    cfg.MODEL.WEIGHTS_CLASSES = ("coco",)
    name = "test_remap_ds"
    MetadataCatalog.set(name, thing_classes=["person", "head"])
    try:
        cfg.DATASETS.TRAIN = (name,)
        remap = class_remap_from_config(cfg, "DATASETS.TRAIN")
        assert remap.target == ("person", "head") and len(remap.source) == 80
    finally:
        MetadataCatalog.remove(name)


@pytest.mark.slow
def test_pods_train_fine_tunes_a_coco_checkpoint_on_person_head_classes(tmp_path, monkeypatch):
    # The seed recipe end to end at R-18: a pytorch-retinanet COCO state dict in MODEL.WEIGHTS,
    # CSV data with COCO's classes + head, one iteration; the loader keeps 80 of 81 classes.
    from crowdloss.cli import train as pods_train
    from crowdloss.data.crowdhuman_csv import build_class_map, build_crowdhuman_csv
    from crowdloss.data.synthetic import generate_synthcrowd

    root = tmp_path / "datasets"
    ch = root / "crowdhuman"
    generate_synthcrowd(str(ch), num_train=2, num_val=1, seed=4, workers=1)
    for split in ("train", "val"):
        build_crowdhuman_csv(str(ch / "annotations" / f"annotation_{split}.odgt"),
                             str(ch / "Images"), str(ch / "csv" / f"{split}.csv"),
                             ignore="class")
    build_class_map(coco_names("darknet") + ["head"], str(ch / "csv" / "classes.csv"))
    weights = tmp_path / "coco_resnet_18.pt"
    torch.save(ref.state_dict(18, 80, seed=2), weights)
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(root))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    exp = (Path(__file__).resolve().parents[1] / "playground" / "detection" / "crowdhuman"
           / "retinanet.res18.fpn.crowdhuman.coco_ft.608size.750k")
    pods_train.run(["--dir", str(exp), "OUTPUT_DIR", str(out), "MODEL.WEIGHTS", str(weights),
                    "MODEL.DEVICE", "cpu", "SOLVER.LR_SCHEDULER.MAX_ITER", "1",
                    "DATALOADER.NUM_WORKERS", "0", "TEST.PLOT", "False",
                    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
                    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"])
    log = (out / "log.txt").read_text()
    assert "(format pytorch_retinanet)" in log
    assert "80 of the model's 81 classes kept from the checkpoint's 80" in log
    assert "new with the prior-probability init: head" in log
    assert "motorbike <- motorcycle" in log and "2 partly filled (classes remapped)" in log
    assert (out / "model_final.pth").is_file() and "Evaluation results for csv_val" in log
