"""Every playground experiment loads by file path and its net.py builds the model.

The CrowdHuman, COCO and VOC ones are only built (the CrowdHuman RetinaNet seed recipe at
R-18 to R-152); the synthcrowd CPU ones also run one train step and one eval pass on a small
image. The Faster R-CNN ones' own values are checked in test_playground_rcnn.py.
"""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from crowdloss.cli.common import load_experiment
from crowdloss.config import (rescale_for_world_size, synthcrowd_reference_config,
                              synthcrowd_solver)
from crowdloss.data import Annotations
from crowdloss.data.mapper import DatasetMapper
from crowdloss.data.transforms import build_transforms
from crowdloss.modeling.losses import RepBoxLoss, RepGTLoss
from crowdloss.modeling.meta_arch import (ALRPLossRetinaNet, APLossRetinaNet, ATSS, FCOS,
                                          GeneralizedRCNN, LLAFCOS, SSD, LLARetinaNet,
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
    "synthcrowd/lla.res18.fpn.synthcrowd.256size.5200": LLAFCOS,
    "synthcrowd/fcos.res18.fpn.synthcrowd.256size.5200": FCOS,
    "synthcrowd/atss.res18.fpn.synthcrowd.256size.5200": ATSS,
    "synthcrowd/lla.repgt.res18.fpn.synthcrowd.256size.2600": LLAFCOS,
    "synthcrowd/lla.boxbias.res18.fpn.synthcrowd.256size.2600": LLAFCOS,
    "synthcrowd/fcos.boxbias.res18.fpn.synthcrowd.256size.2600": FCOS,
    "synthcrowd/atss.boxbias.res18.fpn.synthcrowd.256size.2600": ATSS,
    "synthcrowd/ssd300.vgg16q.synthcrowd.300size.2600": SSD,
    "synthcrowd/ssd300.repgt_repbox.vgg16q.synthcrowd.300size.2600": SSD,
    "voc/ssd300.vgg16.voc0712.300size.120k": SSD,
    "voc/ssd300.repgt.vgg16.voc0712.300size.120k": SSD,
    "voc/ssd300.repgt_repbox.vgg16.voc0712.300size.120k": SSD,
    "voc/ssd512.vgg16.voc0712.512size.120k": SSD,
    "crowdhuman/ssd512.repgt_repbox.vgg16.crowdhuman.512size.120k": SSD,
    "synthcrowd/retinanet.res18.fpn.synthcrowd.256size.2600": RetinaNet,
    "synthcrowd/ap_loss.res18.fpn.synthcrowd.256size.2600": APLossRetinaNet,
    "synthcrowd/alrp_loss.res18.fpn.synthcrowd.256size.2600": ALRPLossRetinaNet,
    "crowdhuman/faster_rcnn.res50.fpn.crowdhuman.800size.1x": GeneralizedRCNN,
    "crowdhuman/faster_rcnn.repgt_repbox.res50.fpn.crowdhuman.800size.1x": GeneralizedRCNN,
    "synthcrowd/faster_rcnn.res18.fpn.synthcrowd.256size.2600": GeneralizedRCNN,
    "synthcrowd/faster_rcnn.repgt_repbox.res18.fpn.synthcrowd.256size.2600": GeneralizedRCNN,
    "synthcrowd/retinanet.res18.fpn.synthcrowd.person_head.256size.2600": RetinaNet,
    "coco/retinanet.res50.fpn.coco.608size.720k": RetinaNet,
    **{f"crowdhuman/retinanet.res{d}.fpn.crowdhuman.coco_ft.608size.750k": RetinaNet
       for d in (18, 34, 50, 101, 152)},
}
# The CrowdHuman seed's recipe (pytorch-retinanet network, CSV data, COCO start).
SEED_RECIPE = [r for r in EXPECTED if ".coco_ft." in r]
# The public aLRP Loss code's settings: (images per iteration, per GPU, LR, epochs, LR steps).
COCO_SCHEDULES = {
    "coco/alrp_loss.res101.fpn.coco.500size.160e": (32, 8, 0.008, 160, (90, 110, 140)),
    "coco/alrp_loss.res101.fpn.coco.800size.100e": (16, 4, 0.004, 100, (60, 80)),
    "coco/alrp_loss.x101_32x8d.fpn.coco.500size.100e": (32, 8, 0.008, 100, (75, 95)),
    "coco/alrp_loss.x101_32x8d.fpn.coco.800size.100e": (16, 4, 0.004, 100, (60, 80)),
    "coco/ap_loss.res101.fpn.coco.500size.100e": (32, 8, 0.002, 100, (60, 80)),
    "coco/ap_loss.res101.fpn.coco.800size.100e": (16, 4, 0.001, 100, (60, 80)),
}
# An experiment that only adds repulsion terms to another: {variant: base}.
REPULSION_VARIANTS = {
    "synthcrowd/lla.repgt.res18.fpn.synthcrowd.256size.2600":
        "synthcrowd/lla.res18.fpn.synthcrowd.256size.2600",
    "synthcrowd/ssd300.repgt_repbox.vgg16q.synthcrowd.300size.2600":
        "synthcrowd/ssd300.vgg16q.synthcrowd.300size.2600",
    "voc/ssd300.repgt.vgg16.voc0712.300size.120k": "voc/ssd300.vgg16.voc0712.300size.120k",
    "voc/ssd300.repgt_repbox.vgg16.voc0712.300size.120k": "voc/ssd300.vgg16.voc0712.300size.120k",
}


