"""The vectorised evaluator equals a plain-Python, per-detection transcription of docs/metrics.md
on random crowded inputs (ties in scores and IoUs, ignore regions, boxes off the image,
empty images, images without detections). JI "cardinality" is checked against a
transcription of mmdetection's procedure (dense float32 overlaps, scipy Hopcroft-Karp)."""
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from crowdloss.evaluation.crowdhuman import evaluate_crowdhuman

ANCHORS = [0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000]


# ---------------------------------------------------------------- reference (literal rules)
def ref_clip(box, h, w):
    x1, y1 = box[0], box[1]
    x2, y2 = box[0] + box[2], box[1] + box[3]
    return [min(max(x1, 0), w - 1), min(max(y1, 0), h - 1),
            max(min(x2, w), 0), max(min(y2, h), 0)]


def ref_inter(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, iw) * max(0, ih)


def ref_area(a):
    return (a[2] - a[0]) * (a[3] - a[1])


def ref_iou(d, g):
    inter = ref_inter(d, g)
    return inter / (ref_area(d) + ref_area(g) - inter + 1e-6)


def ref_ioa(d, g):
    return ref_inter(d, g) / (ref_area(d) + 1e-6)


def ref_images(gts, dts):
    by_id = {r["ID"]: r for r in dts}
    out = []
    for rec in gts:
        h, w = rec["height"], rec["width"]
        valid, ignore = [], []
        for b in rec["gtboxes"]:
            is_valid = b["tag"] == "person" and not b.get("extra", {}).get("ignore", 0)
            (valid if is_valid else ignore).append(ref_clip(b["fbox"], h, w))
        file_dets = [(ref_clip(d["box"], h, w), d["score"])
                     for d in by_id.get(rec["ID"], {"dtboxes": []})["dtboxes"]]
        dets = sorted(file_dets, key=lambda d: d[1], reverse=True)  # stable
        out.append((valid, ignore, dets, file_dets))
    return out


def ref_ji_crowddet(kept, valid, ignore):
    """Maximum total IoU over pairs with IoU > 0.5 (dense solver), then the ignore drops."""
    k, md, mg = 0, set(), set()
    if kept and valid:
        iou = np.array([[ref_iou(d, g) for g in valid] for d in kept])
        wts = np.where(iou > 0.5, iou, 0.0)
        rows, cols = linear_sum_assignment(wts, maximize=True)
        for r, c in zip(rows, cols):
            if wts[r, c] > 0:
                k += 1
                md.add(r)
                mg.add(c)
    n = len(kept) - sum(1 for j, d in enumerate(kept) if j not in md and ignore
                        and max(ref_ioa(d, ig) for ig in ignore) > 0.5)
    m = len(valid) - sum(1 for j, g in enumerate(valid) if j not in mg and ignore
                         and max(ref_ioa(g, ig) for ig in ignore) > 0.5)
    return k, m, n


def mm_overlap(a, b, iof):
    """mmdetection's bbox_overlaps for one pair: float32, denominator floored at 1e-6."""
    a, b = np.float32(a), np.float32(b)
    iw = max(np.float32(min(a[2], b[2]) - max(a[0], b[0])), np.float32(0))
    ih = max(np.float32(min(a[3], b[3]) - max(a[1], b[1])), np.float32(0))
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    den = area_a if iof else area_a + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(den, np.float32(1e-6))


def ref_ji_mmdet(kept, valid, ignore):
    """Hopcroft-Karp (scipy) on the dense IoU >= 0.5 matrix, kept detections in file order."""
    matches = []
    if kept and valid:
        iou = np.array([[mm_overlap(d, g, False) for g in valid] for d in kept], np.float32)
        iou[iou < 0.5] = 0
        col_of_row = maximum_bipartite_matching(csr_matrix(iou), perm_type="column")
        matches = [(r, int(c)) for r, c in enumerate(col_of_row) if c != -1]
    md, mg = {r for r, _ in matches}, {c for _, c in matches}
    n = len(kept) - sum(1 for j, d in enumerate(kept) if j not in md and ignore
                        and max(mm_overlap(d, ig, True) for ig in ignore) > 0.5)
    m = len(valid) - sum(1 for j, g in enumerate(valid) if j not in mg and ignore
                         and max(mm_overlap(g, ig, True) for ig in ignore) > 0.5)
    return len(matches), m, n


