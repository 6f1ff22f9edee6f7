"""RoIAlign (Mask R-CNN, arXiv 1703.06870) in pure PyTorch, with torchvision's exact semantics.

Shape vocabulary: N images, C channels, H x W one feature map, L maps (pyramid levels),
R rois, PH x PW output bins, GH x GW samples per bin, Q rois of one chunk.

Semantics (torchvision's ``roi_align`` kernel; detectron2's ROIAlignV2 is ``aligned=True``).
For roi r = (b, x1, y1, x2, y2) and bin (ph, pw), computed in the input's dtype (float16 and
bfloat16 maps are pooled in float32 and cast back):

- ``off = 0.5 if aligned else 0``; ``start = x1 * spatial_scale - off`` (likewise y) and
  ``size = (x2 * spatial_scale - off) - start``. With ``aligned=False`` the size is raised to at
  least 1 (legacy: a degenerate roi becomes 1x1); with ``aligned=True`` it is kept, and a zero
  or negative size gives no samples and a zero output (with ``sampling_ratio > 0`` a negative
  size samples backwards, as the kernel does). ``aligned=True`` puts pixel i's value at
  continuous coordinate i + 0.5, so box corners are continuous image coordinates.
- ``bin = size / PH``; the grid is ``sampling_ratio`` samples per bin along each axis when that
  is > 0, else ``ceil(size / PH)`` (adaptive: about one sample per feature pixel).
- Sample iy of bin ph sits at ``(start + ph * bin) + ((iy + 0.5) * bin) / GH`` (same for x).
- Bilinear value at (y, x): 0 if y < -1 or y > H or x < -1 or x > W (or NaN). Otherwise y < 0
  is raised to 0; ``y_low = floor(y)``; if ``y_low >= H - 1`` then ``y_low = y_high = H - 1``
  and y = H - 1, else ``y_high = y_low + 1``; weight ``1 - (y - y_low)`` on row y_low and
  ``y - y_low`` on row y_high, likewise for x; the value is the weighted sum of four pixels.
  So a sample in [-1, 0) reads row 0 fully, one in [H - 1, H] reads row H - 1 fully.
- Output = (sum of the GH * GW sample values) / max(GH * GW, 1).

How (``crowdloss.ops.roi_align_kernels``): every output bin is a fixed weighted sum of feature
pixels, so a chunk's output is one sparse (Q*PH*PW, H*W) matrix times the image as a (H*W, C)
matrix, and the backward is its transpose times the output gradient; the weights are built per
axis (they factor into y and x parts) with no loop over rois, bins or samples. Results equal
the kernel's per-sample sums up to float rounding.

Memory bound. rois are grouped by level and image, sorted by size, and cut into chunks whose
working set (the sampling matrix while it is built, ~8 x Q*PH*PW*KY*KX with KY, KX the pixels a
bin touches per axis; the chunk's pooled rows Q*PH*PW*C; the (Q, P, G) sample positions) stays
under ``chunk_elements`` (default 2**24 elements) whatever R is; a roi that alone exceeds it
is a chunk of one. Besides: per level, one image as a (H*W, C) matrix (a view when the map is
channels-last, else one reused copy) and, in backward, one such accumulator; and the results
themselves, the output (R, C, PH, PW) and the input gradients. Only the rois and their levels
are saved for backward. For 4 x 512 rois, 256 channels and P2 of an 800 x 1344 image that is
69 MB per image matrix and <= 2**24 elements per chunk, where an unchunked per-sample gather
holds R*PH*PW*GH*GW*4*C values (about 21 GB in float32 for the boxes of
``benchmarks/roi_align.py``, the grid padded to each level's largest roi). The backward is
written by hand (autograd over a gather would allocate a full-map gradient per chunk) from
differentiable ops, so double backward works too.

torchvision's compiled kernel is used when it imports (one guarded import) and the input is a
CPU or CUDA float16/32/64 tensor; ``impl="pure"`` always selects the code here, which is what
runs in this project (torchvision does not import).
"""
import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import roi_align_kernels as K

try:  # compiled kernel; optional, and absent in this project (CUDA-only builds do not import)
    from torchvision.ops import roi_align as _tv_roi_align  # guarded
except Exception:  # pragma: no cover - depends on the environment
    _tv_roi_align = None

__all__ = ["roi_align", "roi_align_levels", "convert_boxes_to_rois"]

CHUNK_ELEMENTS = 1 << 24
_MAX_SAMPLES_PER_AXIS = 1 << 24  # PH * GH beyond this is a corrupt roi, not a region
_TV_DTYPES = (torch.float16, torch.float32, torch.float64)


