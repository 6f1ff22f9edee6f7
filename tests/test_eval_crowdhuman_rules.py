"""Hand-computed toy cases, one per docs/metrics.md rule, for the CrowdHuman evaluator."""
import math
import warnings

import numpy as np
import pytest

from crowdloss.evaluation.crowdhuman import (MR_ANCHORS, _mr2, clip_xywh_to_xyxy,
                                             evaluate_crowdhuman, pairwise_iou)


def gt(image_id, valid=(), ignore=(), h=100, w=100, ignore_first=False):
    boxes = [{"tag": "person", "fbox": list(b), "extra": {"ignore": 0}} for b in valid]
    ign = [{"tag": "mask", "fbox": list(b), "extra": {"ignore": 1}} for b in ignore]
    rec = {"ID": image_id, "gtboxes": ign + boxes if ignore_first else boxes + ign}
    if h is not None:
        rec.update(height=h, width=w)
    return rec


def dt(image_id, *dets):
    return {"ID": image_id, "dtboxes": [{"box": list(b), "score": s, "tag": 1} for b, s in dets]}


def run(gts, dts, **kw):
    return evaluate_crowdhuman(gts, dts, **kw)


def test_iou_exactly_half_does_not_match():
    g = np.array([[0.0, 0.0, 10.0, 10.0]])
    h_exact = 5.00000005  # computed IoU (with the +1e-6) is exactly 0.5 in float64
    assert pairwise_iou(np.array([[0.0, 0.0, 10.0, h_exact]]), g)[0, 0] == 0.5
    r = run([gt("a", [(0, 0, 10, 10)])], [dt("a", ((0, 0, 10, h_exact), 0.9))])
    assert (r.counts["tp"], r.counts["fp"]) == (0, 1)
    r = run([gt("a", [(0, 0, 10, 10)])], [dt("a", ((0, 0, 10, 5), 0.9))])  # geometric 0.5
    assert (r.counts["tp"], r.counts["fp"]) == (0, 1)
    r = run([gt("a", [(0, 0, 10, 10)])], [dt("a", ((0, 0, 10, 5.0001), 0.9))])
    assert (r.counts["tp"], r.counts["fp"]) == (1, 0)


def test_ignore_region_absorbs_by_ioa_and_any_number():
    # Far from the valid GT; two detections inside the ignore region (IoA 1), one exactly half
    # inside (IoA 0.5, strict test -> FP).
    g = gt("a", valid=[(80, 80, 10, 10)], ignore=[(0, 0, 40, 40)])
    d = dt("a", ((5, 5, 10, 10), 0.9), ((20, 20, 5, 5), 0.8), ((30, 0, 20, 10), 0.7))
    r = run([g], [d])
    assert r.counts == {"images": 1, "valid_gt": 1, "ignore_regions": 1, "detections": 3,
                        "tp": 0, "fp": 1, "ignored_dt": 2}


def test_valid_gt_checked_before_ignore_regions_even_if_listed_first():
    g = gt("a", valid=[(10, 10, 20, 40)], ignore=[(0, 0, 60, 60)], ignore_first=True)
    r = run([g], [dt("a", ((10, 10, 20, 40), 0.9), ((11, 10, 20, 40), 0.8))])
    # First detection: TP (valid GT wins over the covering ignore region); second: the GT is
    # used up, so the ignore region absorbs it.
    assert (r.counts["tp"], r.counts["fp"], r.counts["ignored_dt"]) == (1, 0, 1)
    assert r.metrics["Recall"] == 1.0


def test_two_detections_on_one_gt_and_trapezoid_ap():
    g = gt("a", valid=[(0, 0, 20, 40), (50, 0, 20, 40)])
    d = dt("a", ((0, 0, 20, 40), 0.9), ((1, 0, 20, 40), 0.8), ((50, 0, 20, 40), 0.7))
    r = run([g], [d])
    assert (r.counts["tp"], r.counts["fp"]) == (2, 1)
    # points (recall, precision): (.5, 1), (.5, .5), (1, 2/3); AP starts at the first point
    assert r.metrics["AP"] == pytest.approx(0.5 * (0.5 + 2 / 3) / 2, abs=1e-15)
    assert r.metrics["Recall"] == 1.0
    # one image: fppi (0, 1, 1), miss (.5, .5, 0): every anchor <= 1 picks k = 2 -> 0.5
    assert r.metrics["mMR"] == pytest.approx(0.5, abs=1e-15)
    assert [p["index"] for p in r.mr_points] == [1] * 9


def test_detection_overlapping_two_gts_takes_the_larger_iou():
    # det1 overlaps g1 (IoU 140/260) and g2 (IoU 180/220): it must take g2, leaving g1 for
    # det2 (identical to g1); taking g1 would make det2 an FP (IoU with g2 = 120/280).
    g = gt("a", valid=[(0, 0, 10, 20), (4, 0, 10, 20)])
    r = run([g], [dt("a", ((3, 0, 10, 20), 0.9), ((0, 0, 10, 20), 0.8))])
    assert (r.counts["tp"], r.counts["fp"]) == (2, 0)


