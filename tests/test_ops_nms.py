"""NMS pinned to a plain-Python greedy reference (cf. torchvision TestNMS).

The kernel tests call the pure-PyTorch path (``_nms_pure``) directly, so they pin its rules
(ties: lower index first) whether or not torchvision imports on the machine; the public ``nms``
dispatches to torchvision's compiled kernel when it imports, which may order exactly tied scores
differently, so it is compared with the pure path on untied scores only.
"""
import importlib

import pytest
import torch

from crowdloss.ops import batched_nms, box_iou, nms

nms_impl = importlib.import_module("crowdloss.ops.nms")


# Small tensors and many small ops: one intra-op thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def pure(boxes, scores, thr):
    return nms_impl._nms_pure(boxes.float(), scores.float(), float(thr))


def _reference_nms(boxes, scores, thr):
    s = scores.tolist()
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))
    iou = box_iou(boxes, boxes).tolist()
    keep = []
    for i in order:
        if all(iou[i][k] <= thr for k in keep):
            keep.append(i)
    return keep


def _crowded(n, seed, size=200.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = 10 + torch.rand(n, 2, generator=g) * 40
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=g)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_reference(seed, thr):
    boxes, scores = _crowded(300 + 97 * seed, seed)
    assert pure(boxes, scores, thr).tolist() == _reference_nms(boxes, scores, thr)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("thr", [0.0, 0.5, 0.7])
def test_public_nms_equals_pure_path(seed, thr):
    # Whichever kernel ``nms`` dispatches to (torchvision's when it imports, the pure one here),
    # it must agree with the pure path; untied scores, where the greedy result is unique.
    boxes, scores = _crowded(600 + 50 * seed, 20 + seed)
    assert scores.unique().numel() == scores.numel()
    keep = nms(boxes, scores, thr)
    assert keep.dtype == torch.long
    assert keep.tolist() == pure(boxes, scores, thr).tolist()


def test_dispatch(monkeypatch):
    boxes, scores = _crowded(50, 5)
    calls = []

    def fake_tv_nms(b, s, t):
        calls.append((b.dtype, s.dtype, t))
        return nms_impl._nms_pure(b, s, t)

    monkeypatch.setattr(nms_impl, "_tv_nms", fake_tv_nms)
    assert nms(boxes.double(), scores.double(), 0.5).tolist() == pure(boxes, scores, 0.5).tolist()
    assert calls == [(torch.float32, torch.float32, 0.5)]
    monkeypatch.setattr(nms_impl, "_tv_nms", None)
    assert nms(boxes, scores, 0.5).tolist() == pure(boxes, scores, 0.5).tolist()
    assert len(calls) == 1  # the pure path ran


def test_ties_and_multi_block():
    # Quantised scores -> many ties; > 2 blocks so cross-block suppression is exercised.
    boxes, scores = _crowded(700, 11, size=120.0)
    scores = (scores * 5).floor() / 5
    keep = pure(boxes, scores, 0.5)
    assert keep.tolist() == _reference_nms(boxes, scores, 0.5)
    s = scores[keep]
    assert (s[:-1] >= s[1:]).all()


def test_edge_cases():
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.long and empty.shape == (0,)
    empty = pure(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.long and empty.shape == (0,)
    one = pure(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.3]), 0.5)
    assert one.tolist() == [0]
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(6, 1)
    # identical boxes, identical scores: lowest index wins
    assert pure(same, torch.ones(6), 0.5).tolist() == [0]
    assert pure(same, torch.arange(6.0), 0.5).tolist() == [5]
    # IoU == 1 is not > 1: nothing is suppressed at threshold 1
    assert pure(same, torch.ones(6), 1.0).tolist() == list(range(6))
    # disjoint boxes survive threshold 0; touching edges have IoU 0
    disjoint = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0], [0.5, 0.0, 1.5, 1.0]])
    assert pure(disjoint, torch.tensor([0.9, 0.8, 0.1]), 0.0).tolist() == [0, 1]
    # negative threshold: IoU 0 > thr, so the best box suppresses every other one
    assert pure(disjoint, torch.tensor([0.9, 0.8, 0.1]), -0.1).tolist() == [0]
    # degenerate (zero-area) boxes have IoU 0 with everything and always survive
    flat = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 2.0, 8.0], [0.0, 0.0, 10.0, 10.0]])
    assert pure(flat, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 1]
    with pytest.raises(ValueError, match="scores"):
        nms(same, torch.ones(5), 0.5)


def test_chain_suppression():
    # A suppresses B, B would suppress C, but B is gone so C survives (greedy, not transitive).
    boxes = torch.tensor([[0.0, 0, 10, 10], [4.0, 0, 14, 10], [8.0, 0, 18, 10]])
    assert pure(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]


@pytest.mark.parametrize("seed", range(3))
def test_batched_nms_matches_per_class(seed):
    boxes, scores = _crowded(400, 100 + seed)
    assert scores.unique().numel() == scores.numel()  # any kernel: one greedy answer
    idxs = torch.randint(0, 3, (400,), generator=torch.Generator().manual_seed(seed))
    keep = batched_nms(boxes, scores, idxs, 0.5)
    expected = []
    for c in range(3):
        sel = torch.nonzero(idxs == c).squeeze(1)
        expected += sel[torch.tensor(_reference_nms(boxes[sel], scores[sel], 0.5), dtype=torch.long)].tolist()
    expected.sort(key=lambda i: (-float(scores[i]), i))
    assert keep.tolist() == expected
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)
