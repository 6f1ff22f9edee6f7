"""Every playground experiment loads by file path and its net.py builds the model.

The CrowdHuman (R-50/R-101) ones are only built; the synthcrowd CPU ones also run one train
step and one eval pass on a small image. The Faster R-CNN ones' own values are checked in
test_playground_rcnn.py.
"""
from pathlib import Path

import pytest
import torch

from crowdloss.cli.common import load_experiment
from crowdloss.modeling.meta_arch import (ATSS, FCOS, LLAFCOS, GeneralizedRCNN, LLARetinaNet,
                                          RetinaNet)
from crowdloss.structures import Instances

PLAYGROUND = Path(__file__).resolve().parents[1] / "playground" / "detection"
EXPECTED = {
    "crowdhuman/fcos.res50.fpn.crowdhuman.800size.30k": FCOS,
    "crowdhuman/atss.res50.fpn.crowdhuman.800size.30k": ATSS,
    "crowdhuman/retinanet.res50.fpn.crowdhuman.800size.30k": RetinaNet,
    "crowdhuman/lla.res50.fpn.crowdhuman.800size.30k": LLAFCOS,
    "crowdhuman/lla.res101.fpn.crowdhuman.800size.30k": LLAFCOS,
    "crowdhuman/lla.retinanet.res50.fpn.crowdhuman.800size.30k": LLARetinaNet,
    "synthcrowd/lla.res18.fpn.synthcrowd.256size.2600": LLAFCOS,
    "synthcrowd/fcos.res18.fpn.synthcrowd.256size.2600": FCOS,
    "synthcrowd/atss.res18.fpn.synthcrowd.256size.2600": ATSS,
    "crowdhuman/faster_rcnn.res50.fpn.crowdhuman.800size.1x": GeneralizedRCNN,
    "crowdhuman/faster_rcnn.repgt_repbox.res50.fpn.crowdhuman.800size.1x": GeneralizedRCNN,
    "synthcrowd/faster_rcnn.res18.fpn.synthcrowd.256size.2600": GeneralizedRCNN,
    "synthcrowd/faster_rcnn.repgt_repbox.res18.fpn.synthcrowd.256size.2600": GeneralizedRCNN,
}


def _dense(prefix):
    """The one-stage experiments under ``prefix`` (the checks below use their head keys)."""
    return [r for r in EXPECTED if r.startswith(prefix) and EXPECTED[r] is not GeneralizedRCNN]


def test_every_experiment_dir_is_listed():
    found = {str(p.parent.relative_to(PLAYGROUND)) for p in PLAYGROUND.glob("*/*/config.py")}
    assert found == set(EXPECTED)
    for rel in EXPECTED:
        assert (PLAYGROUND / rel / "README.md").is_file(), rel


@pytest.mark.parametrize("rel", _dense("crowdhuman/"))
def test_crowdhuman_experiment_builds(rel):
    exp = load_experiment(str(PLAYGROUND / rel))
    cfg = exp.config
    assert cfg.DATASETS.TRAIN == ("crowdhuman_train",)
    assert cfg.DATASETS.TEST == ("crowdhuman_val",)
    assert cfg.MODEL.WEIGHTS.startswith("detectron2://ImageNetPretrained/MSRA/R-")
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.IMS_PER_DEVICE == 2
    assert cfg.SOLVER.OPTIMIZER.BASE_LR == 0.01
    assert cfg.SOLVER.LR_SCHEDULER.MAX_ITER == 28125
    expected_steps = (18750, 24735) if rel.split("/")[1].startswith("lla") else (18750, 24375)
    assert tuple(cfg.SOLVER.LR_SCHEDULER.STEPS) == expected_steps
    assert cfg.SOLVER.CHECKPOINT_PERIOD == 5000 and cfg.TEST.EVAL_PERIOD == 0
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300
    head = cfg.MODEL.RETINANET if "retinanet" in rel else cfg.MODEL.FCOS
    assert head.NUM_CLASSES == 1 and head.NMS_THRESH_TEST == 0.6
    resize = dict(cfg.INPUT.AUG.TEST_PIPELINES)["ResizeShortestEdge"]
    assert resize["short_edge_length"] == 800 and resize["max_size"] == 1400
    model = exp.build_model(cfg)
    assert type(model) is EXPECTED[rel]
    depth = 101 if "res101" in rel else 50
    assert cfg.MODEL.RESNETS.DEPTH == depth


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
    # No device in the config: the launch picks it (CUDA when there are GPUs, else CPU).
    assert "DEVICE" not in cfg.diff_from_parent().get("MODEL", {}) and cfg.MODEL.WEIGHTS == ""
    cfg.MODEL.DEVICE = "cpu"  # what pods_train decides on this test's CPU
    assert cfg.SOLVER.IMS_PER_BATCH // cfg.SOLVER.IMS_PER_DEVICE == cfg.SOLVER.REFERENCE_WORLD_SIZE
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.RESNETS.NORM in ("BN", "GN")
    assert cfg.DATASETS.TRAIN == ("synthcrowd_train",)
    torch.manual_seed(0)
    model = exp.build_model(cfg)
    assert type(model) is EXPECTED[rel]
    model.train()
    losses = model([_synth_input(97, 113, 0), _synth_input(96, 120, 1)])
    total = sum(losses.values())
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
        "MODEL.FCOS.NUM_CONVS", "MODEL.FCOS.HEAD_CHANNELS",
    ]

    def pick(cfg, key):
        node = cfg
        for part in key.split("."):
            node = node[part]
        return repr(node)

    cfgs = [load_experiment(str(PLAYGROUND / r)).config for r in _dense("synthcrowd/")]
    for key in keys:
        assert len({pick(c, key) for c in cfgs}) == 1, key
    # The two-stage ones share everything but the detector (their FPN starts at res2).
    rcnn = [load_experiment(str(PLAYGROUND / r)).config for r in EXPECTED
            if r.startswith("synthcrowd/") and EXPECTED[r] is GeneralizedRCNN]
    shared = ["MODEL.BACKBONE", "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.NORM",
              "MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.RESNETS.RES2_OUT_CHANNELS",
              "MODEL.FPN.OUT_CHANNELS", "MODEL.WEIGHTS", "SOLVER", "INPUT", "DATALOADER",
              "DATASETS", "SEED", "TEST.DETECTIONS_PER_IMAGE"]
    for key in shared:
        assert len({pick(c, key) for c in cfgs + rcnn}) == 1, key
