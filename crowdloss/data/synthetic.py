"""synthcrowd: a deterministic miniature CrowdHuman, generated on first use.

Each image is a street-like scene (textured ground/sky, buildings, poles, trees, cars) with
people-like figures standing in perspective: feet lower in the image = nearer = taller.
Figures are drawn far-to-near, so nearer people occlude farther ones, and a per-image label
map (person index per pixel) gives each person's visible extent after occlusion:

- ``fbox``: full extent of the figure, computed from its geometry (may cross the border),
- ``vbox``: bounding box of the figure's pixels still visible in the final image,
- ``hbox``: the head (hair/hat included).

People often stand in tight groups of similar depth, which produces CrowdHuman's hard
case (fbox IoU > 0.5 between neighbours); some scenes hold 50-90 people; distant dense
crowds and posters of people are ``mask`` ignore regions; near-invisible or tiny persons get
``extra.ignore`` 1. The output is byte-identical for a given seed (one RNG per image, seeded
by (seed, split, index), independent of the worker count), so a split's first n images do
not depend on how many are generated.

Versions (``SYNTHCROWD_VERSION``, written into the ``.synthcrowd_done`` marker with the sizes):

- 1: 1000 train / 200 val.
- 2: 1000 train / 1000 val (the first 200 val images are those of version 1, byte for byte).
  200 val images made the benchmark's MR^-2 depend on the first two false positives (FPPI
  0.01 x 200 images) and its seed-to-seed spread hide the differences between methods
  (docs/benchmark.md).

A copy on disk whose marker names another version (or none: version 1) is regenerated on
first use, with a warning, never used silently; so is one whose sizes or seed differ from
what a caller asks for explicitly.

Command: ``python -m crowdloss.data.synthetic [--root DIR] [--force]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from typing import List, Optional, Tuple

import cv2
import numpy as np

from .synth_figures import (background, distractor_parts, draw, extent, ignore_regions,
                            person_parts)

__all__ = ["generate_synthcrowd", "ensure_synthcrowd", "render_scene", "read_marker",
           "DONE_MARKER", "SYNTHCROWD_VERSION", "NUM_TRAIN", "NUM_VAL"]

logger = logging.getLogger(__name__)

DONE_MARKER = ".synthcrowd_done"
SYNTHCROWD_VERSION = 2
NUM_TRAIN, NUM_VAL = 1000, 1000   # version 2's default sizes
_PARAMS = ("num_train", "num_val", "seed", "jpeg_quality")  # recorded in the marker
_SPLITS = {"train": 0, "val": 1}
_MIN_LABELED_HEIGHT = 20  # smaller persons are marked extra.ignore = 1 ("too small")
_MIN_VISIBLE = 0.12       # persons with less of their in-image body visible: ignore


def _xywh(b) -> List[float]:
    return [round(float(b[0]), 1), round(float(b[1]), 1),
            round(float(b[2] - b[0]), 1), round(float(b[3] - b[1]), 1)]


def _num_people(rng, index: int) -> int:
    # Scene types on a fixed index pattern so any sample of >= 33 images has both kinds.
    if index % 33 == 7:
        return 0                              # ~3% empty images
    if index % 14 == 3:
        return int(rng.integers(50, 91))      # ~7% dense scenes
    return int(rng.integers(1, 33))


def render_scene(rng: np.random.Generator, height: int, width: int, index: int = 0):
    """Draw one scene. Returns (BGR uint8 image, list of odgt ``gtboxes`` dicts)."""
    n = _num_people(rng, index)
    horizon = height * rng.uniform(0.15, 0.45)
    dense = n >= 50
    max_h = height * (rng.uniform(0.25, 0.4) if dense else rng.uniform(0.35, 1.0))
    k = max_h / (height * 1.1 - horizon)      # person height per pixel below the horizon
    img = background(rng, height, width, horizon)
    masks = ignore_regions(rng, img, horizon)

    # Sample people: anchors spread in depth; a third of them bring close companions.
    people: List[Tuple[float, float, float]] = []  # (cx, feet_y, h)
    min_feet = horizon + 18.0 / k  # shortest person: 18 px (marked ignore, < 20 px)
    while len(people) < n:
        fy = rng.uniform(min_feet, height * 1.1)
        hh = k * (fy - horizon)
        cx = rng.uniform(-0.1 * hh, width + 0.1 * hh)
        people.append((cx, fy, hh))
        if rng.random() < 0.25:
            for _ in range(int(rng.integers(1, 3))):
                if len(people) >= n:
                    break
                fy2 = fy + rng.normal(0.0, 0.03) * hh
                cx2 = cx + rng.choice([-1, 1]) * rng.uniform(0.03, 0.16) * hh
                people.append((cx2, fy2, k * (fy2 - horizon)))
    things = [(fy, 1, i) for i, (_, fy, _) in enumerate(people)]
    for j in range(int(rng.integers(2, 9))):
        fy = rng.uniform(horizon + 10.0 / k, height * 1.05)
        things.append((fy, 0, j))
    things.sort(key=lambda t: (t[0], t[1], t[2]))

    labels = np.zeros((height, width), np.uint16)   # 0 background, i + 1 = person i
    drawn = {}
    for fy, is_person, i in things:
        if not is_person:
            s = k * (fy - horizon)
            parts = distractor_parts(rng, rng.uniform(0, width), fy, s)
            draw(img, parts)
            draw(labels, parts, 0)
            continue
        cx, fy, hh = people[i]
        parts, head = person_parts(rng, cx, fy, hh)
        draw(img, parts)
        draw(labels, parts, i + 1)
        full = extent(parts)
        x1, y1 = int(max(0, math.floor(full[0]) - 1)), int(max(0, math.floor(full[1]) - 1))
        x2, y2 = int(min(width, math.ceil(full[2]) + 2)), int(min(height, math.ceil(full[3]) + 2))
        in_image = int((labels[y1:y2, x1:x2] == i + 1).sum()) if x2 > x1 and y2 > y1 else 0
        drawn[i] = (full, extent(head), (x1, y1, x2, y2), in_image)

    gtboxes = []
    for i in sorted(drawn, key=lambda i: (people[i][1], i)):
        full, head, (x1, y1, x2, y2), in_image = drawn[i]
        crop = labels[y1:y2, x1:x2] == i + 1
        if in_image == 0 or not crop.any():
            continue  # fully hidden / outside: an annotator could not know it is there
        ys, xs = np.nonzero(crop)
        vis = (xs.min() + x1, ys.min() + y1, xs.max() + x1 + 1, ys.max() + y1 + 1)
        visible = float(crop.sum()) / in_image
        # Rasterisation can spill a pixel past the analytic extent: keep vbox inside fbox.
        full = np.concatenate([np.minimum(full[:2], vis[:2]), np.maximum(full[2:], vis[2:])])
        ignore = int(full[3] - full[1] < _MIN_LABELED_HEIGHT or visible < _MIN_VISIBLE)
        hx, hy = int((head[0] + head[2]) / 2), int((head[1] + head[3]) / 2)
        head_seen = 0 <= hx < width and 0 <= hy < height and labels[hy, hx] == i + 1
        gtboxes.append({
            "tag": "person", "hbox": _xywh(head),
            "head_attr": {"ignore": 0, "occ": int(not head_seen), "unsure": 0},
            "fbox": _xywh(full), "vbox": _xywh(vis),
            "extra": {"box_id": len(gtboxes), "occ": int(visible < 0.95), "ignore": ignore}})
    for r in masks:
        box = _xywh(r)
        gtboxes.append({"tag": "mask", "hbox": box, "head_attr": {}, "fbox": box, "vbox": box,
                        "extra": {"box_id": len(gtboxes), "occ": 0, "ignore": 1}})

    # Sensor noise + a touch of blur over everything, so figures are textured, not flat.
    noise = rng.normal(0.0, rng.uniform(3.0, 9.0), (height, width, 1)).astype(np.float32)
    img = cv2.GaussianBlur(img, (3, 3), 0) if rng.random() < 0.5 else img
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img, gtboxes


def _image_size(rng) -> Tuple[int, int]:
    short, long_ = int(rng.integers(320, 449)), int(rng.integers(448, 577))
    return (short, long_) if rng.random() < 0.7 else (long_, short)  # (h, w); 30% portrait


def _render_one(job) -> Tuple[bytes, str]:
    """Worker: (seed, split, index, jpeg_quality) -> (JPEG bytes, odgt line)."""
    seed, split, index, quality = job
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    h, w = _image_size(rng)
    img, gtboxes = render_scene(rng, h, w, index)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    image_id = f"synth_{split}_{index:06d}"
    return buf.tobytes(), json.dumps({"ID": image_id, "gtboxes": gtboxes})


def _write_split(tmp_root: str, split: str, num: int, seed: int, quality: int, pool) -> None:
    jobs = [(seed, split, i, quality) for i in range(num)]
    results = pool.imap(_render_one, jobs, chunksize=8) if pool else map(_render_one, jobs)
    with open(os.path.join(tmp_root, "annotations", f"annotation_{split}.odgt"), "w") as f:
        for (jpeg, line), (_, _, i, _) in zip(results, jobs):
            with open(os.path.join(tmp_root, "Images", f"synth_{split}_{i:06d}.jpg"), "wb") as g:
                g.write(jpeg)
            f.write(line + "\n")


def read_marker(root: str) -> Optional[dict]:
    """The parameters a finished copy at ``root`` was generated with (``version`` 1 when the
    marker predates versions), or None when there is no finished copy. An unreadable marker
    reads as ``{"version": None}``: a copy of unknown origin, regenerated like an old one."""
    path = os.path.join(os.fspath(root), DONE_MARKER)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return {"version": None}
    if not isinstance(marker, dict):
        return {"version": None}
    marker.setdefault("version", 1)
    return marker


def _stale_reason(marker: Optional[dict], wanted: dict) -> Optional[str]:
    """Why the copy described by ``marker`` cannot serve ``wanted`` (None: it can)."""
    if marker is None:
        return "no finished copy"
    if marker.get("version") != SYNTHCROWD_VERSION:
        return (f"it was made by generator version {marker.get('version')}, this code makes "
                f"version {SYNTHCROWD_VERSION}")
    diff = [f"{k}={marker.get(k)!r} (wanted {v!r})" for k, v in wanted.items()
            if marker.get(k) != v]
    return "it was generated with " + ", ".join(diff) if diff else None


def generate_synthcrowd(root: str, *, num_train: int = NUM_TRAIN, num_val: int = NUM_VAL,
                        seed: int = 0, jpeg_quality: int = 90, workers: Optional[int] = None,
                        force: bool = False) -> str:
    """Generate synthcrowd at ``root`` (``Images/``, ``annotations/annotation_{train,val}.odgt``).

    A finished copy of this generator version with the same sizes, seed and quality is kept;
    any other finished copy is replaced (logged as a warning). Written into a unique temp dir
    next to ``root`` and renamed onto it, so concurrent callers (several ranks) never see a
    partial dataset: the first rename wins, the others discard their copy. Returns ``root``.

    Args:
        num_train, num_val: images per split.
        seed: everything (sizes, scenes, JPEG bytes) is a function of it.
        workers: processes used to render (default: min(2, CPUs)); does not change output.
        force: regenerate even if ``root`` holds a matching finished dataset.
    """
    root = os.path.abspath(os.fspath(root))
    wanted = dict(num_train=num_train, num_val=num_val, seed=seed, jpeg_quality=jpeg_quality)
    old = read_marker(root)
    reason = "forced" if force else _stale_reason(old, wanted)
    if reason is None:
        return root
    if old is None and not force and os.path.exists(root) and os.listdir(root):
        raise OSError(f"cannot create synthcrowd at {root}: the directory exists and is not a "
                      "finished synthcrowd (remove it or use --force)")
    if old is not None:
        logger.warning("regenerating synthcrowd at %s: %s", root, reason)
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp.", dir=parent)
    start = time.perf_counter()
    try:
        os.makedirs(os.path.join(tmp, "Images"))
        os.makedirs(os.path.join(tmp, "annotations"))
        workers = min(2, os.cpu_count() or 1) if workers is None else workers
        # fork: workers inherit the imported modules (spawn would re-import torch, ~seconds).
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(workers) if workers > 1 else None
        try:
            for split, num in (("train", num_train), ("val", num_val)):
                _write_split(tmp, split, num, seed, jpeg_quality, pool)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        with open(os.path.join(tmp, DONE_MARKER), "w") as f:
            json.dump({"version": SYNTHCROWD_VERSION, **wanted}, f)
        _install(tmp, root, wanted, replace=force or old is not None, force=force)
        logger.info("generated synthcrowd v%d (%d train / %d val) at %s in %.1fs",
                    SYNTHCROWD_VERSION, num_train, num_val, root, time.perf_counter() - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _install(tmp: str, root: str, wanted: dict, *, replace: bool, force: bool = False) -> None:
    """Rename the finished ``tmp`` onto ``root``, moving a replaced copy aside first, unless
    a concurrent caller has installed a matching copy meanwhile (then ``tmp`` is dropped)."""
    parent = os.path.dirname(root)
    if replace and os.path.exists(root):
        if not force and _stale_reason(read_marker(root), wanted) is None:
            logger.info("synthcrowd at %s was regenerated concurrently; using that copy", root)
            return
        trash = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.old.", dir=parent)
        try:
            os.rename(root, os.path.join(trash, "old"))
        except FileNotFoundError:
            pass  # another caller moved it first
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, root)  # atomic; fails if root exists and is not empty
    except OSError:
        if _stale_reason(read_marker(root), wanted) is None:
            logger.info("synthcrowd at %s was generated concurrently; using that copy", root)
        else:
            raise OSError(f"cannot create synthcrowd at {root}: the directory exists and is "
                          "not a finished synthcrowd of the wanted version and sizes (remove it "
                          "or use --force)") from None


def ensure_synthcrowd(root: str, **kwargs) -> str:
    """Generate synthcrowd at ``root`` unless a finished copy of this generator version is
    there (safe to race). Sizes / seed passed in ``kwargs`` must also match the copy's; those
    not passed are not checked, so a deliberately small copy (tests) is used as it is."""
    root = os.fspath(root)
    wanted = {k: kwargs[k] for k in _PARAMS if k in kwargs}
    reason = _stale_reason(read_marker(root), wanted)
    if reason is not None:
        logger.info("synthcrowd at %s: %s; generating it", root, reason)
        generate_synthcrowd(root, **kwargs)
    return root


def main(argv=None) -> None:
    from .catalog import datasets_root

    parser = argparse.ArgumentParser(description="Generate the synthcrowd dataset.")
    parser.add_argument("--root", default=str(datasets_root() / "synthcrowd"))
    parser.add_argument("--num-train", type=int, default=NUM_TRAIN)
    parser.add_argument("--num-val", type=int, default=NUM_VAL)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--force", action="store_true", help="regenerate if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    generate_synthcrowd(args.root, num_train=args.num_train, num_val=args.num_val,
                        seed=args.seed, workers=args.workers, force=args.force)
    print(args.root)


if __name__ == "__main__":
    main()