def _family(prefix, ssd):
    """The one-stage experiments under ``prefix``: the SSD ones, or the ResNet-FPN ones."""
    return [r for r in EXPECTED if r.startswith(prefix) and EXPECTED[r] is not GeneralizedRCNN
            and (EXPECTED[r] is SSD) == ssd]


def _rcnn(prefix):
    """The two-stage experiments under ``prefix`` (test_playground_rcnn.py checks their values)."""
    return [r for r in EXPECTED if r.startswith(prefix) and EXPECTED[r] is GeneralizedRCNN]


def test_every_experiment_dir_is_listed():
    found = {str(p.parent.relative_to(PLAYGROUND)) for p in PLAYGROUND.glob("*/*/config.py")}
    assert found == set(EXPECTED)
    for rel in EXPECTED:
        assert (PLAYGROUND / rel / "README.md").is_file(), rel


@pytest.mark.parametrize("rel", [r for r in _family("crowdhuman/", ssd=False)
                                 if r not in SEED_RECIPE])
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


@pytest.mark.parametrize("rel", sorted(COCO_SCHEDULES))
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


def test_coco_retinanet_experiment_builds():
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


@pytest.mark.parametrize("rel", _family("synthcrowd/", ssd=False) + _rcnn("synthcrowd/"))
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
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert torch.isfinite(total)
    assert ("loss_repgt" in losses) == cfg.MODEL.REPULSION.REPGT.ENABLED
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
        "HEAD.NUM_CONVS", "HEAD.HEAD_CHANNELS", "SEED",
    ]
    # The 5200-iteration reference three are their 2600 siblings trained longer (next test).
    cfgs = {r: load_experiment(str(PLAYGROUND / r)).config for r in EXPECTED
            if "synthcrowd" in r and not r.endswith(".5200")}

    def pick(rel, key):
        node = cfgs[rel]
        if key.startswith("HEAD."):  # the head's own section
            retina = issubclass(EXPECTED[rel], RetinaNet)
            node, key = (node.MODEL.RETINANET if retina else node.MODEL.FCOS), key[5:]
        for part in key.split("."):
            node = node[part]
        return repr(node)

    fpn = [r for r in _family("synthcrowd/", False) if r in cfgs and "person_head" not in r]
    for key in keys:
        assert len({pick(r, key) for r in fpn}) == 1, key
    # The RetinaNet ones (focal / AP Loss / aLRP Loss) also share anchors, assigner and head.
    retina = [r for r in fpn if issubclass(EXPECTED[r], RetinaNet)]
    assert len(retina) == 3
    for key in ["MODEL.ANCHOR_GENERATOR", "HEAD.IOU_THRESHOLDS", "HEAD.IOU_LABELS",
                "HEAD.ALLOW_LOW_QUALITY_MATCHES", "HEAD.IGNORE_IOA_THRESH", "HEAD.PRIOR_PROB",
                "HEAD.NMS_THRESH_TEST", "HEAD.SCORE_THRESH_TEST", "HEAD.TOPK_CANDIDATES_TEST"]:
        assert len({pick(r, key) for r in retina}) == 1, key
    # The SSD ones share their model and input, and every synthcrowd experiment the solver,
    # seed, datasets and detections per image.
    ssd = _family("synthcrowd/", True)
    for key in ("MODEL.VGG", "MODEL.SSD", "INPUT", "DATALOADER"):
        assert len({pick(r, key) for r in ssd}) == 1, key
    for key in ("SOLVER", "SEED", "DATASETS", "TEST.DETECTIONS_PER_IMAGE"):
        assert len({pick(r, key) for r in fpn + ssd}) == 1, key
    # The two-stage ones share everything but the detector (their FPN starts at res2).
    rcnn = _rcnn("synthcrowd/")
    shared = ["MODEL.BACKBONE", "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.NORM",
              "MODEL.RESNETS.STEM_OUT_CHANNELS", "MODEL.RESNETS.RES2_OUT_CHANNELS",
              "MODEL.FPN.OUT_CHANNELS", "MODEL.WEIGHTS", "SOLVER", "INPUT", "DATALOADER",
              "DATASETS", "SEED", "TEST.DETECTIONS_PER_IMAGE"]
    for key in shared:
        assert len({pick(r, key) for r in fpn + rcnn}) == 1, key
    # That solver is synthcrowd_solver()'s, the person + head experiment's included.
    assert {pick(r, "SOLVER") for r in cfgs} == {pick(fpn[0], "SOLVER")}
    _assert_solver(cfgs[fpn[0]].SOLVER, synthcrowd_solver())


