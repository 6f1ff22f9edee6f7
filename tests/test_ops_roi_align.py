"""crowdloss.ops.roi_align pinned to a plain-Python per-sample reference (cf. torchvision's
roi_align tests): loops over rois, bins and samples in float64, written from the definition."""
import importlib
import math

import pytest
import torch

from crowdloss.ops import roi_align, roi_align_levels

ra = importlib.import_module("crowdloss.ops.roi_align")
kernels = importlib.import_module("crowdloss.ops.roi_align_kernels")


def _bilinear(img, y, x):
    """img (C, H, W) at continuous (y, x), with the kernel's boundary rules."""
    c, h, w = len(img), len(img[0]), len(img[0][0])
    if not (-1.0 <= y <= h and -1.0 <= x <= w):
        return [0.0] * c
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return [
        hy * hx * img[k][y0][x0] + hy * lx * img[k][y0][x1] + ly * hx * img[k][y1][x0] + ly * lx * img[k][y1][x1]
        for k in range(c)
    ]


def reference_roi_align(x, rois, output_size, scale, ratio, aligned):
    """Per roi, per bin, per sample; Python floats (double)."""
    feats = x.double().tolist()
    ph_n, pw_n = output_size
    res = torch.zeros(len(rois), x.shape[1], ph_n, pw_n, dtype=torch.float64)
    off = 0.5 if aligned else 0.0
    for r, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        sx, sy = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sx, y2 * scale - off - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph_n, rw / pw_n
        gh = ratio if ratio > 0 else math.ceil(rh / ph_n)
        gw = ratio if ratio > 0 else math.ceil(rw / pw_n)
        count = max(gh * gw, 1)
        for ph in range(ph_n):
            for pw in range(pw_n):
                acc = [0.0] * x.shape[1]
                for iy in range(gh):
                    y = sy + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        xx = sx + pw * bw + (ix + 0.5) * bw / gw
                        acc = [a + v for a, v in zip(acc, _bilinear(feats[int(b)], y, xx))]
                res[r, :, ph, pw] = torch.tensor(acc, dtype=torch.float64) / count
    return res


