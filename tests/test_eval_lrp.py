"""oLRP / moLRP (arXiv 1807.01696) against a transcription of the reference algorithm.

The transcription below does not use pycocotools: per image and class it matches greedily
like COCO (detections by descending score; crowd GTs last, matchable many times with IoU =
intersection / detection area, a detection on a crowd is ignored), pools the detections of
the class over images, and evaluates LRP at every position of the score-sorted list
(LRP-Error) or at the score thresholds 0, 0.01, ..., 1 (the 2018 code).
"""
import contextlib
import io
import json
import math

import numpy as np
import pytest

from crowdloss.evaluation.coco import evaluate_coco
from crowdloss.evaluation.lrp import olrp_from_cocoeval, olrp_of_class

TAU = 0.5
AREAS = {"all": (0, 1e10), "small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2),
         "large": (96 ** 2, 1e10)}


def iou_xywh(d, g, crowd):
    ix = max(0.0, min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0]))
    iy = max(0.0, min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1]))
    inter = ix * iy
    union = d[2] * d[3] if crowd else d[2] * d[3] + g[2] * g[3] - inter
    return inter / union


def outside(area, rng):
    return area < rng[0] or area > rng[1]


def match_image(dets, gts, max_dets, rng):
    """[(score, kind, iou)] with kind "tp" / "fp" / "ignore", dets in descending score.

    GTs that are crowds or outside the area range are "ignored": matched only when no regular
    GT matches, not counted as misses; a detection on one is ignored, and so is an unmatched
    detection outside the area range."""
    dets = sorted(dets, key=lambda d: -d["score"])[:max_dets]  # sorted() is stable
    ignored = lambda g: g["iscrowd"] or outside(g["area"], rng)  # noqa: E731
    gts = sorted(gts, key=ignored)  # regular GTs first
    taken = [False] * len(gts)
    out = []
    for d in dets:
        best, best_iou = -1, min(TAU, 1 - 1e-10)
        for j, g in enumerate(gts):
            if taken[j] and not g["iscrowd"]:
                continue
            if best > -1 and not ignored(gts[best]) and ignored(g):
                break  # a regular match beats any ignored GT
            v = iou_xywh(d["bbox"], g["bbox"], g["iscrowd"])
            if v >= best_iou:
                best, best_iou = j, v
        if best == -1:
            area = d["bbox"][2] * d["bbox"][3]
            out.append((d["score"], "ignore" if outside(area, rng) else "fp", 0.0))
        elif ignored(gts[best]):
            taken[best] = True
            out.append((d["score"], "ignore", 0.0))
        else:
            taken[best] = True
            out.append((d["score"], "tp", best_iou))
    return out


def reference_olrp(gt_anns, dets, cat, image_ids, max_dets=100, mode="lrp_error",
                   area="all"):
    """(oLRP, loc, FP, FN, threshold) of one class; None when it has no regular GT."""
    pooled, num_gt, rng = [], 0, AREAS[area]
    for img in image_ids:
        g = [a for a in gt_anns if a["image_id"] == img and a["category_id"] == cat]
        d = [r for r in dets if r["image_id"] == img and r["category_id"] == cat]
        num_gt += sum(1 for a in g if not (a["iscrowd"] or outside(a["area"], rng)))
        pooled += match_image(d, g, max_dets, rng)
    if num_gt == 0:
        return None
    pooled.sort(key=lambda r: -r[0])  # stable: image order, then score order within images
    if mode == "lrp_error":
        cut_points = range(1, len(pooled) + 1)
        if not any(k == "tp" for _, k, _ in pooled):
            return 1.0, math.nan, math.nan, 1.0, math.nan
    else:
        thresholds = [c / 100 for c in range(101)]
        cut_points = [sum(1 for s, _, _ in pooled if s >= c) for c in thresholds]
    best = None
    for pos, n in enumerate(cut_points):
        kept = pooled[:n]
        tp = sum(1 for _, k, _ in kept if k == "tp")
        fp = sum(1 for _, k, _ in kept if k == "fp")
        loc = sum(1 - v for _, k, v in kept if k == "tp")
        fn = num_gt - tp
        lrp = (loc / (1 - TAU) + fp + fn) / (tp + fp + fn)
        if best is None or lrp < best[0]:
            thr = pooled[n - 1][0] if mode == "lrp_error" else thresholds[pos]
            best = (lrp, loc / tp if tp else math.nan, fp / (tp + fp) if tp + fp else math.nan,
                    fn / num_gt, thr)
    return best