def test_equal_iou_tie_goes_to_the_earliest_gt():
    # det1 is centred between g1 and g2 (equal IoU 8.5 / 11.5): it takes g1 (file order);
    # det2, which matches only g1 (IoU 9 / 11 vs 6 / 14), is then an FP.
    g = gt("a", valid=[(20, 0, 10, 10), (23, 0, 10, 10)])
    d = dt("a", ((21.5, 0, 10, 10), 0.9), ((19, 0, 10, 10), 0.8))
    iou = pairwise_iou(np.array([[21.5, 0, 31.5, 10]]),
                       np.array([[20.0, 0, 30, 10], [23, 0, 33, 10]]))
    assert iou[0, 0] == iou[0, 1] > 0.5
    r = run([g], [d])
    assert (r.counts["tp"], r.counts["fp"]) == (1, 1)


def test_equal_scores_across_images_follow_gt_file_order():
    ga, gb = gt("A", [(0, 0, 20, 40)]), gt("B", [(0, 0, 20, 40)])
    da = dt("A", ((0, 0, 20, 40), 0.5))                                   # TP
    db = dt("B", ((60, 0, 20, 40), 0.5), ((0, 0, 20, 40), 0.4))           # FP (0.5), TP
    ab = run([ga, gb], [da, db])
    ba = run([gb, ga], [da, db])
    # A first: TP, FP, TP; B first: FP, TP, TP
    assert ab.metrics["AP"] == pytest.approx(0.5 * (0.5 + 2 / 3) / 2, abs=1e-15)
    assert ba.metrics["AP"] == pytest.approx(0.5 * 0.5 / 2 + 0.5 * (0.5 + 2 / 3) / 2,
                                             abs=1e-15)
    # the detections file order never matters
    assert run([ga, gb], [db, da]).metrics == ab.metrics


def test_clipping_uses_w_minus_1_for_the_first_corner_and_w_for_the_second():
    boxes = np.array([[-5.0, 90, 20, 30], [99.5, 0, 5, 50], [120, 120, 5, 5]])
    np.testing.assert_array_equal(clip_xywh_to_xyxy(boxes, 100, 100),
                                  [[0, 90, 15, 100], [99, 0, 100, 50], [99, 99, 100, 100]])
    # GT running off the right edge: clipped GT (90..100) equals the detection -> TP;
    # unclipped the IoU would be 0.5.
    r = run([gt("a", [(90, 10, 20, 50)])], [dt("a", ((90, 10, 10, 50), 0.9))])
    assert r.counts["tp"] == 1
    # GT starting at x = 99.5: x1 clips to W - 1 = 99, so [99, 100] matches a 1-px detection
    # (with x1 clipped to 99.5 the IoU would be 0.5 -> no match).
    r = run([gt("a", [(99.5, 0, 5, 50)])], [dt("a", ((99, 0, 1, 50), 0.9))])
    assert r.counts["tp"] == 1


def test_image_without_gt_and_image_without_detections():
    gts = [gt("A", [(0, 0, 20, 40)]), gt("empty", []), gt("nodet", [(0, 0, 20, 40)])]
    dts = [dt("A", ((0, 0, 20, 40), 0.9)), dt("empty", ((10, 10, 20, 20), 0.95))]
    r = run(gts, dts)
    assert r.counts["images"] == 3 and r.counts["valid_gt"] == 2
    assert (r.counts["tp"], r.counts["fp"]) == (1, 1)
    assert r.metrics["Recall"] == 0.5
    np.testing.assert_allclose(r.curves["fppi"], [1 / 3, 1 / 3])
    # JI: "empty" has n = 1 (JI 0), "nodet" m = 1 (JI 0), "A" JI 1 -> mean over 3 images
    assert r.metrics["JI"] == pytest.approx(1 / (1 + 1e-6) / 3, rel=1e-12)


def test_all_images_empty_gives_nan_with_warning_not_a_crash():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = run([gt("a", [])], [dt("a", ((1, 1, 5, 5), 0.5))])
    assert math.isnan(r.metrics["AP"]) and math.isnan(r.metrics["mMR"])
    assert any("no valid box" in str(x.message) for x in w)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = run([gt("a", [(0, 0, 10, 10)])], [])
    assert math.isnan(r.metrics["mMR"]) and r.metrics["Recall"] == 0.0
    assert any("no scored detections" in str(x.message) for x in w)


def _chain():
    # 1-D chain (equal heights): edges d1-g1 .527, d2-g1 .990, d2-g2 .544, d3-g1 .533,
    # d3-g2 .990, d3-g3 .533. Max weight = {d2-g1, d3-g2} (1.98, k = 2); max cardinality
    # = {d1-g1, d2-g2, d3-g3} (k = 3, weight 1.60).
    def box(x1, x2):
        return (x1, 0, x2 - x1, 10)

    g = gt("a", [box(20, 30), box(23, 33), box(26.1, 36.1)])
    d = dt("a", (box(16.9, 26.9), 0.95), (box(20.05, 30.05), 0.95), (box(23.05, 33.05), 0.95))
    return g, d


