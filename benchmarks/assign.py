"""Per-image time and peak memory of the LLA, FCOS and ATSS assigners on a CrowdHuman-like
image: M = 25 / 100 / 400 GTs (crowded pedestrians, ~5% ignore regions) and the points of a
real 5-level FPN pyramid (strides 8..128) on an 800 x 1408 padded input (R = 23,463).

Memory: each (assigner, M) case runs in its own subprocess with glibc's mmap threshold fixed
at 64 KiB (MALLOC_MMAP_THRESHOLD_), so every large tensor is its own mapping and is returned on
free; the peak is ru_maxrss after one assign() minus the resident set just before it, i.e. the
peak of what assign() itself allocates (torch's CPU allocator does not cache). Time: best of
at least --repeat rounds (and ~3 s) on one thread, the three assigners interleaved, in a
separate subprocess with the default allocator settings (the forced mmap threshold makes every
allocation fault its pages in, which would skew timings).

Usage: python benchmarks/assign.py [--gts 25 100 400] [--repeat 3]
Prints one line per case and, LAST, the LLA / FCOS time ratio at the largest M (target <= 3x).
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crowdloss.modeling.assigners import ATSSAssigner, FCOSAssigner, LLAAssigner  # noqa: E402
from crowdloss.modeling.priors import Priors  # noqa: E402
from crowdloss.modeling.shifts import grid_points  # noqa: E402

STRIDES = (8, 16, 32, 64, 128)
IMAGE_HW = (800, 1408)


def make_case(num_gts: int, seed: int = 0):
    """Points per level, GT boxes/classes and LLA head outputs for one crowded image."""
    g = torch.Generator().manual_seed(seed)
    h, w = IMAGE_HW
    levels = [grid_points(-(-h // s), -(-w // s), s, 0.0) for s in STRIDES]
    # Pedestrians: log-normal heights (median ~110 px), w = 0.41 h, feet on a horizontal band.
    heights = torch.exp(torch.randn(num_gts, generator=g) * 0.6 + 4.7).clamp(20, 700)
    widths = 0.41 * heights
    cx = torch.rand(num_gts, generator=g) * w
    bottom = h * 0.45 + torch.rand(num_gts, generator=g) * h * 0.5
    boxes = torch.stack([cx - widths / 2, bottom - heights, cx + widths / 2, bottom], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    classes = torch.zeros(num_gts, dtype=torch.long)
    classes[torch.rand(num_gts, generator=g) < 0.05] = -1
    points = torch.cat(levels)
    stride = torch.cat([torch.full((p.shape[0], 1), float(s)) for p, s in zip(levels, STRIDES)])
    ltrb = torch.exp(torch.randn(points.shape[0], 4, generator=g) * 0.5) * 4 * stride
    pred = torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], 1)
    logits = torch.randn(points.shape[0], 1, generator=g) - 4
    return levels, boxes, classes, logits, pred, points


def make_calls(num_gts: int):
    """{name: zero-argument assign call} on the same image, plus the number of points."""
    levels, boxes, classes, logits, pred, points = make_case(num_gts)
    lla, fcos, atss = LLAAssigner(), FCOSAssigner(), ATSSAssigner()
    priors = Priors.cat(levels, STRIDES)
    calls = {
        "fcos": lambda: fcos.assign(priors, boxes, classes),
        "atss": lambda: atss.assign(priors, boxes, classes),
        "lla": lambda: lla.assign(priors, boxes, classes, pred_logits=logits, pred_boxes=pred),
    }
    return calls, int(points.shape[0])


def measure_memory(name: str, num_gts: int) -> dict:
    """Peak bytes allocated by one assign() (run under a fixed mmap threshold, see above)."""
    torch.set_num_threads(1)
    calls, num_points = make_calls(num_gts)
    with open("/proc/self/statm") as f:
        rss_before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    result = calls[name]()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {"peak_mb": max(peak, 0) / 2**20, "positives": int(result.positive.sum()), "points": num_points}


def measure_time(num_gts: int, repeat: int) -> dict:
    """Best time (ms) of each assigner; calls are interleaved so that load from other processes
    on a shared machine hits all three alike, and the minimum is the least disturbed run."""
    torch.set_num_threads(1)
    calls, _ = make_calls(num_gts)
    best = {name: math.inf for name in calls}
    rounds, spent = 0, 0.0
    while rounds < repeat or (spent < 3.0 and rounds < 50):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            dt = time.perf_counter() - t0
            best[name] = min(best[name], dt * 1e3)
            spent += dt
        rounds += 1
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gts", type=int, nargs="+", default=[25, 100, 400])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", nargs=3, metavar=("MODE", "ASSIGNER", "GTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        mode, name, num_gts = args.case[0], args.case[1], int(args.case[2])
        out = measure_time(num_gts, args.repeat) if mode == "time" else measure_memory(name, num_gts)
        print(json.dumps(out))
        return
    envs = {
        "time": dict(os.environ, OMP_NUM_THREADS="1"),
        "memory": dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1"),
    }

    def case(mode, name, num_gts):
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--case", mode, name, str(num_gts), "--repeat", str(args.repeat)],
            env=envs[mode], check=True, capture_output=True, text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    ratios = {}
    for num_gts in args.gts:
        times = case("time", "all", num_gts)
        for name in ("fcos", "atss", "lla"):
            mem = case("memory", name, num_gts)
            print(
                f"{name:5s} M={num_gts:4d} R={mem['points']} time={times[name]:8.1f} ms "
                f"peak={mem['peak_mb']:7.1f} MB positives={mem['positives']}"
            )
        ratios[num_gts] = times["lla"] / times["fcos"]
        print(f"  LLA / FCOS at M={num_gts}: {ratios[num_gts]:.2f}x")
    last = args.gts[-1]
    print(f"LLA / FCOS time ratio at M={last}: {ratios[last]:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
