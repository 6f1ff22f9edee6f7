"""LLA assigner: hand-built toys and equality with a slow per-GT reference."""
import math

import pytest
import torch

from crowdloss.modeling.assigners import LLAAssigner
from crowdloss.modeling.priors import Priors


def _row_points(n):
    return torch.tensor([[10.0 * i + 5, 5.0] for i in range(n)])


def _assign(assigner, logits, pred, points, gts, classes):
    """The assigner interface with one level of points (stride unused by LLA)."""
    return assigner.assign(Priors(points, [len(points)], [8]), gts, classes,
                           pred_logits=logits, pred_boxes=pred)


def _tiny(points):
    # a 2x2 box on each point: poor IoU with every GT, i.e. a high reg cost
    return torch.cat([points - 1, points + 1], dim=1)


def test_cost_rows_match_naive_formula():
    g = torch.Generator().manual_seed(0)
    r, k = 30, 3
    logits = torch.randn(r, k, generator=g) * 2
    points = torch.rand(r, 2, generator=g) * 50
    pred = torch.cat([points - 4, points + 6], 1)
    gts = torch.tensor([[0.0, 0, 30, 30], [20.0, 10, 50, 45]])
    cls = torch.tensor([2, -1])
    a = LLAAssigner(reg_cost=1.5)
    fl = lambda x, t: -(0.25 if t else 0.75) * ((1 - torch.sigmoid(x)) if t else torch.sigmoid(x)) ** 2 * torch.log(
        torch.sigmoid(x) if t else 1 - torch.sigmoid(x)
    )
    terms = a.cls_cost_terms(logits)
    cost = a.cost_rows(terms, pred, points, gts, cls.clamp(min=0))
    for m in range(2):
        c = max(int(cls[m]), 0)  # ignore GT competes as class 0
        for j in range(r):
            cls_cost = sum(float(fl(logits[j, q], q == c)) for q in range(k))
            x1, y1, x2, y2 = gts[m].tolist()
            p = pred[j].tolist()
            inter = max(0, min(x2, p[2]) - max(x1, p[0])) * max(0, min(y2, p[3]) - max(y1, p[1]))
            iou = inter / ((x2 - x1) * (y2 - y1) + 100 - inter)
            px, py = points[j].tolist()
            inside = min(px - x1, py - y1, x2 - px, y2 - py) > 0.01
            expect = cls_cost - 1.5 * math.log(max(iou, 1e-6)) + (0 if inside else 1000)
            assert float(cost[m, j]) == pytest.approx(expect, rel=1e-4, abs=1e-4)


def test_two_gts_compete_for_shared_points():
    pts = _row_points(6)  # x = 5, 15, ..., 55
    a, b = [0.0, 0, 40, 10], [20.0, 0, 60, 10]  # A holds points 0-3, B points 2-5
    pred = torch.tensor([a, a, a, b, b, b])
    logits = torch.zeros(6, 1)
    gts = torch.tensor([a, b])
    # topk 3: each GT takes its three perfect predictions, no conflict
    res = _assign(LLAAssigner(topk=3), logits, pred, pts, gts, torch.tensor([0, 0]))
    assert res.gt_inds.tolist() == [0, 0, 0, 1, 1, 1]
    # topk 4: A also takes point 3 and B point 2; each shared point goes to its cheaper GT
    res = _assign(LLAAssigner(topk=4), logits, pred, pts, gts, torch.tensor([0, 0]))
    assert res.gt_inds.tolist() == [0, 0, 0, 1, 1, 1]
    # order invariance up to the permutation of indices
    res = _assign(LLAAssigner(topk=4), logits, pred, pts, gts.flip(0), torch.tensor([0, 0]))
    assert res.gt_inds.tolist() == [1, 1, 1, 0, 0, 0]
    assert not res.ignored.any()