def _rois(n, n_images, span, seed, max_size=None, dtype=torch.float64):
    """Random rois, many partly or wholly outside [0, span): corners in [-span/4, 5 span/4)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * span * 1.5 - span / 4
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * (max_size or span / 2)
    idx = torch.randint(0, n_images, (n, 1), generator=g).to(dtype)
    return torch.cat([idx, xy, xy + wh], dim=1)


def _feature(n, c, h, w, seed, dtype=torch.float64):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [0, 2, -1, 1])
@pytest.mark.parametrize("scale", [1.0, 1 / 4, 1 / 8, 1 / 16, 1 / 32])
def test_matches_reference(aligned, ratio, scale):
    x = _feature(2, 3, 7, 9, seed=1)
    # Image-frame rois; at scale s the map covers [0, 9 / s) horizontally.
    rois = _rois(24, 2, 9 / scale, seed=int(1 / scale) + ratio + 10 * aligned)
    got = roi_align(x, rois, (3, 2), scale, ratio, aligned, impl="pure")
    want = reference_roi_align(x, rois, (3, 2), scale, ratio, aligned)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_linear_map_known_values():
    # Bilinear interpolation of v(y, x) = 5y + x is exact, so each bin is v at its sample mean.
    x = torch.arange(25, dtype=torch.float64).view(1, 1, 5, 5)
    rois = torch.tensor([[0, 1.0, 1.0, 3.0, 3.0]], dtype=torch.float64)
    centres = 1.25 + 0.5 * torch.arange(4, dtype=torch.float64)  # one sample per 0.5-px bin
    legacy = roi_align(x, rois, 4, 1.0, 0, aligned=False)[0, 0]
    torch.testing.assert_close(legacy, 5 * centres[:, None] + centres[None, :])
    shifted = roi_align(x, rois, 4, 1.0, 0, aligned=True)[0, 0]  # everything 0.5 px earlier
    torch.testing.assert_close(shifted, 5 * (centres - 0.5)[:, None] + (centres - 0.5)[None, :])


def test_boundary_rules():
    h, w = 4, 6
    x = (torch.arange(h * w, dtype=torch.float64) + 1).view(1, 1, h, w)
    # One 1x1 roi, one sample at its centre (aligned=False, ratio 1): the centre is (cy, cx).
    def at(cy, cx):
        roi = torch.tensor([[0, cx - 0.5, cy - 0.5, cx + 0.5, cy + 0.5]], dtype=torch.float64)
        return float(roi_align(x, roi, 1, 1.0, 1, aligned=False))

    assert at(-1.0, 2.0) == x[0, 0, 0, 2]  # y in [-1, 0] reads row 0 fully
    assert at(-0.5, 2.0) == x[0, 0, 0, 2]
    assert at(-1.0 - 1e-9, 2.0) == 0.0  # beyond -1: nothing
    assert at(h, 2.0) == x[0, 0, h - 1, 2]  # y in [H - 1, H] reads the last row fully
    assert at(h - 0.5, 2.0) == x[0, 0, h - 1, 2]
    assert at(h + 1e-9, 2.0) == 0.0
    assert at(1.0, w) == x[0, 0, 1, w - 1]
    assert at(1.0, w + 1e-9) == 0.0
    assert at(1.25, 2.5) == pytest.approx(float(x[0, 0, 1, 2] + 0.5 + 0.25 * w))  # interior: bilinear


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [0, 2])
def test_tiny_and_huge_rois(aligned, ratio):
    x = _feature(1, 2, 6, 5, seed=3)
    rois = torch.tensor(
        [
            [0, 2.0, 2.0, 2.0, 2.0],  # empty
            [0, 2.0, 2.0, 2.2, 2.1],  # sub-pixel
            [0, 3.0, 3.0, 1.0, 2.0],  # inverted
            [0, -40.0, -30.0, 60.0, 50.0],  # far larger than the map: many samples, most outside
            [0, -9.0, -9.0, -3.0, -2.0],  # wholly outside, before the map
            [0, 7.0, 8.0, 12.0, 10.0],  # wholly outside, after the map
            [0, 0.0, 0.0, 5.0, 6.0],  # the whole map
        ],
        dtype=torch.float64,
    )
    got = roi_align(x, rois, (3, 4), 1.0, ratio, aligned)
    torch.testing.assert_close(got, reference_roi_align(x, rois, (3, 4), 1.0, ratio, aligned), rtol=0, atol=1e-12)
    if aligned and ratio == 0:
        assert got[0].abs().sum() == 0 and got[2].abs().sum() == 0  # no samples: zeros
    assert got[4].abs().sum() == 0 and got[5].abs().sum() == 0


def test_float32_against_float64_reference():
    x = _feature(2, 4, 20, 17, seed=5)
    rois = _rois(40, 2, 17 * 8, seed=6)
    got = roi_align(x.float(), rois.float(), 7, 1 / 8, 0, True)
    assert got.dtype == torch.float32
    want = reference_roi_align(x.float(), rois.float(), (7, 7), 1 / 8, 0, True)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    x = _feature(1, 2, 9, 9, seed=7)
    rois = _rois(6, 1, 9, seed=8)
    got = roi_align(x.to(dtype), rois, 3, 1.0, 0, True)
    assert got.dtype == dtype
    want = reference_roi_align(x.to(dtype), rois, (3, 3), 1.0, 0, True)
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)


def test_under_cpu_autocast():
    """Mixed-precision training (SOLVER.AMP bfloat16 on CPU) hands the pooler bfloat16 maps
    inside autocast: the forward and backward run (autocast would recast the sparse matmul to a
    dtype it lacks) and give the same numbers as outside autocast."""
    x = _feature(1, 2, 9, 9, seed=7).to(torch.bfloat16).requires_grad_()
    rois = _rois(6, 1, 9, seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = roi_align(x, rois, 3, 1.0, 0, True, impl="pure")
    (g_got,) = torch.autograd.grad(got.float().square().sum(), x)
    want = roi_align(x, rois, 3, 1.0, 0, True, impl="pure")
    (g_want,) = torch.autograd.grad(want.float().square().sum(), x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=0)


def test_batch_index_routing_and_order():
    x = _feature(3, 2, 8, 8, seed=9)
    boxes = [_rois(n, 1, 8, seed=10 + i)[:, 1:] for i, n in enumerate([4, 0, 5])]
    from_list = roi_align(x, boxes, 2, 1.0, 2, True)
    for i, b in enumerate(boxes):  # each image's rows come from that image alone
        start = sum(len(bb) for bb in boxes[:i])
        torch.testing.assert_close(from_list[start : start + len(b)], roi_align(x[i : i + 1], [b], 2, 1.0, 2, True))
    rois = ra.convert_boxes_to_rois(boxes)
    perm = torch.randperm(len(rois), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(roi_align(x, rois[perm], 2, 1.0, 2, True), from_list[perm])


def test_chunking_does_not_change_results():
    x = _feature(2, 3, 30, 40, seed=11)
    rois = _rois(60, 2, 40, seed=12)
    whole = roi_align(x, rois, 5, 1.0, 0, True)
    for budget in (1, 2000, 50_000):
        got = roi_align(x, rois, 5, 1.0, 0, True, chunk_elements=budget)
        torch.testing.assert_close(got, whole, rtol=0, atol=1e-12)


def test_chunks_stay_within_budget(monkeypatch):
    """The planner's per-roi estimate bounds what a chunk really builds (memory bound)."""
    c, out, budget = 16, (7, 7), 200_000
    x = _feature(2, c, 50, 64, seed=13, dtype=torch.float32)
    rois = _rois(300, 2, 64 * 4, seed=14, dtype=torch.float32)
    seen = []
    real = kernels._sampling_matrix

    def spy(geo, idx, out_, h, w):
        crow, col, val = real(geo, idx, out_, h, w)
        bands = [kernels._axis_bands(*(t[idx] for t in sel), n, length).__getitem__(0).shape[2]
                 for sel, n, length in (((geo[0], geo[2], geo[4]), out_[0], h), ((geo[1], geo[3], geo[5]), out_[1], w))]
        seen.append((idx.numel(), bands[0] * bands[1]))
        return crow, col, val

    monkeypatch.setattr(kernels, "_sampling_matrix", spy)
    roi_align(x, rois, out, 1 / 4, 0, True, chunk_elements=budget)
    assert len(seen) > 2 and sum(q for q, _ in seen) == 300
    for q, kk in seen:
        assert q == 1 or q * (8 * 49 * kk + 49 * c) <= budget


