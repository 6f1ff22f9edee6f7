"""Image files: size from the header, a cheap load-time check, and a checked decode.

Two checks, one per place (docs/data_checks.md has the measurements behind the split):

- ``check_image_file`` (load time, every loader, cached by ``ImageCheckCache``): the file
  opens, its header gives the size, and it ENDS the way its format must (JPEG: the
  end-of-image marker FF D9; PNG: the IEND chunk). A few hundred bytes read per image, no
  decode. This catches missing and truncated files, the common kind of damage (interrupted
  download or copy), before the first iteration.
- ``read_image`` (map time, what the mapper decodes with): the same end check on the bytes it
  has read anyway, then the decode, which must succeed and, for JPEG, raise no corruption
  warning. OpenCV has no API for libjpeg's warnings: ``cv2.imread`` returns a full-size array
  for a truncated JPEG (libjpeg pads it with grey and prints "Premature end of JPEG file" to
  stderr), and ``None`` only on fatal errors. So the decode runs with file descriptor 2
  redirected to a private temporary file; corruption warnings ("Corrupt JPEG data...",
  "Premature end of JPEG file") make the image bad, anything else is passed back to stderr.

Every failure raises ``BadImageError`` (a ``ValueError``) naming the path; a missing file
raises ``MissingImageError``, which is also a ``FileNotFoundError``. Loaders skip both when
``DATASETS.SKIP_BAD_IMAGES`` is set. numpy only at import; OpenCV is imported on first decode.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
import threading
from typing import Optional, Tuple

import numpy as np

from ..utils.io import atomic_write

__all__ = ["BadImageError", "MissingImageError", "IMAGE_EXTS", "read_image_size",
           "check_image_file", "read_image", "find_image", "ImageCheckCache"]

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".png", ".jpeg")
# The end marker must lie in the last _TAIL bytes: short trailers some cameras append after
# it are fine, while FF D9 cannot occur inside JPEG entropy-coded data, so a truncated scan
# never ends in one.
_TAIL = 1024
_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND\xaeB`\x82"  # chunk type + its fixed CRC
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# libjpeg warnings that mean the pixels are not what was encoded (jerror.h JWRN_*).
_JPEG_CORRUPTION = ("Corrupt JPEG data", "Premature end of JPEG file",
                    "Inconsistent progression sequence", "Invalid SOS parameters")


class BadImageError(ValueError):
    """An image file that is missing, truncated, corrupt or not an image; names the path."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


class MissingImageError(BadImageError, FileNotFoundError):
    """The image file does not exist."""


def _kind(head: bytes) -> Optional[str]:
    if head[:2] == b"\xff\xd8":
        return "jpeg"
    if head[:8] == _PNG_MAGIC:
        return "png"
    return None


def _end_problem(kind: Optional[str], tail: bytes) -> Optional[str]:
    if kind == "jpeg" and _JPEG_EOI not in tail:
        return "no JPEG end-of-image marker (FF D9) at the end of the file: truncated"
    if kind == "png" and _PNG_IEND not in tail:
        return "no PNG IEND chunk at the end of the file: truncated"
    return None


def _jpeg_size(f) -> Optional[Tuple[int, int]]:
    f.seek(2)
    while True:
        byte = f.read(1)
        while byte and byte != b"\xff":  # tolerate padding between segments
            byte = f.read(1)
        while byte == b"\xff":  # a marker may be preceded by any number of fill bytes
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            continue
        raw = f.read(2)
        if len(raw) < 2:
            return None
        (seg_len,) = struct.unpack(">H", raw)
        if marker in _SOF_MARKERS:
            data = f.read(5)
            if len(data) < 5:
                return None
            _, h, w = struct.unpack(">BHH", data)
            return h, w
        if marker == 0xD9 or seg_len < 2:
            return None
        f.seek(seg_len - 2, os.SEEK_CUR)


def _open(path: str):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise MissingImageError(f"image not found: {path}", path) from None
    except OSError as e:
        raise BadImageError(f"cannot open image {path}: {e.strerror}", path) from None


def _header(f) -> Tuple[Optional[str], Optional[Tuple[int, int]]]:
    head = f.read(24)
    kind, size = _kind(head), None
    if kind == "png" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        size = (h, w)
    elif kind == "jpeg":
        size = _jpeg_size(f)
    if size is not None and (size[0] <= 0 or size[1] <= 0):
        size = None
    return kind, size


def _size_by_decoding(path: str) -> Tuple[int, int]:
    # Formats without a header parser here, and JPEGs whose size is not in a SOF segment.
    img = read_image(path)
    return int(img.shape[0]), int(img.shape[1])


def read_image_size(path: str) -> Tuple[int, int]:
    """(height, width) from the JPEG SOF / PNG IHDR header, decoding only as a fallback.

    Raises:
        MissingImageError / BadImageError: missing file, or no size can be read.
    """
    with _open(path) as f:
        _, size = _header(f)
    return (int(size[0]), int(size[1])) if size is not None else _size_by_decoding(path)


def check_image_file(path: str) -> Tuple[int, int]:
    """The load-time check: the file opens, has a size and ends with its format's end marker.

    Returns:
        (height, width).
    Raises:
        MissingImageError / BadImageError naming ``path``.
    """
    with _open(path) as f:
        kind, size = _header(f)
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - _TAIL))
        problem = _end_problem(kind, f.read())
    if problem:
        raise BadImageError(f"bad image {path}: {problem}", path)
    return (int(size[0]), int(size[1])) if size is not None else _size_by_decoding(path)


