"""Faster R-CNN end to end: the model RCNNFPNConfig builds, a train step and an eval pass on a
tiny synthcrowd-like batch (odd sizes, an image without GT, one with only an ignore region),
a few steps that must lower the loss, and two-iteration pods_train runs of the synthcrowd
experiments (plain and with repulsion) on a generated synthcrowd."""
import json
from pathlib import Path

import pytest
import torch

from crowdloss.cli import train as pods_train
from crowdloss.config import RCNNFPNConfig
from crowdloss.data.synthetic import generate_synthcrowd
from crowdloss.modeling.backbone import LastLevelMaxPool
from crowdloss.modeling.meta_arch import GeneralizedRCNN
from crowdloss.structures import Instances

PLAYGROUND = Path(__file__).resolve().parents[1] / "playground" / "detection" / "synthcrowd"


# Small tensors and many small ops: one intra-op thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(small_batches=False, **repulsion):
    cfg = RCNNFPNConfig()
    cfg.MODEL.DEVICE = "cpu"
    m = cfg.MODEL
    m.RESNETS.DEPTH, m.RESNETS.NORM = 18, "BN"
    m.RESNETS.STEM_OUT_CHANNELS = m.RESNETS.RES2_OUT_CHANNELS = 16
    m.BACKBONE.FREEZE_AT = 0
    m.FPN.OUT_CHANNELS = 16
    m.ROI_HEADS.NUM_CLASSES = 1
    m.ROI_BOX_HEAD.FC_DIM = 32
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0, 2.0, 3.0]]
    for name, on in repulsion.items():
        m.REPULSION[name.upper()].ENABLED = on
    if small_batches:  # fewer proposals and ROIs: RoIAlign dominates a step on the CPU
        m.RPN.POST_NMS_TOPK_TRAIN, m.RPN.POST_NMS_TOPK_TEST = 300, 200
        m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 128
    return cfg


def sample(h, w, seed, boxes=((20, 10, 50, 90), (40, 15, 75, 95), (80, 5, 110, 40)),
           classes=(0, 0, -1), scale=1.0):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((h, w), gt_boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                     gt_classes=torch.tensor(classes, dtype=torch.long))
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    return {"image": image, "instances": inst, "height": round(h * scale),
            "width": round(w * scale)}


def test_model_layout_from_the_config_class():
    torch.manual_seed(0)
    model = GeneralizedRCNN.from_config(tiny_cfg())
    assert isinstance(model.backbone.top_block, LastLevelMaxPool)
    rpn, heads = model.proposal_generator, model.roi_heads
    assert rpn.in_features == ["p2", "p3", "p4", "p5", "p6"]
    assert rpn.anchor_generator.strides == [4, 8, 16, 32, 64]
    assert rpn.anchor_generator.cell_anchors[0][0].tolist() == [-16, -16, 16, 16]  # ratio 1
    assert rpn.rpn_head.objectness_logits.out_channels == 3
    assert (rpn.pre_nms_topk, rpn.post_nms_topk) == ({True: 2000, False: 1000},
                                                     {True: 1000, False: 1000})
    assert rpn.nms_thresh == 0.7 and rpn.batch_size_per_image == 256
    assert heads.in_features == ["p2", "p3", "p4", "p5"]
    assert heads.box_pooler.scales == (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    assert heads.box_pooler.sampling_ratio == 0 and heads.box_pooler.aligned
    assert (heads.box_pooler.canonical_box_size, heads.box_pooler.canonical_level) == (224, 4)
    assert heads.box_head.fc1.in_features == 16 * 7 * 7
    assert (heads.batch_size_per_image, heads.positive_fraction) == (512, 0.25)
    assert (heads.score_thresh_test, heads.nms_thresh_test) == (0.05, 0.5)
    assert heads.detections_per_image == 100 and heads.repulsion is None


@pytest.mark.parametrize("repulsion", [False, True])
def test_train_step_and_eval_on_a_tiny_batch(repulsion):
    torch.manual_seed(0)
    model = GeneralizedRCNN.from_config(tiny_cfg(True, repgt=repulsion, repbox=repulsion))
    model.train()
    batch = [sample(97, 113, 0), sample(75, 130, 1, boxes=(), classes=()),
             sample(81, 64, 2, boxes=((10, 10, 60, 70),), classes=(-1,))]
    losses = model(batch)
    expected = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    if repulsion:
        expected |= {"loss_repgt", "loss_repbox"}
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for p in (model.proposal_generator.rpn_head.conv.weight,
              model.roi_heads.box_predictor.bbox_pred.weight,
              model.roi_heads.box_head.fc1.weight, model.backbone.fpn_output2.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([sample(97, 113, 3, scale=2.0), sample(75, 130, 4)])
    for o, (h, w) in zip(out, [(194, 226), (75, 130)]):
        det = o["instances"]
        assert det.image_size == (h, w) and len(det) <= 100
        assert bool((det.scores > 0.05).all()) and bool((det.pred_classes == 0).all())
        boxes = det.pred_boxes
        assert bool((boxes >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all())


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = GeneralizedRCNN.from_config(tiny_cfg(True))
    model.train()
    batch = [sample(64, 96, 0)]
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    totals = []
    for _ in range(15):
        losses = model(batch)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(float(total.detach()))
    assert sum(totals[-3:]) / 3 < 0.6 * sum(totals[:3]) / 3, totals


@pytest.fixture(scope="module")
def synthcrowd(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_synthcrowd(str(root / "synthcrowd"), num_train=4, num_val=2, seed=3, workers=1)
    return root


@pytest.mark.parametrize("exp", ["faster_rcnn.res18.fpn.synthcrowd.256size.2600",
                                 "faster_rcnn.repgt_repbox.res18.fpn.synthcrowd.256size.2600"])
def test_pods_train_two_iterations(exp, synthcrowd, tmp_path, monkeypatch):
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(synthcrowd))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    link = PLAYGROUND / exp / "log"
    try:
        pods_train.run(["--dir", str(PLAYGROUND / exp), "OUTPUT_DIR", str(out),
                        "SOLVER.LR_SCHEDULER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
                        "SOLVER.IMS_PER_DEVICE", "2", "DATALOADER.NUM_WORKERS", "0",
                        "TEST.PLOT", "False", "TEST.EVAL_PERIOD", "0"])  # evaluate in training
    finally:  # the run links <experiment>/log to its OUTPUT_DIR: leave no link into tmp
        if link.is_symlink() and Path(link.readlink()) == out:
            link.unlink()
    assert (out / "model_final.pth").is_file()
    log = (out / "log.txt").read_text()
    assert "Evaluation results for" in log and "never read" not in log
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [r for r in rows if "total_loss" in r]
    assert losses and all(0 < r["total_loss"] < 100 for r in losses)
    assert ("loss_repgt" in losses[-1] and "loss_repbox" in losses[-1]) == ("repgt" in exp)
    assert "loss_rpn_cls" in losses[-1] and "loss_box_reg" in losses[-1]