def _assert_solver(solver, expected):
    for section, values in expected.items():
        for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
            got = solver[section] if key is None else solver[section][key]
            assert got == value, (section, key)


def _assert_variant_of(variant_rel, base_rel, overrides, *, max_tol):
    """``variant_rel``'s config is ``base_rel``'s with ``overrides`` merged, key for key, but for
    its band (the runs' fingerprint leaves it out), which covers the four CrowdHuman metrics.
    Returns the variant's config (band cleared) and the two bands (variant's, base's)."""
    variant = copy.deepcopy(load_experiment(str(PLAYGROUND / variant_rel)).config)
    base = copy.deepcopy(load_experiment(str(PLAYGROUND / base_rel)).config)
    base.merge_from_list(overrides)
    band = {metric: (mean, tol) for _, _, metric, mean, tol in variant.TEST.EXPECTED_RESULTS}
    assert set(band) == {"AP", "mMR", "Recall", "JI"}
    assert all(0 < mean < 1 and 0.01 <= tol < max_tol for mean, tol in band.values())
    bands = (variant.TEST.EXPECTED_RESULTS, base.TEST.EXPECTED_RESULTS)
    variant.TEST.EXPECTED_RESULTS = base.TEST.EXPECTED_RESULTS = []
    assert variant.dump() == base.dump()
    return variant, bands


@pytest.mark.parametrize("method", ["lla", "fcos", "atss"])
def test_synthcrowd_comparison_schedule_is_the_2600_experiment_trained_twice_as_long(method):
    # Key for key the runs of the README's 5200-iteration table: the 2600 experiment with the
    # runner's overrides; only the band differs.
    rel = f"synthcrowd/{method}.res18.fpn.synthcrowd.256size"
    long, (long_band, short_band) = _assert_variant_of(
        f"{rel}.5200", f"{rel}.2600", ["SOLVER.LR_SCHEDULER.MAX_ITER", "5200",
                                       "SOLVER.LR_SCHEDULER.STEPS", "(4000,4840)",
                                       "MODEL.CHANNELS_LAST", "True"], max_tol=0.05)
    assert long_band != short_band
    _assert_solver(long.SOLVER, synthcrowd_solver(max_iter=5200))


@pytest.mark.parametrize("method", ["lla", "fcos", "atss"])
def test_synthcrowd_box_bias_experiment_is_the_reference_with_its_boxes_started_alive(method):
    # Key for key the runs of the box-bias table: the reference experiment with the runner's
    # overrides; only the band differs.
    rel = f"synthcrowd/{method}{{}}.res18.fpn.synthcrowd.256size.2600"
    base = load_experiment(str(PLAYGROUND / rel.format(""))).config
    assert base.MODEL.FCOS.BBOX_BIAS_INIT == 0.0  # the reference stays the published method
    _assert_variant_of(rel.format(".boxbias"), rel.format(""),
                       ["MODEL.CHANNELS_LAST", "True", "MODEL.FCOS.BBOX_BIAS_INIT", "1.0"],
                       max_tol=0.1)


