"""Real damaged image files for the bad-input tests, and a small loader config."""
import cv2
import numpy as np


def scene(h, w, seed=0):
    # Smooth content so that the JPEG entropy data is long enough to cut in thirds.
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (7, 7), 2)


def write_good(path, h=60, w=80, seed=0):
    cv2.imwrite(str(path), scene(h, w, seed))
    return path


def truncate(path, keep=1 / 3):
    """Cut an image file to ``keep`` of its length: the header still parses, and cv2.imread
    decodes a JPEG cut this way with a grey bottom (libjpeg pads it)."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def corrupt_middle(path):
    """Put a restart marker in the middle of a JPEG's entropy data, end marker intact: it
    decodes with a libjpeg "Corrupt JPEG data" warning, the only sign."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 2] = b"\xff\xd3"
    assert data[-2:] == b"\xff\xd9"
    path.write_bytes(bytes(data))
    return path


def write_truncated_third(path, h=60, w=80):
    cv2.imwrite(str(path), scene(h, w))
    return truncate(path)


def write_cut_300(path, h=60, w=80):
    ok, buf = cv2.imencode(".jpg", scene(h, w))
    path.write_bytes(buf.tobytes()[:300])
    return path


def write_corrupt_middle(path, h=60, w=80):
    cv2.imwrite(str(path), scene(h, w, seed=3))
    return corrupt_middle(path)


class Cfg(dict):
    __getattr__ = dict.__getitem__


def loader_cfg(skip, name="bad_train"):
    d = lambda **k: Cfg(k)
    return d(SEED=3, INPUT=d(FORMAT="BGR", AUG=d(
        TRAIN_PIPELINES=[("ResizeShortestEdge", dict(short_edge_length=(32, 48), max_size=80,
                                                     sample_style="range")),
                         ("RandomFlip", dict(prob=0.5))],
        TEST_PIPELINES=[])),
        DATASETS=d(TRAIN=(name,), TEST=(name,), BOX_TYPE="fbox", SKIP_BAD_IMAGES=skip,
                   TAG_MAP={}),
        DATALOADER=d(NUM_WORKERS=0, ASPECT_RATIO_GROUPING=True, FILTER_EMPTY_ANNOTATIONS=True,
                     SEED=-1),
        SOLVER=d(IMS_PER_DEVICE=2))