def convert_boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image (B_i, 4) xyxy boxes -> (sum B_i, 5) rois [image index, x1, y1, x2, y2]."""
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"roi_align: boxes[{i}] must be a (B_i, 4) xyxy tensor, got {shape}")
    if len(boxes) == 0:
        return torch.zeros(0, 5)
    ref = boxes[0]
    idx = [torch.full((len(b), 1), float(i), dtype=ref.dtype, device=ref.device) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(idx), torch.cat([b.to(ref.dtype) for b in boxes])], dim=1)


def _check_features(features: Sequence[Tensor]) -> None:
    if len(features) == 0:
        raise ValueError("roi_align: no feature map given")
    ref = features[0]
    for i, x in enumerate(features):
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"roi_align: feature map {i} must be a floating (N, C, H, W) tensor, got {shape}")
        if x.shape[:2] != ref.shape[:2] or x.dtype != ref.dtype or x.device != ref.device:
            raise ValueError(
                f"roi_align: feature map {i} is {tuple(x.shape)} {x.dtype} on {x.device}; map 0 is "
                f"{tuple(ref.shape)} {ref.dtype} on {ref.device} (N, C, dtype and device must agree)"
            )


def _check_rois(boxes, input: Tensor) -> Tensor:
    n = input.shape[0]
    if isinstance(boxes, (list, tuple)):
        if len(boxes) > n:
            raise ValueError(f"roi_align: {len(boxes)} per-image box tensors for a batch of {n} images")
        rois = convert_boxes_to_rois(boxes)
    elif isinstance(boxes, Tensor) and boxes.dim() == 2 and boxes.shape[1] == 5:
        rois = boxes
    else:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(
            f"roi_align: boxes must be (R, 5) rois [idx, x1, y1, x2, y2] or a list of (B_i, 4), got {shape}"
        )
    # In the input's dtype (as detectron2 does): the kernel works in the input's precision.
    rois = rois.detach().to(device=input.device, dtype=input.dtype)
    if rois.shape[0]:
        idx = rois[:, 0]
        bad = ~torch.isfinite(rois).all(dim=1) | (idx != idx.floor()) | (idx < 0) | (idx >= n)
        if bool(bad.any()):
            r = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"roi_align: roi {r} = {rois[r].tolist()} needs an integer image index in [0, {n}) "
                "and finite coordinates"
            )
    return rois


def _output_size(output_size) -> Tuple[int, int]:
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    size = tuple(int(s) for s in output_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"roi_align: output_size must be a positive int or (h, w), got {output_size}")
    return size


class _RoIAlignPure(torch.autograd.Function):
    """rois (R, 5), levels (R,), spec, *features -> (R, C, PH, PW); gradients for features."""

    @staticmethod
    def forward(ctx, rois, levels, spec, *features):
        ctx.save_for_backward(rois, levels)
        ctx.spec = spec
        ctx.meta = tuple((tuple(x.shape), _channels_last(x)) for x in features)
        out = spec[0]
        output = features[0].new_empty(rois.shape[0], features[0].shape[1], out[0], out[1])
        with _no_autocast(features[0]):
            for lv, x in enumerate(features):
                dst = torch.nonzero(levels == lv).squeeze(1)
                if dst.numel():
                    K.pool_level(x, rois[dst], dst, output, (out, spec[1][lv]) + spec[2:])
        return output

    @staticmethod
    def backward(ctx, grad):
        rois, levels = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[3:])
        grads = _RoIAlignPureBackward.apply(grad, rois, levels, ctx.spec, ctx.meta, needs)
        return (None, None, None) + tuple(g if need else None for g, need in zip(grads, needs))


class _RoIAlignPureBackward(torch.autograd.Function):
    """The adjoint: a linear map of the output gradient, whose own gradient is the forward."""

    @staticmethod
    def forward(ctx, grad, rois, levels, spec, meta, needs):
        ctx.save_for_backward(rois, levels)
        ctx.spec, ctx.meta, ctx.needs = spec, meta, needs
        grads, grad = [], grad.contiguous()
        with _no_autocast(grad):
            for lv, ((shape, channels_last), need) in enumerate(zip(meta, needs)):
                if not need:
                    grads.append(grad.new_zeros(0))  # placeholder, mapped to None by the caller
                    continue
                dst = torch.nonzero(levels == lv).squeeze(1)
                lv_spec = (spec[0], spec[1][lv]) + spec[2:]
                grads.append(K.grad_level(grad, rois[dst], dst, shape, channels_last, lv_spec))
        return tuple(grads)

    @staticmethod
    def backward(ctx, *gg):
        rois, levels = ctx.saved_tensors
        gg = [g if need else g.new_zeros(shape) for g, need, (shape, _) in zip(gg, ctx.needs, ctx.meta)]
        return (_RoIAlignPure.apply(rois, levels, ctx.spec, *gg),) + (None,) * 5


def _no_autocast(x: Tensor):
    """The kernels pool in their own compute dtype (float32 for half inputs); under autocast
    the sparse matmul would be recast to the half type, which it does not implement."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def roi_align_levels(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: Union[int, Tuple[int, int]],
    scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    impl: str = "auto",
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Tensor:
    """RoIAlign of every roi on its own map: roi r pools ``features[levels[r]]`` at
    ``scales[levels[r]]``; one output in roi order, written once (no per-level copies).

    Args:
        features: L maps (N, C, H_l, W_l) with the same N, C, dtype and device.
        rois: (R, 5) [image index, x1, y1, x2, y2] in image coordinates, or per-image (B_i, 4).
        levels: long (R,) in [0, L).
        output_size, sampling_ratio, aligned, impl, chunk_elements: as :func:`roi_align`.
        scales: L values, 1 / stride of each map.

    Returns:
        (R, C, PH, PW), differentiable w.r.t. every map.
    """
    features = list(features)
    _check_features(features)
    rois = _check_rois(rois, features[0])
    out = _output_size(output_size)
    scales = tuple(float(s) for s in scales)
    if len(scales) != len(features) or not all(math.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"roi_align: need one positive scale per feature map ({len(features)}), got {scales}")
    if not isinstance(levels, Tensor) or levels.shape != (rois.shape[0],) or levels.is_floating_point():
        shape = tuple(levels.shape) if isinstance(levels, Tensor) else type(levels).__name__
        raise ValueError(f"roi_align: levels must be an integer tensor of shape ({rois.shape[0]},), got {shape}")
    levels = levels.to(device=rois.device, dtype=torch.long)
    if rois.shape[0] and (int(levels.min()) < 0 or int(levels.max()) >= len(features)):
        lo, hi = int(levels.min()), int(levels.max())
        raise ValueError(f"roi_align: levels must lie in [0, {len(features)}), got [{lo}, {hi}]")
    if impl not in ("auto", "pure", "torchvision"):
        raise ValueError(f"roi_align: impl must be 'auto', 'pure' or 'torchvision', got {impl!r}")
    if impl == "torchvision" and _tv_roi_align is None:
        raise RuntimeError("roi_align: impl='torchvision' but torchvision.ops does not import here")
    x0 = features[0]
    if impl == "torchvision" or (
        impl == "auto" and _tv_roi_align is not None and x0.dtype in _TV_DTYPES and x0.device.type in ("cpu", "cuda")
    ):
        output = x0.new_zeros(rois.shape[0], x0.shape[1], out[0], out[1])
        for lv, x in enumerate(features):
            dst = torch.nonzero(levels == lv).squeeze(1)
            if dst.numel():
                output[dst] = _tv_roi_align(x, rois[dst], out, scales[lv], int(sampling_ratio), bool(aligned))
        return output
    if chunk_elements < 1:
        raise ValueError(f"roi_align: chunk_elements must be >= 1, got {chunk_elements}")
    if rois.shape[0]:
        for lv, s in enumerate(scales):
            sel = rois[levels == lv]
            if sel.shape[0]:
                _, _, _, _, gh, gw = K.geometry(sel, s, out, int(sampling_ratio), bool(aligned))
                worst = max(out[0] * int(gh.max()), out[1] * int(gw.max()))
                if worst > _MAX_SAMPLES_PER_AXIS:
                    raise ValueError(
                        f"roi_align: a roi on map {lv} needs {worst} samples along one axis; "
                        "its box is not a region of this map"
                    )
    spec = (out, scales, int(sampling_ratio), bool(aligned), int(chunk_elements))
    return _RoIAlignPure.apply(rois, levels, spec, *features)


