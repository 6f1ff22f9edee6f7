"""AP Loss and aLRP Loss against a plain per-positive transcription of their definitions.

The reference below loops over the positives in ascending score order, in float64, the way
the authors' code does (arXiv 1904.06373, 2009.13592): for positive i, H of its score gaps to
every positive and every relevant negative, rank+, N_FP, the interpolated precision (AP Loss),
the 1e-5 guard on N_FP (aLRP), the error-driven update, all normalised by P.
"""
import pytest
import torch

from crowdloss.modeling.losses import alrp_loss, ap_loss


# Small tensors and many small ops: one intra-op thread (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def h(x, delta):
    return torch.clamp(x / (2 * delta) + 0.5, min=0, max=1)


def reference(logits, labels, loc_errors, delta=1.0, eps=1e-5):
    """Both losses in one pass: {"ap": (value, grad), "alrp": (cls, grad, loc, loc_grad)}."""
    x = logits.detach().double().reshape(-1)
    lab = labels.reshape(-1)
    fg = lab == 1
    s = x[fg]
    num_pos = s.numel()
    err = loc_errors.detach().double().reshape(-1)
    if num_pos == 0:
        zero = torch.zeros_like(x)
        return {"ap": (0.0, zero), "alrp": (0.0, zero, 0.0, torch.zeros_like(err))}
    # only negatives with s_j >= min(s) - delta can ever have H > 0
    rel = (lab == 0) & (x >= s.min() - delta)
    t = x[rel]
    new = lambda n: torch.zeros(n, dtype=torch.float64)  # noqa: E731
    rank, ap_prec, alrp_prec = new(num_pos), new(num_pos), new(num_pos)
    ap_fg, ap_bg, alrp_fg, alrp_bg = new(num_pos), new(t.numel()), new(num_pos), new(t.numel())
    max_prec = 0.0
    for i in torch.argsort(s).tolist():
        fg_rel = h(s - s[i], delta)
        fg_rel[i] = 0
        bg_rel = h(t - s[i], delta)
        rank_pos = 1 + fg_rel.sum()
        n_fp = bg_rel.sum()
        rank[i] = rank_pos + n_fp
        cur = float(rank_pos / rank[i])
        # AP Loss, interpolated precision
        if max_prec <= cur:
            max_prec = cur
            ap_bg += bg_rel / rank[i]
        else:
            ap_bg += bg_rel / rank[i] * (1 - max_prec) / (1 - cur)
        ap_fg[i] = -(1 - max_prec)
        ap_prec[i] = max_prec
        # aLRP
        alrp_prec[i] = cur
        if n_fp > eps:
            alrp_fg[i] = -((fg_rel * err).sum() + n_fp) / rank[i]
            alrp_bg += bg_rel * (-alrp_fg[i] / n_fp)
    out = {}
    for name, fg_grad, bg_grad, prec in (("ap", ap_fg, ap_bg, ap_prec),
                                         ("alrp", alrp_fg, alrp_bg, alrp_prec)):
        grad = torch.zeros_like(x)
        grad[fg] = fg_grad
        grad[rel] = bg_grad
        out[name] = (float(1 - prec.mean()), grad / num_pos)
    # localisation: mean_i (sum_{k: s_k >= s_i} E_k) / rank_i with rank a constant
    loc, loc_grad = 0.0, torch.zeros_like(err)
    for i in range(num_pos):
        above = s >= s[i]
        loc += float(err[above].sum() / rank[i]) / num_pos
        loc_grad[above] += 1 / rank[i] / num_pos
    out["alrp"] += (loc, loc_grad)
    return out


def ours(logits, labels, loc_errors=None, **kw):
    x = logits.detach().clone().requires_grad_(True)
    if loc_errors is None:
        loss = ap_loss(x, labels, **kw)
        loss.backward()
        return loss.detach(), x.grad
    e = loc_errors.detach().clone().requires_grad_(True)
    cls, loc = alrp_loss(x, labels, e, **kw)
    (cls + loc).backward()
    return cls.detach(), x.grad, loc.detach(), e.grad