def write_gt(tmp_path, images, anns, cats):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({
        "images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"}
                   for i in images],
        "annotations": [dict(a, id=n + 1, area=a["bbox"][2] * a["bbox"][3])
                        for n, a in enumerate(anns)],
        "categories": [{"id": c, "name": f"c{c}"} for c in cats]}))
    return str(path)


def random_set(seed):
    """Crowded images: jittered detections of GTs, duplicates, crowd regions, stray FPs, ties."""
    rng = np.random.default_rng(seed)
    images, cats = list(range(1, 9)), [1, 2, 3, 4]
    anns, dets = [], []
    for img in images:
        for _ in range(int(rng.integers(0, 9))):
            cat = int(rng.choice([1, 2, 3]))  # category 4 never has GT
            x, y = rng.uniform(0, 500, 2)
            w, h = rng.uniform(8, 120, 2)
            crowd = int(rng.random() < 0.15)
            anns.append({"image_id": img, "category_id": cat, "bbox": [x, y, w, h],
                         "iscrowd": crowd})
            for _ in range(int(rng.integers(0, 4))):  # hits, duplicates, misses
                j = rng.normal(0, 0.15, 4)
                dets.append({"image_id": img, "category_id": cat,
                             "bbox": [x + j[0] * w, y + j[1] * h, w * math.exp(j[2]),
                                      h * math.exp(j[3])],
                             "score": float(np.round(rng.random(), 1))})  # ties across images
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(0, 500, 2)
            dets.append({"image_id": img, "category_id": int(rng.choice([1, 2, 3, 4])),
                         "bbox": [x, y, 30.0, 40.0], "score": float(rng.random())})
    return images, cats, anns, dets


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode,area", [("lrp_error", "all"), ("threshold_scan", "all"),
                                       ("lrp_error", "small"), ("lrp_error", "large")])
def test_matches_reference_transcription(tmp_path, seed, mode, area):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, cats, anns, dets = random_set(seed)
    path = write_gt(tmp_path, images, anns, cats)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(path)
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.evaluate()
    res = olrp_from_cocoeval(ev, mode=mode, area=area)
    assert res.category_ids == cats
    expected = []
    for k, cat in enumerate(cats):
        ref = reference_olrp(coco_gt.dataset["annotations"], dets, cat, images, mode=mode,
                             area=area)
        ours = (res.olrp[k], res.olrp_loc[k], res.olrp_fp[k], res.olrp_fn[k], res.threshold[k])
        if ref is None:  # no regular GT: left out
            assert all(math.isnan(v) for v in ours), (cat, ours)
            continue
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12, err_msg=f"class {cat}")
        expected.append(ref)
    assert len(expected) >= (2 if area == "all" else 1)  # classes with GT are exercised
    ref = np.array(expected, dtype=float)
    summary = res.summary()
    np.testing.assert_allclose(
        [summary[k] for k in ("moLRP", "moLRP_loc", "moLRP_FP", "moLRP_FN")],
        [np.nanmean(ref[:, i]) for i in range(4)], rtol=1e-12)
    if area != "all":
        return
    # evaluate_coco carries the same numbers next to AP
    metrics = evaluate_coco(path, dets, lrp_mode=mode)
    for key, value in summary.items():
        assert metrics[key] == pytest.approx(value, rel=1e-12)
    assert 0 <= metrics["moLRP"] <= 1 and "AP" in metrics


