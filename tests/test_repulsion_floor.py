"""tools/repulsion_floor: Repulsion Loss at perfect boxes, against values worked out by hand."""
import json
import math

import pytest

from crowdloss.tools.repulsion_floor import main, repulsion_floor


def _person(x, y, w, h):
    return {"tag": "person", "fbox": [x, y, w, h], "extra": {"ignore": 0}}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def odgt(tmp_path):
    # Image a: two 10 x 10 people sharing a 5 x 10 strip (IoG 0.5 each way, IoU 1/3), and a
    # crowd region over both, which must be neither a positive nor a repulsion target.
    # Image b: a lone person (a positive without a repulsion GT). Image c: no one.
    return _write(tmp_path / "gt.odgt", [
        {"ID": "a", "gtboxes": [_person(0, 0, 10, 10), _person(5, 0, 10, 10),
                                {"tag": "mask", "fbox": [0, 0, 15, 10]}]},
        {"ID": "b", "gtboxes": [_person(40, 40, 8, 20)]},
        {"ID": "c", "gtboxes": []},
    ])


def test_values_worked_by_hand(odgt):
    r = repulsion_floor(odgt)
    assert r["images"] == 3 and r["positives"] == 3
    assert r["with_target"] == pytest.approx(2 / 3)
    # RepGT (sigma 1): -ln(1 - 0.5) for each of the pair, 0 for the lone person, over all 3.
    assert r["repgt"] == pytest.approx(2 * math.log(2) / 3, rel=1e-6)
    assert r["repgt_with_target"] == pytest.approx(math.log(2), rel=1e-6)
    assert r["iog_median"] == pytest.approx(0.5)
    # RepBox (sigma 0 = the IoU itself): two ordered pairs of IoU 1/3, over 2 pairs (+ eps).
    assert r["repbox_pairs"] == 2
    assert r["repbox"] == pytest.approx((2 / 3) / (2 + 1e-3), rel=1e-6)


def test_sigma_changes_repgt_as_smooth_ln(odgt):
    # sigma 0.25 < IoG 0.5: the linear branch (0.5 - 0.25) / 0.75 - ln(0.75).
    r = repulsion_floor(odgt, sigma_gt=0.25)
    expect = (0.25 / 0.75 - math.log(0.75)) * 2 / 3
    assert r["repgt"] == pytest.approx(expect, rel=1e-6)


def test_disjoint_people_cost_nothing(tmp_path):
    path = _write(tmp_path / "gt.odgt",
                  [{"ID": "a", "gtboxes": [_person(0, 0, 10, 10), _person(20, 0, 10, 10)]}])
    r = repulsion_floor(path)
    assert r["with_target"] == 0.0 and r["repgt"] == 0.0
    assert r["repbox"] == 0.0 and r["repbox_pairs"] == 0


def test_cli_prints_and_writes_json(odgt, tmp_path, capsys):
    out = tmp_path / "floor.json"
    assert main([odgt, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 valid GTs" in text and "RepGT at perfect boxes" in text
    assert json.loads(out.read_text())["repbox_pairs"] == 2


def test_bad_box_is_an_error_naming_the_line(tmp_path):
    path = _write(tmp_path / "gt.odgt", [
        {"ID": "a", "gtboxes": [_person(0, 0, 10, 10)]},
        {"ID": "b", "gtboxes": [{"tag": "person", "fbox": [0, 0, float("nan"), 5]}]},
    ])
    with pytest.raises(ValueError, match=r"gt\.odgt:2"):
        repulsion_floor(path)