def test_synthcrowd_solver_lengths():
    assert synthcrowd_solver()["LR_SCHEDULER"]["STEPS"] == (2000, 2420)
    solver = synthcrowd_solver(max_iter=5200)
    schedule = solver["LR_SCHEDULER"]
    assert (schedule["MAX_ITER"], schedule["STEPS"]) == (5200, (4000, 4840))
    assert solver["LR_SCHEDULER"]["WARMUP_ITERS"] == 100 and solver["OPTIMIZER"]["BASE_LR"] == 0.02
    with pytest.raises(ValueError, match="max_iter must be one of"):
        synthcrowd_solver(max_iter=3000)
    with pytest.raises(ValueError, match="method must be one of"):
        synthcrowd_reference_config(method="retinanet")


@pytest.mark.parametrize("variant", sorted(REPULSION_VARIANTS))
def test_repulsion_variants_differ_only_in_repulsion(variant):
    cfg = load_experiment(str(PLAYGROUND / variant)).config
    base = load_experiment(str(PLAYGROUND / REPULSION_VARIANTS[variant])).config
    r = cfg.MODEL.REPULSION
    assert r.REPGT.ENABLED and (r.REPGT.WEIGHT, r.REPGT.SIGMA) == (0.5, 1.0)
    assert not base.MODEL.REPULSION.REPGT.ENABLED and not base.MODEL.REPULSION.REPBOX.ENABLED
    assert r.REPBOX.ENABLED == ("repbox" in variant)
    if r.REPBOX.ENABLED:
        assert (r.REPBOX.WEIGHT, r.REPBOX.SIGMA) == (0.5, 0.0)
    for c in (cfg, base):
        del c.MODEL["REPULSION"]
        c.TEST.EXPECTED_RESULTS = []  # a measured band (benchmark runner), not a setting
    assert cfg.diff(base) == {}


@pytest.mark.parametrize("rel", [r for r in EXPECTED if EXPECTED[r] is SSD
                                 and not r.startswith("synthcrowd/")])
def test_ssd_experiment_builds(rel):
    exp = load_experiment(str(PLAYGROUND / rel))
    cfg = exp.config
    voc = rel.startswith("voc/")
    assert cfg.DATASETS.TRAIN == (("voc_2007_trainval", "voc_2012_trainval") if voc
                                  else ("crowdhuman_train",))
    assert cfg.DATASETS.TEST == (("voc_2007_test",) if voc else ("crowdhuman_val",))
    assert cfg.MODEL.WEIGHTS.endswith("/vgg16_reducedfc.pth")
    assert cfg.INPUT.FORMAT == "BGR" and list(cfg.MODEL.PIXEL_MEAN) == [104.0, 117.0, 123.0]
    # ssd.pytorch's train.py: one process, batch 32, SGD lr 1e-3, momentum 0.9, weight decay
    # 5e-4, /10 after 80k and 100k of 120k iterations, no warmup.
    solver = cfg.SOLVER
    assert (solver.IMS_PER_BATCH, solver.IMS_PER_DEVICE, solver.REFERENCE_WORLD_SIZE) == (32, 32, 1)
    assert solver.OPTIMIZER.NAME == "SGD" and solver.OPTIMIZER.BASE_LR == 1e-3
    assert (solver.OPTIMIZER.MOMENTUM, solver.OPTIMIZER.WEIGHT_DECAY) == (0.9, 5e-4)
    assert solver.LR_SCHEDULER.MAX_ITER == 120000 and solver.LR_SCHEDULER.WARMUP_ITERS == 0
    assert tuple(solver.LR_SCHEDULER.STEPS) == (80000, 100000)
    # On 8 processes the usual rule keeps 32 images per process and scales the rest.
    scaled = copy.deepcopy(cfg)
    rescale_for_world_size(scaled, 8)
    assert scaled.SOLVER.IMS_PER_BATCH == 256 and scaled.SOLVER.OPTIMIZER.BASE_LR == 8e-3
    assert scaled.SOLVER.LR_SCHEDULER.MAX_ITER == 15000
    assert tuple(scaled.SOLVER.LR_SCHEDULER.STEPS) == (10000, 12500)
    size = cfg.MODEL.SSD.IMAGE_SIZE
    assert size == (512 if "ssd512" in rel else 300)
    assert dict(cfg.INPUT.AUG.TEST_PIPELINES)["Resize"] == {"height": size, "width": size}
    train = [name for name, _ in cfg.INPUT.AUG.TRAIN_PIPELINES]
    assert train == ["PhotometricDistort", "Expand", "MinIoURandomCrop", "RandomFlip", "Resize"]
    model = exp.build_model(cfg)
    assert type(model) is SSD and model.num_logits == cfg.MODEL.SSD.NUM_CLASSES + 1
    sizes = model.backbone.feature_sizes(size)
    priors = model.prior_generator([torch.zeros(1, 1, s, s) for s in sizes.values()])
    assert len(priors) == (24564 if size == 512 else 8732)
    kinds = {type(t) for t in model.extra_losses}
    assert (RepGTLoss in kinds) == ("repgt" in rel) and (RepBoxLoss in kinds) == ("repbox" in rel)


