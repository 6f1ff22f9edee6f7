"""Drawing detections (and ground truth) on images, for ``pods_demo`` and notebooks.

Boxes are xyxy in the image's pixels (x2 the right edge); a label ``name score`` sits above its
box (inside it when the box touches the top). Colours are fixed per class (a golden-angle hue
walk), so a class keeps its colour across frames; ground truth is drawn thin and white, ignore
regions grey, both one pixel wide and under the detections.
"""
from __future__ import annotations

import colorsys
from typing import Optional, Sequence

import cv2
import numpy as np

__all__ = ["class_color", "draw_detections"]


def class_color(k: int) -> tuple:
    """A BGR colour for class ``k``: hues 137.5 degrees apart, bright and saturated."""
    r, g, b = colorsys.hsv_to_rgb((k * 0.381966) % 1.0, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def _label(image, text: str, x: int, y: int, color) -> None:
    scale = max(0.4, min(image.shape[:2]) / 900)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    y = y - 2 if y - th - base - 2 >= 0 else y + th + base + 2
    cv2.rectangle(image, (x, y - th - base), (x + tw + 2, y + 1), color, -1)
    cv2.putText(image, text, (x + 1, y - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0), 1, cv2.LINE_AA)


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                    classes: np.ndarray, class_names: Sequence[str], *,
                    threshold: float = 0.5, gt_boxes: Optional[np.ndarray] = None,
                    gt_classes: Optional[np.ndarray] = None) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 BGR with the detections scoring above
    ``threshold`` (boxes, class names and scores) and optionally the GT.

    Args:
        boxes, scores, classes: (D, 4), (D,), (D,) detections in the image's pixels.
        gt_boxes, gt_classes: (M, 4), (M,) ground truth (class -1 = ignore region).
    """
    out = np.ascontiguousarray(image).copy()
    thick = max(1, int(round(min(out.shape[:2]) / 400)))
    if gt_boxes is not None:
        gt_classes = np.zeros(len(gt_boxes), int) if gt_classes is None else gt_classes
        for box, k in zip(np.asarray(gt_boxes).reshape(-1, 4), np.asarray(gt_classes)):
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            color = (160, 160, 160) if k < 0 else (255, 255, 255)
            cv2.rectangle(out, (x1, y1), (x2, y2), color, 1, cv2.LINE_8)
    keep = np.asarray(scores) > threshold
    order = np.argsort(np.asarray(scores)[keep])  # strongest drawn last, on top
    for box, score, k in zip(np.asarray(boxes)[keep][order], np.asarray(scores)[keep][order],
                             np.asarray(classes)[keep][order]):
        color = class_color(int(k))
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        name = class_names[int(k)] if 0 <= int(k) < len(class_names) else str(int(k))
        _label(out, f"{name} {score:.2f}", x1, y1, color)
    return out
