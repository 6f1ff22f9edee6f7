"""Every playground experiment loads by file path and its net.py builds the model.

The CrowdHuman (R-50/R-101) and COCO (R-101/X-101) ones are only built; the synthcrowd CPU
ones also run one train step and one eval pass on a small image.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from crowdloss.cli.common import load_experiment
from crowdloss.data import Annotations
from crowdloss.data.mapper import DatasetMapper
from crowdloss.data.transforms import build_transforms
from crowdloss.modeling.meta_arch import (ALRPLossRetinaNet, APLossRetinaNet, ATSS, FCOS,
                                          LLAFCOS, LLARetinaNet, RetinaNet)
from crowdloss.structures import Instances

PLAYGROUND = Path(__file__).resolve().parents[1] / "playground" / "detection"
EXPECTED = {
    "crowdhuman/fcos.res50.fpn.crowdhuman.800size.30k": FCOS,
    "crowdhuman/atss.res50.fpn.crowdhuman.800size.30k": ATSS,
    "crowdhuman/retinanet.res50.fpn.crowdhuman.800size.30k": RetinaNet,
    "crowdhuman/lla.res50.fpn.crowdhuman.800size.30k": LLAFCOS,
    "crowdhuman/lla.res101.fpn.crowdhuman.800size.30k": LLAFCOS,
    "crowdhuman/lla.retinanet.res50.fpn.crowdhuman.800size.30k": LLARetinaNet,
    "crowdhuman/alrp_loss.res50.fpn.crowdhuman.800size.30k": ALRPLossRetinaNet,
    "coco/alrp_loss.res101.fpn.coco.500size.160e": ALRPLossRetinaNet,
    "coco/alrp_loss.res101.fpn.coco.800size.100e": ALRPLossRetinaNet,
    "coco/alrp_loss.x101_32x8d.fpn.coco.500size.100e": ALRPLossRetinaNet,
    "coco/alrp_loss.x101_32x8d.fpn.coco.800size.100e": ALRPLossRetinaNet,
    "coco/ap_loss.res101.fpn.coco.500size.100e": APLossRetinaNet,
    "coco/ap_loss.res101.fpn.coco.800size.100e": APLossRetinaNet,
    "synthcrowd/lla.res18.fpn.synthcrowd.256size.2600": LLAFCOS,
    "synthcrowd/fcos.res18.fpn.synthcrowd.256size.2600": FCOS,
    "synthcrowd/atss.res18.fpn.synthcrowd.256size.2600": ATSS,
    "synthcrowd/retinanet.res18.fpn.synthcrowd.256size.2600": RetinaNet,
    "synthcrowd/ap_loss.res18.fpn.synthcrowd.256size.2600": APLossRetinaNet,
    "synthcrowd/alrp_loss.res18.fpn.synthcrowd.256size.2600": ALRPLossRetinaNet,
}
# The public aLRP Loss code's settings: (images per iteration, per GPU, LR, epochs, LR steps).
COCO_SCHEDULES = {
    "coco/alrp_loss.res101.fpn.coco.500size.160e": (32, 8, 0.008, 160, (90, 110, 140)),
    "coco/alrp_loss.res101.fpn.coco.800size.100e": (16, 4, 0.004, 100, (60, 80)),
    "coco/alrp_loss.x101_32x8d.fpn.coco.500size.100e": (32, 8, 0.008, 100, (75, 95)),
    "coco/alrp_loss.x101_32x8d.fpn.coco.800size.100e": (16, 4, 0.004, 100, (60, 80)),
    "coco/ap_loss.res101.fpn.coco.500size.100e": (32, 8, 0.002, 100, (60, 80)),
    "coco/ap_loss.res101.fpn.coco.800size.100e": (16, 4, 0.001, 100, (60, 80)),
}


def test_every_experiment_dir_is_listed():
    found = {str(p.parent.relative_to(PLAYGROUND)) for p in PLAYGROUND.glob("*/*/config.py")}
    assert found == set(EXPECTED)
    for rel in EXPECTED:
        assert (PLAYGROUND / rel / "README.md").is_file(), rel


@pytest.mark.parametrize("rel", [r for r in EXPECTED if r.startswith("crowdhuman/")])
def test_crowdhuman_experiment_builds(rel):
    exp = load_experiment(str(PLAYGROUND / rel))
    cfg = exp.config
    assert cfg.DATASETS.TRAIN == ("crowdhuman_train",)
    assert cfg.DATASETS.TEST == ("crowdhuman_val",)
    assert cfg.MODEL.WEIGHTS.startswith("detectron2://ImageNetPretrained/MSRA/R-")
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.IMS_PER_DEVICE == 2
    # aLRP Loss takes the public code's LR per image (0.008 for 32 images).
    assert cfg.SOLVER.OPTIMIZER.BASE_LR == (0.004 if "alrp" in rel else 0.01)
    assert cfg.SOLVER.LR_SCHEDULER.MAX_ITER == 28125
    expected_steps = (18750, 24735) if rel.split("/")[1].startswith("lla") else (18750, 24375)
    assert tuple(cfg.SOLVER.LR_SCHEDULER.STEPS) == expected_steps
    assert cfg.SOLVER.CHECKPOINT_PERIOD == 5000 and cfg.TEST.EVAL_PERIOD == 0
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300
    head = cfg.MODEL.RETINANET if issubclass(EXPECTED[rel], RetinaNet) else cfg.MODEL.FCOS
    assert head.NUM_CLASSES == 1 and head.NMS_THRESH_TEST == 0.6
    resize = dict(cfg.INPUT.AUG.TEST_PIPELINES)["ResizeShortestEdge"]
    assert resize["short_edge_length"] == 800 and resize["max_size"] == 1400
    model = exp.build_model(cfg)
    assert type(model) is EXPECTED[rel]
    depth = 101 if "res101" in rel else 50
    assert cfg.MODEL.RESNETS.DEPTH == depth


@pytest.mark.parametrize("rel", [r for r in EXPECTED if r.startswith("coco/")])
def test_coco_experiment_builds_with_the_public_settings(rel):
    exp = load_experiment(str(PLAYGROUND / rel))
    cfg = exp.config
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.DATASETS.TEST == ("coco_2017_val",)
    batch, per_device, lr, epochs, steps = COCO_SCHEDULES[rel]
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.IMS_PER_DEVICE, s.REFERENCE_WORLD_SIZE) == (batch, per_device, 4)
    assert s.OPTIMIZER.BASE_LR == lr
    epoch = -(-117266 // batch)  # train2017 images with boxes, rounded up
    assert s.LR_SCHEDULER.MAX_ITER == epochs * epoch
    assert tuple(s.LR_SCHEDULER.STEPS) == tuple(e * epoch for e in steps)
    assert (s.LR_SCHEDULER.WARMUP_ITERS, s.LR_SCHEDULER.WARMUP_FACTOR) == (500, 1.0 / 3)
    size = 500 if "500size" in rel else 800
    train = build_transforms(cfg.INPUT.AUG.TRAIN_PIPELINES)
    names = [type(t).__name__ for t in train.transforms]
    assert names == ["PhotometricDistort", "LightingNoise", "Expand", "MinIoURandomCrop",
                     "RandomFlip", "Resize"]
    square = {500: 512, 800: 800}[size]  # "500" trains on 512 x 512 squares
    resize = train.transforms[-1]
    assert (resize.height, resize.width, len(resize.interp)) == (square, square, 5)
    crop = train.transforms[3]
    assert crop.modes[2:] == (0.1, 0.3, 0.7, 0.9) and crop.iou_rule == "any"
    DatasetMapper(cfg, True)  # the colour transforms' channel order matches INPUT.FORMAT
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    annos = Annotations(np.array([[10, 20, 60, 100], [0, 0, 30, 30]], dtype=np.float32),
                        np.array([3, -1]))
    for _ in range(5):
        out, _ = train(image, annos, rng)
        assert out.shape == (square, square, 3) and out.dtype == np.uint8
    resize = dict(cfg.INPUT.AUG.TEST_PIPELINES)["ResizeShortestEdge"]
    assert (resize["short_edge_length"], resize["max_size"]) == (size, {500: 833, 800: 1333}[size])
    r = cfg.MODEL.RETINANET
    assert r.NUM_CLASSES == 80 and tuple(r.BBOX_REG_WEIGHTS) == (10.0, 10.0, 5.0, 5.0)
    x101 = "x101" in rel
    assert (cfg.MODEL.RESNETS.NUM_GROUPS, cfg.INPUT.FORMAT) == ((32, "RGB") if x101 else (1, "BGR"))
    if "alrp" in rel:
        assert cfg.MODEL.ALRP.SB_PERIOD == epoch and cfg.MODEL.ALRP.SB_INIT == 50.0
        assert cfg.TEST.COCO_SUBMISSION_NAME == "aLRPLoss"
    else:
        assert cfg.TEST.COCO_SUBMISSION_NAME == "APLoss"
    model = exp.build_model(cfg)
    assert type(model) is EXPECTED[rel] and model.prior_generator.num_anchors == 6


def _synth_input(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    inst = Instances(
        (h, w),
        gt_boxes=torch.tensor([[20.0, 10.0, 50.0, 90.0], [40.0, 15.0, 75.0, 95.0],
                               [80.0, 5.0, 110.0, 40.0]]),
        gt_classes=torch.tensor([0, 0, -1]),
    )
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    return {"image": image, "instances": inst, "height": h, "width": w}


@pytest.mark.parametrize("rel", [r for r in EXPECTED if r.startswith("synthcrowd/")])
def test_synthcrowd_experiment_trains_one_step(rel):
    exp = load_experiment(str(PLAYGROUND / rel))
    cfg = exp.config
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.WEIGHTS == ""
    assert cfg.SOLVER.IMS_PER_BATCH // cfg.SOLVER.IMS_PER_DEVICE == cfg.SOLVER.REFERENCE_WORLD_SIZE
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.RESNETS.NORM in ("BN", "GN")
    assert cfg.DATASETS.TRAIN == ("synthcrowd_train",)
    torch.manual_seed(0)
    model = exp.build_model(cfg)
    assert type(model) is EXPECTED[rel]
    model.train()
    losses = model([_synth_input(97, 113, 0), _synth_input(96, 120, 1)])
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model([_synth_input(97, 113, 2)])
    assert len(out[0]["instances"]) <= cfg.TEST.DETECTIONS_PER_IMAGE


def test_synthcrowd_experiments_share_one_schedule():
    # Identical backbone, head width, input, batch, LR and schedule: only the method differs.
    keys = [
        "MODEL.RESNETS", "MODEL.FPN", "MODEL.BACKBONE", "SOLVER", "INPUT", "DATALOADER",
        "HEAD.NUM_CONVS", "HEAD.HEAD_CHANNELS", "SEED",
    ]
    cfgs = {r: load_experiment(str(PLAYGROUND / r)).config for r in EXPECTED if "synthcrowd" in r}

    def pick(rel, key):
        node = cfgs[rel]
        if key.startswith("HEAD."):  # the head's own section
            retina = issubclass(EXPECTED[rel], RetinaNet)
            node, key = (node.MODEL.RETINANET if retina else node.MODEL.FCOS), key[5:]
        for part in key.split("."):
            node = node[part]
        return repr(node)

    for key in keys:
        assert len({pick(r, key) for r in cfgs}) == 1, key
    # The RetinaNet ones (focal / AP Loss / aLRP Loss) also share anchors, assigner and head.
    retina = [r for r in cfgs if issubclass(EXPECTED[r], RetinaNet)]
    assert len(retina) == 3
    for key in ["MODEL.ANCHOR_GENERATOR", "HEAD.IOU_THRESHOLDS", "HEAD.IOU_LABELS",
                "HEAD.ALLOW_LOW_QUALITY_MATCHES", "HEAD.IGNORE_IOA_THRESH", "HEAD.PRIOR_PROB",
                "HEAD.NMS_THRESH_TEST", "HEAD.SCORE_THRESH_TEST", "HEAD.TOPK_CANDIDATES_TEST"]:
        assert len({pick(r, key) for r in retina}) == 1, key
