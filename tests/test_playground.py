"""Every playground experiment loads by file path and its net.py builds the model.

The CrowdHuman (R-18 to R-152) and COCO ones are only built; the synthcrowd CPU ones also run
one train step and one eval pass on a small image.
"""
from pathlib import Path

import pytest
import torch

from crowdloss.cli.common import load_experiment
from crowdloss.modeling.meta_arch import ATSS, FCOS, LLAFCOS, LLARetinaNet, RetinaNet
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
    "synthcrowd/retinanet.res18.fpn.synthcrowd.person_head.256size.2600": RetinaNet,
    "coco/retinanet.res50.fpn.coco.608size.720k": RetinaNet,
    **{f"crowdhuman/retinanet.res{d}.fpn.crowdhuman.coco_ft.608size.750k": RetinaNet
       for d in (18, 34, 50, 101, 152)},
}
# The CrowdHuman seed's recipe (pytorch-retinanet network, CSV data, COCO start).
SEED_RECIPE = [r for r in EXPECTED if ".coco_ft." in r]


def test_every_experiment_dir_is_listed():
    found = {str(p.parent.relative_to(PLAYGROUND)) for p in PLAYGROUND.glob("*/*/config.py")}
    assert found == set(EXPECTED)
    for rel in EXPECTED:
        assert (PLAYGROUND / rel / "README.md").is_file(), rel


@pytest.mark.parametrize("rel", [r for r in EXPECTED if r.startswith("crowdhuman/")
                                 and r not in SEED_RECIPE])
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


@pytest.mark.parametrize("rel", SEED_RECIPE)
def test_crowdhuman_seed_recipe_builds(rel):
    exp = load_experiment(str(PLAYGROUND / rel))
    cfg = exp.config
    depth = int(rel.split(".res")[1].split(".")[0])
    assert cfg.MODEL.RESNETS.DEPTH == depth and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert cfg.MODEL.WEIGHTS.endswith(f"coco_resnet_{depth}" + ("_map_0_335" if depth == 50
                                                                  else "") + "_state_dict.pt")
    assert cfg.MODEL.WEIGHTS_CLASSES == ("coco",) and cfg.MODEL.RETINANET.NUM_CLASSES == 81
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == (("csv_train",), ("csv_val",))
    assert cfg.DATASETS.CSV.CLASSES == "crowdhuman/csv/classes.csv"
    opt = cfg.SOLVER.OPTIMIZER
    assert (opt.NAME, opt.BASE_LR, opt.WEIGHT_DECAY) == ("Adam", 1e-5, 0.0)
    clip = cfg.SOLVER.CLIP_GRADIENTS
    assert clip.ENABLED and (clip.CLIP_TYPE, clip.CLIP_VALUE) == ("norm", 0.1)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.IMS_PER_DEVICE) == (2, 2)
    assert cfg.SOLVER.REFERENCE_WORLD_SIZE == 1
    assert cfg.SOLVER.LR_SCHEDULER.MAX_ITER == 750000 and tuple(cfg.SOLVER.LR_SCHEDULER.STEPS) == ()
    assert cfg.TEST.PER_CLASS_AP == "retinanet_csv"
    resize = dict(cfg.INPUT.AUG.TEST_PIPELINES)["ResizeShortestEdge"]
    assert (resize["short_edge_length"], resize["max_size"]) == (608, 1024)
    model = exp.build_model(cfg)
    assert type(model) is RetinaNet and model.pad_mode == "always"
    assert model.head.cls_score.out_channels == 9 * 81


def test_coco_experiment_builds():
    exp = load_experiment(str(PLAYGROUND / "coco/retinanet.res50.fpn.coco.608size.720k"))
    cfg = exp.config
    assert (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) == (("coco_2017_train",), ("coco_2017_val",))
    assert cfg.MODEL.WEIGHTS == "https://download.pytorch.org/models/resnet50-19c8e357.pth"
    assert cfg.SOLVER.OPTIMIZER.NAME == "Adam" and cfg.SOLVER.LR_SCHEDULER.MAX_ITER == 720000
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100
    model = exp.build_model(cfg)
    assert type(model) is RetinaNet and model.head.cls_score.out_channels == 9 * 80


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
    assert cfg.DATASETS.TRAIN[0].startswith("synthcrowd_")
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


def _pick(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return repr(node)


def test_synthcrowd_experiments_share_one_schedule():
    # Identical backbone, head width, input, batch, LR and schedule: only the method differs.
    keys = [
        "MODEL.RESNETS", "MODEL.FPN", "MODEL.BACKBONE", "SOLVER", "INPUT", "DATALOADER",
        "MODEL.FCOS.NUM_CONVS", "MODEL.FCOS.HEAD_CHANNELS",
    ]
    cfgs = [load_experiment(str(PLAYGROUND / r)).config for r in EXPECTED
            if "synthcrowd" in r and "person_head" not in r]
    for key in keys:
        assert len({_pick(c, key) for c in cfgs}) == 1, key


def test_synthcrowd_person_head_has_the_same_size_and_schedule():
    # pytorch-retinanet's network (torchvision stride, P6 from C5, RGB input) at the size and
    # schedule of the others; only its gradient clipping differs (README.md).
    keys = ["MODEL.RESNETS.DEPTH", "MODEL.RESNETS.NORM", "MODEL.RESNETS.STEM_OUT_CHANNELS",
            "MODEL.RESNETS.RES2_OUT_CHANNELS", "MODEL.FPN.OUT_CHANNELS", "MODEL.BACKBONE",
            "INPUT.AUG", "DATALOADER", "SOLVER.LR_SCHEDULER", "SOLVER.OPTIMIZER.NAME",
            "SOLVER.OPTIMIZER.BASE_LR", "SOLVER.OPTIMIZER.WEIGHT_DECAY", "SOLVER.IMS_PER_BATCH",
            "SOLVER.IMS_PER_DEVICE", "SOLVER.REFERENCE_WORLD_SIZE", "SOLVER.CHECKPOINT_PERIOD",
            "SEED", "TEST.DETECTIONS_PER_IMAGE"]
    ours = load_experiment(str(PLAYGROUND / "synthcrowd/retinanet.res18.fpn.synthcrowd."
                                             "person_head.256size.2600")).config
    atss = load_experiment(str(PLAYGROUND / "synthcrowd/atss.res18.fpn.synthcrowd."
                                             "256size.2600")).config
    for key in keys:
        assert _pick(ours, key) == _pick(atss, key), key
    assert (ours.MODEL.RETINANET.NUM_CONVS, ours.MODEL.RETINANET.HEAD_CHANNELS) == (
        atss.MODEL.FCOS.NUM_CONVS, atss.MODEL.FCOS.HEAD_CHANNELS)
    assert ours.MODEL.RETINANET.NUM_CLASSES == 2 and ours.TEST.PER_CLASS_AP == "retinanet_csv"