def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    impl: str = "auto",
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Tensor:
    """RoIAlign average pooling (torchvision's signature, defaults and numbers).

    Args:
        input: (N, C, H, W) feature map.
        boxes: (R, 5) rois [image index, x1, y1, x2, y2], or a list of per-image (B_i, 4) xyxy
            boxes (list item i = image i); coordinates in the image frame.
        output_size: PH (int) or (PH, PW).
        spatial_scale: feature-map pixels per image pixel (1 / stride).
        sampling_ratio: samples per bin along each axis; <= 0 means ceil(roi size / bins).
        aligned: shift by -0.5 pixel (detectron2 ROIAlignV2); False is the legacy behaviour.
        impl: "auto" (torchvision's kernel when it imports and supports the input, else pure),
            "pure" (always the code here) or "torchvision" (error if it does not import).
        chunk_elements: working-set budget of one chunk of the pure path (module docstring).

    Returns:
        (R, C, PH, PW) in the order of the rois. Differentiable w.r.t. ``input`` (not boxes).
    """
    _check_features([input])
    rois = _check_rois(boxes, input)
    levels = torch.zeros(rois.shape[0], dtype=torch.long, device=rois.device)
    return roi_align_levels(
        [input], rois, levels, output_size, [spatial_scale], sampling_ratio, aligned,
        impl=impl, chunk_elements=chunk_elements,
    )