def assert_close(a, b, rtol):
    """Elementwise |a - b| <= rtol * max(|b_i|, 1e-3 * max|b|): relative, with a floor for
    entries many orders below the largest (their cancellation error is set by the largest)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape
    scale = b.abs().max().clamp_min(1e-300)
    tol = rtol * torch.maximum(b.abs(), 1e-9 * scale)
    bad = (a - b).abs() > tol
    assert not bad.any(), (f"{int(bad.sum())} of {a.numel()} differ; worst "
                           f"{((a - b).abs() / tol).max():.3g} x tol")


def make(num_anchors, num_classes, pos_frac, seed, *, ignore_frac=0.05, grid=None,
         dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n = num_anchors * num_classes
    u = torch.rand(n, generator=g)
    labels = torch.zeros(n, dtype=torch.long)
    labels[u < pos_frac] = 1
    labels[(u >= pos_frac) & (u < pos_frac + ignore_frac)] = -1
    logits = torch.randn(n, generator=g) * 1.5 - 1.0 + labels.clamp(min=0) * 1.5
    if grid:  # scores on a grid: ties everywhere, gaps of exactly +-delta
        logits = torch.round(logits / grid) * grid
    num_pos = int((labels == 1).sum())
    loc = torch.rand(num_pos, generator=g, dtype=torch.float64) * 2
    return logits.to(dtype), labels, loc.to(dtype)


CASES = {
    "random": dict(num_anchors=200, num_classes=3, pos_frac=0.05, seed=0),
    "ties": dict(num_anchors=150, num_classes=2, pos_frac=0.1, seed=1, grid=0.5),
    "many_classes": dict(num_anchors=40, num_classes=80, pos_frac=0.004, seed=2),
    "float64": dict(num_anchors=100, num_classes=4, pos_frac=0.05, seed=3, dtype=torch.float64),
}


def check_against_reference(logits, labels, loc, rtol, **kw):
    ref = reference(logits, labels, loc, **kw)
    value, grad = ours(logits, labels, **kw)
    assert value.dtype == logits.dtype and grad.dtype == logits.dtype
    assert_close(value, ref["ap"][0], rtol)
    assert_close(grad, ref["ap"][1], rtol)
    # positives and negatives receive updates of equal total magnitude
    assert float(grad[labels == 1].sum()) == pytest.approx(-float(grad[labels == 0].sum()),
                                                           rel=1e-5, abs=1e-12)
    result = ours(logits, labels, loc, **kw)
    cls, grad, loc_value, loc_grad = result
    assert cls.dtype == logits.dtype and grad.dtype == logits.dtype
    assert loc_value.dtype == loc.dtype and loc_grad.dtype == loc.dtype
    for a, b in zip(result, ref["alrp"]):
        assert_close(a, b, rtol)
    assert float(grad[labels == 1].sum()) == pytest.approx(-float(grad[labels == 0].sum()),
                                                           rel=1e-5, abs=1e-12)
    return result


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("delta", [1.0, 0.4])
def test_losses_match_reference(case, delta):
    logits, labels, loc = make(**CASES[case])
    check_against_reference(logits, labels, loc, 1e-6, delta=delta)


def test_hand_computed_two_positives_one_negative():
    # s = [2, 0] positives, 1 negative at 0.5; delta = 1.
    logits = torch.tensor([2.0, 0.0, 0.5], dtype=torch.float64)
    labels = torch.tensor([1, 1, 0])
    # positive 0: rank+ = 1 + H(-2) = 1, N_FP = H(-1.5) = 0 -> prec 1
    # positive 1: rank+ = 1 + H(2) = 2, N_FP = H(0.5) = 0.75 -> prec 2 / 2.75
    value, grad = ours(logits, labels)
    assert float(value) == pytest.approx(1 - (1 + 2 / 2.75) / 2)
    # visiting ascending: positive 1 first (max_prec = its prec), positive 0 next (prec 1)
    assert grad.tolist() == pytest.approx([0.0, -(1 - 2 / 2.75) / 2, 0.75 / 2.75 / 2])
    err = torch.tensor([0.2, 0.6], dtype=torch.float64)
    cls, grad, loc, loc_grad = ours(logits, labels, err)
    assert float(cls) == pytest.approx((0 + 0.75 / 2.75) / 2)
    g1 = -(1.0 * 0.2 + 0.75) / 2.75  # H(2 - 0) E_0 + N_FP, over rank
    assert grad.tolist() == pytest.approx([0.0, g1 / 2, -g1 / 2])
    assert float(loc) == pytest.approx((0.2 / 1 + (0.2 + 0.6) / 2.75) / 2)
    assert loc_grad.tolist() == pytest.approx([(1 + 1 / 2.75) / 2, 1 / 2.75 / 2])


def test_negatives_all_far_below_give_zero_update():
    logits = torch.tensor([3.0, 2.5, 0.9, -4.0, 1.0, 0.5])
    labels = torch.tensor([1, 1, 0, 0, -1, 0])
    # every negative is more than delta below the lowest positive: N_FP = 0 everywhere
    for delta in (1.0, 0.5):
        value, grad = ours(logits, labels, delta=delta)
        assert float(value) == 0.0 and not grad.any()
        cls, grad, loc, loc_grad = ours(logits, labels, torch.tensor([0.5, 1.0]), delta=delta)
        assert float(cls) == 0.0 and not grad.any()  # the 1e-5 guard: no update at all
        check_against_reference(logits, labels, torch.tensor([0.5, 1.0]), 1e-6, delta=delta)


def test_single_positive_and_ignored_entries():
    logits, labels, loc = make(100, 3, 0.0, seed=5)
    labels[7] = 1
    loc = torch.tensor([0.7])
    _, grad, _, _ = check_against_reference(logits, labels, loc, 1e-6)
    assert not grad[labels == -1].any() and not ours(logits, labels)[1][labels == -1].any()
    # ignored entries do not change the loss whatever their score
    moved = logits.clone()
    moved[labels == -1] = 10.0
    assert float(ap_loss(moved, labels)) == float(ap_loss(logits, labels))
    assert float(alrp_loss(moved, labels, loc)[0]) == float(alrp_loss(logits, labels, loc)[0])


def test_no_positives_is_zero_without_nan():
    logits = torch.randn(50, requires_grad=True)
    labels = torch.zeros(50, dtype=torch.long)
    labels[:3] = -1
    loss = ap_loss(logits, labels)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(logits.grad, torch.zeros(50))
    logits.grad = None
    e = torch.zeros(0, requires_grad=True)
    cls, loc = alrp_loss(logits, labels, e)
    (cls + 50 * loc).backward()
    assert float(cls.detach()) == 0.0 and float(loc.detach()) == 0.0
    assert torch.equal(logits.grad, torch.zeros(50)) and e.grad.shape == (0,)


def test_loss_follows_graph_and_shapes():
    # 2-D (R, K) inputs and a graph upstream of the logits and of the localisation errors
    logits, labels, loc = make(60, 5, 0.05, seed=6)
    w = torch.tensor(2.0, requires_grad=True)
    v = torch.tensor(1.0, requires_grad=True)
    cls, loss_loc = alrp_loss((logits * w).reshape(60, 5), labels.reshape(60, 5), loc * v)
    (cls + loss_loc).backward()
    assert w.grad is not None and v.grad is not None
    assert float(v.grad) == pytest.approx(float(loss_loc.detach()))  # linear in the errors


def test_bad_inputs_raise_clear_errors():
    logits = torch.zeros(4)
    with pytest.raises(ValueError, match="same shape"):
        ap_loss(logits, torch.zeros(5))
    with pytest.raises(ValueError, match=r"labels\[2\].*expected 1"):
        ap_loss(logits, torch.tensor([1, 0, 2, 0]))
    with pytest.raises(ValueError, match="delta"):
        ap_loss(logits, torch.tensor([1, 0, 0, 0]), delta=0.0)
    with pytest.raises(ValueError, match="one per positive"):
        alrp_loss(logits, torch.tensor([1, 1, 0, 0]), torch.zeros(3))
    with pytest.raises(TypeError, match="floating"):
        ap_loss(torch.zeros(4, dtype=torch.long), torch.tensor([1, 0, 0, 0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits, labels, loc = make(500, 4, 0.02, seed=7)
    for dev_out, cpu_out in ((ours(logits.cuda(), labels.cuda()), ours(logits, labels)),
                             (ours(logits.cuda(), labels.cuda(), loc.cuda()),
                              ours(logits, labels, loc))):
        for a, b in zip(dev_out, cpu_out):
            assert a.device.type == "cuda"
            assert_close(a.cpu(), b, 1e-6)


@pytest.mark.slow
def test_large_batch_matches_reference():
    # P = 2,000 positives among Q = 200,000 negatives (plus ignored entries)
    g = torch.Generator().manual_seed(8)
    num_pos, num_neg = 2000, 200_000
    labels = torch.cat([torch.ones(num_pos, dtype=torch.long),
                        torch.zeros(num_neg, dtype=torch.long),
                        -torch.ones(5000, dtype=torch.long)])
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    # a detector some way into training: positives ~ N(0, 1.5), a quarter of the negatives
    # hard (~ N(-1, 1.5), among the positives), the rest easy background (~ N(-7, 1)); about
    # 60,000 negatives are relevant, enough for the sums and little enough for the loop
    hard = torch.rand(labels.numel(), generator=g) < 0.25
    noise = torch.randn(labels.numel(), generator=g)
    logits = torch.where(labels == 1, noise * 1.5, torch.where(hard, noise * 1.5 - 1, noise - 7))
    loc = torch.rand(num_pos, generator=g) * 2
    relevant = (labels == 0) & (logits > logits[labels == 1].min() - 1)
    assert int(relevant.sum()) > 50_000
    check_against_reference(logits, labels, loc, 1e-5)


def test_non_finite_logits_give_non_finite_loss():
    logits, labels, loc = make(50, 2, 0.1, seed=9)
    logits[3] = float("nan")
    assert torch.isnan(ap_loss(logits, labels))
    assert torch.isnan(alrp_loss(logits, labels, loc)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    logits, labels, loc = make(100, 2, 0.05, seed=10)
    logits = logits.to(dtype)
    ref = reference(logits, labels, loc)  # on the same (rounded) scores
    value, grad = ours(logits, labels)
    assert value.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(grad.double(), ref["ap"][1], rtol=1e-2, atol=1e-5)
    cls, grad, loc_value, _ = ours(logits, labels, loc)
    assert cls.dtype == dtype and grad.dtype == dtype and loc_value.dtype == loc.dtype
    torch.testing.assert_close(grad.double(), ref["alrp"][1], rtol=1e-2, atol=1e-5)
