"""Ranking-based classification losses: AP Loss (Chen et al., arXiv 1904.06373) and aLRP Loss
(Oksuz et al., arXiv 2009.13592), exact, in O((P + Q) log(P + Q)) time and O(P + Q) memory.

Shapes (everything is flat over the per-process batch):
    E: every (anchor, class) entry of every image, i.e. R * K per image, all images concatenated
    P: positives (``labels == 1``), Q: negatives (``labels == 0``); ``-1`` entries are ignored

Both losses rank every positive among all positives and negatives with the smoothed step
H(x) = clamp(x / (2 delta) + 0.5, 0, 1):

    rank+(i) = 1 + sum_{k in P, k != i} H(s_k - s_i)      N_FP(i) = sum_{j in Q} H(s_j - s_i)
    rank(i) = rank+(i) + N_FP(i)                            prec(i) = rank+(i) / rank(i)

The loss values are not differentiable; the autograd Functions below return the papers'
error-driven update as the gradient w.r.t. the logits (positive and negative gradients sum to
the same magnitude). The public code evaluates the sums with a Python loop over positives,
O(P (P + Q)) with a host sync per positive. H is piecewise linear (0, a ramp of slope
1 / (2 delta), 1), so for values v sorted once, sum_k w_k H(v_k - q) splits into "all of w
above q + delta" plus "the ramp part of the window (q - delta, q + delta)", both read off prefix
sums of w and w * v at two ``searchsorted`` positions: exact up to float rounding (computed in
float64), for every query at once. ``docs/ranking_losses.md`` gives the derivation.
"""
from typing import Tuple

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["ap_loss", "alrp_loss"]


def _sort(v: Tensor) -> Tuple[Tensor, Tensor]:
    """(values, indices) ascending. On CPU numpy's vectorised sort is several times faster than
    torch.sort (~5x on 200k floats, AVX-512); ties may come in any order (they do not matter)."""
    if v.device.type != "cpu":
        return torch.sort(v)
    idx = torch.from_numpy(np.argsort(v.numpy()))
    return v[idx], idx


def _prefix(v: Tensor, w: Tensor = None) -> Tuple[Tensor, Tensor]:
    """[0, cumsum(w)] and [0, cumsum(w * v)] for sorted ``v`` (``w`` = 1 when None)."""
    zero = v.new_zeros(1)
    if w is None:
        return (torch.arange(v.numel() + 1, dtype=v.dtype, device=v.device),
                torch.cat([zero, torch.cumsum(v, 0)]))
    return torch.cat([zero, torch.cumsum(w, 0)]), torch.cat([zero, torch.cumsum(w * v, 0)])


def _window(v: Tensor, q: Tensor, delta: float) -> Tuple[Tensor, Tensor]:
    """(lo, hi): #v <= q - delta and #v < q + delta, i.e. the ramp window (q - delta, q + delta)."""
    return (torch.searchsorted(v, q - delta, right=True),
            torch.searchsorted(v, q + delta, right=False))


def _sum_h_above(v: Tensor, pre: Tuple[Tensor, Tensor], q: Tensor, delta: float) -> Tensor:
    """sum_k w_k H(v_k - q) for each query q (v sorted ascending, ``pre = _prefix(v, w)``)."""
    cw, cwv = pre
    lo, hi = _window(v, q, delta)
    # v_k >= q + delta count fully; inside the window H = (v_k - q + delta) / (2 delta).
    ramp = (cwv[hi] - cwv[lo]) - (q - delta) * (cw[hi] - cw[lo])
    return (cw[-1] - cw[hi]) + ramp / (2 * delta)


def _sum_h_below(v: Tensor, pre: Tuple[Tensor, Tensor], q: Tensor, delta: float) -> Tensor:
    """sum_k w_k H(q - v_k) for each query q (v sorted ascending, ``pre = _prefix(v, w)``)."""
    cw, cwv = pre
    lo, hi = _window(v, q, delta)
    # v_k <= q - delta count fully; inside the window H = (q - v_k + delta) / (2 delta).
    ramp = (q + delta) * (cw[hi] - cw[lo]) - (cwv[hi] - cwv[lo])
    return cw[lo] + ramp / (2 * delta)


def _check(logits: Tensor, labels: Tensor, delta: float, name: str) -> None:
    if not torch.is_floating_point(logits):
        raise TypeError(f"{name}: logits must be floating point, got {logits.dtype}")
    if logits.shape != labels.shape:
        raise ValueError(f"{name}: logits {tuple(logits.shape)} and labels "
                         f"{tuple(labels.shape)} must have the same shape (one label per "
                         "(anchor, class) entry)")
    if not delta > 0:
        raise ValueError(f"{name}: delta = {delta}; expected > 0 (half-width of the ramp of H)")
    bad = (labels != 1) & (labels != 0) & (labels != -1)
    if bool(bad.any()):
        i = int(torch.nonzero(bad.reshape(-1))[0])
        raise ValueError(f"{name}: labels[{i}] (flat) = {labels.reshape(-1)[i].item()}; "
                         "expected 1 (positive), 0 (negative) or -1 (ignored)")