@pytest.mark.parametrize("aligned,ratio", [(False, 0), (True, 0), (True, 2), (False, 3)])
def test_gradcheck(aligned, ratio):
    # fast_mode compares the Jacobians along random directions: O(1) evaluations, not O(inputs).
    x = _feature(2, 2, 5, 6, seed=15).requires_grad_()
    rois = _rois(6, 2, 24, seed=16)
    fn = lambda t: roi_align(t, rois, (2, 3), 0.25, ratio, aligned, chunk_elements=300)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)


def test_gradcheck_full_jacobian_and_double_backward():
    x = _feature(1, 1, 4, 4, seed=17).requires_grad_()
    rois = torch.tensor([[0, -1.0, 0.5, 2.5, 5.0], [0, 1.2, 1.1, 3.9, 2.3]], dtype=torch.float64)
    fn = lambda t: roi_align(t, rois, 2, 1.0, 0, True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


def test_boxes_get_no_gradient_and_csr_is_valid(monkeypatch):
    monkeypatch.setattr(kernels, "CHECK_CSR", True)  # torch validates every sparse matrix built
    x = _feature(2, 3, 9, 9, seed=19).requires_grad_()
    rois = _rois(10, 2, 9, seed=20).requires_grad_()
    roi_align(x, rois, 3, 1.0, 0, True).square().sum().backward()
    assert rois.grad is None and x.grad is not None and x.grad.abs().sum() > 0


def test_channels_last_input():
    x = _feature(2, 4, 10, 12, seed=21, dtype=torch.float32)
    rois = _rois(15, 2, 12, seed=22, dtype=torch.float32)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    xn = x.clone().requires_grad_()
    g = torch.randn(15, 4, 3, 3)
    yc, yn = roi_align(xc, rois, 3, 1.0, 0, True), roi_align(xn, rois, 3, 1.0, 0, True)
    yc.backward(g)
    yn.backward(g)
    torch.testing.assert_close(yc, yn)
    torch.testing.assert_close(xc.grad, xn.grad)


def test_empty_inputs():
    x = _feature(2, 3, 6, 6, seed=23).requires_grad_()
    out = roi_align(x, torch.zeros(0, 5, dtype=torch.float64), 4, 1.0, 0, True)
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert roi_align(x[:, :0], _rois(3, 2, 6, seed=24), 2).shape == (3, 0, 2, 2)


def test_levels_match_separate_calls():
    feats = [_feature(2, 3, 16, 16, seed=25), _feature(2, 3, 8, 8, seed=26)]
    rois = _rois(20, 2, 64, seed=27)
    levels = torch.arange(20) % 2
    got = roi_align_levels(feats, rois, levels, 3, [1 / 4, 1 / 8], 0, True)
    for lv, s in enumerate([1 / 4, 1 / 8]):
        sel = levels == lv
        torch.testing.assert_close(got[sel], roi_align(feats[lv], rois[sel], 3, s, 0, True))


def test_dispatch(monkeypatch):
    x = _feature(1, 2, 6, 6, seed=28, dtype=torch.float32)
    rois = _rois(5, 1, 6, seed=29, dtype=torch.float32)
    pure = roi_align(x, rois, 2, 1.0, 0, True, impl="pure")
    if ra._tv_roi_align is None:
        assert torch.equal(roi_align(x, rois, 2, 1.0, 0, True), pure)  # "auto" is the pure path here
        with pytest.raises(RuntimeError, match="does not import"):
            roi_align(x, rois, 2, impl="torchvision")
    calls = []

    def fake(*args):
        calls.append(args[0].dtype)
        return torch.zeros(args[1].shape[0], args[0].shape[1], *args[2])

    monkeypatch.setattr(ra, "_tv_roi_align", fake)
    roi_align(x, rois, 2, 1.0, 0, True)  # auto: the compiled kernel when it imports
    roi_align(x.to(torch.bfloat16), rois, 2, 1.0, 0, True)  # a dtype it lacks: pure path
    assert torch.equal(roi_align(x, rois, 2, 1.0, 0, True, impl="pure"), pure)  # never the kernel
    assert calls == [torch.float32]


@pytest.mark.skipif(
    ra._tv_roi_align is None,
    reason="torchvision does not import here (CUDA-only build): the pure path alone is checked, "
    "against the per-sample reference in test_matches_reference and friends",
)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [0, 2])
def test_torchvision_and_pure_agree(aligned, ratio):  # pragma: no cover - needs torchvision
    x = _feature(2, 8, 25, 30, seed=30, dtype=torch.float32)
    rois = _rois(50, 2, 30 * 4, seed=31, dtype=torch.float32)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ys = [roi_align(t, rois, 7, 0.25, ratio, aligned, impl=impl) for t, impl in zip(xs, ("pure", "torchvision"))]
    g = torch.randn_like(ys[0])
    for y in ys:
        y.backward(g)
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x, r: roi_align(x[0], r, 2), "N, C, H, W"),
        (lambda x, r: roi_align(x.long(), r, 2), "floating"),
        (lambda x, r: roi_align(x, r[:, 1:], 2), r"\(R, 5\)"),
        (lambda x, r: roi_align(x, [r[:, 1:]] * 3, 2), "3 per-image box tensors for a batch of 2"),
        (lambda x, r: roi_align(x, [r], 2), r"boxes\[0\] must be a \(B_i, 4\)"),
        (lambda x, r: roi_align(x, r, 0), "output_size"),
        (lambda x, r: roi_align(x, r, 2, impl="fast"), "impl"),
        (lambda x, r: roi_align(x, r, 2, spatial_scale=0.0), "positive scale"),
        (lambda x, r: roi_align(x, r, 2, chunk_elements=0), "chunk_elements"),
        (lambda x, r: roi_align(x, torch.cat([r, torch.tensor([[2.0, 0, 0, 1, 1]])]), 2), r"roi 3 .*\[0, 2\)"),
        (lambda x, r: roi_align(x, torch.tensor([[0.5, 0, 0, 1, 1]]), 2), "integer image index"),
        (lambda x, r: roi_align(x, torch.tensor([[0.0, 0, float("nan"), 1, 1]]), 2), "finite"),
        (lambda x, r: roi_align(x, torch.tensor([[0.0, 0, 0, 1e12, 1]]), 2), "samples along one axis"),
        (lambda x, r: roi_align_levels([x, x[:, :1]], r, torch.zeros(3, dtype=torch.long), 2, [1, 0.5]), "map 1"),
        (lambda x, r: roi_align_levels([x], r, torch.ones(3, dtype=torch.long), 2, [1]), "levels must lie"),
        (lambda x, r: roi_align_levels([x], r, torch.zeros(2, dtype=torch.long), 2, [1]), "levels must be"),
        (lambda x, r: roi_align_levels([x, x], r, torch.zeros(3, dtype=torch.long), 2, [1]), "one positive scale"),
    ],
)
def test_bad_input_errors(call, match):
    x = torch.zeros(2, 3, 5, 5)
    rois = torch.tensor([[0.0, 0, 0, 2, 2], [1.0, 1, 1, 3, 4], [0.0, 2, 2, 4, 4]])
    with pytest.raises(ValueError, match=match):
        call(x, rois)
