"""SSD training augmentations: Resize, Expand, MinIoURandomCrop, PhotometricDistort, flips."""
import random

import cv2
import numpy as np
import pytest

from crowdloss.config import ConfigDict
from crowdloss.data import Annotations, DatasetMapper, build_transforms
from crowdloss.data.transforms import (Expand, MinIoURandomCrop, PhotometricDistort,
                                       RandomFlip, Resize)

SSD300 = [("PhotometricDistort", dict()),
          ("Expand", dict(mean=(104, 117, 123), ratio_range=(1.0, 4.0), prob=0.5)),
          ("MinIoURandomCrop", dict()),
          ("RandomFlip", dict(prob=0.5)),
          ("Resize", dict(height=300, width=300))]


def _iou(boxes, rect):
    """Plain reference IoU, written independently of the transform's helper."""
    out = []
    for b in np.asarray(boxes, np.float64):
        iw = max(0.0, min(b[2], rect[2]) - max(b[0], rect[0]))
        ih = max(0.0, min(b[3], rect[3]) - max(b[1], rect[1]))
        inter = iw * ih
        union = (b[2] - b[0]) * (b[3] - b[1]) + (rect[2] - rect[0]) * (rect[3] - rect[1]) - inter
        out.append(inter / union)
    return np.array(out)