def test_hand_computed_example(tmp_path):
    # two people; detections: IoU 0.8 (score .9), a stray FP (.8), IoU 0.6 (.7)
    anns = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"image_id": 1, "category_id": 1, "bbox": [20, 0, 10, 10], "iscrowd": 0},
            {"image_id": 1, "category_id": 1, "bbox": [100, 100, 50, 50], "iscrowd": 1}]
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 8], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [60, 60, 10, 10], "score": 0.8},
            {"image_id": 1, "category_id": 1, "bbox": [20, 0, 10, 6], "score": 0.7},
            {"image_id": 1, "category_id": 1, "bbox": [110, 110, 10, 10], "score": 0.95}]
    path = write_gt(tmp_path, [1], anns, [1])
    m = evaluate_coco(path, dets)
    # the 0.95 detection lies inside the crowd region: ignored. Cut after the first TP:
    # (0.2 / 0.5 + 0 FP + 1 FN) / 2 = 0.7 (after all three: (1.2 + 1 + 0) / 3 = 0.733)
    assert m["moLRP"] == pytest.approx(0.7) and m["moLRP_loc"] == pytest.approx(0.2)
    assert m["moLRP_FP"] == 0.0 and m["moLRP_FN"] == pytest.approx(0.5)
    scan = evaluate_coco(path, dets, lrp_mode="threshold_scan")
    assert scan["moLRP"] == pytest.approx(0.7)


def test_matched_iou_is_that_of_the_gt_taken(tmp_path):
    # A = [0, 0, 10, 10], B = [2, 0, 10, 10]. The first detection (exactly A) takes A; the
    # second overlaps A best (IoU 0.9) but A is taken, so it matches B with IoU 72 / 118.
    anns = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"image_id": 1, "category_id": 1, "bbox": [2, 0, 10, 10], "iscrowd": 0}]
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 9], "score": 0.8}]
    m = evaluate_coco(write_gt(tmp_path, [1], anns, [1]), dets)
    loc = (0 + 1 - 72 / 118) / 2
    # after both: (2 loc / 0.5 + 0 FP + 0 FN) / 2 = 2 loc = 0.39 < 0.5 after the first alone
    assert m["moLRP_loc"] == pytest.approx(loc) and m["moLRP"] == pytest.approx(2 * loc)


def test_no_detections_and_missing_classes(tmp_path):
    anns = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "iscrowd": 1}]
    path = write_gt(tmp_path, [1, 2], anns, [1, 2, 3])
    # both reference codes crash here; every class with GT is all-FN: oLRP 1
    m = evaluate_coco(path, [])
    assert m["AP"] == 0.0 and m["moLRP"] == 1.0 and m["moLRP_FN"] == 1.0
    assert math.isnan(m["moLRP_loc"]) and math.isnan(m["moLRP_FP"])
    assert evaluate_coco(path, [], lrp_mode="threshold_scan")["moLRP"] == 1.0
    # detections only of classes without regular GT: class 1 still all-FN
    dets = [{"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.5},
            {"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.5}]
    m = evaluate_coco(path, dets)
    assert m["moLRP"] == 1.0 and math.isnan(m["moLRP_loc"])
    with pytest.raises(ValueError, match="lrp_mode"):
        evaluate_coco(path, dets, lrp_mode="scan")


def test_olrp_of_class_edge_cases():
    none = np.zeros(0)
    assert olrp_of_class(none, none.astype(bool), none.astype(bool), none, 3)[0] == 1.0
    # a perfect detector: oLRP 0 at the last detection's score
    r = olrp_of_class(np.array([0.9, 0.4]), np.array([True, True]), np.array([False, False]),
                      np.array([1.0, 1.0]), 2)
    assert r == (0.0, 0.0, 0.0, 0.0, 0.4)
    with pytest.raises(ValueError, match="mode"):
        olrp_of_class(none, none, none, none, 1, mode="bad")


def test_bad_cocoeval_arguments(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0}]
    path = write_gt(tmp_path, [1], anns, [1])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(path)
        ev = COCOeval(coco_gt, coco_gt.loadRes([dict(anns[0], score=0.5)]), "bbox")
        with pytest.raises(ValueError, match="evaluate"):
            olrp_from_cocoeval(ev)
        ev.evaluate()
    with pytest.raises(ValueError, match="iou_threshold 0.42"):
        olrp_from_cocoeval(ev, iou_threshold=0.42)
    with pytest.raises(ValueError, match="area 'tiny'"):
        olrp_from_cocoeval(ev, area="tiny")
    assert olrp_from_cocoeval(ev, area="small").olrp[0] == 0.0
