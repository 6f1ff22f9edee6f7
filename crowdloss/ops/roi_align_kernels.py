"""The pure-PyTorch kernels behind ``crowdloss.ops.roi_align``: RoIAlign as a sparse matmul.

Shape vocabulary: C channels, H x W one feature map, Q rois of one chunk, PH x PW bins,
G samples per bin along an axis, K the pixels a bin's samples touch along an axis (its band),
nnz the nonzero weights of a chunk.

For a fixed roi every output bin is a weighted sum of feature pixels, so the pooled values of
a chunk are ``S @ F`` with S a sparse (Q*PH*PW, H*W) matrix of averaging weights and F the
image as a (H*W, C) matrix (channels last). The bilinear weights and the in-range test of a
sample factor into a y part and an x part, so S is built per axis: for each bin the weights of
the K consecutive pixels its samples touch, summed over the samples, then the outer product of
the y and x bands, zeros dropped. The backward is ``S^T @ dL/dout`` into the image gradient.
"""
import warnings
from typing import List, Tuple

import torch
from torch import Tensor

__all__ = ["geometry", "plan_chunks", "pool_level", "grad_level"]

# The CSR matrices built here are valid by construction (rows in order, columns sorted and
# unique within a row); tests switch the O(nnz) validation on.
CHECK_CSR = False


def geometry(rois: Tensor, scale: float, out: Tuple[int, int], ratio: int, aligned: bool):
    """Per-roi (start_y, start_x, bin_h, bin_w, grid_h, grid_w), formed as the kernel does."""
    scale_t = torch.tensor(scale, dtype=rois.dtype, device=rois.device)  # the kernel's T(scale)
    off = 0.5 if aligned else 0.0
    start = rois[:, 1:3] * scale_t - off  # (x1, y1)
    size = (rois[:, 3:5] * scale_t - off) - start
    if not aligned:  # legacy: malformed rois become 1x1
        size = size.clamp(min=1.0)
    bins = size / torch.tensor([out[1], out[0]], dtype=rois.dtype, device=rois.device)
    # ceil(size / P) is the bin size rounded up: about one sample per feature pixel.
    grid = torch.full_like(bins, ratio, dtype=torch.long) if ratio > 0 else torch.ceil(bins).long()
    return start[:, 1], start[:, 0], bins[:, 1], bins[:, 0], grid[:, 1], grid[:, 0]


def _axis_bands(start: Tensor, bin_: Tensor, grid: Tensor, n_out: int, length: int) -> Tuple[Tensor, Tensor]:
    """One axis for Q rois: (Q, P, K) band weights summed over each bin's samples, and the
    (Q, P) first pixel of each band. K is the longest band; shorter ones are zero-padded."""
    dtype, dev = start.dtype, start.device
    g_max = max(int(grid.max()), 1)
    p = torch.arange(n_out, dtype=dtype, device=dev)[None, :, None]
    i = torch.arange(g_max, dtype=dtype, device=dev)[None, None, :]
    b, s = bin_[:, None, None], start[:, None, None]
    # Same operation order as the kernel: (start + p * bin) + ((i + 0.5) * bin) / grid.
    pos = (s + p * b) + ((i + 0.5) * b) / grid.clamp(min=1).to(dtype)[:, None, None]
    used = torch.arange(g_max, device=dev)[None, None, :] < grid[:, None, None]
    ok = used & (pos >= -1.0) & (pos <= length)  # a NaN compares False: it contributes nothing
    pos = torch.where(ok, pos, torch.zeros_like(pos)).clamp(min=0.0)  # (-1, 0] reads pixel 0
    low = pos.floor().long()
    top = low >= length - 1  # the last pixel and beyond (up to H) read the last pixel alone
    low = torch.where(top, torch.full_like(low, length - 1), low)
    high = torch.where(top, low, low + 1)
    frac = torch.where(top, torch.zeros_like(pos), pos - low.to(dtype))
    w_low = torch.where(ok, 1.0 - frac, torch.zeros_like(frac))
    w_high = torch.where(ok, frac, torch.zeros_like(frac))
    first = torch.where(ok, low, torch.full_like(low, length)).amin(dim=2)
    last = torch.where(ok, high, torch.full_like(high, -1)).amax(dim=2)
    first = torch.where(last >= 0, first, torch.zeros_like(first))  # a bin without samples
    k = max(int((last - first + 1).max()), 1)
    bands = torch.zeros(*first.shape, k, dtype=dtype, device=dev)
    bands.scatter_add_(2, torch.where(ok, low - first[:, :, None], 0), w_low)
    bands.scatter_add_(2, torch.where(ok, high - first[:, :, None], 0), w_high)
    return bands, first


