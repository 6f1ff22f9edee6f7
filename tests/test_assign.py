"""FCOS, ATSS and max-IoU assigners on hand-computed toys; AssignResult.labels."""
import math

import pytest
import torch

from crowdloss.modeling.assigners import ATSSAssigner, AssignResult, FCOSAssigner, MaxIoUAssigner
from crowdloss.modeling.priors import Priors
from crowdloss.modeling.shifts import grid_points


def _priors(levels, strides):
    return Priors.cat(levels, strides)


def _anchors(anchors):
    return Priors(anchors, [len(anchors)], [8])


def _index(points, xy):
    return [i for i, p in enumerate(points.tolist()) if p == list(xy)]


def _permuted(assigner_call, boxes, classes, perm):
    """Run with GTs permuted and map the indices back to the original order."""
    res = assigner_call(boxes[perm], classes[perm])
    back = torch.where(res.gt_inds >= 0, perm[res.gt_inds.clamp(min=0)], res.gt_inds)
    return back, res.ignored


def test_assign_result_labels():
    res = AssignResult(torch.tensor([-1, 0, 1, 2, 0]), torch.tensor([False, False, False, True, True]))
    classes = torch.tensor([3, 1, -1])
    assert res.labels(classes, 5).tolist() == [5, 3, 1, -1, -1]
    assert res.positive.tolist() == [False, True, True, False, False]
    assert res.matched.tolist() == [False, True, True, True, True]
    with pytest.raises(ValueError):
        AssignResult(torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.bool))


# ---------------------------------------------------------------- FCOS
def _fcos_levels():
    # level 0: stride 8, 4x4 points at 0..24; level 1: stride 16, 2x2 points at 0, 16
    return [grid_points(4, 4, 8, 0.0), grid_points(2, 2, 16, 0.0)]


def test_fcos_smallest_area_and_order_invariance():
    levels = _fcos_levels()
    pts = torch.cat(levels)
    assigner = FCOSAssigner(object_sizes_of_interest=((-1, 64), (64, math.inf)))
    boxes = torch.tensor([[1.0, 1, 17, 17], [5.0, 5, 30, 30]])
    classes = torch.tensor([0, 0])
    res = assigner.assign(_priors(levels, (8, 16)), boxes, classes)
    expect = torch.full((20,), -1)
    for x in (8, 16, 24):
        for y in (8, 16, 24):
            expect[_index(pts, (x, y))[0]] = 1  # B (level 0 only)
    for xy in ((8, 8), (16, 8), (8, 16), (16, 16)):
        expect[_index(pts, xy)[0]] = 0  # inside both: A has the smaller area
    assert res.gt_inds.tolist() == expect.tolist()
    assert not res.ignored.any()
    back, _ = _permuted(lambda b, c: assigner.assign(_priors(levels, (8, 16)), b, c), boxes, classes, torch.tensor([1, 0]))
    assert back.tolist() == expect.tolist()


def test_fcos_scale_ranges_and_center_sampling():
    levels = _fcos_levels()
    pts = torch.cat(levels)
    big = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    res = FCOSAssigner(object_sizes_of_interest=((-1, 64), (64, math.inf))).assign(
        _priors(levels, (8, 16)), big, torch.tensor([0])
    )
    # level-0 points have max ltrb > 64; only the level-1 point (16, 16) (max ltrb 84) fits
    assert torch.nonzero(res.gt_inds >= 0).squeeze(1).tolist() == _index(pts, (16, 16))[1:]
    one = [grid_points(8, 8, 8, 0.0)]
    box = torch.tensor([[1.0, 1.0, 63.0, 63.0]])  # centre (32, 32)
    cs = FCOSAssigner(object_sizes_of_interest=((-1, math.inf),), center_sampling_radius=1.5)
    res = cs.assign(_priors(one, (8,)), box, torch.tensor([0]))
    got = {tuple(p) for p in one[0][res.gt_inds >= 0].tolist()}
    # centre box (20, 20, 44, 44): strictly inside are 24, 32, 40 on each axis
    assert got == {(x, y) for x in (24.0, 32.0, 40.0) for y in (24.0, 32.0, 40.0)}