def _rank_terms(logits: Tensor, labels: Tensor, delta: float):
    """Positives sorted by score and the relevant negatives, in float64.

    Returns (s, order, pos_idx, t, neg_idx, rank_pos, n_fp) where s are the positive logits
    in ascending order, ``order`` the permutation from the ``labels == 1`` order to that one,
    pos_idx their flat indices, t / neg_idx the negatives that can rank above
    some positive (s_j > min(s) - delta; the others have H = 0 against every positive and get
    no gradient, as in the public code), in ascending order too, and rank+(i), N_FP(i) in the
    order of s.
    """
    x = logits.detach().reshape(-1).to(torch.float64)
    lab = labels.reshape(-1)
    pos_idx = torch.nonzero(lab == 1).squeeze(1)
    s, order = _sort(x[pos_idx])
    pos_idx = pos_idx[order]
    neg_idx = torch.nonzero((lab == 0) & (x > s[0] - delta)).squeeze(1)
    # Sorted negatives also make the Q searches into s below cache-friendly (several x).
    t, neg_order = _sort(x[neg_idx])
    neg_idx = neg_idx[neg_order]
    # sum over all positives includes k = i with H(0) = 1/2: rank+ = 1 + (sum - 1/2).
    rank_pos = 0.5 + _sum_h_above(s, _prefix(s), s, delta)
    n_fp = _sum_h_above(t, _prefix(t), s, delta)
    return s, order, pos_idx, t, neg_idx, rank_pos, n_fp


def _nan_guard(logits: Tensor) -> Tensor:
    """0, or NaN when any logit is NaN / inf: a diverged network must not get a finite loss
    (the trainer stops on a non-finite loss), and this costs no host sync."""
    return logits.detach().sum().to(torch.float64) * 0


def _scatter_grad(logits: Tensor, pos_idx, pos_grad, neg_idx, neg_grad, num_pos: int) -> Tensor:
    grad = torch.zeros(logits.numel(), dtype=torch.float64, device=logits.device)
    grad[pos_idx] = pos_grad
    grad[neg_idx] = neg_grad
    return (grad / num_pos).to(logits.dtype).reshape(logits.shape)


class _APLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, delta):
        num_pos = int((labels == 1).sum())
        if num_pos == 0:
            ctx.save_for_backward(torch.zeros_like(logits))
            return logits.new_zeros(())
        s, _, pos_idx, t, neg_idx, rank_pos, n_fp = _rank_terms(logits, labels, delta)
        rank = rank_pos + n_fp
        prec = rank_pos / rank
        # Interpolated precision: running max over the positives visited in ascending score
        # order (tied positives share one precision, so their order does not matter).
        iprec = torch.cummax(prec, 0).values
        interp = prec < iprec
        # A positive below the running max passes (1 - max) / (1 - prec) of its error on, so
        # that every positive's negatives receive exactly its own 1 - iprec.
        weight = torch.where(interp, (1 - iprec) / torch.where(interp, 1 - prec, 1.0), 1.0)
        coef = weight / rank
        neg_grad = _sum_h_below(s, _prefix(s, coef), t, delta)  # sum_i coef_i H(t_j - s_i)
        grad = _scatter_grad(logits, pos_idx, -(1 - iprec), neg_idx, neg_grad, num_pos)
        ctx.save_for_backward(grad)
        return (1 - iprec.mean() + _nan_guard(logits)).to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None