@pytest.mark.parametrize("rel", _family("synthcrowd/", ssd=True))
def test_synthcrowd_ssd_trains_one_step(rel):
    exp = load_experiment(str(PLAYGROUND / rel))
    cfg = exp.config
    assert "DEVICE" not in cfg.diff_from_parent().get("MODEL", {}) and cfg.MODEL.WEIGHTS == ""
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.SOLVER.IMS_PER_BATCH // cfg.SOLVER.IMS_PER_DEVICE == cfg.SOLVER.REFERENCE_WORLD_SIZE
    assert cfg.MODEL.VGG.NORM == "BN" and cfg.DATASETS.TRAIN == ("synthcrowd_train",)
    torch.manual_seed(0)
    model = exp.build_model(cfg)
    assert type(model) is SSD
    model.train()
    losses = model([_synth_input(300, 300, 0)])  # one image: the SSD input is 300 x 300
    total = sum(losses.values())
    assert torch.isfinite(total)
    assert ("loss_repbox" in losses) == ("repbox" in rel)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model([dict(_synth_input(300, 300, 2), height=450, width=520)])
    assert len(out[0]["instances"]) <= cfg.TEST.DETECTIONS_PER_IMAGE


@pytest.mark.slow
@pytest.mark.parametrize("rel", ["synthcrowd/lla.repgt.res18.fpn.synthcrowd.256size.2600",
                                 "synthcrowd/ssd300.vgg16q.synthcrowd.300size.2600",
                                 "synthcrowd/ssd300.repgt_repbox.vgg16q.synthcrowd.300size.2600"])
def test_new_synthcrowd_experiments_train_two_iterations(rel, tmp_path, monkeypatch):
    """Real data, loader, runner and evaluator: two iterations, then the evaluation pass (the
    LLA baseline runs the same way in test_e2e_synthcrowd)."""
    from crowdloss.data.synthetic import generate_synthcrowd
    from crowdloss.engine import DefaultRunner

    generate_synthcrowd(str(tmp_path / "datasets" / "synthcrowd"), num_train=4, num_val=2, seed=3)
    monkeypatch.setenv("CROWDLOSS_DATASETS", str(tmp_path / "datasets"))
    exp = load_experiment(str(PLAYGROUND / rel))
    cfg = exp.config
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "SOLVER.LR_SCHEDULER.MAX_ITER", "2", "SOLVER.LR_SCHEDULER.STEPS",
        "(1,)", "SOLVER.LR_SCHEDULER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.IMS_PER_DEVICE", "2",
        "SOLVER.REFERENCE_WORLD_SIZE", "1", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(tmp_path / "out"), "TEST.PLOT", "False",
        "TEST.EVAL_PERIOD", "0",  # evaluate after training (the configs leave it to pods_test)
    ])
    torch.manual_seed(0)
    runner = DefaultRunner(cfg, exp.build_model)
    runner.resume_or_load(resume=False)
    results = runner.train()
    assert (tmp_path / "out" / "model_final.pth").is_file()
    assert 0.0 <= results["synthcrowd_val"]["crowdhuman"]["Recall"] <= 1.0


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
