"""Pure-PyTorch block NMS vs a naive per-box Python loop on crowded random boxes.

Usage: python benchmarks/nms.py [--sizes 1000 3000 10000] [--threshold 0.5]
Prints one line per size and, LAST, the speed ratio (naive / ours) at the largest size.
"""
import argparse
import os
import sys
import time

import torch

# Runnable from a checkout without installing (same as the other benchmarks).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crowdloss.ops import box_iou, nms  # noqa: E402


def crowded_boxes(n: int, seed: int = 0):
    """Detector-like output: clusters of jittered pedestrian boxes, ~20 boxes per person."""
    g = torch.Generator().manual_seed(seed)
    people = max(1, n // 20)
    h = 40 + torch.rand(people, generator=g) * 300
    w = 0.41 * h
    cx = torch.rand(people, generator=g) * 1400
    cy = 200 + torch.rand(people, generator=g) * 400
    owner = torch.randint(0, people, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g) * 0.08
    bw, bh = w[owner] * (1 + jitter[:, 2]), h[owner] * (1 + jitter[:, 3])
    x = cx[owner] + jitter[:, 0] * w[owner]
    y = cy[owner] + jitter[:, 1] * h[owner]
    boxes = torch.stack([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2], 1)
    return boxes, torch.rand(n, generator=g)


def naive_nms(boxes, scores, thr):
    """Textbook loop: take the best remaining box, drop everything overlapping it, repeat."""
    order = torch.sort(-scores, stable=True).indices
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(int(i))
        if order.numel() == 1:
            break
        iou = box_iou(boxes[i][None], boxes[order[1:]])[0]
        order = order[1:][iou <= thr]
    return torch.tensor(keep, dtype=torch.long)


def best_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core: stable timings on a shared machine
    ratio = None
    for n in args.sizes:
        boxes, scores = crowded_boxes(n)
        t_ours, keep = best_time(lambda: nms(boxes, scores, args.threshold), args.repeat)
        t_naive, keep_ref = best_time(lambda: naive_nms(boxes, scores, args.threshold), args.repeat)
        assert torch.equal(keep, keep_ref), "block NMS disagrees with the greedy loop"
        ratio = t_naive / t_ours
        print(f"n={n:6d} kept={keep.numel():5d} ours={t_ours * 1e3:8.1f} ms naive={t_naive * 1e3:8.1f} ms speedup={ratio:5.1f}x")
    print(f"nms speedup vs naive loop at n={args.sizes[-1]}: {ratio:.1f}x")


if __name__ == "__main__":
    main()