class _ALRPClsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, loc_errors, delta, eps):
        num_pos = int((labels == 1).sum())
        if loc_errors.numel() != num_pos:
            raise ValueError(f"alrp_loss: loc_errors has {loc_errors.numel()} entries; expected "
                             f"one per positive (labels == 1): {num_pos}")
        if num_pos == 0:
            ctx.save_for_backward(torch.zeros_like(logits))
            loc_weight = loc_errors.new_zeros(loc_errors.shape)
            ctx.mark_non_differentiable(loc_weight)
            return logits.new_zeros(()), loc_weight
        s, order, pos_idx, t, neg_idx, rank_pos, n_fp = _rank_terms(logits, labels, delta)
        rank = rank_pos + n_fp
        # loc_errors follow the order of labels == 1; bring them to the ascending-score order.
        err = loc_errors.detach().reshape(-1).to(torch.float64)[order]
        # sum_{k != i} H(s_k - s_i) E(k): the full sum includes k = i with weight H(0) = 1/2.
        loc_above = _sum_h_above(s, _prefix(s, err), s, delta) - 0.5 * err
        # Positives with no (soft) false positive above them are left alone (the 1e-5 guard).
        active = n_fp > eps
        pos_grad = torch.where(active, -(loc_above + n_fp) / rank, 0.0)
        # Each positive's update is spread over its false positives in proportion to H.
        coef = torch.where(active, -pos_grad / torch.where(active, n_fp, 1.0), 0.0)
        neg_grad = _sum_h_below(s, _prefix(s, coef), t, delta)
        ctx.save_for_backward(_scatter_grad(logits, pos_idx, pos_grad, neg_idx, neg_grad,
                                            num_pos))
        # Localisation weights: L_loc = 1/P sum_i (sum_{k: s_k >= s_i} E(k)) / rank(i)
        # = 1/P sum_k E(k) * sum_{i: s_i <= s_k} 1 / rank(i); rank is not differentiated.
        last = torch.searchsorted(s, s, right=True) - 1  # last position of s_k's tie group
        loc_weight = torch.cumsum(1 / rank, 0)[last] / num_pos
        loc_weight = torch.empty_like(loc_weight).scatter_(0, order, loc_weight)
        loc_weight = loc_weight.to(loc_errors.dtype).reshape(loc_errors.shape)
        ctx.mark_non_differentiable(loc_weight)
        loss = 1 - (rank_pos / rank).mean() + _nan_guard(logits)
        return loss.to(logits.dtype), loc_weight

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_weight):
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None, None


def ap_loss(logits: Tensor, labels: Tensor, *, delta: float = 1.0) -> Tensor:
    """Interpolated AP Loss (arXiv 1904.06373) with its error-driven update.

    Value: 1 - mean_i iprec(i), where iprec(i) is the largest prec(k) over positives k with
    s_k <= s_i (precision interpolated towards higher recall). Gradient (divided by P):
    positive i gets -(1 - iprec(i)); negative j gets sum_i w_i H(s_j - s_i) / rank(i) with
    w_i = 1, or (1 - iprec(i)) / (1 - prec(i)) where the interpolation replaced prec(i), so each
    positive's error is handed to the negatives ranked above it in full.

    Args:
        logits: (E,) or any shape, raw scores of every (anchor, class) entry.
        labels: same shape, 1 positive / 0 negative / -1 ignored (zero gradient).
        delta: half-width of the ramp of H (the public code's 1.0).

    Returns:
        Scalar loss in ``logits.dtype``; 0 with zero gradients when there is no positive.
    """
    _check(logits, labels, delta, "ap_loss")
    return _APLossFunction.apply(logits, labels, float(delta))


def alrp_loss(logits: Tensor, labels: Tensor, loc_errors: Tensor, *, delta: float = 1.0,
              eps: float = 1e-5) -> Tuple[Tensor, Tensor]:
    """aLRP Loss (arXiv 2009.13592): (classification, localisation) components.

    L_cls = mean_i N_FP(i) / rank(i) with the error-driven update (divided by P): positive i
    gets g_i = -(sum_{k != i} H(s_k - s_i) E(k) + N_FP(i)) / rank(i) when N_FP(i) > eps (else
    0), and each negative j gets sum_i H(s_j - s_i) (-g_i) / N_FP(i), so positive and negative
    updates balance exactly. The localisation errors enter this update as constants.

    L_loc = mean_i (sum_{k: s_k >= s_i} E(k)) / rank(i): differentiable w.r.t. ``loc_errors``
    only (rank and the ordering are constants, as in the public code). Exactly tied positive
    logits all count as "ranked above" each other here; the public code orders ties by its sort.

    Args:
        logits: (E,) or any shape, raw scores of every (anchor, class) entry.
        labels: same shape, 1 positive / 0 negative / -1 ignored (zero gradient).
        loc_errors: (P,) localisation error of each positive in the order of ``labels == 1``
            (the public code uses 1 - GIoU, in [0, 2], normalised so that 1 = the IoU 0.5 limit).
        delta: half-width of the ramp of H (the public code's 1.0).
        eps: positives whose N_FP is not above ``eps`` send no classification update.

    Returns:
        (loss_cls, loss_loc), scalars; both 0 with zero gradients when there is no positive.
    """
    _check(logits, labels, delta, "alrp_loss")
    if loc_errors.device != logits.device:
        raise ValueError(f"alrp_loss: loc_errors on {loc_errors.device}, logits on "
                         f"{logits.device}")
    loss_cls, loc_weight = _ALRPClsFunction.apply(logits, labels, loc_errors.detach(),
                                                  float(delta), float(eps))
    loss_loc = (loc_errors.reshape(-1) * loc_weight.reshape(-1)).sum()
    return loss_cls, loss_loc
