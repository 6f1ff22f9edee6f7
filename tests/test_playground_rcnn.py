"""The Faster R-CNN experiments: cvpods' CrowdHuman values, the model they build, and repulsion
variants that differ from their base experiment in MODEL.REPULSION only."""
from pathlib import Path

import pytest

from crowdloss.cli.common import load_experiment
from crowdloss.modeling.meta_arch import GeneralizedRCNN
from crowdloss.modeling.roi_heads import ROIRepulsion

PLAYGROUND = Path(__file__).resolve().parents[1] / "playground" / "detection"
CROWDHUMAN = "crowdhuman/faster_rcnn.res50.fpn.crowdhuman.800size.1x"
VARIANTS = {  # repulsion variant: its base experiment
    "crowdhuman/faster_rcnn.repgt_repbox.res50.fpn.crowdhuman.800size.1x": CROWDHUMAN,
    "synthcrowd/faster_rcnn.repgt_repbox.res18.fpn.synthcrowd.256size.2600":
        "synthcrowd/faster_rcnn.res18.fpn.synthcrowd.256size.2600",
}


@pytest.mark.parametrize("rel", [CROWDHUMAN, *[v for v in VARIANTS if "crowdhuman" in v]])
def test_crowdhuman_experiment_has_the_cvpods_values(rel):
    exp = load_experiment(str(PLAYGROUND / rel))
    cfg = exp.config
    m = cfg.MODEL
    assert m.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl" and m.RESNETS.DEPTH == 50
    assert m.ANCHOR_GENERATOR.SIZES == [[32], [64], [128], [256], [512]]
    assert m.ANCHOR_GENERATOR.ASPECT_RATIOS == [[1.0, 2.0, 3.0]]
    assert m.PROPOSAL_GENERATOR.MIN_SIZE == 2
    r = m.RPN
    assert (r.PRE_NMS_TOPK_TRAIN, r.PRE_NMS_TOPK_TEST) == (12000, 6000)
    assert (r.POST_NMS_TOPK_TRAIN, r.POST_NMS_TOPK_TEST) == (2000, 1000)
    assert r.SMOOTH_L1_BETA == 1.0 and r.NMS_THRESH == 0.7
    assert list(r.IOU_THRESHOLDS) == [0.3, 0.7] and r.IN_FEATURES == ["p2", "p3", "p4", "p5", "p6"]
    h = m.ROI_HEADS
    assert h.IN_FEATURES == ["p2", "p3", "p4", "p5"] and h.NUM_CLASSES == 1
    assert (h.BATCH_SIZE_PER_IMAGE, h.POSITIVE_FRACTION) == (512, 0.5)
    assert (h.SCORE_THRESH_TEST, h.NMS_THRESH_TEST) == (0.05, 0.5)
    b = m.ROI_BOX_HEAD
    assert (b.NUM_FC, b.FC_DIM, b.POOLER_RESOLUTION, b.SMOOTH_L1_BETA) == (2, 1024, 7, 1.0)
    assert tuple(b.BBOX_REG_WEIGHTS) == (10.0, 10.0, 5.0, 5.0)
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.IMS_PER_DEVICE, s.OPTIMIZER.BASE_LR) == (16, 2, 0.02)
    assert s.LR_SCHEDULER.MAX_ITER == 28125 and tuple(s.LR_SCHEDULER.STEPS) == (18750, 24375)
    assert s.CHECKPOINT_PERIOD == 1000 and cfg.TEST.DETECTIONS_PER_IMAGE == 300
    assert cfg.DATASETS.TRAIN == ("crowdhuman_train",) and cfg.DATASETS.TEST == ("crowdhuman_val",)
    resize = dict(cfg.INPUT.AUG.TEST_PIPELINES)["ResizeShortestEdge"]
    assert resize["short_edge_length"] == 800 and resize["max_size"] == 1400
    model = exp.build_model(cfg)
    assert type(model) is GeneralizedRCNN
    assert model.roi_heads.box_head.fc1.in_features == 256 * 7 * 7
    assert model.proposal_generator.rpn_head.objectness_logits.out_channels == 3
    assert isinstance(model.roi_heads.repulsion, ROIRepulsion) == ("repgt" in rel)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_repulsion_variant_differs_only_in_repulsion(variant):
    cfg = load_experiment(str(PLAYGROUND / variant)).config
    base = load_experiment(str(PLAYGROUND / VARIANTS[variant])).config
    r = cfg.MODEL.REPULSION
    assert r.REPGT.ENABLED and (r.REPGT.WEIGHT, r.REPGT.SIGMA) == (0.5, 1.0)
    assert r.REPBOX.ENABLED and (r.REPBOX.WEIGHT, r.REPBOX.SIGMA) == (0.5, 0.0)
    assert not base.MODEL.REPULSION.REPGT.ENABLED and not base.MODEL.REPULSION.REPBOX.ENABLED
    for c in (cfg, base):
        del c.MODEL["REPULSION"]
        # Each experiment's measured band (what pods_test checks a run against) is its own.
        c.TEST.EXPECTED_RESULTS = []
    assert cfg.diff(base) == {}
