"""ShiftGenerator / AnchorGenerator layouts (incl. per-level counts and SSD default boxes),
and the Priors they return."""
import math

import pytest
import torch

from crowdloss.modeling.anchors import AnchorGenerator
from crowdloss.modeling.shifts import ShiftGenerator


def _feats(*hw):
    return [torch.zeros(2, 3, h, w) for h, w in hw]


def test_shift_generator_layout():
    gen = ShiftGenerator(strides=(8, 16))
    priors = gen(_feats((2, 3), (1, 2)))
    assert priors.is_points and priors.num_per_level == [6, 2] and priors.strides == [8, 16]
    assert priors.level_stride().tolist() == [8] * 6 + [16] * 2
    p3, p4 = priors.per_level()
    assert p3.shape == (6, 2) and p4.shape == (2, 2)
    # row-major, y outer
    assert p3.tolist() == [[0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8]]
    assert p4.tolist() == [[0, 0], [16, 0]]
    centred = ShiftGenerator(strides=(8,), offset=0.5)(_feats((1, 2))).tensor
    assert centred.tolist() == [[4, 4], [12, 4]]
    with pytest.raises(ValueError, match="levels"):
        gen(_feats((2, 2)))


def test_anchor_generator_ratios_and_order():
    gen = AnchorGenerator(sizes=[[32.0]], aspect_ratios=[[1.0, 4.0]], strides=(8,))
    assert gen.num_anchors == 2
    (a,) = gen(_feats((1, 2))).per_level()
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
    a3, a4 = gen(_feats((2, 2), (1, 1))).per_level()
    assert a3.shape == (36, 4) and a4.shape == (9, 4)
    area = (a4[:, 2] - a4[:, 0]) * (a4[:, 3] - a4[:, 1])
    assert torch.allclose(area[:3], torch.full((3,), 64.0**2))
    assert torch.allclose(((a4[:, 0] + a4[:, 2]) / 2), torch.full((9,), 8.0))  # (0 + 0.5) * 16
    hw = (a3[:9, 3] - a3[:9, 1]) / (a3[:9, 2] - a3[:9, 0])
    assert torch.allclose(hw, torch.tensor([1.0, 2.0, 3.0] * 3), atol=1e-5)
    with pytest.raises(ValueError, match="per-level"):
        AnchorGenerator(sizes=[[32], [64], [128]], aspect_ratios=[1.0], strides=(8, 16))


def test_anchor_generator_different_counts_per_level():
    gen = AnchorGenerator(sizes=[[32], [64, 90]], aspect_ratios=[1.0], strides=(8, 16))
    assert gen.num_anchors_per_level == [1, 2]
    with pytest.raises(ValueError, match="different anchor counts"):
        gen.num_anchors  # a head shared across levels cannot serve it
    priors = gen(_feats((2, 2), (1, 1)))
    assert priors.num_per_level == [4, 2] and len(priors) == 6
    assert torch.allclose(priors.centers()[4:], torch.zeros(2, 2))


def test_ssd300_default_boxes():
    # ssd.pytorch's VOC SSD300 configuration: 8,732 default boxes, 4/6/6/6/4/4 per location.
    gen = AnchorGenerator.from_ssd(
        steps=[8, 16, 32, 64, 100, 300], min_sizes=[30, 60, 111, 162, 213, 264],
        max_sizes=[60, 111, 162, 213, 264, 315],
        aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]], image_size=300)
    assert gen.num_anchors_per_level == [4, 6, 6, 6, 4, 4]
    priors = gen(_feats((38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)))
    assert len(priors) == 8732
    first = priors.tensor[:4]  # cell (0, 0) of conv4_3: centre (4, 4)
    s2 = math.sqrt(30 * 60)
    w2, h2 = 30 * math.sqrt(2), 30 / math.sqrt(2)
    expect = [[4 - 15, 4 - 15, 4 + 15, 4 + 15], [4 - s2 / 2, 4 - s2 / 2, 4 + s2 / 2, 4 + s2 / 2],
              [4 - w2 / 2, 4 - h2 / 2, 4 + w2 / 2, 4 + h2 / 2], [4 - h2 / 2, 4 - w2 / 2, 4 + h2 / 2, 4 + w2 / 2]]
    assert torch.allclose(first, torch.tensor(expect), atol=1e-4)
    # Second location of a level: one step to the right (x inner), anchors contiguous.
    assert torch.allclose(priors.tensor[4:8] - first, torch.tensor([8.0, 0.0, 8.0, 0.0]))
    # The last level: one 300-px cell; widths clamped to 300 as ssd.pytorch clamps cx, cy, w, h.
    last = priors.tensor[-4:]
    widths = last[:, 2] - last[:, 0]
    assert torch.allclose(widths, torch.tensor([264.0, math.sqrt(264 * 315), 300.0, 264 / math.sqrt(2)]),
                          atol=1e-3)
    assert torch.allclose(priors.centers()[-4:], torch.full((4, 2), 150.0))
