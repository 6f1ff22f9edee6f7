"""Dense detectors end to end on a tiny ResNet-18-FPN: train step, eval, num_fg normalisation.

Images of odd sizes; one image with persons and an ignore region, one without GT, one with only
ignore regions.
"""
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from crowdloss.config import FCOSConfig, RetinaNetConfig
from crowdloss.modeling.backbone import build_resnet_fpn_p7_backbone
from crowdloss.modeling.meta_arch import ATSS, FCOS, LLAFCOS, LLARetinaNet, RetinaNet
from crowdloss.structures import Instances

DETECTORS = {
    "FCOS": FCOS,
    "ATSS": ATSS,
    "RetinaNet": RetinaNet,
    "LLAFCOS": LLAFCOS,
    "LLARetinaNet": LLARetinaNet,
}


def tiny_cfg(name: str, *, norm_sync: bool = True):
    retina = "RetinaNet" in name
    cfg = RetinaNetConfig() if retina else FCOSConfig()
    cfg.merge(
        dict(
            MODEL=dict(
                DEVICE="cpu",
                BACKBONE=dict(FREEZE_AT=0),
                RESNETS=dict(
                    DEPTH=18, STEM_OUT_CHANNELS=16, RES2_OUT_CHANNELS=16, NORM="FrozenBN"
                ),
                FPN=dict(OUT_CHANNELS=32),
            ),
            TEST=dict(DETECTIONS_PER_IMAGE=7),
        )
    )
    head = dict(
        NUM_CLASSES=1,
        NUM_CONVS=1,
        HEAD_CHANNELS=64,  # GN(32) needs >= 2 values per group on the 1x1 P7 map
        # Untrained logits sit at the 0.01 prior: a zero threshold makes eval produce boxes.
        SCORE_THRESH_TEST=0.0,
        NMS_THRESH_TEST=0.6,
        NORM_SYNC=norm_sync,
    )
    if retina:
        head.update(BBOX_REG_LOSS_TYPE="smooth_l1")
        cfg.merge(dict(MODEL=dict(RETINANET=head)))
        if name == "LLARetinaNet":
            cfg.merge(dict(MODEL=dict(ANCHOR_GENERATOR=dict(
                SIZES=[[32], [64], [128], [256], [512]], ASPECT_RATIOS=[[1.0, 2.0]]))))
    else:
        head.update(CENTERNESS_ON_REG=True, NORM_REG_TARGETS=True, IOU_LOSS_TYPE="giou",
                    CENTER_SAMPLING_RADIUS=1.5)
        cfg.merge(dict(MODEL=dict(FCOS=head)))
    cfg.build_backbone = build_resnet_fpn_p7_backbone
    return cfg


def build(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return DETECTORS[name].from_config(tiny_cfg(name, **kw))


def make_input(h, w, boxes, classes, seed, orig=None):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    inst = Instances(
        (h, w),
        gt_boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        gt_classes=torch.tensor(classes, dtype=torch.long),
    )
    oh, ow = orig or (h, w)
    return {"image": image, "instances": inst, "height": oh, "width": ow, "image_id": seed}


def crowd_batch():
    return [
        # two overlapping persons and an ignore region
        make_input(67, 93, [[10, 5, 40, 60], [25, 8, 55, 66], [60, 10, 90, 40]], [0, 0, -1], 1),
        make_input(80, 61, [], [], 2),  # no GT
        make_input(71, 59, [[5, 5, 50, 70]], [-1], 3),  # only an ignore region
    ]


def all_finite_grads(model):
    bad = []
    for name, p in model.named_parameters():
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all()):
            bad.append(name)
    return bad


@pytest.mark.parametrize("name", list(DETECTORS))
def test_train_step_finite(name):
    model = build(name)
    model.train()
    losses = model(crowd_batch())
    assert losses and all(k.startswith("loss_") for k in losses)
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), (k, v)
    assert losses["loss_cls"] > 0 and losses["loss_box_reg"] > 0
    sum(losses.values()).backward()
    assert all_finite_grads(model) == []


@pytest.mark.parametrize("name", ["FCOS", "LLAFCOS", "RetinaNet"])
def test_train_step_without_positives(name):
    # Only an empty image and an ignore-only image: the classifier still learns background,
    # the box terms are exactly zero, nothing is NaN.
    model = build(name)
    model.train()
    losses = model(crowd_batch()[1:])
    assert losses["loss_cls"] > 0
    for k, v in losses.items():
        assert torch.isfinite(v), (k, v)
        if k != "loss_cls":
            assert v.item() == 0.0, k
    sum(losses.values()).backward()
    assert all_finite_grads(model) == []


