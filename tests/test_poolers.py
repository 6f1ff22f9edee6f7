"""FPN level assignment and the multi-level RoIAlign pooler (cf. detectron2's pooler tests)."""
import math

import pytest
import torch

from crowdloss.modeling.poolers import ROIPooler, assign_boxes_to_levels
from crowdloss.ops import roi_align


def _square(side, x0=0.0):
    return [x0, 0.0, x0 + side, side]


def test_level_assignment_boundaries():
    # sqrt(area) 224 -> canonical level 4; each doubling one level up; clamped to [2, 5].
    sides = [224, 223.9, 448, 447.9, 112, 111.9, 896, 5000, 56, 1, 0]
    boxes = torch.tensor([_square(s) for s in sides])
    got = assign_boxes_to_levels([boxes], min_level=2, max_level=5) + 2
    assert got.tolist() == [4, 3, 5, 4, 3, 2, 5, 5, 2, 2, 2]


def _level(w, h, canonical_size, canonical_level, lo, hi):
    """FPN paper Eqn. 1, in Python floats."""
    return min(max(math.floor(canonical_level + math.log2(math.sqrt(w * h) / canonical_size + 2.2e-16)), lo), hi)


def test_level_assignment_formula_and_non_square_boxes():
    g = torch.Generator().manual_seed(0)
    wh = torch.exp(torch.empty(500, 2).uniform_(math.log(2), math.log(2000), generator=g))
    boxes = torch.cat([torch.zeros(500, 2), wh], dim=1).double()
    want = [_level(w, h, 224, 4, 2, 5) for w, h in wh.double().tolist()]
    got = assign_boxes_to_levels([boxes[:200], boxes[200:]], min_level=2, max_level=5) + 2
    assert got.tolist() == want
    # Inverted boxes have area 0: finest level.
    assert assign_boxes_to_levels([torch.tensor([[10.0, 10.0, 5.0, 300.0]])], min_level=2, max_level=5).tolist() == [0]
    other = assign_boxes_to_levels([boxes], min_level=3, max_level=6, canonical_box_size=100, canonical_level=5) + 3
    assert other.tolist() == [_level(w, h, 100, 5, 3, 6) for w, h in wh.double().tolist()]


def _pyramid(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, 256 // s, 320 // s, generator=g, dtype=torch.float64) for s in (4, 8, 16, 32)]


def test_pooler_pools_each_box_from_its_level_in_input_order():
    feats = _pyramid(2, 3, seed=1)
    sides = [[20, 300, 130, 250, 60], [500, 16, 230]]  # every level, interleaved
    boxes = [torch.tensor([_square(s, x0=7.0 * i) for i, s in enumerate(ss)], dtype=torch.float64) for ss in sides]
    pooler = ROIPooler()  # defaults: 7x7, P2-P5, sampling_ratio 0, 224 @ level 4, aligned
    out = pooler(feats, boxes)
    assert out.shape == (8, 3, 7, 7)
    want_levels = [2, 4, 3, 4, 2, 5, 2, 4]
    flat = [(i, b) for i, bb in enumerate(boxes) for b in bb]
    for r, ((img, box), lv) in enumerate(zip(flat, want_levels)):
        single = roi_align(feats[lv - 2][img : img + 1], [box[None]], 7, 1 / 2**lv, 0, True)
        torch.testing.assert_close(out[r], single[0], rtol=0, atol=1e-12)


def test_pooler_gradients_reach_the_used_levels():
    feats = [f.requires_grad_() for f in _pyramid(1, 2, seed=2)]
    boxes = [torch.tensor([_square(30), _square(240)], dtype=torch.float64)]  # P2 and P4 only
    ROIPooler()(feats, boxes).sum().backward()
    used = [bool(f.grad.abs().sum() > 0) for f in feats]
    assert used == [True, False, True, False]


def test_single_level_pooler_and_empty_images():
    feats = _pyramid(2, 2, seed=3)[:1]
    boxes = [torch.zeros(0, 4, dtype=torch.float64), torch.tensor([_square(500)], dtype=torch.float64)]
    out = ROIPooler(output_size=(2, 3), scales=(1 / 4,), sampling_ratio=2, aligned=False)(feats, boxes)
    torch.testing.assert_close(out, roi_align(feats[0], boxes, (2, 3), 1 / 4, 2, False))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"scales": (1 / 4, 1 / 16)}, "consecutive levels"),
        ({"scales": (1 / 3,)}, "consecutive levels"),
        ({"scales": ()}, "positive"),
        ({"output_size": 0}, "output_size"),
        ({"canonical_box_size": 0}, "canonical_box_size"),
    ],
)
def test_bad_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ROIPooler(**kwargs)


def test_bad_call_errors():
    feats = _pyramid(2, 2, seed=4)
    boxes = [torch.tensor([_square(50)], dtype=torch.float64)] * 2
    with pytest.raises(ValueError, match="3 feature maps for 4 scales"):
        ROIPooler()(feats[:3], boxes)
    with pytest.raises(ValueError, match="1 per-image box tensors for a batch of 2"):
        ROIPooler()(feats, boxes[:1])
    with pytest.raises(ValueError, match=r"features\[1\]"):
        ROIPooler()([feats[0], feats[1][:, :1]] + feats[2:], boxes)
