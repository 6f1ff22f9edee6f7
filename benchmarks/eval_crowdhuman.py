"""Speed of the CrowdHuman evaluator at val-set scale, single-threaded.

Generates (deterministically) 4,370 images with ~23 valid GT, 2 ignore regions and 200
detections each, writes GT and results odgt files, and times all four metrics (AP, MR^-2,
Recall, JI) once from the files (parsing included) and once from already-parsed input.
The target is <= 10 s on one core. Prints the figure last.

    python benchmarks/eval_crowdhuman.py [--images 4370] [--dets 200] [--ji-matching weight]
"""
import os

# One core: set before numpy / scipy load their BLAS / OpenMP runtimes.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crowdloss.evaluation.crowdhuman import evaluate_crowdhuman  # noqa: E402
from crowdloss.evaluation.results_io import load_dt, load_gt, write_odgt  # noqa: E402


def make_crowd(num_images: int = 4370, num_dets: int = 200, seed: int = 0):
    """GT and detection records shaped like CrowdHuman val and a dense detector's output."""
    rng = np.random.default_rng(seed)
    gts, dts = [], []
    for i in range(num_images):
        h, w = int(rng.integers(500, 1200)), int(rng.integers(700, 1600))
        n_valid = int(rng.poisson(23))
        bw = rng.uniform(15, 160, n_valid)
        bh = bw * rng.uniform(2.0, 3.0, n_valid)
        # people stand in a band and overlap, some run off the image edges
        bx = rng.uniform(-0.05 * w, w * 0.95, n_valid)
        by = rng.uniform(0.1 * h, 0.8 * h, n_valid) - bh / 2
        valid = np.stack([bx, by, bw, bh], 1).round(1)
        ign = np.stack([rng.uniform(0, w / 2, 2), rng.uniform(0, h / 2, 2),
                        rng.uniform(40, 300, 2), rng.uniform(40, 300, 2)], 1).round(1)
        gtboxes = [{"tag": "person", "fbox": b, "extra": {"ignore": 0}} for b in valid.tolist()]
        gtboxes += [{"tag": "mask", "fbox": b, "extra": {"ignore": 1}} for b in ign.tolist()]
        gts.append({"ID": f"img{i:05d}", "gtboxes": gtboxes})
        # 1-3 noisy copies per GT (duplicates fight for the same GT), the rest background
        copies = np.repeat(valid, rng.integers(1, 4, n_valid), axis=0)[:num_dets]
        jit = rng.normal(0, 0.08, copies.shape) * copies[:, [2, 3, 2, 3]]
        near = copies + jit
        near[:, 2:] = np.abs(near[:, 2:])
        n_bg = num_dets - near.shape[0]
        bg = np.stack([rng.uniform(0, w, n_bg), rng.uniform(0, h, n_bg),
                       rng.uniform(10, 200, n_bg), rng.uniform(20, 400, n_bg)], 1)
        boxes = np.concatenate([near, bg]).round(2)
        scores = np.concatenate([rng.beta(5, 2, near.shape[0]), rng.beta(1, 6, n_bg)])
        dts.append({"ID": f"img{i:05d}", "height": h, "width": w,
                    "dtboxes": [{"box": b, "score": s, "tag": 1}
                                for b, s in zip(boxes.tolist(), scores.round(4).tolist())]})
    return gts, dts


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4370)
    parser.add_argument("--dets", type=int, default=200)
    parser.add_argument("--ji-matching", default="weight")
    args = parser.parse_args()
    gts, dts = make_crowd(args.images, args.dets)
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, dt_path = os.path.join(tmp, "gt.odgt"), os.path.join(tmp, "dt.odgt")
        # GT sizes come from the results file, as with the official (size-less) annotations
        write_odgt(gt_path, gts)
        write_odgt(dt_path, dts)
        c0, t0 = time.process_time(), time.perf_counter()
        gt_images, dt_images = load_gt(gt_path), load_dt(dt_path)
        t_parse = time.perf_counter() - t0
        t1 = time.perf_counter()
        res = evaluate_crowdhuman(gt_images, dt_images, ji_matching=args.ji_matching)
        t_eval = time.perf_counter() - t1
        cpu = time.process_time() - c0  # CPU seconds: robust to other load on the machine
    c, m = res.counts, res.metrics
    print(f"images {c['images']}, valid GT {c['valid_gt']}, ignore regions "
          f"{c['ignore_regions']}, detections {c['detections']} "
          f"(TP {c['tp']}, FP {c['fp']}, ignored {c['ignored_dt']})")
    print(f"AP {m['AP']:.4f}  mMR {m['mMR']:.4f}  Recall {m['Recall']:.4f}  "
          f"JI {m['JI']:.4f} (t > {res.ji_threshold:.1f}, {args.ji_matching})")
    print(f"parse odgt files: {t_parse:.2f} s; metrics on parsed input: {t_eval:.2f} s "
          f"({c['images'] / t_eval:.0f} images/s)")
    total = t_parse + t_eval
    print(f"crowdhuman eval, all four metrics, files -> numbers: {total:.2f} s wall, "
          f"{cpu:.2f} s CPU ({c['images'] / total:.0f} images/s, 1 thread)")


if __name__ == "__main__":
    main()
