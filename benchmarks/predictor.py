"""Speed of the Predictor and of pods_demo against the bare model forward, CPU, R-50 at 800 px.

The model is the CrowdHuman seed recipe's (pytorch-retinanet RetinaNet R-50-FPN, 81 classes)
tested at short side 800 / long side 1333, with random weights whose classifier is set so that
a crowd-like number of candidates reaches the post-processing (~4000 above 0.05, person and
head; hundreds of detections after NMS: a model detecting nothing would flatter it). Images
are 1080 x 1620 JPEG scenes.

Per image, median of ``--runs`` after a warm-up, at one thread and at all threads:

- forward: ``model([x])`` on the already resized tensor (network, anchors, decoding, NMS,
  rescale to the image: what pods_test times);
- predictor: ``Predictor(image)`` end to end on the decoded BGR array;
- demo: ``pods_demo``'s loop on a folder of ``--runs`` images, per image, after a one-image
  warm-up run (JPEG decode, the predictor, drawing, JPEG encode + write).

The demo's overhead over the forward is measured as the sum of its own steps timed alone
(decode, the predictor's pre- and post-processing, drawing, encode + write), not as the
difference of two end-to-end times: on a shared machine those move by tens of percent between
runs, the steps by far less. Target: overhead / forward <= 0.10 at one thread; printed last.

    python benchmarks/predictor.py [--runs 3] [--size 800] [--threads-all N]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crowdloss.cli import demo  # noqa: E402
from crowdloss.cli.common import load_experiment  # noqa: E402
from crowdloss.data.image_io import read_image  # noqa: E402
from crowdloss.engine.predictor import Predictor  # noqa: E402
from crowdloss.utils.draw import draw_detections  # noqa: E402

EXP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "playground",
                   "detection", "crowdhuman", "retinanet.res50.fpn.crowdhuman.coco_ft.608size.750k")


def scene(h, w, seed):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    for _ in range(60):  # person-like blobs
        x, y, s = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(20, 120))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(img, (x, y), (x + s, y + 3 * s), color, -1)
    return img


def timed(fn, runs):
    fn()  # warm-up: allocator, first-call overheads
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size", type=int, default=800)
    p.add_argument("--threads-all", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args()
    overrides = ["INPUT.MIN_SIZE_TEST", str(args.size), "INPUT.MAX_SIZE_TEST",
                 str(args.size * 1333 // 800), "DATASETS.CSV.TRAIN", "", "DATASETS.CSV.VAL", "",
                 "TEST.DETECTIONS_PER_IMAGE", "300"]
    tmp = tempfile.mkdtemp(prefix="bench_predictor_")
    exp = load_experiment(EXP)
    cfg = exp.config
    cfg.merge_from_list(overrides)
    torch.manual_seed(0)
    model = exp.build_model(cfg).eval()
    with torch.no_grad():
        # Logits of std ~0.16 around the bias; measured on these images: -3.27 puts ~2000
        # anchors of a class above 0.05. person and head get it, the other classes none.
        model.head.cls_score.weight.normal_(0, 0.01)
        bias = model.head.cls_score.bias.view(9, 81)
        bias.fill_(-6.0)
        bias[:, [0, 80]] = -3.27
    weights = os.path.join(tmp, "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    folder = os.path.join(tmp, "images")
    os.makedirs(folder)
    for k in range(args.runs):
        cv2.imwrite(os.path.join(folder, f"img{k}.jpg"), scene(1080, 1620, k))
    path = os.path.join(folder, "img0.jpg")
    image = read_image(path, "BGR")

    pred = Predictor.from_experiment(EXP, overrides, weights=weights)
    x = pred.preprocess(image)
    with torch.no_grad():
        out = pred.model([x])[0]
    det = pred.postprocess(out)
    print(f"R-50 RetinaNet, input {tuple(x['image'].shape[1:])} from {image.shape[:2]}, "
          f"{len(det)} detections after NMS (all drawn: threshold 0.05), "
          f"median of {args.runs} runs")
    results = {}
    for threads in (1, args.threads_all):
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        with torch.no_grad():
            t_fwd = timed(lambda: pred.model([x]), args.runs)
        t_pred = timed(lambda: pred(image), args.runs)
        steps = {
            "decode": timed(lambda: read_image(path, "BGR"), args.runs),
            "preprocess": timed(lambda: pred.preprocess(image), args.runs),
            "postprocess": timed(lambda: pred.postprocess(out), args.runs),
            "draw": timed(lambda: draw_detections(image, det.boxes, det.scores, det.classes,
                                                  det.class_names, threshold=0.05), args.runs),
            "encode+write": timed(lambda: cv2.imwrite(os.path.join(tmp, "w.jpg"), image),
                                  args.runs),
        }
        demo_argv = ["--dir", EXP, "--input", folder, "--output", os.path.join(tmp, "vis"),
                     "--weights", weights, "--threshold", "0.05", "--device", "cpu"]
        demo.run(demo_argv + ["--max-frames", "1", *overrides])  # warm-up
        summary = demo.run(demo_argv + overrides)
        t_demo = summary.seconds / summary.frames
        results[threads] = (t_fwd, steps)
        print(f"threads {threads:2d}: forward {1 / t_fwd:.3f} img/s ({t_fwd:.2f} s), predictor "
              f"{1 / t_pred:.3f} img/s ({t_pred:.2f} s), demo {1 / t_demo:.3f} img/s "
              f"({t_demo:.2f} s); demo's own steps: "
              + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in steps.items()))
    t_fwd, steps = results[1]
    pred_overhead = (steps["preprocess"] + steps["postprocess"]) / t_fwd
    print(f"predictor overhead / forward, 1 thread: {pred_overhead:.4f}")
    print(f"demo overhead / forward (target <= 0.10), 1 thread: "
          f"{sum(steps.values()) / t_fwd:.4f}")


if __name__ == "__main__":
    main()
