"""Per-class AP: each rule on a hand-made case, both conventions against plain transcriptions of
their reference procedures (py-faster-rcnn's voc_eval, pytorch-retinanet's csv_eval) on random
data, and the crowd subset."""
import math

import numpy as np
import pytest

from crowdloss.evaluation.voc import (APResult, ImageDets, ImageGT, crowd_image_ids, evaluate_ap,
                                      pairwise_iou, to_devkit_boxes, voc_ap)


def G(image_id, *boxes):
    """GT image from (x1, y1, x2, y2, class[, difficult]) tuples."""
    rows = [b if len(b) == 6 else (*b, 0) for b in boxes]
    arr = np.array(rows, np.float64).reshape(-1, 6)
    return ImageGT(image_id, arr[:, :4], arr[:, 4].astype(int), arr[:, 5].astype(bool))


def D(*dets):
    """Detections from (x1, y1, x2, y2, score, class) tuples."""
    arr = np.array(dets, np.float64).reshape(-1, 6)
    return ImageDets(arr[:, :4], arr[:, 4], arr[:, 5].astype(int))


def ap(gt, dets, k=0, **kw):
    kw.setdefault("num_classes", 2)
    return evaluate_ap(gt, dets, **kw).classes[k]


# ------------------------------------------------------------------------ rules, one at a time
def test_iou_exactly_half():
    # Devkit pixels: GT 10 x 10 (+1 widths), detection 10 x 5 inside: IoU 50 / 100 = 0.5.
    gt, dets = [G("a", (1, 1, 10, 10, 0))], {"a": D((1, 1, 10, 5, 0.9, 0))}
    assert pairwise_iou(dets["a"].boxes, gt[0].boxes, 1.0)[0, 0] == 0.5
    assert ap(gt, dets).ap == 0.0 and ap(gt, dets).fp == 1  # the devkit needs > 0.5
    # csv_eval (no +1): GT 10 x 10, detection 10 x 5: IoU 0.5 matches (>= 0.5).
    gt, dets = [G("a", (0, 0, 10, 10, 0))], {"a": D((0, 0, 10, 5, 0.9, 0))}
    assert ap(gt, dets, convention="retinanet_csv").ap == 1.0
    # The same numbers as devkit pixels overlap 11 * 6 / (11 * 11) > 0.5: the +1 matters.
    assert ap(gt, dets, convention="voc_devkit").ap == 1.0


def test_difficult_is_ignored_by_best_match():
    gt = [G("a", (0, 0, 10, 10, 0), (40, 40, 60, 60, 0, 1)),
          G("b", (0, 0, 20, 20, 0, 1), (1, 1, 21, 21, 0))]
    dets = {"a": D((40, 40, 60, 60, 0.95, 0), (0, 0, 10, 10, 0.9, 0)),
            # best GT is the difficult one (IoU 1) though the other is > 0.5 too: ignored
            "b": D((0, 0, 20, 20, 0.8, 0))}
    c = ap(gt, dets)
    assert (c.num_gt, c.num_difficult, c.tp, c.fp, c.ignored) == (2, 2, 1, 0, 2)
    assert c.ap == pytest.approx(0.5) and c.precision == 1.0 and c.recall == 0.5
    # A leading detection on a difficult GT leaves precision 0 (not nan) at recall 0.
    assert c.precision_curve[0] == 0.0 and not np.isnan(c.precision_curve).any()


def test_duplicates_and_taken_best_gt_are_false_positives():
    gt = [G("a", (0, 0, 10, 10, 0), (0, 0, 10, 12, 0))]
    # Second detection: best GT (the first) is taken; it does NOT fall back to the other GT
    # although its IoU with it is 10*10/120 > 0.5.
    dets = {"a": D((0, 0, 10, 10, 0.9, 0), (0, 0, 10, 10, 0.8, 0), (0, 0, 10, 12, 0.7, 0))}
    c = ap(gt, dets)
    assert (c.tp, c.fp) == (2, 1)
    np.testing.assert_allclose(c.precision_curve, [1, 0.5, 2 / 3])
    np.testing.assert_allclose(c.recall_curve, [0.5, 0.5, 1])
    assert c.ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert ap(gt, dets, use_07_metric=True).ap == pytest.approx((6 + 5 * 2 / 3) / 11)
    # Classes never match across: a class-1 detection on a class-0 GT is a class-1 FP.
    other = evaluate_ap(gt, {"a": D((0, 0, 10, 10, 0.9, 1))}, num_classes=2)
    assert other.classes[1].fp == 1 and other.classes[0].tp == 0


