"""The Annotations contract changed nothing for the existing experiments.

``tests/fixtures/transforms_legacy_golden.json`` holds what the mapper produced before the
contract change (the synthcrowd and CrowdHuman experiment pipelines, the base config's, and a
multi-step one), on hand-made images with boxes touching every border, ignore regions and an
image without boxes. The new pipeline must give the same pixels and bit-identical boxes; the
mapper's single clip-and-drop may only pull coordinates that overshot the image by rounding
back onto its border.
"""
import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from crowdloss.config import ConfigDict
from crowdloss.data import Annotations, DatasetMapper, build_transforms
from crowdloss.data.mapper import read_image

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "transforms_legacy_golden.json")
SIZES = [(384, 512), (448, 320), (361, 557), (600, 901)]
PIPELINES = {
    "synthcrowd_train": [("ResizeShortestEdge", dict(short_edge_length=(256,), max_size=384,
                                                     sample_style="choice")),
                         ("RandomFlip", dict())],
    "synthcrowd_test": [("ResizeShortestEdge", dict(short_edge_length=320, max_size=480,
                                                    sample_style="choice"))],
    "crowdhuman_train": [("ResizeShortestEdge", dict(short_edge_length=(800,), max_size=1400,
                                                     sample_style="choice")),
                         ("RandomFlip", dict())],
    "crowdhuman_test": [("ResizeShortestEdge", dict(short_edge_length=800, max_size=1400,
                                                    sample_style="choice"))],
    "base_train": [("ResizeShortestEdge", dict(short_edge_length=(800,), max_size=1333,
                                               sample_style="choice")),
                   ("RandomFlip", dict())],
    "range_multi": [("ResizeShortestEdge", dict(short_edge_length=(200, 300), max_size=500,
                                                sample_style="range")),
                    ("RandomFlip", dict(prob=0.5)),
                    ("RandomFlip", dict(horizontal=False, vertical=True, prob=0.5)),
                    ("ResizeShortestEdge", dict(short_edge_length=(160, 192, 224), max_size=400,
                                                sample_style="choice"))],
}


def _image(k):
    h, w = SIZES[k]
    rng = np.random.default_rng([7, k])
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) % 256], -1)
    return np.clip(base + rng.integers(0, 64, (h, w, 3)) - 32, 0, 255).astype(np.uint8)


def _annotations(k):
    if k == 3:
        return []
    h, w = SIZES[k]
    rng = np.random.default_rng([8, k])
    annos = []
    for j in range(9):
        x1, y1 = rng.uniform(0, w - 5), rng.uniform(0, h - 5)
        x2, y2 = rng.uniform(x1 + 1, w), rng.uniform(y1 + 1, h)
        annos.append({"bbox": [float(x1), float(y1), float(x2), float(y2)],
                      "category_id": 0 if j % 3 else -1})
    annos.append({"bbox": [0.0, 0.0, float(w), float(h)], "category_id": 0})
    annos.append({"bbox": [w - 3.5, h - 7.25, float(w), float(h)], "category_id": -1})
    annos.append({"bbox": [0.0, 10.0, 0.5, 20.0], "category_id": 0})
    return annos


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy")
    out = []
    for k, (h, w) in enumerate(SIZES):
        path = str(root / f"img{k}.png")  # lossless, so the pixels are the golden's
        assert cv2.imwrite(path, _image(k))
        out.append({"file_name": path, "image_id": f"img{k}", "height": h, "width": w,
                    "annotations": _annotations(k)})
    return out


def _cases():
    for name, pipe in PIPELINES.items():
        for fmt in (("BGR", "RGB") if name == "synthcrowd_train" else ("BGR",)):
            yield name, pipe, fmt


@pytest.mark.parametrize("name,pipe,fmt", list(_cases()), ids=lambda x: str(x)[:20])
def test_same_tensors_as_before_the_contract_change(dicts, name, pipe, fmt):
    golden = json.load(open(GOLDEN))["cases"]
    mapper = DatasetMapper(ConfigDict(dict(INPUT=dict(FORMAT=fmt, AUG=dict(
        TRAIN_PIPELINES=pipe)))), True)
    pipeline = build_transforms(pipe)
    clipped = 0
    for k, d in enumerate(dicts):
        for seed in range(3):
            want = golden[f"{name}/{fmt}/{d['image_id']}/{seed}"]
            old = np.array(want["gt_boxes"], np.float32).reshape(-1, 4)
            # The pipeline alone: same pixels, same boxes to the bit.
            image, annos = pipeline(read_image(d["file_name"], fmt),
                                    Annotations.from_dataset_dict(d["annotations"]),
                                    np.random.default_rng([seed, k]))
            chw = np.ascontiguousarray(image.transpose(2, 0, 1))
            assert hashlib.sha256(chw.tobytes()).hexdigest() == want["image_sha256"]
            assert np.array_equal(annos.boxes, old)
            # The mapper: the same, then clipped to the image (nothing here becomes empty).
            out = mapper(d, np.random.default_rng([seed, k]))
            inst = out["instances"]
            H, W = want["image_size"]
            assert list(out["image"].shape) == want["image_shape"] and inst.image_size == (H, W)
            assert hashlib.sha256(out["image"].numpy().tobytes()).hexdigest() == \
                want["image_sha256"]
            expect = old.copy()
            expect[:, 0::2] = np.clip(expect[:, 0::2], 0, W)
            expect[:, 1::2] = np.clip(expect[:, 1::2], 0, H)
            assert np.array_equal(inst.gt_boxes.numpy(), expect)
            assert inst.gt_classes.tolist() == want["gt_classes"]
            # What the clip changed was a rounding overshoot of a few float32 steps.
            diff = np.abs(inst.gt_boxes.numpy() - old)
            assert (diff <= 4 * np.spacing(np.float32(max(H, W)))).all()
            clipped += int((diff > 0).sum())
    if name.startswith("crowdhuman_train"):
        assert clipped > 0  # these inputs do overshoot: the clip is exercised