def _coord_image(h=120, w=200):
    """Pixel (y, x) holds (x, y, 0): any geometric transform can be traced back."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)


def _annos():
    boxes = [[10, 10, 50, 60], [60, 20, 100, 110], [120, 5, 190, 80], [150, 90, 199, 119],
             [0, 0, 30, 20]]
    return Annotations(boxes, [0, 0, -1, 0, -1], idx=np.arange(5))


def test_resize_scales_boxes_and_ignores_aspect():
    img = _coord_image()
    annos = _annos()
    out, got = Resize(height=60, width=300)(img, annos, None)
    assert out.shape == (60, 300, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(got.boxes, annos.boxes * [1.5, 0.5, 1.5, 0.5], rtol=1e-6)
    assert got.classes.tolist() == annos.classes.tolist() and got.fields["idx"].tolist() == \
        list(range(5))
    same, kept = Resize(height=120, width=200)(img, annos, None)
    assert same is img and kept is annos
    with pytest.raises(ValueError, match="positive"):
        Resize(height=0, width=3)


def test_flip_moves_ignore_regions_like_objects():
    img, annos = _coord_image(), _annos()
    out, got = RandomFlip(prob=1.0)(img, annos, np.random.default_rng(0))
    want = annos.boxes.copy()
    want[:, [0, 2]] = 200 - annos.boxes[:, [2, 0]]
    assert np.array_equal(got.boxes, want) and got.classes.tolist() == [0, 0, -1, 0, -1]
    assert np.array_equal(out, img[:, ::-1])


def _expand_seed(prob=1.0):
    """A seed whose expansion has non-zero offsets on both axes."""
    for seed in range(100):
        out, got = Expand(mean=(10, 20, 30), prob=prob)(
            _coord_image(), _annos(), np.random.default_rng(seed))
        if got.boxes[0, 0] > 10 and got.boxes[0, 1] > 10:
            return seed, out, got
    raise AssertionError("no seed with offsets")


def test_expand_offsets_fill_and_content():
    img, annos = _coord_image(), _annos()
    _, out, got = _expand_seed()
    left, top = got.boxes[0, 0] - 10, got.boxes[0, 1] - 10
    assert left == int(left) and top == int(top)  # integer offsets, the same for every box
    np.testing.assert_array_equal(got.boxes, annos.boxes + [left, top, left, top])
    H, W = out.shape[:2]
    assert 120 <= H <= 4 * 120 and 200 <= W <= 4 * 200 and (H, W) != (120, 200)
    assert abs(H / 120 - W / 200) < 0.02  # one ratio for both axes
    t, l = int(top), int(left)
    assert np.array_equal(out[t:t + 120, l:l + 200], img)  # the image sits at the offsets
    fill = np.ones(out.shape[:2], bool)
    fill[t:t + 120, l:l + 200] = False
    assert (out[fill] == [10, 20, 30]).all()  # the mean, in the given channel order
    assert got.classes.tolist() == annos.classes.tolist()
    # prob 0 never expands; prob 0.5 about half the time; ratios stay in range.
    e0 = Expand(prob=0.0)
    assert all(e0(img, annos, np.random.default_rng(s))[0] is img for s in range(20))
    e = Expand(prob=0.5, ratio_range=(2.0, 3.0))
    shapes = [e(img, annos, np.random.default_rng(s))[0].shape for s in range(300)]
    grown = [s for s in shapes if s != img.shape]
    assert 110 < len(grown) < 190
    assert all(240 <= s[0] < 360 and 400 <= s[1] < 600 for s in grown)
    with pytest.raises(ValueError, match="mean"):
        Expand(mean=(1, 2))
    with pytest.raises(ValueError, match="ratio_range"):
        Expand(ratio_range=(0.5, 2.0))


def test_crop_keeps_by_centre_and_clips():
    img, annos = _coord_image(), _annos()
    crop = MinIoURandomCrop(min_ious=(), min_crop_size=0.3)
    centres = (annos.boxes[:, :2] + annos.boxes[:, 2:]) / 2
    cropped = 0
    for seed in range(60):
        patch = crop.sample_patch(annos, 120, 200, np.random.default_rng(seed))
        out, got = crop(img, annos, np.random.default_rng(seed))
        if patch is None:
            assert out is img and got is annos
            continue
        cropped += 1
        (x1, y1, x2, y2), keep, _ = patch
        inside = ((centres[:, 0] > x1) & (centres[:, 0] < x2)
                  & (centres[:, 1] > y1) & (centres[:, 1] < y2))
        assert np.array_equal(keep, inside) and keep[annos.is_object].any()
        assert np.array_equal(out, img[y1:y2, x1:x2])
        assert got.fields["idx"].tolist() == np.flatnonzero(inside).tolist()
        want = annos.boxes[inside].copy()
        want[:, 0::2] = np.clip(want[:, 0::2], x1, x2) - x1
        want[:, 1::2] = np.clip(want[:, 1::2], y1, y2) - y1
        assert np.array_equal(got.boxes, want)
        assert got.classes.tolist() == annos.classes[inside].tolist()
        # Size and aspect limits (the rectangle is snapped to integers: 1 px slack).
        w, h = x2 - x1, y2 - y1
        assert 0.3 * 200 - 1 <= w <= 200 and 0.3 * 120 - 1 <= h <= 120
        assert 0.5 - 0.05 <= h / w <= 2.0 + 0.05
    assert 30 <= cropped <= 59  # half the modes crop


@pytest.mark.parametrize("rule", ["all", "any"])
def test_crop_min_iou_constraint_is_satisfied(rule):
    h, w = 100, 160
    annos = Annotations([[20, 10, 90, 95], [70, 20, 150, 90], [0, 0, 160, 100], [5, 5, 20, 20]],
                        [0, 0, -1, -1])  # ignore regions must not count
    objects = annos.boxes[:2]
    crop = MinIoURandomCrop(min_ious=(0.1, 0.3, 0.5, 0.7, 0.9), iou_rule=rule)
    seen = {}
    for seed in range(400):
        patch = crop.sample_patch(annos, h, w, np.random.default_rng(seed))
        if patch is None:
            continue
        rect, keep, min_iou = patch
        iou = _iou(objects, rect)
        seen.setdefault(min_iou, []).append(iou)
        if min_iou > float("-inf"):
            assert (iou.min() if rule == "all" else iou.max()) >= min_iou, (seed, iou, min_iou)
        assert keep[:2].any()
    assert {0.1, 0.3, 0.5} <= set(seen)  # the constrained modes do produce crops
    # The constraint binds: unconstrained patches often fall below what 0.5 demands.
    free = np.array(seen[float("-inf")])
    assert ((free.min(1) if rule == "all" else free.max(1)) < 0.5).mean() > 0.2


def test_crop_without_objects_and_empty():
    img = _coord_image()
    only_ignore = Annotations([[10, 10, 60, 60]], [-1])
    crop = MinIoURandomCrop()
    kinds = set()
    for seed in range(40):
        out, got = crop(img, only_ignore, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and 0 < out.shape[0] <= 120 and 0 < out.shape[1] <= 200
        kinds.add((out.shape == img.shape, len(got)))
        if len(got):
            assert got.classes.tolist() == [-1]
        empty_out, empty = crop(img, Annotations.empty(), np.random.default_rng(seed))
        assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty_out.size > 0
    assert (False, 0) in kinds and (True, 1) in kinds  # crops that drop and keep the region
    with pytest.raises(ValueError, match="iou_rule"):
        MinIoURandomCrop(iou_rule="most")


def _coloured(h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8), (w, h))
    img[:8] = 255  # saturated rows: clipping must keep them in range
    img[-8:] = 0
    return img


def test_photometric_stays_uint8_and_leaves_boxes():
    img, annos = _coloured(), _annos()
    pd = PhotometricDistort(prob=1.0, channel_swap_prob=1.0)
    for seed in range(10):
        out, got = pd(img, annos, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == img.shape and out.flags.c_contiguous
        assert got is annos and not np.array_equal(out, img)
    # Nothing enabled: the exact input back.
    off = PhotometricDistort(prob=0.0, channel_swap_prob=0.0)
    assert np.array_equal(off(img, annos, np.random.default_rng(1))[0], img)


def test_photometric_steps_do_what_they_say():
    img, annos = _coloured(), _annos()
    base = dict(contrast_range=(1.0, 1.0), saturation_range=(1.0, 1.0), hue_delta=0.0,
                channel_swap_prob=0.0, prob=1.0)
    # Brightness: one shift in [-32, 32) for the whole image, clipped at the ends.
    out = PhotometricDistort(**base)(img, annos, np.random.default_rng(3))[0].astype(int)
    mid = (img > 40) & (img < 215)
    d = np.unique(out[mid] - img[mid])
    assert len(d) == 1 and -32 <= d[0] <= 32 and d[0] != 0
    # Contrast: one factor in [0.5, 1.5).
    c = PhotometricDistort(**{**base, "brightness_delta": 0.0, "contrast_range": (0.5, 1.5)})
    out = c(img, annos, np.random.default_rng(4))[0].astype(float)
    ratio = out[(img > 50) & (out < 250)] / img[(img > 50) & (out < 250)]
    assert 0.5 - 0.02 <= ratio.min() and ratio.max() < 1.5 + 0.02 and np.ptp(ratio) < 0.03
    # Saturation and hue leave grey pixels grey.
    grey = np.repeat(img[..., :1], 3, axis=2)
    sh = PhotometricDistort(**{**base, "brightness_delta": 0.0, "saturation_range": (0.5, 1.5),
                               "hue_delta": 18.0})
    out = sh(grey, annos, np.random.default_rng(5))[0].astype(int)
    assert np.abs(out - grey).max() <= 1
    # Channel swap: a permutation of the channels; all 6 orders occur.
    sw = PhotometricDistort(prob=0.0, channel_swap_prob=1.0)
    perms = set()
    for seed in range(60):
        out = sw(img, annos, np.random.default_rng(seed))[0]
        p = [next(j for j in range(3) if np.array_equal(out[..., k], img[..., j]))
             for k in range(3)]
        perms.add(tuple(p))
    assert len(perms) == 6


def test_photometric_hue_rotates_within_delta_and_wraps():
    # Red (H = 0, negative shifts wrap to ~350), orange (H ~ 30) and blue (H = 240), in BGR.
    img = np.zeros((4, 6, 3), np.uint8)
    img[:, :2] = (0, 0, 255)
    img[:, 2:4] = (0, 128, 255)
    img[:, 4:] = (255, 0, 0)
    hue_only = PhotometricDistort(brightness_delta=0.0, contrast_range=(1, 1),
                                  saturation_range=(1, 1), hue_delta=18.0, prob=1.0,
                                  channel_swap_prob=0.0)
    hsv_in = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_BGR2HSV)
    shifts = []
    for seed in range(30):
        out = hue_only(img, Annotations.empty(), np.random.default_rng(seed))[0]
        hsv = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_BGR2HSV)
        d = (hsv[..., 0] - hsv_in[..., 0] + 180.0) % 360.0 - 180.0  # signed, circular
        assert np.ptp(d) < 2.0  # one rotation for every colour (uint8 rounding: ~1 degree)
        assert np.abs(d).max() <= 18.0 + 1.0
        assert np.abs(hsv[..., 1] - hsv_in[..., 1]).max() <= 0.02  # S kept (in [0, 1])
        assert np.abs(hsv[..., 2] - hsv_in[..., 2]).max() <= 1.0  # V kept
        shifts.append(float(d.mean()))
    assert min(shifts) < -5 and max(shifts) > 5


def test_photometric_respects_channel_order():
    bgr = _coloured(seed=2)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    annos = Annotations.empty()
    kw = dict(prob=1.0, channel_swap_prob=0.0)
    for seed in range(6):
        out_bgr = PhotometricDistort(**kw)(bgr, annos, np.random.default_rng(seed))[0]
        out_rgb = PhotometricDistort(**kw, image_format="RGB")(
            rgb, annos, np.random.default_rng(seed))[0]
        # The same colours, whatever the order (OpenCV's two float HSV paths may differ by 1).
        assert np.abs(out_rgb[..., ::-1].astype(int) - out_bgr).max() <= 1
    # Ignoring the order would rotate the hue the other way: visibly different.
    hue = dict(prob=0.0, channel_swap_prob=0.0)
    right = PhotometricDistort(**hue, image_format="RGB")
    right.prob = 1.0
    right.contrast_range, right.saturation_range, right.brightness_delta = (1, 1), (1, 1), 0.0
    wrong = PhotometricDistort(**hue, image_format="BGR")
    wrong.__dict__.update({k: v for k, v in right.__dict__.items() if k != "image_format"})
    a = right(rgb, annos, np.random.default_rng(0))[0].astype(int)
    b = wrong(rgb, annos, np.random.default_rng(0))[0].astype(int)
    assert np.abs(a - b).max() > 10


def test_mapper_refuses_a_colour_transform_in_the_wrong_order():
    cfg = ConfigDict(dict(INPUT=dict(FORMAT="RGB", AUG=dict(TRAIN_PIPELINES=[
        ("PhotometricDistort", dict())]))))
    with pytest.raises(ValueError, match="image_format='BGR'.*INPUT.FORMAT is 'RGB'"):
        DatasetMapper(cfg, True)
    cfg.INPUT.AUG.TRAIN_PIPELINES = [("PhotometricDistort", dict(image_format="RGB"))]
    assert DatasetMapper(cfg, True).image_format == "RGB"


def test_geometric_ssd_pipeline_keeps_boxes_on_their_pixels():
    """Trace pixels through Expand + crop + flips: every output box still covers its object."""
    img, annos = _coord_image(), _annos()
    pipe = build_transforms([("Expand", dict(mean=(0, 0, 255), prob=0.7)),
                             ("MinIoURandomCrop", dict()),
                             ("RandomFlip", dict(prob=0.5)),
                             ("RandomFlip", dict(horizontal=False, vertical=True))])
    for seed in range(80):
        out, got = pipe(img, annos, np.random.default_rng(seed))
        got, _ = got.clip_and_drop(*out.shape[:2])
        for box, j in zip(got.boxes, got.fields["idx"]):
            x1, y1, x2, y2 = box
            orig = annos.boxes[j]
            probes = ((x1 + x2) / 2, (y1 + y2) / 2), (x1 + 0.5, y1 + 0.5), (x2 - 0.5, y2 - 0.5)
            for px, py in probes:
                pix = out[int(py), int(px)]
                assert pix[2] == 0  # the image, not the canvas fill
                assert orig[0] - 1 <= pix[0] <= orig[2] and orig[1] - 1 <= pix[1] <= orig[3]


def test_ssd_pipeline_is_a_function_of_the_rng_only():
    img, annos = _coloured(96, 128), _annos()
    pipe = build_transforms(SSD300)
    np.random.seed(0)
    random.seed(0)
    state_np, state_py = np.random.get_state(), random.getstate()
    a = [pipe(img, annos, np.random.default_rng([7, pos])) for pos in range(12)]
    np.random.seed(123)  # another global state must change nothing
    random.seed(123)
    b = [pipe(img, annos, np.random.default_rng([7, pos])) for pos in range(12)]
    for (ia, aa), (ib, ab) in zip(a, b):
        assert np.array_equal(ia, ib) and aa == ab
    np.random.seed(0)
    random.seed(0)
    pipe(img, annos, np.random.default_rng(1))
    assert np.array_equal(np.random.get_state()[1], state_np[1])  # the globals were not drawn
    assert random.getstate() == state_py
    # Different positions give different samples.
    assert len({ia.tobytes() for ia, _ in a}) == len(a)


@pytest.fixture(scope="module")
def synthcrowd(tmp_path_factory):
    from crowdloss.data import DatasetCatalog, register_crowdhuman_instances
    from crowdloss.data.synthetic import generate_synthcrowd
    root = generate_synthcrowd(str(tmp_path_factory.mktemp("ssd") / "synthcrowd"), num_train=6,
                               num_val=0, seed=2, workers=1)
    DatasetCatalog.remove("ssd_synth_train")
    register_crowdhuman_instances("ssd_synth_train", f"{root}/annotations/annotation_train.odgt",
                                  f"{root}/Images")
    yield "ssd_synth_train"
    DatasetCatalog.remove("ssd_synth_train")


def _ssd_cfg(**over):
    from crowdloss.config import BaseDetectionConfig

    cfg = BaseDetectionConfig()  # every key the loaders read is declared
    cfg.merge(dict(SEED=3, INPUT=dict(FORMAT="BGR", AUG=dict(TRAIN_PIPELINES=SSD300)),
                   DATASETS=dict(TRAIN=("ssd_synth_train",), BOX_TYPE="fbox",
                                 SKIP_BAD_IMAGES=False),
                   DATALOADER=dict(NUM_WORKERS=0, ASPECT_RATIO_GROUPING=False,
                                   FILTER_EMPTY_ANNOTATIONS=True),
                   SOLVER=dict(IMS_PER_DEVICE=2)))
    cfg.merge(over)
    return cfg


def test_ssd300_pipeline_on_synthcrowd(synthcrowd):
    import torch
    from crowdloss.data import get_dataset_dicts
    dicts = get_dataset_dicts(synthcrowd)
    mapper = DatasetMapper(_ssd_cfg(), True)
    changed = dropped = 0
    for k, d in enumerate(dicts):
        n_in = len(d["annotations"])
        assert n_in > 0
        for seed in range(5):
            out = mapper(d, np.random.default_rng([seed, k]))
            img, inst = out["image"], out["instances"]
            assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 300, 300)
            assert inst.image_size == (300, 300) and (out["height"], out["width"]) == \
                (d["height"], d["width"])
            b = inst.gt_boxes
            assert b.dtype == torch.float32 and inst.gt_classes.dtype == torch.int64
            assert len(b) <= n_in and set(inst.gt_classes.tolist()) <= {0, -1}
            assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= 300).all()
            assert (b[:, 1::2] >= 0).all() and (b[:, 1::2] <= 300).all()
            assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
            changed += len(b) != n_in
            dropped += n_in - len(b)
    assert changed > 0 and dropped > 0  # crops did remove people somewhere


def test_ssd_training_stream_replays_on_resume(synthcrowd):
    from crowdloss.data import build_train_loader
    it = iter(build_train_loader(_ssd_cfg()))
    batches = [next(it) for _ in range(4)]
    resumed = iter(build_train_loader(_ssd_cfg(), start_iter=2))
    for want in batches[2:]:
        got = next(resumed)
        for g, w in zip(got, want):
            assert g["image_id"] == w["image_id"] and g["image"].equal(w["image"])
            assert g["instances"].gt_boxes.equal(w["instances"].gt_boxes)
    other = iter(build_train_loader(_ssd_cfg(SEED=4)))
    assert not all(a["image"].equal(b["image"]) for a, b in zip(next(other), batches[0]))
