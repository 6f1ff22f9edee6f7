"""ShiftGenerator and AnchorGenerator layouts."""
import pytest
import torch

from crowdloss.modeling.anchors import AnchorGenerator
from crowdloss.modeling.shifts import ShiftGenerator


def _feats(*hw):
    return [torch.zeros(2, 3, h, w) for h, w in hw]


def test_shift_generator_layout():
    gen = ShiftGenerator(strides=(8, 16))
    p3, p4 = gen(_feats((2, 3), (1, 2)))
    assert p3.shape == (6, 2) and p4.shape == (2, 2)
    # row-major, y outer
    assert p3.tolist() == [[0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8]]
    assert p4.tolist() == [[0, 0], [16, 0]]
    centred = ShiftGenerator(strides=(8,), offset=0.5)(_feats((1, 2)))[0]
    assert centred.tolist() == [[4, 4], [12, 4]]
    with pytest.raises(ValueError, match="levels"):
        gen(_feats((2, 2)))


def test_anchor_generator_ratios_and_order():
    gen = AnchorGenerator(sizes=[[32.0]], aspect_ratios=[[1.0, 4.0]], strides=(8,))
    assert gen.num_anchors == 2
    (a,) = gen(_feats((1, 2)))
    assert a.shape == (4, 4)
    # location 0: square 32x32, then h/w = 4 -> w 16, h 64; location 1 shifted by the stride
    assert a[0].tolist() == [-16, -16, 16, 16]
    assert a[1].tolist() == [-8, -32, 8, 32]
    assert a[2].tolist() == [-8, -16, 24, 16]
    assert a[3].tolist() == [0, -32, 16, 32]


def test_anchor_generator_per_level_and_broadcast():
    sizes = [[x, x * 2 ** (1 / 3), x * 2 ** (2 / 3)] for x in (32, 64)]
    gen = AnchorGenerator(sizes=sizes, aspect_ratios=[1.0, 2.0, 3.0], strides=(8, 16), offset=0.5)
    assert gen.num_anchors == 9
    a3, a4 = gen(_feats((2, 2), (1, 1)))
    assert a3.shape == (36, 4) and a4.shape == (9, 4)
    area = (a4[:, 2] - a4[:, 0]) * (a4[:, 3] - a4[:, 1])
    assert torch.allclose(area[:3], torch.full((3,), 64.0**2))
    assert torch.allclose(((a4[:, 0] + a4[:, 2]) / 2), torch.full((9,), 8.0))  # (0 + 0.5) * 16
    hw = (a3[:9, 3] - a3[:9, 1]) / (a3[:9, 2] - a3[:9, 0])
    assert torch.allclose(hw, torch.tensor([1.0, 2.0, 3.0] * 3), atol=1e-5)
    with pytest.raises(ValueError, match="per-level"):
        AnchorGenerator(sizes=[[32], [64], [128]], aspect_ratios=[1.0], strides=(8, 16))
    with pytest.raises(ValueError, match="same anchor count"):
        AnchorGenerator(sizes=[[32], [64, 90]], aspect_ratios=[1.0], strides=(8, 16))
