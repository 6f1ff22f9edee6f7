"""Cost of the bad-image checks per image, and extrapolated to CrowdHuman train (15,000).

Writes --num synthcrowd-style JPEGs at CrowdHuman-like sizes (1000 x 1400 and 1400 x 1000,
quality 90) to a temp dir and times, one thread, page cache warm (best of --repeat passes):

  header     read_image_size: JPEG SOF parse (what loading read before)
  check      check_image_file: header + end-marker check (load time, cache miss)
  cached     os.stat per image: a load with the <odgt>.sizes.json cache valid
  decode     cv2.imread: what a full decode check at load time would cost
  read       read_image: np.fromfile + end check + cv2.imdecode with libjpeg's warnings
             captured (map time, replaces cv2.imread in the mapper)

Cold-cache (first read from disk) cost is I/O-bound and not measured here: the check reads
the first few hundred bytes and the last 1 KiB of each file, the decode reads all of it.

Usage: python benchmarks/image_checks.py [--num 60] [--repeat 3]
Prints one line per check and, LAST, the read / imread time ratio (target <= 1.05: the
map-time check must cost nothing beside the decode).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crowdloss.data.image_io import check_image_file, read_image, read_image_size  # noqa: E402
from crowdloss.data.synthetic import render_scene  # noqa: E402

TRAIN_IMAGES = 15000


def main(num: int, repeat: int) -> None:
    cv2.setNumThreads(1)
    tmp = tempfile.mkdtemp(prefix="crowdloss_bench_checks_")
    try:
        paths = []
        for i in range(num):
            h, w = (1000, 1400) if i % 4 else (1400, 1000)
            img, _ = render_scene(np.random.default_rng([0, 11, i]), h, w, i)
            paths.append(os.path.join(tmp, f"{i}.jpg"))
            cv2.imwrite(paths[-1], img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        mean_kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        cases = {
            "header": lambda p: read_image_size(p),
            "check": lambda p: check_image_file(p),
            "cached": lambda p: os.stat(p),
            "decode": lambda p: cv2.imread(p, flags),
            "read": lambda p: read_image(p),
        }
        best = {}
        for _ in range(repeat):  # interleaved so that drift hits every case alike
            for name, fn in cases.items():
                t = time.perf_counter()
                for p in paths:
                    fn(p)
                best[name] = min(best.get(name, 1e9), (time.perf_counter() - t) / num)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{num} JPEGs, mean {mean_kb:.0f} KiB, 1000 x 1400; per image and x {TRAIN_IMAGES}:")
    for name, sec in best.items():
        print(f"{name:7s}: {sec * 1e3:9.4f} ms   {sec * TRAIN_IMAGES:8.2f} s")
    print(json.dumps({"ratio_read_over_imread": round(best["read"] / best["decode"], 3)}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    main(args.num, args.repeat)
