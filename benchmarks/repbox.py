"""RepBox (arXiv 1711.07752): the chunked exact pair loss vs a dense all-pairs version.

Both compute sum over ordered pairs of positives with different attraction GTs of
Smooth_ln(IoU, sigma 0) and the count of overlapping pairs, forward + backward, on one image
with P positives of a crowd (about 15 positives per person, jittered around it). The dense
version is written here from the formula, P x P tensors at once; ours is
``crowdloss.modeling.losses.repbox_pair_sums`` (blocks of rows, recomputed in backward).

Each (method, P) runs in a fresh process on one thread; its peak memory is the growth of the
process's peak resident set over its resident set just before the call (Linux
/proc/self/status: VmHWM, reset through /proc/self/clear_refs). Dense memory is c x P^2; before
a dense run the script extrapolates its need from the largest dense run so far and, when that
exceeds 70% of the available memory, prints the extrapolation (marked as such) instead of
pushing a shared machine into swap or the OOM killer.

Usage: python benchmarks/repbox.py [--sizes 1000 5000 20000]
Prints one line per (P, method) and, LAST, the memory ratio dense / chunked at the largest P.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

# Runnable from a checkout without installing (same as the other benchmarks).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crowdloss.modeling.losses import repbox_pair_sums, smooth_ln  # noqa: E402


def crowd_positives(p: int, seed: int = 0):
    """(P, 4) predicted boxes and (P,) attraction GTs: ~15 jittered boxes per person."""
    g = torch.Generator().manual_seed(seed)
    people = max(2, p // 15)
    h = 40 + torch.rand(people, generator=g) * 260
    w = 0.41 * h
    cx = torch.rand(people, generator=g) * 1400
    cy = 200 + torch.rand(people, generator=g) * 500
    owner = torch.randint(0, people, (p,), generator=g)
    jit = torch.randn(p, 4, generator=g) * 0.1
    bw, bh = w[owner] * (1 + jit[:, 2]).clamp(min=0.3), h[owner] * (1 + jit[:, 3]).clamp(min=0.3)
    x, y = cx[owner] + jit[:, 0] * w[owner], cy[owner] + jit[:, 1] * h[owner]
    return torch.stack([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2], 1), owner


def dense_repbox(boxes, groups, sigma=0.0):
    """Straight from the formula: every ordered pair (i, j), i != j, at once."""
    lt = torch.max(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    iou = inter / (area[:, None] + area[None, :] - inter)
    pair = groups[:, None] != groups[None, :]
    return (smooth_ln(iou, sigma) * pair).sum(), (pair & (iou > 0)).sum()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(method: str, p: int) -> dict:
    torch.set_num_threads(1)
    boxes, groups = crowd_positives(p)
    fn = dense_repbox if method == "dense" else repbox_pair_sums
    small = boxes[:64].clone().requires_grad_()
    fn(small, groups[:64], 0.0)[0].backward()  # warm-up: lazy initialisations off the clock
    boxes.requires_grad_()
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    base = _status_kb("VmRSS")
    # CPU time of this one-threaded process: on a shared machine its wall time mostly measures
    # the other processes.
    t0 = time.process_time()
    total, count = fn(boxes, groups, 0.0)
    total.backward()
    seconds = time.process_time() - t0
    peak = _status_kb("VmHWM")
    return {"seconds": seconds, "peak_mib": (peak - base) / 1024.0, "value": float(total),
            "count": int(count), "grad_norm": float(boxes.grad.norm())}


def run_child(method: str, p: int) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", method, str(p)],
                         check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    return float("inf")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "P"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    sizes = sorted(args.sizes)
    print(f"RepBox forward + backward, one image, one thread (torch {torch.__version__})")
    print(f"{'P':>7} {'method':>8} {'cpu s':>8} {'peak MiB':>9} {'pairs>0':>11} {'value':>12}")
    results = {}
    dense_fit = None  # (bytes per P^2, seconds per P^2) of the largest dense run so far
    for p in sizes:
        for method in ("chunked", "dense"):
            if method == "dense" and dense_fit is not None:
                need = dense_fit[0] * p * p / 2 ** 20
                if need > 0.7 * available_mib():
                    # Dense memory is quadratic in P (every P x P tensor), so the coefficient
                    # measured at the largest P that fits gives the rest.
                    r = {"seconds": dense_fit[1] * p * p, "peak_mib": need, "count": -1,
                         "value": float("nan"), "extrapolated": True}
                    results[(p, method)] = r
                    print(f"{p:>7} {method:>8} {r['seconds']:>8.2f} {need:>9.1f} {'-':>11} "
                          f"{'-':>12}  extrapolated: needs ~{need:.0f} MiB, "
                          f"{available_mib():.0f} MiB available here")
                    continue
            r = run_child(method, p)
            results[(p, method)] = r
            if method == "dense":
                dense_fit = (r["peak_mib"] * 2 ** 20 / (p * p), r["seconds"] / (p * p))
            print(f"{p:>7} {method:>8} {r['seconds']:>8.2f} {r['peak_mib']:>9.1f} "
                  f"{r['count']:>11} {r['value']:>12.3f}")
        c, d = results[(p, "chunked")], results[(p, "dense")]
        if not d.get("extrapolated") and (
                c["count"] != d["count"] or abs(c["value"] - d["value"]) > 1e-3 * max(1.0, d["value"])):
            raise SystemExit(f"P={p}: chunked and dense disagree: {c} vs {d}")
    p = sizes[-1]
    c, d = results[(p, "chunked")], results[(p, "dense")]
    note = " (dense extrapolated)" if d.get("extrapolated") else ""
    print(f"time ratio dense / chunked at P={p}: {d['seconds'] / c['seconds']:.2f}{note}")
    print(f"memory ratio dense / chunked at P={p}: "
          f"{d['peak_mib'] / max(c['peak_mib'], 1e-3):.1f}{note}")


if __name__ == "__main__":
    main()
