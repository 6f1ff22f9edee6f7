"""Assignment warm-up (MODEL.LLA.WARMUP_ITERS): the rule switch, its config, and the engine
telling the model the iteration (exact across resume, once per step with subdivisions)."""
import pytest
import torch

from crowdloss.config import FCOSConfig, RetinaNetConfig
from crowdloss.modeling.assigners import (ATSSAssigner, FCOSAssigner, LLAAssigner,
                                          MaxIoUAssigner, WarmupAssigner)
from crowdloss.modeling.meta_arch import LLAFCOS, LLARetinaNet
from crowdloss.modeling.priors import Priors

from test_engine import TinyModel, make_cfg, make_loader, train


def _scene():
    """Two levels of points, two GTs and predictions that LLA and ATSS answer differently."""
    g = torch.Generator().manual_seed(0)
    p3 = torch.stack(torch.meshgrid(torch.arange(0, 64, 8.0), torch.arange(0, 64, 8.0),
                                    indexing="xy"), -1).reshape(-1, 2)
    p4 = torch.stack(torch.meshgrid(torch.arange(0, 64, 16.0), torch.arange(0, 64, 16.0),
                                    indexing="xy"), -1).reshape(-1, 2)
    points = torch.cat([p3, p4])
    priors = Priors(points, [len(p3), len(p4)], [8, 16])
    gts = torch.tensor([[4.0, 4.0, 40.0, 60.0], [30.0, 10.0, 62.0, 50.0]])
    classes = torch.tensor([0, 0])
    logits = torch.randn(len(points), 1, generator=g)
    sizes = torch.rand(len(points), 4, generator=g) * 30
    boxes = torch.cat([points - sizes[:, :2], points + sizes[:, 2:]], 1)
    return priors, gts, classes, logits, boxes


def test_switches_rules_at_warmup_iters():
    priors, gts, classes, logits, boxes = _scene()
    atss, lla = ATSSAssigner(topk=3), LLAAssigner(topk=4)
    a = WarmupAssigner(warmup=atss, main=lla, warmup_iters=5)
    want_atss = atss.assign(priors, gts, classes)
    want_lla = lla.assign(priors, gts, classes, pred_logits=logits, pred_boxes=boxes)
    assert not torch.equal(want_atss.gt_inds, want_lla.gt_inds)  # the test can tell them apart
    for it, want, uses in [(0, want_atss, False), (4, want_atss, False), (5, want_lla, True),
                           (100, want_lla, True)]:
        a.set_iteration(it)
        assert a.uses_predictions is uses
        got = a.assign(priors, gts, classes, pred_logits=logits if uses else None,
                       pred_boxes=boxes if uses else None)
        assert torch.equal(got.gt_inds, want.gt_inds) and torch.equal(got.ignored, want.ignored)


def test_unset_iteration_is_an_error_and_zero_warmup_is_the_main_rule():
    priors, gts, classes, logits, boxes = _scene()
    a = WarmupAssigner(warmup=ATSSAssigner(), main=LLAAssigner(), warmup_iters=3)
    with pytest.raises(RuntimeError, match="set_iteration"):
        a.assign(priors, gts, classes, pred_logits=logits, pred_boxes=boxes)
    plain = WarmupAssigner(warmup=ATSSAssigner(), main=LLAAssigner(), warmup_iters=0)
    assert plain.active is plain.main and plain.uses_predictions  # no iteration needed
    with pytest.raises(ValueError, match="warmup_iters"):
        WarmupAssigner(warmup=ATSSAssigner(), main=LLAAssigner(), warmup_iters=-1)