@pytest.mark.parametrize("name", list(DETECTORS))
def test_eval_boxes_inside_original_image(name):
    model = build(name)
    model.eval()
    if isinstance(model, FCOS):
        # Freshly initialised ltrb sit around ReLU(0) = 0 (empty boxes); make them 1 stride.
        torch.nn.init.constant_(model.head.bbox_pred.bias, 1.0)
    batch = crowd_batch()
    # The mapper resized the originals: outputs must come back in original coordinates.
    batch[0]["height"], batch[0]["width"] = 134, 186
    batch[1]["height"], batch[1]["width"] = 40, 31
    with torch.no_grad():
        outputs = model(batch)
    assert len(outputs) == len(batch)
    for out, x in zip(outputs, batch):
        inst = out["instances"]
        assert inst.image_size == (x["height"], x["width"])
        assert 0 < len(inst) <= 7
        boxes = inst.pred_boxes
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= x["width"]).all() and (boxes[:, 3] <= x["height"]).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
        assert (inst.pred_classes == 0).all()


def test_lla_num_fg_counts_ignore_matches():
    # LLA's normaliser counts points won by ignore GTs: adding an ignore-only image changes
    # the box-loss normaliser by TOPK although it adds no box-loss term.
    model = build("LLAFCOS")
    model.train()
    seen = []
    plain = model.normalizer
    model.normalizer = lambda num_fg, min_value=1.0: seen.append(num_fg) or plain(num_fg, min_value)
    batch = crowd_batch()
    with torch.no_grad():
        alone = model(batch[:1])
        with_ignore = model([batch[0], batch[2]])
    topk = model.assigner.topk
    # Image 0 has 3 GTs (one ignore) x TOPK points, minus points claimed twice.
    assert 2 * topk < seen[0] <= 3 * topk
    assert seen[1] == seen[0] + topk
    ratio = alone["loss_box_reg"] / with_ignore["loss_box_reg"]
    assert ratio.item() == pytest.approx(seen[1] / seen[0], rel=1e-4)


def test_norm_sync_off_uses_local_count():
    model = build("FCOS", norm_sync=False)
    assert model.normalizer(0) == 1.0 and model.normalizer(6) == 6.0
    model = build("FCOS", norm_sync=True)
    assert model.normalizer(6) == 6.0  # no process group: the mean over one rank


def test_bad_input_is_named():
    model = build("FCOS")
    with pytest.raises(ValueError, match="input 0"):
        model([{"image": torch.zeros(4, 8, 8, dtype=torch.uint8)}])


# ----------------------------------------------------------- 1 process vs 2 (gloo)
def _same_size_batch():
    return [
        make_input(67, 93, [[10, 5, 40, 60], [25, 8, 55, 66], [60, 10, 90, 40]], [0, 0, -1], 1),
        make_input(67, 93, [[30, 20, 60, 64]], [0], 4),
    ]


def _worker(rank, world, port, name, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model = build(name)
        model.train()
        losses = model(_same_size_batch()[rank:rank + 1])
        torch.save({k: v.detach() for k, v in losses.items()}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["LLAFCOS"])
def test_num_fg_normalisation_one_vs_two_processes(name, tmp_path):
    # DDP averages gradients over ranks, so with num_fg averaged over ranks the mean of the
    # per-rank losses must equal the loss of one process on the whole batch.
    model = build(name)
    model.train()
    with torch.no_grad():
        single = model(_same_size_batch())
    mp.start_processes(
        _worker, args=(2, _free_port(), name, str(tmp_path)), nprocs=2, join=True,
        start_method="spawn",
    )
    per_rank = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    for k, v in single.items():
        mean = (per_rank[0][k] + per_rank[1][k]) / 2
        assert mean.item() == pytest.approx(v.item(), rel=1e-4, abs=1e-6), k
    # ...and the ranks really differ (else the test would prove nothing).
    assert not math.isclose(
        per_rank[0]["loss_cls"].item(), per_rank[1]["loss_cls"].item(), rel_tol=1e-3
    )


def test_detector_postprocess_rescales_clips_and_drops_empty():
    from crowdloss.modeling.postprocess import detector_postprocess

    res = Instances(
        (50, 100),
        pred_boxes=torch.tensor([[10.0, 5.0, 30.0, 25.0], [90.0, 40.0, 120.0, 60.0],
                                 [110.0, 10.0, 130.0, 20.0]]),
        scores=torch.tensor([0.9, 0.8, 0.7]),
        pred_classes=torch.tensor([0, 0, 0]),
    )
    out = detector_postprocess(res, 100, 50)  # x scale 0.5, y scale 2
    assert out.image_size == (100, 50)
    assert torch.equal(out.pred_boxes, torch.tensor([[5.0, 10.0, 15.0, 50.0],
                                                     [45.0, 80.0, 50.0, 100.0]]))
    assert torch.equal(out.scores, torch.tensor([0.9, 0.8]))  # the third box is outside
    with pytest.raises(ValueError, match="positive"):
        detector_postprocess(res, 0, 10)