def test_fcos_ignore_and_empty():
    levels = _fcos_levels()
    pts = torch.cat(levels)
    assigner = FCOSAssigner(object_sizes_of_interest=((-1, 64), (64, math.inf)))
    boxes = torch.tensor([[5.0, 5, 30, 30], [20.0, 20, 31, 31]])
    classes = torch.tensor([0, -1])
    res = assigner.assign(_priors(levels, (8, 16)), boxes, classes)
    i = _index(pts, (24, 24))[0]
    assert res.gt_inds[i].item() == 1 and res.ignored[i].item()
    assert res.ignored.sum().item() == 1
    labels = res.labels(classes, 1)
    assert labels[i].item() == -1 and (labels == 0).sum().item() == 8
    empty = assigner.assign(_priors(levels, (8, 16)), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert (empty.gt_inds == -1).all() and not empty.ignored.any() and empty.gt_inds.shape == (20,)


# ---------------------------------------------------------------- ATSS
def test_atss_toy_threshold_and_conflict():
    levels = [grid_points(8, 8, 8, 0.0)]
    pts = levels[0]
    # anchor side 3 x 8 = 24, so the anchor at (24, 24) equals A exactly (IoU 1).
    a = [12.0, 12, 36, 36]
    b = [8.0, 8, 40, 40]  # same centre; IoU with that anchor 576 / 1024
    assigner = ATSSAssigner(topk=9, anchor_scale=3.0)
    res = assigner.assign(_priors(levels, (8,)), torch.tensor([a]), torch.tensor([0]))
    # A's candidates: IoU 1 (centre), 0.5 x 4 (edge neighbours), 256/896 x 4 (diagonals);
    # mean + std = 0.689 -> only the centre point is positive.
    ious = [1.0] + [0.5] * 4 + [256 / 896] * 4
    mean = sum(ious) / 9
    thr = mean + math.sqrt(sum((v - mean) ** 2 for v in ious) / 8)
    assert 0.5 < thr < 1.0
    centre = _index(pts, (24, 24))[0]
    assert torch.nonzero(res.gt_inds >= 0).squeeze(1).tolist() == [centre]
    # B alone also takes the centre (0.5625 >= its threshold ~0.478) ...
    res_b = assigner.assign(_priors(levels, (8,)), torch.tensor([b]), torch.tensor([0]))
    assert torch.nonzero(res_b.gt_inds >= 0).squeeze(1).tolist() == [centre]
    # ... but together the higher IoU (A) wins, whatever the GT order.
    for boxes, expect in (([a, b], 0), ([b, a], 1)):
        both = assigner.assign(_priors(levels, (8,)), torch.tensor(boxes), torch.tensor([0, 0]))
        assert both.gt_inds[centre].item() == expect and (both.gt_inds >= 0).sum().item() == 1


def test_atss_ignore_and_empty():
    levels = [grid_points(8, 8, 8, 0.0)]
    pts = levels[0]
    boxes = torch.tensor([[12.0, 12, 36, 36], [10.0, 10, 50, 30]])
    classes = torch.tensor([0, -1])
    res = ATSSAssigner(topk=9, anchor_scale=3.0).assign(_priors(levels, (8,)), boxes, classes)
    centre = _index(pts, (24, 24))[0]
    assert res.gt_inds[centre].item() == 0 and not res.ignored[centre]  # positives stay
    inside_ignore = {(x, y) for x in (16.0, 24.0, 32.0, 40.0, 48.0) for y in (16.0, 24.0)} - {(24.0, 24.0)}
    assert {tuple(p) for p in pts[res.ignored].tolist()} == inside_ignore
    assert (res.gt_inds != 1).all()  # ignore GTs never produce positives
    only_ignore = ATSSAssigner().assign(_priors(levels, (8,)), boxes[1:], classes[1:])
    assert (only_ignore.gt_inds == -1).all() and only_ignore.ignored.sum().item() == 10
    empty = ATSSAssigner().assign(_priors(levels, (8,)), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert (empty.gt_inds == -1).all() and not empty.ignored.any()


def test_atss_order_invariance_random():
    levels = [grid_points(16, 16, 8, 0.5), grid_points(8, 8, 16, 0.5)]
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(6, 2, generator=g) * 90
    boxes = torch.cat([xy, xy + 10 + torch.rand(6, 2, generator=g) * 40], 1)
    classes = torch.tensor([0, 0, 0, 0, 0, -1])
    assigner = ATSSAssigner()
    ref = assigner.assign(_priors(levels, (8, 16)), boxes, classes)
    assert (ref.gt_inds >= 0).sum() >= 5
    back, ign = _permuted(lambda b, c: assigner.assign(_priors(levels, (8, 16)), b, c), boxes, classes, torch.tensor([3, 5, 0, 4, 1, 2]))
    assert torch.equal(back, ref.gt_inds) and torch.equal(ign, ref.ignored)


# ---------------------------------------------------------------- max IoU
def test_max_iou_thresholds_low_quality_ignore():
    anchors = torch.tensor(
        [
            [0.0, 0, 10, 10],  # 0: IoU 1 with G0 -> positive
            [0.0, 0, 10, 20],  # 1: IoU 0.5 -> positive (>=)
            [0.0, 0, 10, 22.5],  # 2: IoU 0.444 -> grey zone, ignored
            [5.0, 0, 15, 10],  # 3: IoU 1/3 -> background
            [40.0, 0, 50, 10],  # 4: IoU 1/3 with G1, G1's best -> low-quality positive
            [60.0, 0, 70, 10],  # 5: tie with 4 -> also positive
            [195.0, 200, 215, 220],  # 6: IoA 0.75 with the ignore region -> ignored
            [190.0, 200, 210, 220],  # 7: IoA 0.5, not > 0.5 -> background
            [250.0, 250, 260, 260],  # 8: exact match of G3 inside the ignore region -> positive
        ]
    )
    boxes = torch.tensor([[0.0, 0, 10, 10], [40.0, 0, 70, 10], [200.0, 200, 300, 300], [250.0, 250, 260, 260]])
    classes = torch.tensor([0, 0, -1, 0])
    res = MaxIoUAssigner().assign(_anchors(anchors), boxes, classes)
    assert res.gt_inds.tolist() == [0, 0, -1, -1, 1, 1, -1, -1, 3]
    assert res.ignored.tolist() == [False, False, True, False, False, False, True, False, False]
    strict = MaxIoUAssigner(allow_low_quality_matches=False).assign(_anchors(anchors), boxes, classes)
    assert strict.gt_inds.tolist() == [0, 0, -1, -1, -1, -1, -1, -1, 3]
    perm = torch.tensor([2, 3, 1, 0])
    back, ign = _permuted(lambda b, c: MaxIoUAssigner().assign(_anchors(anchors), b, c), boxes, classes, perm)
    assert back.tolist() == res.gt_inds.tolist() and torch.equal(ign, res.ignored)


def test_max_iou_low_quality_keeps_threshold_match_and_empty():
    anchors = torch.tensor([[0.0, 0, 10, 10], [20.0, 0, 30, 10]])
    # G1's best anchor is anchor 0 (IoU 100/130), already positive for G0 at IoU 1: it stays
    # with G0 and G1 gets no anchor.
    boxes = torch.tensor([[0.0, 0, 10, 10], [-3.0, 0, 10, 10]])
    res = MaxIoUAssigner().assign(_anchors(anchors), boxes, torch.tensor([0, 0]))
    assert res.gt_inds.tolist() == [0, -1]
    empty = MaxIoUAssigner().assign(_anchors(anchors), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert empty.gt_inds.tolist() == [-1, -1] and not empty.ignored.any()
    only_ignore = MaxIoUAssigner().assign(_anchors(anchors), boxes[:1], torch.tensor([-1]))
    assert only_ignore.gt_inds.tolist() == [-1, -1] and only_ignore.ignored.tolist() == [True, False]


# ---------------------------------------------------------------- random scenes vs slow references
def _scene(seed, m):
    g = torch.Generator().manual_seed(seed)
    levels = [grid_points(24, 32, 8, 0.0), grid_points(12, 16, 16, 0.0), grid_points(6, 8, 32, 0.0)]
    h = torch.rand(m, generator=g) * 150 + 12
    cxy = torch.rand(m, 2, generator=g) * torch.tensor([256.0, 100.0]) + torch.tensor([0.0, 60.0])
    wh = torch.stack([0.41 * h, h], 1)
    boxes = torch.cat([cxy - wh / 2, cxy + wh / 2], 1)
    classes = torch.zeros(m, dtype=torch.long)
    classes[torch.rand(m, generator=g) < 0.15] = -1
    return levels, boxes, classes


def _fcos_reference(levels, strides, ranges, boxes, classes, radius):
    out = []
    for lvl, (pts, s) in enumerate(zip(levels, strides)):
        lo, hi = ranges[lvl]
        for px, py in pts.tolist():
            best, best_area = -1, math.inf
            for m, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
                d = (px - x1, py - y1, x2 - px, y2 - py)
                if radius > 0:
                    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                    r = radius * s
                    ok = max(cx - r, x1) < px < min(cx + r, x2) and max(cy - r, y1) < py < min(cy + r, y2)
                else:
                    ok = min(d) > 0
                area = (x2 - x1) * (y2 - y1)
                if ok and lo <= max(d) <= hi and area < best_area:
                    best, best_area = m, area
            out.append(best)
    return out


@pytest.mark.parametrize("seed,radius", [(0, 0.0), (1, 1.5)])
def test_fcos_matches_reference_and_chunks(seed, radius):
    levels, boxes, classes = _scene(seed, 30)
    ranges = ((-1, 64), (64, 128), (128, math.inf))
    assigner = FCOSAssigner(object_sizes_of_interest=ranges, center_sampling_radius=radius, chunk_size=7)
    res = assigner.assign(_priors(levels, (8, 16, 32)), boxes, classes)
    assert res.gt_inds.tolist() == _fcos_reference(levels, (8, 16, 32), ranges, boxes, classes, radius)
    assert torch.equal(res.ignored, (res.gt_inds >= 0) & (classes[res.gt_inds.clamp(min=0)] < 0))
    assert res.positive.sum() > 20


def _atss_reference(levels, strides, boxes, classes, topk=9, scale=8.0):
    pts = torch.cat(levels).tolist()
    level_of = [l for l, p in enumerate(levels) for _ in range(p.shape[0])]
    winners = {}
    for m, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        if classes[m] < 0:
            continue
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        cands = []
        for lvl in range(len(levels)):
            idx = [j for j in range(len(pts)) if level_of[j] == lvl]
            idx.sort(key=lambda j: ((pts[j][0] - cx) ** 2 + (pts[j][1] - cy) ** 2, j))
            cands += idx[:topk]
        ious = []
        for j in cands:
            half = strides[level_of[j]] * scale / 2
            a = (pts[j][0] - half, pts[j][1] - half, pts[j][0] + half, pts[j][1] + half)
            iw = max(0.0, min(a[2], x2) - max(a[0], x1))
            ih = max(0.0, min(a[3], y2) - max(a[1], y1))
            inter = iw * ih
            ious.append(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (x2 - x1) * (y2 - y1) - inter))
        mean = sum(ious) / len(ious)
        thr = mean + math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        for j, v in zip(cands, ious):
            px, py = pts[j]
            if v >= thr and min(px - x1, py - y1, x2 - px, y2 - py) > 0.01:
                if j not in winners or v > winners[j][0]:
                    winners[j] = (v, m)
    return [winners[j][1] if j in winners else -1 for j in range(len(pts))]


def test_atss_matches_reference():
    levels, boxes, classes = _scene(3, 25)
    # offset the points by half a cell so no two are equally distant from a centre by symmetry
    levels = [p + torch.tensor([0.37, 0.21]) for p in levels]
    res = ATSSAssigner().assign(_priors(levels, (8, 16, 32)), boxes, classes)
    expect = _atss_reference(levels, (8, 16, 32), boxes, classes)
    got = res.gt_inds.tolist()
    assert sum(g != e for g, e in zip(got, expect)) == 0
    assert res.positive.sum() > 25
