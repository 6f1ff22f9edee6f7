"""RoIAlign forward + backward through the FPN pooler: ours (pure, chunked) vs a plain reference.

Setting (the Faster R-CNN R-50-FPN box head in training): 4 images of 800 x 1344, FPN P2-P5
(strides 4-32) with 256 channels, 512 boxes per image, 7 x 7 bins, sampling_ratio 0 (adaptive),
aligned=True. Boxes look like detector proposals in a crowd: side sqrt(area) log-uniform in
16-800 px, height / width log-uniform in 0.5-3, clipped to the image; the pooler sends about
half of them to P2.

Methods, each in a fresh subprocess with one thread. Time is the process CPU time of forward +
backward (best of --repeat; on a shared machine wall time mostly measures the neighbours, so it
is printed but not used), peak memory the growth of the max RSS over the RSS once the inputs
are built (it includes the input gradients, 365 MB, and the output, 103 MB, that every method
must hold).
- ours: ``ROIPooler(impl="pure")`` on NCHW maps, i.e. ``crowdloss.ops.roi_align_levels``.
- ours-cl: the same on channels-last maps (no per-image transposes).
- loop, the plain reference: a Python loop over rois, each vectorised over its own samples and
  channels (four gathered corners per sample, the direct transcription of the kernel), with the
  same loop scattering back in backward. Chosen over an unchunked vectorised gather of all
  samples because that one cannot run here: with the grid padded to each level's largest roi
  it would hold the number of GB printed below (tens of GB on a 23 GB machine); and over
  autograd through per-roi gathers, whose backward allocates a full-map gradient per roi.
- torchvision: ``ROIPooler(impl="torchvision")``, only when torchvision imports.
The methods' outputs and gradients are compared (relative 1e-4 on sums), so a fast wrong
result fails the run.

Usage: python benchmarks/roi_align.py [--boxes-per-image 512] [--repeat 2] [--skip-reference]
Prints one line per method and, LAST, the ratios loop / ours (CPU time, peak memory).
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch

# Runnable from a checkout without installing (same as the other benchmarks).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from crowdloss.modeling.poolers import ROIPooler, assign_boxes_to_levels  # noqa: E402
from crowdloss.ops.roi_align import _tv_roi_align, convert_boxes_to_rois  # noqa: E402

IMAGE_H, IMAGE_W, CHANNELS, STRIDES = 800, 1344, 256, (4, 8, 16, 32)


def make_inputs(n_images: int, boxes_per_image: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(n_images, CHANNELS, IMAGE_H // s, IMAGE_W // s, generator=g) for s in STRIDES]
    boxes = []
    for _ in range(n_images):
        side = torch.exp(torch.empty(boxes_per_image).uniform_(math.log(16), math.log(800), generator=g))
        aspect = torch.exp(torch.empty(boxes_per_image).uniform_(math.log(0.5), math.log(3.0), generator=g))
        h, w = side * aspect.sqrt(), side / aspect.sqrt()
        cx = torch.rand(boxes_per_image, generator=g) * IMAGE_W
        cy = torch.rand(boxes_per_image, generator=g) * IMAGE_H
        b = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        b[:, 0::2] = b[:, 0::2].clamp(0, IMAGE_W)
        b[:, 1::2] = b[:, 1::2].clamp(0, IMAGE_H)
        boxes.append(b)
    return feats, boxes


def _roi_samples(roi, out, scale, ratio, aligned, h, w):
    """Corner indices and weights of every sample of one roi, by the kernel's rules."""
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (float(v) * scale - off for v in roi[1:])
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    bh, bw = rh / out[0], rw / out[1]
    gh = ratio if ratio > 0 else max(math.ceil(bh), 0)
    gw = ratio if ratio > 0 else max(math.ceil(bw), 0)

    def axis(start, bin_, g, n, length):
        p = torch.arange(n, dtype=torch.float32)[:, None]
        pos = start + p * bin_ + (torch.arange(g, dtype=torch.float32) + 0.5) * bin_ / max(g, 1)  # (n, g)
        ok = (pos >= -1) & (pos <= length)
        pos = pos.clamp(min=0)
        lo = pos.long().clamp(max=length - 1)
        hi = (lo + 1).clamp(max=length - 1)
        frac = torch.where(pos.long() >= length - 1, torch.zeros_like(pos), pos - lo)
        return lo, hi, (1 - frac) * ok, frac * ok

    return axis(y1, bh, gh, out[0], h), axis(x1, bw, gw, out[1], w), max(gh * gw, 1)


