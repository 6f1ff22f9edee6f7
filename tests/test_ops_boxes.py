"""crowdloss.ops.boxes against naive per-pair formulas."""
import math

import pytest
import torch

from crowdloss.ops import (
    aligned_giou,
    aligned_iou,
    box_area,
    box_ioa,
    box_iou,
    box_xywh_to_xyxy,
    box_xyxy_to_xywh,
    clip_boxes,
    generalized_box_iou,
    nonempty_boxes,
)


def _rand_boxes(n, seed, size=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 3
    return torch.cat([xy, xy + wh], dim=1)


def _naive(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    aa = (a[2] - a[0]) * (a[3] - a[1])
    ab = (b[2] - b[0]) * (b[3] - b[1])
    union = aa + ab - inter
    cx = max(a[2], b[2]) - min(a[0], b[0])
    cy = max(a[3], b[3]) - min(a[1], b[1])
    enc = cx * cy
    iou = inter / union
    return iou, iou - (enc - union) / enc, inter / aa


def test_pairwise_vs_naive():
    a, b = _rand_boxes(7, 0), _rand_boxes(5, 1)
    iou, giou, ioa = box_iou(a, b), generalized_box_iou(a, b), box_ioa(a, b)
    assert iou.shape == giou.shape == ioa.shape == (7, 5)
    for i in range(7):
        for j in range(5):
            e_iou, e_giou, e_ioa = _naive(a[i].tolist(), b[j].tolist())
            assert iou[i, j].item() == pytest.approx(e_iou, abs=1e-6)
            assert giou[i, j].item() == pytest.approx(e_giou, abs=1e-6)
            assert ioa[i, j].item() == pytest.approx(e_ioa, abs=1e-6)
    assert (iou > 0).any()  # the random boxes do overlap somewhere


def test_hand_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 0.0, 30.0, 10.0], [0.0, 0.0, 5.0, 5.0]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([50 / 150, 0.0, 25 / 100])
    # disjoint boxes: enclosing 30x10, union 200 -> giou = 0 - 100/300
    assert generalized_box_iou(a, b)[0, 1].item() == pytest.approx(-1 / 3)
    assert box_ioa(b, a)[:, 0].tolist() == pytest.approx([0.5, 0.0, 1.0])
    assert box_ioa(a, b)[0].tolist() == pytest.approx([0.5, 0.0, 0.25])
    assert box_area(b).tolist() == [100.0, 100.0, 25.0]


def test_aligned_matches_diagonal():
    a, b = _rand_boxes(9, 2), _rand_boxes(9, 3)
    assert torch.allclose(aligned_iou(a, b), box_iou(a, b).diagonal(), atol=1e-6)
    assert torch.allclose(aligned_giou(a, b), generalized_box_iou(a, b).diagonal(), atol=1e-6)
    with pytest.raises(ValueError, match="equal shape"):
        aligned_iou(a, b[:3])


def test_empty_and_degenerate():
    e = torch.zeros(0, 4)
    b = _rand_boxes(3, 4)
    assert box_iou(e, b).shape == (0, 3)
    assert generalized_box_iou(b, e).shape == (3, 0)
    assert box_ioa(e, e).shape == (0, 0)
    assert aligned_iou(e, e).shape == (0,)
    assert box_area(e).shape == (0,)
    assert clip_boxes(e, (10, 10)).shape == (0, 4)
    assert nonempty_boxes(e).shape == (0,)
    assert box_xywh_to_xyxy(e).shape == (0, 4)
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_iou(point, point).item() == 0.0  # 0/0 -> 0, never NaN
    assert box_ioa(point, b).eq(0).all()
    assert torch.isfinite(generalized_box_iou(point, point)).all()
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        box_iou(torch.zeros(3, 5), b)


def test_clip_nonempty_convert():
    boxes = torch.tensor([[-5.0, -2.0, 50.0, 8.0], [3.0, 3.0, 3.5, 9.0]])
    assert clip_boxes(boxes, (6, 40)).tolist() == [[0.0, 0.0, 40.0, 6.0], [3.0, 3.0, 3.5, 6.0]]
    assert nonempty_boxes(boxes).tolist() == [True, True]
    assert nonempty_boxes(boxes, threshold=1.0).tolist() == [True, False]
    xywh = box_xyxy_to_xywh(boxes)
    assert xywh[1].tolist() == [3.0, 3.0, 0.5, 6.0]
    assert torch.equal(box_xywh_to_xyxy(xywh), boxes)


def test_large_pairwise_is_sane():
    # M=400 x N=25,000 must work with (M, N) temporaries only.
    a, b = _rand_boxes(400, 5, 800.0), _rand_boxes(25000, 6, 800.0)
    iou = box_iou(a, b)
    assert iou.shape == (400, 25000)
    assert float(iou.max()) <= 1.0 + 1e-6 and float(iou.min()) >= 0.0
    assert not math.isnan(float(iou.sum()))
