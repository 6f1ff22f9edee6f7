"""Annotations (the transforms' annotation container) and the shared clip_and_drop rule."""
import numpy as np
import pytest

from crowdloss.config import ConfigDict
from crowdloss.data import Annotations, DatasetMapper, build_transforms, clip_and_drop
from crowdloss.data.transforms import TRANSFORMS


def _annos():
    boxes = [[0, 0, 10, 10], [5, 5, 20, 30], [-4, 2, 3, 8], [50, 50, 60, 70]]
    return Annotations(boxes, [0, -1, 1, 0], occ=np.array([0, 1, 0, 1], np.uint8))


def test_annotations_types_len_subset():
    a = _annos()
    assert a.boxes.dtype == np.float32 and a.boxes.shape == (4, 4)
    assert a.classes.dtype == np.int64 and len(a) == 4
    assert a.is_object.tolist() == [True, False, True, True]
    s = a.subset(np.array([True, False, False, True]))
    assert s.boxes.tolist() == [[0, 0, 10, 10], [50, 50, 60, 70]]
    assert s.classes.tolist() == [0, 0] and s.fields["occ"].tolist() == [0, 1]
    i = a.subset([3, 1])
    assert i.classes.tolist() == [0, -1] and i.fields["occ"].tolist() == [1, 1]
    assert len(a.subset(np.zeros(4, bool))) == 0
    assert a == _annos() and a != s
    assert "num_ignore=1" in repr(a)
    r = a.replace(boxes=a.boxes + 1)
    assert np.shares_memory(r.classes, a.classes) and a.boxes[0, 0] == 0  # a untouched
    e = Annotations.empty()
    assert e.boxes.shape == (0, 4) and e.classes.shape == (0,) and len(e.subset([])) == 0


def test_annotations_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        Annotations(np.zeros((2, 5)), [0, 0])
    with pytest.raises(ValueError, match="3 classes for 2 boxes"):
        Annotations(np.zeros((2, 4)), [0, 0, 0])
    with pytest.raises(ValueError, match="field 'occ'"):
        Annotations(np.zeros((2, 4)), [0, 0], occ=np.zeros(3))
    with pytest.raises(ValueError, match="bool mask"):
        _annos().subset(np.ones(3, bool))
    with pytest.raises(ValueError, match=r"img\.jpg annotations\[1\]"):
        Annotations.from_dataset_dict([{"bbox": [0, 0, 1, 1], "category_id": 0},
                                       {"bbox": [0, 0, 1], "category_id": 0}], "img.jpg")
    with pytest.raises(ValueError, match=r"annotations\[0\]"):  # not reshaped into 1 box
        Annotations.from_dataset_dict([{"bbox": [0, 0], "category_id": 0},
                                       {"bbox": [1, 1], "category_id": 0}])
    with pytest.raises(ValueError, match=r"annotations\[1\]"):
        Annotations.from_dataset_dict([{"bbox": [0, 0, 1, 1], "category_id": 0},
                                       {"bbox": [0, 0, 1, 1]}])
    with pytest.raises(ValueError, match=r"annotations\[0\]"):
        Annotations.from_dataset_dict([{"bbox": [0, 0, 1, 1], "category_id": [0, 1]}])
    a = Annotations.from_dataset_dict([{"bbox": [1, 2, 3, 4], "category_id": -1}])
    assert a.boxes.tolist() == [[1, 2, 3, 4]] and a.classes.tolist() == [-1]
    assert len(Annotations.from_dataset_dict([])) == 0


def test_clip_and_drop_numpy_and_lists():
    boxes = np.array([[-5, -5, 10, 10],     # clipped to [0, 0, 10, 10]
                      [25, 5, 40, 12],      # x clipped to [25, 30]
                      [31, 0, 40, 5],       # right of the image: empty after clipping
                      [3, 3, 3, 8],         # zero width: dropped
                      [4, 6, 9, 2],         # inverted: dropped
                      [0, 19.5, 30, 25]])   # y clipped to [19.5, 20]
    classes = np.array([0, -1, 0, 0, 1, 1])
    dicts = [{"i": k} for k in range(6)]
    kept, kc, kd, n = clip_and_drop(boxes, 20, 30, classes, dicts)
    assert n == 3
    assert kept.tolist() == [[0, 0, 10, 10], [25, 5, 30, 12], [0, 19.5, 30, 20]]
    assert kc.tolist() == [0, -1, 1] and kd == [{"i": 0}, {"i": 1}, {"i": 5}]
    assert kept.dtype == np.float64  # integers in -> float64; floats keep their precision
    f32, n32 = clip_and_drop(boxes.astype(np.float32), 20, 30)
    assert f32.dtype == np.float32 and n32 == 3
    # Tuples stay tuples; nothing to drop returns everything, clipped copies.
    ok = np.array([[1.0, 1.0, 2.0, 2.0]])
    out, t, n0 = clip_and_drop(ok, 5, 5, (7,))
    assert n0 == 0 and t == (7,) and out is not ok and np.array_equal(out, ok)
    empty, e_cls, ne = clip_and_drop(np.zeros((0, 4)), 5, 5, np.zeros(0, np.int64))
    assert empty.shape == (0, 4) and len(e_cls) == 0 and ne == 0
    assert clip_and_drop([], 5, 5)[0].shape == (0, 4)


