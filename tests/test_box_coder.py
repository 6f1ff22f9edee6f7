"""Box coders: hand values and round trips."""
import math

import pytest
import torch

from crowdloss.modeling.box_coder import Box2BoxTransform, Shift2BoxTransform


def _boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    return torch.cat([xy, xy + 2 + torch.rand(n, 2, generator=g) * 60], dim=1)


def test_box2box_hand_value():
    t = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    src = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    tgt = torch.tensor([[2.0, 0.0, 22.0, 20.0]])
    d = t.get_deltas(src, tgt)[0].tolist()
    assert d == pytest.approx([10 * 7 / 10, 0.0, 5 * math.log(2), 0.0])


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box2box_round_trip(weights):
    t = Box2BoxTransform(weights=weights)
    src, tgt = _boxes(50, 0), _boxes(50, 1)
    back = t.apply_deltas(t.get_deltas(src, tgt), src)
    assert torch.allclose(back, tgt, atol=1e-3)
    # k boxes per row (class-specific deltas) keep their layout
    two = t.apply_deltas(torch.cat([t.get_deltas(src, tgt), torch.zeros(50, 4)], 1), src)
    assert two.shape == (50, 8) and torch.allclose(two[:, 4:], src, atol=1e-4)


def test_box2box_scale_clamp():
    t = Box2BoxTransform()
    out = t.apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert torch.isfinite(out).all()
    assert (out[0, 2] - out[0, 0]).item() == pytest.approx(1000.0, rel=1e-4)
    with pytest.raises(ValueError, match="weights"):
        Box2BoxTransform(weights=(1.0, 1.0, 1.0))


def test_shift2box():
    t = Shift2BoxTransform()
    shifts = torch.tensor([[5.0, 5.0], [20.0, 5.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 20.0]])
    d = t.get_deltas(shifts, boxes)
    assert d.tolist() == [[5.0, 5.0, 5.0, 15.0], [20.0, 5.0, -10.0, 15.0]]
    assert torch.equal(t.apply_deltas(d, shifts), boxes)
    # broadcast: (1, R, 2) x (M, 1, 4) -> (M, R, 4)
    all_pairs = t.get_deltas(shifts[None], _boxes(3, 2)[:, None])
    assert all_pairs.shape == (3, 2, 4)
    w = Shift2BoxTransform(weights=(2.0, 2.0, 2.0, 2.0))
    assert torch.allclose(w.apply_deltas(w.get_deltas(shifts, boxes), shifts), boxes)
    assert torch.equal(w.get_deltas(shifts, boxes), 2 * d)
