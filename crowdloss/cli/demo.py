"""``pods_demo``: an experiment's detector on images, folders, globs, videos or a webcam.

Run in an experiment dir like ``pods_train`` / ``pods_test``::

    pods_demo --input street.jpg --output vis/                 # one image
    pods_demo --input datasets/crowdhuman/Images --output vis/ --gt crowdhuman_val
    pods_demo --input "shots/*.png" --output vis/ --threshold 0.3
    pods_demo --input clip.mp4 --output vis/                   # writes vis/clip.mp4
    pods_demo --input 0 --show                                 # webcam 0 in a window
    pods_demo --input a.jpg --output vis/ --weights model_final.pth MODEL.DEVICE cpu

Boxes, class names and scores above ``--threshold`` are drawn (``crowdloss.utils.draw``); with
``--gt DATASET`` the ground truth of that registered dataset too (images matched by path, else
by file stem). Outputs go to ``--output`` (images under their own names, a video as
``<name>.mp4``), or to a window with ``--show`` (also the default where a display exists and
no ``--output`` is given). Folders and videos log their progress (frames done, images / s).
Weights: ``--weights``, else the newest checkpoint of OUTPUT_DIR, else ``MODEL.WEIGHTS``.
Trailing ``KEY VALUE`` pairs override the config, as for the other commands.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import time
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

__all__ = ["main", "run", "DemoSummary", "iter_frames", "IMAGE_EXTS", "VIDEO_EXTS"]

logger = logging.getLogger("crowdloss.demo")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class DemoSummary(NamedTuple):
    frames: int
    outputs: List[str]   # files written
    seconds: float       # wall time of the loop (reading, predicting, drawing, writing)


class _Source(NamedTuple):
    kind: str            # "images" | "video" | "webcam"
    items: List[str]     # image paths, or the video path / webcam index
    name: str            # output name of a video


def resolve_source(spec: str) -> _Source:
    """What ``--input`` names: a webcam index, a video, an image, a folder or a glob.

    Raises:
        FileNotFoundError: nothing matches; ValueError: a file of unknown type.
    """
    if spec.isdigit():
        return _Source("webcam", [spec], f"webcam{spec}")
    if any(c in spec for c in "*?["):
        paths = sorted(p for p in glob.glob(spec) if p.lower().endswith(IMAGE_EXTS))
        if not paths:
            raise FileNotFoundError(f"--input {spec!r}: the pattern matches no image")
        return _Source("images", paths, "")
    if os.path.isdir(spec):
        paths = sorted(os.path.join(spec, f) for f in os.listdir(spec)
                       if f.lower().endswith(IMAGE_EXTS))
        if not paths:
            raise FileNotFoundError(f"--input {spec}: no image ({', '.join(IMAGE_EXTS)}) in it")
        return _Source("images", paths, "")
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"--input {spec}: no such file, folder, pattern or webcam index")
    low = spec.lower()
    if low.endswith(VIDEO_EXTS):
        return _Source("video", [spec], os.path.splitext(os.path.basename(spec))[0])
    if low.endswith(IMAGE_EXTS):
        return _Source("images", [spec], "")
    raise ValueError(f"--input {spec}: not an image ({', '.join(IMAGE_EXTS)}) or video "
                     f"({', '.join(VIDEO_EXTS)})")


def iter_frames(source: _Source) -> Iterator[Tuple[str, np.ndarray, Optional[int]]]:
    """``(name, BGR frame, total or None)``; unreadable images are errors naming them."""
    import cv2

    from crowdloss.data.image_io import read_image

    if source.kind == "images":
        for path in source.items:
            yield path, read_image(path, "BGR"), len(source.items)
        return
    cap = cv2.VideoCapture(int(source.items[0]) if source.kind == "webcam" else source.items[0])
    if not cap.isOpened():
        raise OSError(f"--input {source.items[0]}: cannot open this {source.kind}")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if source.kind == "video" else None
    try:
        k = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield f"{source.name}:{k}", frame, (total if total and total > 0 else None)
            k += 1
    finally:
        cap.release()


def _gt_index(dataset: str):
    from crowdloss.data.catalog import DatasetCatalog

    index = {}
    for d in DatasetCatalog.get(dataset):
        boxes = np.array([a["bbox"] for a in d["annotations"]], np.float32).reshape(-1, 4)
        classes = np.array([a["category_id"] for a in d["annotations"]], np.int64)
        index[os.path.abspath(d["file_name"])] = (boxes, classes)
        index.setdefault(os.path.splitext(os.path.basename(d["file_name"]))[0], (boxes, classes))
    return index


class _Window:
    def __init__(self):
        import cv2

        self.cv2 = cv2
        try:
            cv2.namedWindow("pods_demo", cv2.WINDOW_NORMAL)
        except cv2.error as e:
            raise RuntimeError("--show: this OpenCV has no window support (opencv-python-"
                               "headless) or there is no display; pass --output DIR") from e

    def show(self, image) -> bool:
        self.cv2.imshow("pods_demo", image)
        return self.cv2.waitKey(1) & 0xFF not in (ord("q"), 27)  # q / Esc stop


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or sys.platform in ("win32", "darwin"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pods_demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=".", help="experiment dir (default: the current one)")
    p.add_argument("--input", required=True,
                   help="image, folder, glob pattern (quoted), video file or webcam index")
    p.add_argument("--output", default=None, help="folder for the drawn images / video")
    p.add_argument("--show", action="store_true", help="show a window (q / Esc to stop)")
    p.add_argument("--weights", default=None,
                   help="weights file (default: OUTPUT_DIR's newest checkpoint, else "
                        "MODEL.WEIGHTS)")
    p.add_argument("--threshold", type=float, default=0.5, help="least score drawn (0.5)")
    p.add_argument("--gt", default=None, metavar="DATASET",
                   help="also draw the ground truth of this registered dataset")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many (0: all)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides")
    return p


def run(argv: Optional[Sequence[str]] = None) -> DemoSummary:
    """``pods_demo`` as a function (raises instead of exiting)."""
    import cv2
    import torch

    from crowdloss.engine.predictor import Predictor
    from crowdloss.utils.draw import draw_detections

    args = build_parser().parse_args(argv)
    if len(args.opts) % 2:
        raise ValueError(f"overrides must be KEY VALUE pairs; got {args.opts}")
    source = resolve_source(args.input)
    show = args.show or (args.output is None and _has_display())
    if args.output is None and not show:
        raise RuntimeError("no display to show the results in: pass --output DIR")
    window = _Window() if show else None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = Predictor.from_experiment(args.dir, args.opts, weights=args.weights,
                                          device=device)
    gt = _gt_index(args.gt) if args.gt else None
    if args.output:
        os.makedirs(args.output, exist_ok=True)
    writer, outputs, frames = None, [], 0
    start = last_log = time.perf_counter()
    try:
        for name, frame, total in iter_frames(source):
            det = predictor(frame, "BGR")
            gt_boxes = gt_classes = None
            if gt is not None:
                hit = gt.get(os.path.abspath(name)) or gt.get(
                    os.path.splitext(os.path.basename(name))[0])
                if hit is not None:
                    gt_boxes, gt_classes = hit
            drawn = draw_detections(frame, det.boxes, det.scores, det.classes,
                                    det.class_names, threshold=args.threshold,
                                    gt_boxes=gt_boxes, gt_classes=gt_classes)
            if args.output and source.kind == "images":
                out = os.path.join(args.output, os.path.basename(name))
                if not cv2.imwrite(out, drawn):
                    raise OSError(f"cannot write {out}")
                outputs.append(out)
            elif args.output:
                if writer is None:
                    out = os.path.join(args.output, f"{source.name}.mp4")
                    fps = 25.0
                    if source.kind == "video":
                        cap = cv2.VideoCapture(source.items[0])
                        fps = cap.get(cv2.CAP_PROP_FPS) or fps
                        cap.release()
                    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (drawn.shape[1], drawn.shape[0]))
                    if not writer.isOpened():
                        raise OSError(f"cannot write the video {out}")
                    outputs.append(out)
                writer.write(drawn)
            frames += 1
            now = time.perf_counter()
            if now - last_log > 2.0 and (total is None or total > 1):
                logger.info("%d%s frames, %.2f images / s", frames,
                            f"/{total}" if total else "", frames / (now - start))
                last_log = now
            if window is not None and not window.show(drawn):
                break
            if args.max_frames and frames >= args.max_frames:
                break
    finally:
        if writer is not None:
            writer.release()
    seconds = time.perf_counter() - start
    logger.info("pods_demo: %d frames in %.1f s (%.2f images / s)%s", frames, seconds,
                frames / max(seconds, 1e-9),
                f"; wrote {outputs[0] if len(outputs) == 1 else args.output}" if outputs else "")
    return DemoSummary(frames, outputs, seconds)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: one ``pods_demo: error: ...`` line and status 1 on failure."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    try:
        run(argv)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        print(f"pods_demo: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