def test_clip_and_drop_refuses_garbage():
    with pytest.raises(ValueError, match=r"a\.odgt line 3: box 1 is not finite"):
        clip_and_drop(np.array([[0, 0, 1, 1], [np.nan, 0, 1, 1]]), 5, 5, where="a.odgt line 3")
    with pytest.raises(ValueError, match=r"shape \(M, 4\)"):
        clip_and_drop(np.zeros((2, 3)), 5, 5)
    with pytest.raises(ValueError, match="field 0 has 1 entries for 2 boxes"):
        clip_and_drop(np.zeros((2, 4)), 5, 5, [0])
    with pytest.raises(ValueError, match="must be positive"):
        clip_and_drop(np.zeros((1, 4)), 0, 5)


def test_annotations_clip_and_drop_keeps_fields_in_step():
    kept, n = _annos().clip_and_drop(25, 40)
    assert n == 1  # [50, 50, 60, 70] lies outside a 25 x 40 image
    assert kept.boxes.tolist() == [[0, 0, 10, 10], [5, 5, 20, 25], [0, 2, 3, 8]]
    assert kept.classes.tolist() == [0, -1, 1] and kept.fields["occ"].tolist() == [0, 1, 0]


class _ShiftRight:
    """A test transform that pushes every box 100 px right (most leave the image)."""

    def __init__(self, *, dx: float = 100.0):
        self.dx = dx

    def __call__(self, image, annos, rng):
        return image, annos.replace(boxes=annos.boxes + np.float32([self.dx, 0, self.dx, 0]))


class _OldContract:
    def __init__(self):
        pass

    def __call__(self, image, boxes, rng):
        return image, np.asarray(boxes)


@pytest.fixture
def test_transforms(monkeypatch):
    # Registered for one test only, so the global registry stays as the package built it.
    monkeypatch.setitem(TRANSFORMS, "_ShiftRight", _ShiftRight)
    monkeypatch.setitem(TRANSFORMS, "_OldContract", _OldContract)


def test_mapper_clips_and_drops_once(tmp_path, test_transforms):
    import cv2
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, np.zeros((50, 120, 3), np.uint8))
    d = {"file_name": path, "image_id": "a", "height": 50, "width": 120, "annotations": [
        {"bbox": [0, 0, 10, 10], "category_id": 0},     # -> [100, 0, 110, 10]
        {"bbox": [15, 5, 30, 20], "category_id": -1},   # -> [115, 5, 120, 20] clipped
        {"bbox": [40, 5, 60, 20], "category_id": 0}]}   # -> outside: dropped
    cfg = ConfigDict(dict(INPUT=dict(FORMAT="BGR", AUG=dict(TRAIN_PIPELINES=[
        ("_ShiftRight", {})]))))
    inst = DatasetMapper(cfg, True)(d, np.random.default_rng(0))["instances"]
    assert inst.gt_boxes.tolist() == [[100, 0, 110, 10], [115, 5, 120, 20]]
    assert inst.gt_classes.tolist() == [0, -1]
    assert str(inst.gt_boxes.dtype) == "torch.float32" and str(inst.gt_classes.dtype) == \
        "torch.int64"


def test_pipeline_names_contract_violations(test_transforms):
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(TypeError, match="_OldContract must return"):
        build_transforms([("_OldContract", {})])(img, Annotations.empty(), None)
    with pytest.raises(TypeError, match="must be crowdloss.data.Annotations"):
        build_transforms([])(img, np.zeros((0, 4)), None)
    with pytest.raises(TypeError, match="HWC uint8"):
        build_transforms([])(img.astype(np.float32), Annotations.empty(), None)
    with pytest.raises(ValueError, match=r"pipeline entry 0 \(_ShiftRight\)"):
        build_transforms([("_ShiftRight", dict(dy=1))])