def ref_evaluate(gts, dts, matching="weight"):
    images = ref_images(gts, dts)
    scored = []
    num_valid = 0
    for valid, ignore, dets, _ in images:
        num_valid += len(valid)
        used = [False] * len(valid)
        for box, score in dets:
            best, best_iou = -1, 0.5
            for j, g in enumerate(valid):
                if used[j]:
                    continue
                iou = ref_iou(box, g)
                if iou > best_iou:
                    best, best_iou = j, iou
            if best >= 0:
                used[best] = True
                scored.append((score, 1))
                continue
            absorbed = False
            for ig in ignore:
                if ref_ioa(box, ig) > 0.5:
                    absorbed = True
                    break
            if not absorbed:
                scored.append((score, 0))
    scored.sort(key=lambda x: x[0], reverse=True)
    tp = fp = 0
    recall, precision, fppi = [], [], []
    for _, is_tp in scored:
        tp += is_tp
        fp += 1 - is_tp
        recall.append(tp / num_valid)
        precision.append(tp / (tp + fp))
        fppi.append(fp / len(images))
    ap = 0
    for i in range(1, len(recall)):
        ap += (recall[i] - recall[i - 1]) * ((precision[i - 1] + precision[i]) / 2)
    miss = []
    for a in ANCHORS:
        idx = next((i for i, f in enumerate(fppi) if f >= a), len(fppi) - 1)
        miss.append(1.0 - recall[idx])
    mmr = 0.0 if min(miss) == 0 else float(np.exp(np.log(np.array(miss)).mean()))

    ji = []
    for i in range(10):
        t = 0.1 * i
        ratios, counted = [], 0
        for valid, ignore, dets, file_dets in images:
            if matching == "weight":
                k, m, n = ref_ji_crowddet([b for b, s in dets if s > t], valid, ignore)
            else:
                k, m, n = ref_ji_mmdet([b for b, s in file_dets if s > t], valid, ignore)
            ratios.append(k / (m + n - k + 1e-6))
            counted += (m != 0 or n != 0)
        ji.append(np.sum(ratios) / counted)
    return {"AP": ap, "mMR": mmr, "Recall": recall[-1], "JI": max(ji)}, ji, sum(
        s for _, s in scored), len(scored)


# ---------------------------------------------------------------- random crowded scenes
def random_scenes(seed, num_images=25):
    rng = np.random.default_rng(seed)
    gts, dts = [], []
    for i in range(num_images):
        h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        n = int(rng.integers(0, 9)) if i % 7 else 0  # some images without GT
        # coarse 0.5-px grid: repeated coordinates give exact IoU ties
        boxes = np.stack([rng.integers(-10, w, n), rng.integers(-10, h, n),
                          rng.integers(4, 40, n), rng.integers(8, 60, n)], 1) * 1.0
        boxes[:, :2] += rng.choice([0.0, 0.5], (n, 2))
        tags = rng.random(n)
        gtboxes = []
        for b, t in zip(boxes.tolist(), tags):
            if t < 0.12:
                gtboxes.append({"tag": "mask", "fbox": b})
            elif t < 0.2:
                gtboxes.append({"tag": "person", "fbox": b, "extra": {"ignore": 1}})
            else:
                gtboxes.append({"tag": "person", "fbox": b, "extra": {"ignore": 0}})
        gts.append({"ID": f"im{i}", "height": h, "width": w, "gtboxes": gtboxes})
        if i % 5 == 3:
            continue  # no detections record for this image
        nd = int(rng.integers(0, 25))
        src = boxes[rng.integers(0, n, nd)] if n else np.zeros((nd, 4)) + [10, 10, 20, 30]
        jitter = rng.integers(-4, 5, (nd, 4)) * rng.choice([0.0, 0.5, 1.0], (nd, 1))
        det = src + jitter
        det[:, 2:] = np.abs(det[:, 2:])
        # scores on a 0.05 grid: ties within and across images, some exactly on JI thresholds
        scores = np.round(rng.integers(0, 21, nd) * 0.05, 2)
        dts.append({"ID": f"im{i}", "dtboxes": [{"box": b, "score": s, "tag": 1}
                                                for b, s in zip(det.tolist(), scores.tolist())]})
    return gts, dts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("matching", ["weight", "cardinality"])
def test_vectorised_equals_reference(seed, matching):
    gts, dts = random_scenes(seed)
    res = evaluate_crowdhuman(gts, dts, ji_matching=matching)
    ref, ref_ji, ref_tp, ref_scored = ref_evaluate(gts, dts, matching)
    for key in ("AP", "mMR", "Recall"):
        assert res.metrics[key] == ref[key], key  # bit-identical
    assert res.counts["tp"] == ref_tp
    assert res.counts["tp"] + res.counts["fp"] == ref_scored
    np.testing.assert_allclose(res.ji_per_threshold, ref_ji, rtol=1e-13, atol=0)
    assert res.metrics["JI"] == pytest.approx(ref["JI"], rel=1e-13)
    assert not math.isnan(res.metrics["AP"])


@pytest.mark.parametrize("seed", range(3))
def test_order_invariance(seed):
    gts, dts = random_scenes(seed + 10)
    base = evaluate_crowdhuman(gts, dts)
    rng = np.random.default_rng(seed)
    # the detections file's line order never matters
    shuffled = [dts[i] for i in rng.permutation(len(dts))]
    assert evaluate_crowdhuman(gts, shuffled).metrics == base.metrics
    # the GT file's image order only breaks cross-image score ties: with distinct scores,
    # any order gives the same numbers
    for j, rec in enumerate(dts):
        for k, d in enumerate(rec["dtboxes"]):
            d["score"] = 0.5 + 0.4 * math.sin(1000 * j + k) + 1e-4 * k
    base = evaluate_crowdhuman(gts, dts)
    perm = [gts[i] for i in rng.permutation(len(gts))]
    other = evaluate_crowdhuman(perm, dts)
    assert {k: other.metrics[k] for k in ("AP", "mMR", "Recall")} == \
        {k: base.metrics[k] for k in ("AP", "mMR", "Recall")}
    assert other.metrics["JI"] == pytest.approx(base.metrics["JI"], rel=1e-12)
    assert other.counts == base.counts