def _band_estimate(bin_: Tensor, grid: Tensor, length: int) -> Tensor:
    """Upper bound on each roi's band length K along one axis (for planning)."""
    band = torch.ceil(bin_.abs()).clamp(max=length).long() + 2
    return torch.where(grid > 0, band.clamp(max=length), torch.ones_like(band))


def plan_chunks(b: Tensor, geo, out, c: int, hw: Tuple[int, int], budget: int) -> List[Tuple[int, List[Tensor]]]:
    """(image, [roi indices of each chunk]) for every image with rois.

    An image's rois are sorted by band area, largest first, and cut greedily so that a chunk's
    element count (rois x the per-roi cost of its largest) stays within ``budget``; a roi that
    alone exceeds it forms its own chunk. Per roi: ~8 live (PH, PW, KY, KX) tensors while S is
    built, its (PH, PW, C) pooled rows, and ~16 live (P, G) sample tensors per axis.
    """
    sy, sx, bh, bw, gh, gw = geo
    ky, kx = _band_estimate(bh, gh, hw[0]), _band_estimate(bw, gw, hw[1])
    bins = out[0] * out[1]
    extra = 16 * (out[0] * gh.clamp(min=1) + out[1] * gw.clamp(min=1)) + bins * c
    order = torch.argsort(ky * kx, descending=True, stable=True)
    order = order[torch.argsort(b[order], stable=True)]  # by image, then band area
    groups, s = [], 0
    for img, n_img in enumerate(torch.bincount(b).tolist()):
        end, chunks = s + n_img, []
        while s < end:
            sel = order[s:end]
            cnt = torch.arange(1, end - s + 1, device=b.device)
            cost = cnt * (8 * bins * torch.cummax(ky[sel], 0).values * torch.cummax(kx[sel], 0).values)
            cost += cnt * torch.cummax(extra[sel], 0).values
            take = max(int(torch.searchsorted(cost, torch.tensor([budget], device=b.device), right=True)), 1)
            chunks.append(sel[:take])
            s += take
        if chunks:
            groups.append((img, chunks))
    return groups


def _sampling_matrix(geo, idx: Tensor, out, h: int, w: int) -> Tuple[Tensor, Tensor, Tensor]:
    """CSR (crow, col, val) of S for the rois ``idx``; rows in (roi, ph, pw) order."""
    sy, sx, bh, bw, gh, gw = (t[idx] for t in geo)
    wy, y0 = _axis_bands(sy, bh, gh, out[0], h)  # (Q, PH, KY), (Q, PH)
    wx, x0 = _axis_bands(sx, bw, gw, out[1], w)  # (Q, PW, KX), (Q, PW)
    q, ky, kx = idx.shape[0], wy.shape[2], wx.shape[2]
    inv = 1.0 / (gh * gw).clamp(min=1).to(wy.dtype)  # the kernel divides by max(GH * GW, 1)
    val = (wy * inv[:, None, None])[:, :, None, :, None] * wx[:, None, :, None, :]  # (Q, PH, PW, KY, KX)
    rows = y0[:, :, None, None, None] + torch.arange(ky, device=idx.device)[:, None]
    cols = x0[:, None, :, None, None] + torch.arange(kx, device=idx.device)
    keep = val != 0  # band padding and empty bins; no nonzero weight lies off the map
    col = (rows * w + cols).expand(q, out[0], out[1], ky, kx)[keep]
    crow = torch.zeros(q * out[0] * out[1] + 1, dtype=torch.long, device=idx.device)
    torch.cumsum(keep.view(q * out[0] * out[1], -1).sum(1), 0, out=crow[1:])
    return crow, col, val[keep]