def test_eleven_point_thresholds_are_the_references_floats():
    # 10 GT, the 3 best detections hit: recall 3/10 = 0.3 does not reach the reference's
    # third threshold 0.30000000000000004 (np.arange), so only t = 0, 0.1, 0.2 count.
    assert voc_ap(np.array([0.1, 0.2, 0.3]), np.ones(3), use_07_metric=True) == pytest.approx(3 / 11)
    assert voc_ap(np.array([0.1, 0.2, 0.3]), np.ones(3)) == pytest.approx(0.3)
    assert voc_ap(np.zeros(0), np.zeros(0), True) == 0.0 and voc_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_edge_cases_are_nan_free():
    gt = [G("a", (0, 0, 10, 10, 0), (0, 0, 9, 9, 1, 1)), G("b")]
    res = evaluate_ap(gt, {"b": D((0, 0, 5, 5, 0.3, 1))}, num_classes=3,
                      class_names=["x", "y", "z"])
    x, y, z = res.classes
    assert (x.ap, x.recall, x.num_dets) == (0.0, 0.0, 0) and math.isnan(x.precision)  # no dets
    assert math.isnan(y.ap) and (y.num_gt, y.num_difficult, y.fp) == (0, 1, 1)  # difficult only
    assert math.isnan(z.ap) and z.num_gt == 0  # no GT at all
    assert res.mAP == 0.0 and res.metrics() == {"mAP": 0.0, "AP-x": 0.0}
    d = res.to_dict()
    assert d["classes"]["y"]["ap"] is None and d["classes"]["x"]["precision"] is None
    assert evaluate_ap([G("b")], {}, num_classes=2).mAP == 0.0  # no GT anywhere: 0, no nan
    assert evaluate_ap([], {}, num_classes=1).num_images == 0


def test_csv_filters_and_errors():
    gt = [G("a", *[(10 * i, 0, 10 * i + 8, 8, 0) for i in range(120)])]
    boxes = [(10 * i, 0, 10 * i + 8, 8, 1 - i / 1000, 0) for i in range(120)]
    c = ap(gt, {"a": D(*boxes)}, convention="retinanet_csv")
    assert (c.num_dets, c.tp) == (100, 100) and c.recall == pytest.approx(100 / 120)
    assert ap(gt, {"a": D(*boxes)}, convention="retinanet_csv", max_detections=200).tp == 120
    low = [(0, 0, 8, 8, 0.05, 0), (10, 0, 18, 8, 0.0501, 0)]
    assert ap(gt, {"a": D(*low)}, convention="retinanet_csv").num_dets == 1  # > 0.05 strictly
    assert ap(gt, {"a": D(*low)}).num_dets == 2  # the devkit has no score filter
    with pytest.raises(ValueError, match="not in the GT"):
        evaluate_ap(gt, {"zz": D(*low)}, num_classes=1)
    with pytest.raises(ValueError, match=r"must lie in 0..1"):
        evaluate_ap(gt, {"a": D((0, 0, 1, 1, 0.5, 2))}, num_classes=2)
    with pytest.raises(ValueError, match="unknown AP convention"):
        evaluate_ap(gt, {}, num_classes=1, convention="coco")
    with pytest.raises(ValueError, match="11-point"):
        evaluate_ap(gt, {}, num_classes=1, convention="retinanet_csv", use_07_metric=True)


def test_devkit_coordinates_make_the_plus_one_vanish():
    ours = np.array([[0.0, 0.0, 60.0, 40.0], [4.0, 5.0, 30.0, 9.0]])
    np.testing.assert_array_equal(to_devkit_boxes(ours), [[1, 1, 60, 40], [5, 6, 30, 9]])
    np.testing.assert_allclose(pairwise_iou(to_devkit_boxes(ours), to_devkit_boxes(ours), 1.0),
                               pairwise_iou(ours, ours, 0.0), rtol=1e-15)


# ----------------------------------------------------- crowd subset: same-class pair IoU > t
def test_crowd_subset_rule():
    gt = [G("pair", (0, 0, 10, 10, 2), (5, 0, 15, 10, 2)),  # IoU 50 / 150 = 1/3 > 0.3
          G("classes", (0, 0, 10, 10, 1), (0, 0, 10, 10, 2)),  # overlap across classes only
          G("difficult", (0, 0, 10, 10, 2), (1, 0, 11, 10, 2, 1)),
          G("ignore", (0, 0, 10, 10, 2), (0, 0, 10, 10, -1)),
          G("edge", (0, 0, 13, 10, 0), (0, 0, 3.9, 10, 0)),  # IoU exactly 0.3: not > 0.3
          G("empty")]
    assert pairwise_iou(gt[4].boxes[:1], gt[4].boxes[1:])[0, 0] == pytest.approx(0.3)
    assert crowd_image_ids(gt) == ["pair"]
    assert crowd_image_ids(gt, include_difficult=True) == ["pair", "difficult"]
    assert crowd_image_ids(gt, iou_threshold=0.34) == []
    assert crowd_image_ids(gt, iou_threshold=0.2) == ["pair", "edge"]