class LoopRoIAlign(torch.autograd.Function):
    """The plain reference: a Python loop over rois, each one vectorised over its samples and
    channels (four gathered corners per sample); backward is the same loop scattering back."""

    @staticmethod
    def forward(ctx, x, rois, out, scale, ratio, aligned):
        n, c, h, w = x.shape
        ctx.save_for_backward(rois)
        ctx.args = (x.shape, out, scale, ratio, aligned)
        res = x.new_zeros(rois.shape[0], c, *out)
        for r, roi in enumerate(rois):
            (yl, yh, wyl, wyh), (xl, xh, wxl, wxh), cnt = _roi_samples(roi, out, scale, ratio, aligned, h, w)
            f = x[int(roi[0])]
            # (C, PH, GH, PW, GW) from each corner
            val = 0
            for yi, wy in ((yl, wyl), (yh, wyh)):
                for xi, wx in ((xl, wxl), (xh, wxh)):
                    val = val + f[:, yi[:, :, None, None], xi[None, None]] * (wy[:, :, None, None] * wx[None, None])
            res[r] = val.sum(dim=(2, 4)) / cnt
        return res

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        shape, out, scale, ratio, aligned = ctx.args
        n, c, h, w = shape
        gx = grad.new_zeros(n, c, h, w)
        for r, roi in enumerate(rois):
            (yl, yh, wyl, wyh), (xl, xh, wxl, wxh), cnt = _roi_samples(roi, out, scale, ratio, aligned, h, w)
            g = grad[r].permute(1, 2, 0)[:, None, :, None, :] / cnt  # (PH, 1, PW, 1, C)
            for yi, wy in ((yl, wyl), (yh, wyh)):
                for xi, wx in ((xl, wxl), (xh, wxh)):
                    wgt = (wy[:, :, None, None] * wx[None, None])[..., None]
                    idx = (yi[:, :, None, None].expand_as(wgt[..., 0]), xi[None, None].expand_as(wgt[..., 0]))
                    gx[int(roi[0])].permute(1, 2, 0).index_put_(idx, g * wgt, accumulate=True)
        return gx, None, None, None, None, None


def reference_pooler(pooler, feats, boxes):
    rois = convert_boxes_to_rois(boxes)
    levels = assign_boxes_to_levels(boxes, min_level=pooler.min_level, max_level=pooler.max_level)
    out = feats[0].new_zeros(rois.shape[0], CHANNELS, *pooler.output_size)
    for lv, f in enumerate(feats):
        idx = torch.nonzero(levels == lv).squeeze(1)
        if idx.numel():
            out[idx] = LoopRoIAlign.apply(
                f, rois[idx], pooler.output_size, pooler.scales[lv], pooler.sampling_ratio, pooler.aligned
            )
    return out