class _StderrCapture:
    """Runs a call with fd 2 pointed at a private temporary file; returns what was written.

    One file per process (a forked DataLoader worker must not share its parent's file
    offset), a lock per process (threads share fd 2). Only the raw descriptor is kept; the
    file is already unlinked, so it disappears with the process.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._pid, self._fd = None, None

    def _own_fd(self) -> int:
        if self._pid != os.getpid():
            if self._fd is not None:
                os.close(self._fd)  # the parent's, inherited by this forked child
            with tempfile.TemporaryFile() as f:
                self._fd, self._pid = os.dup(f.fileno()), os.getpid()
        return self._fd

    def __call__(self, fn, *args):
        with self._lock:
            try:
                fd = self._own_fd()
                saved = os.dup(2)
            except OSError:  # no usable fd 2 (or no temp dir): decode without listening
                return fn(*args), b""
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.dup2(fd, 2)
            try:
                result = fn(*args)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            size = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, 0, os.SEEK_SET)
            return result, os.read(fd, size) if size else b""


_capture = _StderrCapture()


def read_image(path: str, fmt: str = "BGR") -> np.ndarray:
    """HWC uint8 image in ``fmt`` ("BGR" or "RGB"), checked (see the module docstring).

    Raises:
        MissingImageError / BadImageError naming ``path``.
    """
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise MissingImageError(f"image not found: {path}", path) from None
    except OSError as e:
        raise BadImageError(f"cannot read image {path}: {e}", path) from None
    kind = _kind(data[:8].tobytes())
    problem = _end_problem(kind, data[-_TAIL:].tobytes())
    if problem:
        raise BadImageError(f"bad image {path}: {problem}", path)
    # Ignore EXIF orientation: sizes come from the header and boxes are in stored-pixel
    # coordinates, so rotating on decode would silently misalign them.
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    img, err = _capture(cv2.imdecode, data, flags)
    text = err.decode("utf-8", "replace").strip()
    if img is None:
        raise BadImageError(f"bad image {path}: cannot decode it"
                            + (f" ({text})" if text else ""), path)
    corrupt = [ln for ln in text.splitlines() if ln.startswith(_JPEG_CORRUPTION)]
    if corrupt:
        raise BadImageError(f"bad image {path}: libjpeg: {'; '.join(corrupt)}", path)
    if err:
        os.write(2, err)  # harmless decoder notes (or another thread's output): pass on
    if fmt == "RGB":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # contiguous, unlike img[..., ::-1]
    return img


def find_image(image_root: str, image_id: str) -> str:
    """``<image_root>/<image_id>`` + the first of ``IMAGE_EXTS`` that exists."""
    for ext in IMAGE_EXTS:
        path = os.path.join(image_root, image_id + ext)
        if os.path.isfile(path):
            return path
    stem = os.path.join(image_root, image_id)
    raise MissingImageError(f"image for ID '{image_id}' not found: {stem}"
                            f"{{{','.join(IMAGE_EXTS)}}}", stem)


class ImageCheckCache:
    """``check_image_file`` results for one annotation file, kept in ``<annotation>.sizes.json``.

    An entry (key -> [height, width, path relative to image_root, bytes, mtime_ns]) is reused
    while the file's byte size and mtime are unchanged, so a second load costs one ``stat``
    per image and an image damaged after the first load is checked again. The whole cache is
    dropped when the annotation file or the image directory changes.
    """

    VERSION = 2

    def __init__(self, annotation_file: str, image_root: str):
        st = os.stat(annotation_file)
        self.path = annotation_file + ".sizes.json"
        self.image_root = image_root
        self._stamp = {"version": self.VERSION, "mtime_ns": st.st_mtime_ns, "size": st.st_size,
                       "image_root": os.path.abspath(image_root)}
        self._old = self._load()
        self._new = {}

    def _load(self) -> dict:
        try:
            with open(self.path) as f:
                cache = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(cache, dict) or cache.get("stamp") != self._stamp:
            return {}
        return cache.get("sizes", {})

    def check(self, key: str, path: Optional[str] = None) -> Tuple[str, Tuple[int, int]]:
        """(path, (height, width)) of image ``key``; ``path`` defaults to ``find_image``.

        Raises:
            MissingImageError / BadImageError naming the path.
        """
        entry = self._old.get(key)
        if entry is not None and len(entry) == 5 and (path is None or os.path.join(
                self.image_root, entry[2]) == path):
            cached = os.path.join(self.image_root, entry[2])
            try:
                st = os.stat(cached)
            except OSError:
                st = None
            if st is not None and [st.st_size, st.st_mtime_ns] == entry[3:]:
                self._new[key] = entry
                return cached, (int(entry[0]), int(entry[1]))
        if path is None:
            path = find_image(self.image_root, key)
        h, w = check_image_file(path)
        st = os.stat(path)
        self._new[key] = [h, w, os.path.relpath(path, self.image_root), st.st_size,
                          st.st_mtime_ns]
        return path, (h, w)

    def save(self) -> None:
        """Write the entries checked by this load (if they changed); never fails the load."""
        if self._new == self._old:
            return
        try:  # write-then-rename: other ranks loading at the same time never see half a file
            atomic_write(self.path, json.dumps({"stamp": self._stamp, "sizes": self._new}))
        except OSError as e:  # read-only dataset dirs are common; the cache is only a speed-up
            logger.warning("could not write image-size cache %s: %s",
                                                self.path, e)