def test_crowd_subset_scores_only_its_images():
    gt = [G("pair", (0, 0, 10, 10, 0), (5, 0, 15, 10, 0)), G("single", (0, 0, 10, 10, 0))]
    dets = {"pair": D((0, 0, 10, 10, 0.9, 0)), "single": D((0, 0, 10, 10, 0.8, 0))}
    full = evaluate_ap(gt, dets, num_classes=1)
    crowd = evaluate_ap(gt, dets, num_classes=1, image_ids=crowd_image_ids(gt))
    assert full.classes[0].recall == pytest.approx(2 / 3) and crowd.num_images == 1
    assert crowd.classes[0].num_gt == 2 and crowd.classes[0].recall == 0.5


# ------------------------------------------------ transcriptions of the reference procedures
def devkit_reference(gt, dets, k, use_07):
    """py-faster-rcnn voc_eval for class k, written out per detection (with ssd.pytorch's eps
    guard on the precision denominator), on devkit-pixel boxes."""
    recs, npos = {}, 0
    for g in gt:
        sel = g.classes == k
        recs[g.image_id] = [g.boxes[sel], g.difficult[sel], [False] * int(sel.sum())]
        npos += int((~g.difficult[sel]).sum())
    ids, conf, boxes = [], [], []
    for image_id, d in dets.items():
        for b, s, c in zip(d.boxes, d.scores, d.classes):
            if c == k:
                ids.append(image_id), conf.append(s), boxes.append(b)
    order = np.argsort(-np.array(conf), kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for n, i in enumerate(order):
        bbgt, diff, taken = recs[ids[i]]
        bb, ovmax, jmax = boxes[i], -np.inf, -1
        if len(bbgt):
            iw = np.maximum(np.minimum(bbgt[:, 2], bb[2]) - np.maximum(bbgt[:, 0], bb[0]) + 1., 0.)
            ih = np.maximum(np.minimum(bbgt[:, 3], bb[3]) - np.maximum(bbgt[:, 1], bb[1]) + 1., 0.)
            inter = iw * ih
            uni = ((bb[2] - bb[0] + 1.) * (bb[3] - bb[1] + 1.)
                   + (bbgt[:, 2] - bbgt[:, 0] + 1.) * (bbgt[:, 3] - bbgt[:, 1] + 1.) - inter)
            ov = inter / uni
            ovmax, jmax = ov.max(), int(ov.argmax())
        if ovmax > 0.5:
            if not diff[jmax]:
                if not taken[jmax]:
                    tp[n], taken[jmax] = 1, True
                else:
                    fp[n] = 1
        else:
            fp[n] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    if npos == 0:
        return math.nan
    rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        total = 0.
        for t in np.arange(0., 1.1, 0.1):
            total += (0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])) / 11.
        return total
    mrec, mpre = np.concatenate(([0.], rec, [1.])), np.concatenate(([0.], prec, [0.]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def csv_reference(gt, dets, num_classes):
    """pytorch-retinanet csv_eval.evaluate, per detection: score > 0.05, best 100 per image,
    IoU >= 0.5 without +1, a list of detected annotations per image; {class: (ap, n)}."""
    kept = {}
    for image_id, d in dets.items():
        idx = np.where(d.scores > 0.05)[0]
        order = np.argsort(-d.scores[idx], kind="stable")[:100]
        kept[image_id] = (d.boxes[idx[order]], d.scores[idx[order]], d.classes[idx[order]])
    out = {}
    for label in range(num_classes):
        fps, tps, scores, n_ann = [], [], [], 0
        for g in gt:
            ann = g.boxes[g.classes == label]
            n_ann += len(ann)
            detected = []
            boxes, sc, cl = kept.get(g.image_id, (np.zeros((0, 4)), [], []))
            for b, s in ((b, s) for b, s, c in zip(boxes, sc, cl) if c == label):
                scores.append(s)
                if len(ann) == 0:
                    fps.append(1), tps.append(0)
                    continue
                area = (ann[:, 2] - ann[:, 0]) * (ann[:, 3] - ann[:, 1])
                iw = np.maximum(np.minimum(b[2], ann[:, 2]) - np.maximum(b[0], ann[:, 0]), 0)
                ih = np.maximum(np.minimum(b[3], ann[:, 3]) - np.maximum(b[1], ann[:, 1]), 0)
                ua = np.maximum((b[2] - b[0]) * (b[3] - b[1]) + area - iw * ih,
                                np.finfo(float).eps)
                ov = iw * ih / ua
                j = int(np.argmax(ov))
                if ov[j] >= 0.5 and j not in detected:
                    fps.append(0), tps.append(1), detected.append(j)
                else:
                    fps.append(1), tps.append(0)
        if n_ann == 0:
            out[label] = (0, 0)
            continue
        order = np.argsort(-np.array(scores), kind="stable")
        tp, fp = np.cumsum(np.array(tps)[order]), np.cumsum(np.array(fps)[order])
        recall = tp / n_ann
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        mrec = np.concatenate(([0.], recall, [1.]))
        mpre = np.concatenate(([0.], precision, [0.]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        out[label] = (np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]), n_ann,
                      precision[-1] if len(precision) else None,
                      recall[-1] if len(recall) else None)
    return out


def random_set(seed, num_classes, integer, difficult_rate):
    """Crowded images: GT boxes with near-duplicates; detections = jittered GT (some twice,
    some with the wrong class), plus random boxes; distinct scores; some images undetected."""
    rng = np.random.default_rng(seed)
    gt, dets, scores = [], {}, iter(rng.permutation(5000) / 5000.0 + 1e-4)
    for n in range(25):
        m = int(rng.integers(0, 9))
        xy = rng.uniform(0, 80, (m, 2))
        wh = rng.uniform(3, 40, (m, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        if m > 2:  # a crowd: a near-copy of the first box
            boxes[1] = boxes[0] + rng.uniform(-3, 3, 4)
        boxes = np.round(boxes) if integer else boxes
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        classes = rng.integers(0, num_classes, m)
        if m > 2:
            classes[1] = classes[0]
        g = ImageGT(f"img{n}", boxes, classes, rng.random(m) < difficult_rate)
        gt.append(g)
        if rng.random() < 0.15:
            continue
        rows = []
        for b, c in zip(boxes, classes):
            for _ in range(int(rng.integers(0, 3))):
                jit = b + rng.normal(0, 0.12, 4) * (b[2:] - b[:2]).repeat(2)
                if integer:
                    jit = np.round(jit)
                jit[2:] = np.maximum(jit[2:], jit[:2] + 1)
                wrong = rng.random() < 0.1
                rows.append((*jit, next(scores), (c + 1) % num_classes if wrong else c))
        for _ in range(int(rng.integers(0, 4))):
            xy = rng.uniform(0, 80, 2)
            rows.append((*xy, *(xy + rng.uniform(3, 30, 2)), next(scores),
                         rng.integers(0, num_classes)))
        dets[g.image_id] = D(*rows) if rows else D()
    return gt, dets


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("use_07", [True, False])
def test_devkit_equals_transcription(seed, use_07):
    gt, dets = random_set(seed, 4, integer=True, difficult_rate=0.2)
    res = evaluate_ap(gt, dets, num_classes=4, use_07_metric=use_07)
    for k in range(4):
        ref = devkit_reference(gt, dets, k, use_07)
        ours = res.classes[k].ap
        assert (math.isnan(ref) and math.isnan(ours)) or ours == ref, (k, ours, ref)
    assert sum(c.tp for c in res.classes) > 10 and sum(c.ignored for c in res.classes) > 0


@pytest.mark.parametrize("seed", range(6))
def test_retinanet_csv_equals_transcription(seed):
    gt, dets = random_set(100 + seed, 3, integer=False, difficult_rate=0.0)
    res = evaluate_ap(gt, dets, num_classes=3, convention="retinanet_csv")
    ref = csv_reference(gt, dets, 3)
    for k, c in enumerate(res.classes):
        if ref[k][1] == 0:  # csv_eval says 0 for a class without annotations; we say "no AP"
            assert ref[k] == (0, 0) and math.isnan(c.ap)
            continue
        ap_ref, n_ann, prec, rec = ref[k]
        assert c.ap == ap_ref and c.num_gt == n_ann
        assert (c.precision == prec or (prec is None and math.isnan(c.precision)))
        assert c.recall == (0.0 if rec is None else rec)


def test_result_metrics_order():
    res = APResult("voc_devkit", 0.5, False, ["a", "b"], [], 0)
    assert res.metrics() == {"mAP": 0.0}
