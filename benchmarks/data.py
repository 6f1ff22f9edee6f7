"""Training-pipeline throughput vs bare OpenCV (target: ratio <= 1.3).

Generates ~50 synthcrowd-style JPEGs at ~1000x1400 in a temp dir, then times
  pipeline: DatasetMapper (imread + decode + ResizeShortestEdge(800, 1400) + flip + CHW
            tensor + Instances), odgt parsing excluded;
  bare:     cv2.imread + cv2.resize to the same output sizes.
Prints the ratio last.
"""
import json
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from crowdloss.data.mapper import DatasetMapper  # noqa: E402
from crowdloss.data.synthetic import render_scene  # noqa: E402


class _Cfg(dict):
    __getattr__ = dict.__getitem__


def main(num: int = 50, repeats: int = 3) -> None:
    cv2.setNumThreads(1)
    tmp = tempfile.mkdtemp(prefix="crowdloss_bench_data_")
    dicts = []
    for i in range(num):
        rng = np.random.default_rng([0, 9, i])
        h, w = (1000, 1400) if i % 4 else (1400, 1000)
        img, gtboxes = render_scene(rng, h, w, i)
        path = os.path.join(tmp, f"{i}.jpg")
        cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        boxes = [[g["fbox"][0], g["fbox"][1], g["fbox"][0] + g["fbox"][2], g["fbox"][1] + g["fbox"][3]]
                 for g in gtboxes]
        annos = [{"bbox": [max(0, b[0]), max(0, b[1]), min(w, b[2]), min(h, b[3])], "category_id": 0}
                 for b in boxes]
        dicts.append({"file_name": path, "image_id": i, "height": h, "width": w,
                      "annotations": annos})
    cfg = _Cfg(INPUT=_Cfg(FORMAT="BGR", AUG=_Cfg(TRAIN_PIPELINES=[
        ("ResizeShortestEdge", dict(short_edge_length=(800,), max_size=1400, sample_style="choice")),
        ("RandomFlip", dict(prob=0.5))])))
    mapper = DatasetMapper(cfg, True)
    sizes = [mapper.pipeline.transforms[0].output_size(d["height"], d["width"], 800) for d in dicts]

    def run_pipeline():
        for k, d in enumerate(dicts):
            mapper(d, np.random.default_rng(k))

    def run_bare():
        for d, (nh, nw) in zip(dicts, sizes):
            cv2.resize(cv2.imread(d["file_name"]), (nw, nh), interpolation=cv2.INTER_LINEAR)

    best = {}
    for name, fn in (("bare", run_bare), ("pipeline", run_pipeline)) * repeats:
        t = time.perf_counter()
        fn()
        best[name] = min(best.get(name, 1e9), time.perf_counter() - t)
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ("bare", "pipeline"):
        print(f"{name:9s}: {num / best[name]:7.1f} images/s")
    print(json.dumps({"ratio_pipeline_over_bare": round(best["pipeline"] / best["bare"], 3)}))


if __name__ == "__main__":
    main()