def test_gt_with_fewer_than_k_inside_points_still_takes_k():
    pts = _row_points(8)
    gt = torch.tensor([[0.0, 0, 12, 10]])  # only point 0 (x=5) is inside
    # each point predicts a box from the image's left edge to just past itself: IoU with the GT
    # falls as the point moves away, so the two nearest outside points are the cheapest ones
    pred = torch.stack([torch.zeros(8), torch.zeros(8), pts[:, 0] + 1, torch.full((8,), 10.0)], 1)
    res = _assign(LLAAssigner(topk=3), torch.zeros(8, 1), pred, pts, gt, torch.tensor([0]))
    assert res.gt_inds.tolist() == [0, 0, 0, -1, -1, -1, -1, -1]
    zero = _assign(LLAAssigner(), torch.zeros(8, 1), _tiny(pts), pts, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert (zero.gt_inds == -1).all() and not zero.ignored.any()
    few = _assign(LLAAssigner(topk=10), torch.zeros(8, 1), _tiny(pts), pts, gt, torch.tensor([0]))
    assert (few.gt_inds == 0).all()  # K > R: every point


def test_ignore_gt_wins_points():
    pts = _row_points(6)
    a, b = [0.0, 0, 40, 10], [20.0, 0, 60, 10]
    pred = torch.tensor([a, a, a, b, b, b])
    classes = torch.tensor([0, -1])
    res = _assign(LLAAssigner(topk=3), torch.zeros(6, 1), pred, pts, torch.tensor([a, b]), classes)
    assert res.gt_inds.tolist() == [0, 0, 0, 1, 1, 1]
    assert res.ignored.tolist() == [False, False, False, True, True, True]
    assert res.labels(classes, 1).tolist() == [0, 0, 0, -1, -1, -1]
    assert res.matched.sum().item() == 6 and res.positive.sum().item() == 3


def test_conflict_goes_to_column_min_over_all_rows():
    pts = _row_points(10)  # x = 5 .. 95
    x = [0.0, 0, 100, 10]  # holds every point
    y = [40.0, 0, 60, 10]  # holds points 4, 5
    z = [50.0, 0, 70, 10]  # holds points 5, 6
    pred = _tiny(pts)
    pred[0] = pred[1] = torch.tensor(x)  # X's two perfect points
    pred[5] = torch.tensor([0.0, 0, 95, 10])  # point 5 predicts (almost) X
    res = _assign(LLAAssigner(topk=2), torch.zeros(10, 1), pred, pts, torch.tensor([x, y, z]), torch.zeros(3, dtype=torch.long))
    # X takes {0, 1}; Y takes {4, 5}; Z takes {5, 6}. Point 5 is taken twice; its column minimum
    # is X (IoU 0.95), a GT that did not take it, and the text says it goes there.
    assert res.gt_inds.tolist() == [0, 0, -1, -1, 1, 0, 2, -1, -1, -1]


# ---------------------------------------------------------------- slow reference
def _reference(logits, pred, points, gts, classes, topk, reg_cost=1.5):
    """Per-GT Python loop in float64 straight from docs/algorithms.md "LLA" steps 1-5."""
    logits, pred, points, gts = (t.double() for t in (logits, pred, points, gts))
    m_count, r = gts.shape[0], points.shape[0]
    p = torch.sigmoid(logits)
    rows = []
    for m in range(m_count):
        c = max(int(classes[m]), 0)
        onehot = torch.zeros_like(logits)
        onehot[:, c] = 1
        pt = p * onehot + (1 - p) * (1 - onehot)
        at = 0.25 * onehot + 0.75 * (1 - onehot)
        cls_cost = (-at * (1 - pt) ** 2 * torch.log(pt)).sum(1)
        g = gts[m]
        iw = (torch.min(pred[:, 2], g[2]) - torch.max(pred[:, 0], g[0])).clamp(min=0)
        ih = (torch.min(pred[:, 3], g[3]) - torch.max(pred[:, 1], g[1])).clamp(min=0)
        inter = iw * ih
        union = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
        reg = -torch.log((inter / union).clamp(min=1e-6))
        ltrb = torch.stack([points[:, 0] - g[0], points[:, 1] - g[1], g[2] - points[:, 0], g[3] - points[:, 1]], 1)
        inside = (ltrb > 0.01).all(1).double()
        rows.append(cls_cost + reg_cost * reg + 1000 * (1 - inside))
    cost = torch.stack(rows)
    taken = [[] for _ in range(r)]
    for m in range(m_count):
        for j in torch.argsort(cost[m])[:topk].tolist():
            taken[j].append(m)
    out = []
    for j in range(r):
        if not taken[j]:
            out.append(-1)
        elif len(taken[j]) == 1:
            out.append(taken[j][0])
        else:
            out.append(int(torch.argmin(cost[:, j])))
    return out


def _crowded_scene(seed, m, r, k=2):
    g = torch.Generator().manual_seed(seed)
    side = int(math.sqrt(r))
    ys, xs = torch.meshgrid(torch.arange(side) * 8.0 + 4, torch.arange(side) * 8.0 + 4, indexing="ij")
    points = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    extent = side * 8.0
    # crowd: people of similar size packed in one band
    cxy = torch.rand(m, 2, generator=g) * torch.tensor([extent, extent * 0.4]) + torch.tensor([0.0, extent * 0.3])
    wh = torch.rand(m, 1, generator=g) * 40 + 15
    wh = torch.cat([wh * 0.4, wh], 1)
    gts = torch.cat([cxy - wh / 2, cxy + wh / 2], 1)
    classes = torch.randint(0, k, (m,), generator=g)
    classes[torch.rand(m, generator=g) < 0.1] = -1
    logits = torch.randn(points.shape[0], k, generator=g) * 2 - 2
    off = torch.rand(points.shape[0], 4, generator=g) * 20 + 2
    pred = torch.cat([points - off[:, :2], points + off[:, 2:]], 1)
    return logits, pred, points, gts, classes


@pytest.mark.parametrize("seed,m", [(0, 5), (1, 20), (2, 40), (3, 60)])
def test_matches_slow_reference(seed, m):
    logits, pred, points, gts, classes = _crowded_scene(seed, m, 2025)
    assigner = LLAAssigner(topk=10, chunk_size=7)  # chunks force the cross-chunk merge
    res = _assign(assigner, logits, pred, points, gts, classes)
    expect = _reference(logits, pred, points, gts, classes, topk=10)
    assert res.gt_inds.tolist() == expect
    assert torch.equal(res.ignored, (res.gt_inds >= 0) & (classes[res.gt_inds.clamp(min=0)] < 0))
    # a single chunk gives the same answer
    assert torch.equal(_assign(LLAAssigner(topk=10, chunk_size=1000), logits, pred, points, gts, classes).gt_inds, res.gt_inds)
    # GT order invariance up to the permutation
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed))
    res_p = _assign(assigner, logits, pred, points, gts[perm], classes[perm])
    back = torch.where(res_p.gt_inds >= 0, perm[res_p.gt_inds.clamp(min=0)], res_p.gt_inds)
    assert torch.equal(back, res.gt_inds)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="pred_logits"):
        _assign(LLAAssigner(), torch.zeros(3, 1), torch.zeros(4, 4), torch.zeros(4, 2), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="K=1"):
        _assign(LLAAssigner(), torch.zeros(4, 1), torch.zeros(4, 4), torch.zeros(4, 2), torch.ones(1, 4), torch.tensor([3]))