def _csr(crow: Tensor, col: Tensor, val: Tensor, size: Tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # torch flags CSR as beta on first use; nothing to act on
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, val, size, check_invariants=CHECK_CSR)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Sparse-dense matmul wants float32/64; half inputs are pooled in float32 and cast back.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _pixel_rows(x: Tensor, dtype: torch.dtype, buf: List[Tensor]) -> Tensor:
    """One image (C, H, W) as (H*W, C): a view of channels-last memory, else a copy into a
    buffer reused from image to image."""
    c, h, w = x.shape
    if x.dtype == dtype and x.permute(1, 2, 0).is_contiguous():
        return x.permute(1, 2, 0).reshape(h * w, c)
    if not buf:
        buf.append(torch.empty(h * w, c, dtype=dtype, device=x.device))
    buf[0].view(h, w, c).copy_(x.permute(1, 2, 0))
    return buf[0]


def pool_level(x: Tensor, rois: Tensor, dst: Tensor, output: Tensor, spec) -> None:
    """RoIAlign of ``rois`` (R_l, 5) on map ``x`` (N, C, H, W), into ``output[dst]``."""
    out, scale, ratio, aligned, budget = spec
    n, c, h, w = x.shape
    if c == 0 or h == 0 or w == 0:  # nothing to sample
        output.index_fill_(0, dst, 0)
        return
    cd = compute_dtype(x.dtype)
    geo = geometry(rois.to(cd), scale, out, ratio, aligned)
    buf: List[Tensor] = []
    for img, chunks in plan_chunks(rois[:, 0].long(), geo, out, c, (h, w), budget):
        feat = _pixel_rows(x[img], cd, buf)  # one image's (H*W, C) alive at a time
        for idx in chunks:
            crow, col, val = _sampling_matrix(geo, idx, out, h, w)
            pooled = torch.sparse.mm(_csr(crow, col, val, (crow.numel() - 1, h * w)), feat)
            pooled = pooled.view(idx.numel(), out[0], out[1], c).permute(0, 3, 1, 2)
            output.index_copy_(0, dst[idx], pooled.to(output.dtype))


def grad_level(grad: Tensor, rois: Tensor, dst: Tensor, shape, channels_last: bool, spec) -> Tensor:
    """Gradient w.r.t. the map of shape ``shape`` given ``grad`` (R, C, PH, PW); the level's
    rois are ``rois`` = all rois[dst]. Returned in the map's memory format."""
    out, scale, ratio, aligned, budget = spec
    n, c, h, w = shape
    cd = compute_dtype(grad.dtype)
    # Each image's gradient is accumulated as one (H*W, C) matrix: in place for channels-last
    # memory, else in a buffer copied over once per image.
    in_place = channels_last and cd == grad.dtype
    if channels_last:
        grad_x = grad.new_zeros(n, h, w, c).permute(0, 3, 1, 2)
    else:  # images with rois are overwritten whole below; the others are zeroed at the end
        grad_x = grad.new_empty(n, c, h, w)
    untouched = set(range(n))
    if c == 0 or h == 0 or w == 0 or rois.shape[0] == 0:
        return grad_x.zero_()
    geo = geometry(rois.to(cd), scale, out, ratio, aligned)
    acc_buf = None if in_place else torch.empty(h * w, c, dtype=cd, device=grad.device)
    for img, chunks in plan_chunks(rois[:, 0].long(), geo, out, c, (h, w), budget):
        untouched.discard(img)
        acc = grad_x[img].permute(1, 2, 0).view(h * w, c) if in_place else acc_buf.zero_()
        for idx in chunks:
            crow, col, val = _sampling_matrix(geo, idx, out, h, w)
            g = grad.index_select(0, dst[idx]).to(cd).permute(0, 2, 3, 1).reshape(-1, c)  # (Q*PH*PW, C)
            # S^T (H*W, Q*PH*PW): the same entries sorted by pixel.
            row = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=col.device), crow.diff())
            col, perm = torch.sort(col, stable=True)
            crow_t = torch.zeros(h * w + 1, dtype=torch.long, device=col.device)
            torch.cumsum(torch.bincount(col, minlength=h * w), 0, out=crow_t[1:])
            acc.addmm_(_csr(crow_t, row[perm], val[perm], (h * w, g.shape[0])), g)
        if not in_place:
            grad_x[img].copy_(acc.view(h, w, c).permute(2, 0, 1))
    if not channels_last:
        for img in untouched:
            grad_x[img].zero_()
    return grad_x