def test_ji_chain_weight_and_cardinality_differ():
    g, d = _chain()
    w = run([g], [d], ji_matching="weight")
    c = run([g], [d], ji_matching="cardinality")
    assert w.metrics["JI"] == 2 / (3 + 3 - 2 + 1e-6)
    assert c.metrics["JI"] == 3 / (3 + 3 - 3 + 1e-6)
    # the greedy AP matching is unaffected by the JI option
    assert w.metrics["AP"] == c.metrics["AP"] and w.counts == c.counts
    with pytest.raises(ValueError, match="ji_matching"):
        run([g], [d], ji_matching="hungarian")


def test_ji_threshold_is_strict():
    # 0.1 * 3 = 0.30000000000000004 and 0.1 * 5 = 0.5: a detection scored 0.3 is not kept at
    # t = 0.3, one scored 0.5 not at t = 0.5.
    for score, first_dropped in ((0.3, 3), (0.5, 5)):
        r = run([gt("a", [(0, 0, 20, 40)])], [dt("a", ((0, 0, 20, 40), score))])
        ji = r.ji_per_threshold
        assert ji[:first_dropped] == [1 / (1 + 1e-6)] * first_dropped
        assert ji[first_dropped:] == [0.0] * (10 - first_dropped)
        assert r.ji_threshold == 0.0


def test_ji_ignore_regions_drop_unmatched_boxes_from_m_and_n():
    # valid GT 1 matched; valid GT 2 unmatched but inside an ignore region (dropped from m);
    # an unmatched detection inside the ignore region (dropped from n); one plain FP.
    g = gt("a", valid=[(0, 0, 20, 40), (60, 60, 10, 10)], ignore=[(55, 55, 40, 40)])
    d = dt("a", ((0, 0, 20, 40), 0.9), ((80, 80, 5, 5), 0.9), ((30, 0, 10, 10), 0.9))
    r = run([g], [d])
    assert r.metrics["JI"] == 1 / (1 + 2 - 1 + 1e-6)  # k 1, m 1, n 2


def test_mr2_on_a_hand_built_curve():
    fppi = np.array([0.005, 0.01, 0.0178, 0.05, 0.2, 2.0])
    miss = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    mr, points = _mr2(fppi, miss)
    # anchors -> first point with fppi >= anchor (0.0178 hits its point exactly)
    assert [p["index"] for p in points] == [1, 2, 3, 4, 4, 4, 5, 5, 5]
    assert mr == pytest.approx(math.exp(np.mean(np.log([.8, .7, .6, .5, .5, .5, .4, .4, .4]))),
                               rel=1e-15)
    # the curve never reaches fppi 0.1: anchors from 0.1 on use the last point
    mr, points = _mr2(np.array([0.0, 0.02, 0.05]), np.array([1.0, 0.5, 0.25]))
    assert [p["index"] for p in points] == [1, 1, 2, 2, 2, 2, 2, 2, 2]
    assert mr == pytest.approx(math.exp((2 * math.log(0.5) + 7 * math.log(0.25)) / 9))
    # rounded anchors, not logspace: 0.01779 is past logspace's 0.017783 but before 0.0178
    assert MR_ANCHORS[1] == 0.0178 and np.logspace(-2, 0, 9)[1] < 0.01779 < 0.0178
    _, points = _mr2(np.array([0.0, 0.01779, 0.02]), np.array([1.0, 0.5, 0.25]))
    assert points[1]["index"] == 2
    # a miss rate of 0 gives 0, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _mr2(np.array([0.0, 1.0]), np.array([0.0, 0.0]))[0] == 0.0


def test_ji_cardinality_keeps_mmdetections_choice_of_maximum_matching():
    # One GT, two detections on it: d2 (IoU 1) lies in an ignore region (IoA 0.625), d1
    # (IoU 0.6) does not. "weight" matches d2, so d1 counts in n: JI 1/2. mmdetection's
    # Hopcroft-Karp matches the first kept detection in file order: with d1 first, d2 is left
    # unmatched inside the ignore region and dropped from n: JI 1; with d2 first, 1/2.
    g = gt("a", valid=[(0, 0, 20, 40)], ignore=[(0, 0, 20, 25)])
    d1, d2 = ((0, 10, 20, 40), 0.9), ((0, 0, 20, 40), 0.9)
    half, one = 1 / (1 + 2 - 1 + 1e-6), 1 / (1 + 1 - 1 + 1e-6)
    assert run([g], [dt("a", d1, d2)], ji_matching="weight").metrics["JI"] == half
    assert run([g], [dt("a", d1, d2)], ji_matching="cardinality").metrics["JI"] == one
    assert run([g], [dt("a", d2, d1)], ji_matching="cardinality").metrics["JI"] == half