def test_config_builds_the_warmup_rule():
    cfg = FCOSConfig()
    assert cfg.MODEL.LLA.WARMUP_ITERS == 0  # the published LLA by default
    assert type(LLAFCOS.build_assigner(cfg)) is LLAAssigner
    cfg.MODEL.LLA.WARMUP_ITERS = 300
    built = LLAFCOS.build_assigner(cfg)
    assert isinstance(built, WarmupAssigner) and built.warmup_iters == 300
    assert type(built.warmup) is ATSSAssigner and type(built.main) is LLAAssigner
    assert built.warmup.topk == cfg.MODEL.ATSS.TOPK
    cfg.MODEL.LLA.WARMUP_ASSIGNER = "fcos"
    assert type(LLAFCOS.build_assigner(cfg).warmup) is FCOSAssigner
    cfg.MODEL.LLA.WARMUP_ASSIGNER = "max_iou"
    with pytest.raises(ValueError, match=r"MODEL.LLA.WARMUP_ASSIGNER = 'max_iou'.*atss"):
        LLAFCOS.build_assigner(cfg)
    cfg.MODEL.LLA.WARMUP_ITERS = -2
    with pytest.raises(ValueError, match="MODEL.LLA.WARMUP_ITERS"):
        LLAFCOS.build_assigner(cfg)
    rcfg = RetinaNetConfig()
    rcfg.MODEL.LLA.WARMUP_ITERS = 10
    assert type(LLARetinaNet.build_assigner(rcfg).warmup) is MaxIoUAssigner


class _IterationModel(TinyModel):
    """Records the iteration the engine announced at every forward."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.announced = None
        self.seen = []

    def set_iteration(self, iteration):
        self.announced = iteration

    def forward(self, batch):
        if self.training:
            self.seen.append(self.announced)
        return super().forward(batch)


def test_engine_tells_the_model_its_iteration_once_per_step_and_across_resume(tmp_path):
    def run(cfg, **kw):
        from crowdloss.engine import DefaultRunner
        from crowdloss.utils.env import seed_all_rng

        seed_all_rng(0)
        runner = DefaultRunner(cfg, lambda c: _IterationModel())
        runner.resume_or_load(resume=kw.get("resume", False))
        try:
            runner.train()
        except RuntimeError:
            pass
        return runner.model.seen

    assert run(make_cfg(tmp_path / "a", max_iter=6, batch=2, sub=2)) == \
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # two sub-batches, one announcement per step
    crash = tmp_path / "b"
    assert run(make_cfg(crash, max_iter=6, period=2, loader=make_loader(2, crash_at=3))) == \
        [0, 1, 2]
    assert run(make_cfg(crash, max_iter=6, period=2), resume=True) == [2, 3, 4, 5]
    # a model without set_iteration trains as before
    assert train(make_cfg(tmp_path / "c", max_iter=2)).iter == 1


def test_inside_only_lla_takes_no_outside_point():
    # GT 0 is small: 1 interior point; the published soft penalty still gives it topk points
    points = torch.tensor([[float(x), 5.0] for x in range(0, 100, 10)])
    priors = Priors(points, [len(points)], [8])
    gts = torch.tensor([[15.0, 0.0, 25.0, 10.0], [40.0, 0.0, 95.0, 10.0]])
    classes = torch.tensor([0, 0])
    logits = torch.zeros(len(points), 1)
    boxes = torch.cat([points - 6, points + 6], 1)
    soft = LLAAssigner(topk=3).assign(priors, gts, classes, pred_logits=logits, pred_boxes=boxes)
    hard = LLAAssigner(topk=3, outside_cost=float("inf")).assign(
        priors, gts, classes, pred_logits=logits, pred_boxes=boxes)
    assert (soft.gt_inds == 0).sum() == 3  # two of them outside GT 0
    assert torch.nonzero(hard.gt_inds == 0).flatten().tolist() == [2]  # x = 20 only
    assert (hard.gt_inds == 1).sum() == 3 and torch.equal(soft.gt_inds == 1, hard.gt_inds == 1)
    cfg = FCOSConfig()
    assert cfg.MODEL.LLA.OUTSIDE_COST == 1000.0
    cfg.merge_from_list(["MODEL.LLA.OUTSIDE_COST", "inf"])
    assert LLAFCOS.build_assigner(cfg).outside_cost == float("inf")