def unchunked_gather_gb(pooler, feats, boxes) -> float:
    """GB of gathered corner values an unchunked per-sample gather would hold (float32)."""
    rois = convert_boxes_to_rois(boxes)
    levels = assign_boxes_to_levels(boxes, min_level=pooler.min_level, max_level=pooler.max_level)
    total = 0
    for lv in range(len(feats)):
        sel = rois[levels == lv]
        if sel.shape[0]:
            s = pooler.scales[lv]
            gw = int(torch.ceil((sel[:, 3] - sel[:, 1]) * s / 7).max())
            gh = int(torch.ceil((sel[:, 4] - sel[:, 2]) * s / 7).max())
            total += sel.shape[0] * 49 * gh * gw * 4 * CHANNELS * 4
    return total / 1e9


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def run_one(method: str, n_images: int, boxes_per_image: int, repeat: int) -> dict:
    torch.set_num_threads(1)
    feats, boxes = make_inputs(n_images, boxes_per_image)
    if method == "ours-cl":
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    feats = [f.requires_grad_() for f in feats]
    impl = "torchvision" if method == "torchvision" else "pure"
    pooler = ROIPooler(output_size=7, scales=tuple(1 / s for s in STRIDES), sampling_ratio=0, aligned=True, impl=impl)
    pool = (lambda: reference_pooler(pooler, feats, boxes)) if method == "loop" else (lambda: pooler(feats, boxes))
    gout = torch.randn(n_images * boxes_per_image, CHANNELS, 7, 7, generator=torch.Generator().manual_seed(1))
    base = rss_kb()
    cpu, wall = [], []
    for _ in range(1 if method == "loop" else repeat):  # the loop is slow and steady: once
        for f in feats:
            f.grad = None
        out = None
        t0, w0 = time.process_time(), time.perf_counter()
        out = pool()
        out.backward(gout)
        cpu.append(time.process_time() - t0)
        wall.append(time.perf_counter() - w0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    levels = assign_boxes_to_levels(boxes, min_level=2, max_level=5).bincount(minlength=4).tolist()
    # A fingerprint of the numbers, to check that the methods agree.
    probe = [float(out.double().sum()), float(out.double().square().sum())]
    probe += [float(f.grad.double().square().sum()) for f in feats]
    return {
        "cpu": min(cpu), "wall": min(wall), "peak_mb": (peak - base) / 1024, "levels": levels, "probe": probe,
        "unchunked_gb": unchunked_gather_gb(pooler, feats, boxes),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--boxes-per-image", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-reference", action="store_true", help="the per-roi loop takes a while")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(args.worker, args.images, args.boxes_per_image, args.repeat)))
        return
    methods = ["ours", "ours-cl"] + ([] if args.skip_reference else ["loop"])
    methods += ["torchvision"] if _tv_roi_align is not None else []
    print(f"{args.images} images x {args.boxes_per_image} boxes, {CHANNELS} channels, P2-P5 of {IMAGE_H}x{IMAGE_W}, "
          f"7x7, sampling_ratio 0, aligned; one thread; fwd+bwd, best of {args.repeat} (loop: 1 run)")
    if _tv_roi_align is None:
        print("torchvision: does not import here, not measured")
    res = {}
    for m in methods:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", m, "--images", str(args.images),
               "--boxes-per-image", str(args.boxes_per_image), "--repeat", str(args.repeat)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"{m} failed:\n{proc.stderr}")
        res[m] = r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{m:12s} cpu {r['cpu']:7.2f} s  wall {r['wall']:7.2f} s  peak RSS growth {r['peak_mb']:7.0f} MB")
    print(f"boxes per level P2-P5: {res['ours']['levels']}; an unchunked per-sample gather (grid padded to "
          f"each level's largest) would hold {res['ours']['unchunked_gb']:.1f} GB of gathered corners")
    for m in methods[1:]:
        a, b = res["ours"]["probe"], res[m]["probe"]
        err = max(abs(x - y) / max(abs(y), 1.0) for x, y in zip(a, b))
        if err > 1e-4:
            sys.exit(f"ours and {m} disagree: {a} vs {b}")
    ours = res["ours"]
    if "torchvision" in res:
        t = res["torchvision"]
        print(f"torchvision / ours: cpu time {t['cpu'] / ours['cpu']:.2f}x, "
              f"peak memory {t['peak_mb'] / max(ours['peak_mb'], 1):.2f}x")
    if "loop" in res:
        ref = res["loop"]
        print(f"roi_align fwd+bwd, per-roi loop / ours: cpu time {ref['cpu'] / ours['cpu']:.1f}x, "
              f"peak memory {ref['peak_mb'] / max(ours['peak_mb'], 1):.2f}x")


if __name__ == "__main__":
    main()
