"""Drawing primitives for synthcrowd: people-like figures, clutter, backgrounds.

A figure is a list of primitives drawn identically into the image (colour) and into a label
map (person index), so geometry and visibility never disagree:
  ("poly", points (P, 2) float, color) | ("line", p, q, thickness, color)
  ("ellipse", center, axes, color)     | ("half_ellipse", center, axes, color)  (upper half)
Proportions follow a ~7.5-heads human: shoulders at 0.82 h, hips at 0.5 h above the feet.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import cv2
import numpy as np

__all__ = ["person_parts", "extent", "draw", "distractor_parts", "background", "ignore_regions"]

_SKIN = np.array([[60, 90, 140], [80, 120, 180], [100, 150, 205], [120, 170, 225],
                  [45, 65, 100], [70, 110, 160]], np.int32)  # BGR
_HAIR = np.array([[20, 20, 25], [30, 45, 70], [40, 80, 130], [150, 150, 150],
                  [60, 110, 170], [10, 10, 10]], np.int32)


def _color(rng, lo=0, hi=256) -> Tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _jitter(rng, base, amount=15) -> Tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(base + rng.integers(-amount, amount + 1, 3), 0, 255))



def person_parts(rng, cx: float, feet_y: float, h: float) -> Tuple[list, list]:
    """Primitives of one person of standing height ``h`` with feet at (cx, feet_y)."""
    side = rng.random() < 0.3         # seen from the side
    sitting = side and rng.random() < 0.2
    face = 1.0 if rng.random() < 0.5 else -1.0
    skin = _jitter(rng, _SKIN[rng.integers(len(_SKIN))], 10)
    hair = _jitter(rng, _HAIR[rng.integers(len(_HAIR))], 10)
    shirt, pants = _color(rng), _color(rng, 0, 200)
    shoes = _jitter(rng, np.array([30, 30, 35]), 25)
    long_sleeves = rng.random() < 0.5
    hip_y = feet_y - (0.27 if sitting else 0.5) * h
    lean = rng.normal(0.0, 0.015) * h
    sh_y = hip_y - 0.32 * h
    half_sh, half_hip = (0.07 * h, 0.06 * h) if side else (0.12 * h, 0.095 * h)
    parts: list = []
    leg_t, arm_t = max(2.0, 0.075 * h), max(1.5, 0.055 * h)
    # Legs first: the torso covers their tops.
    if sitting:
        knee = (cx + face * 0.2 * h, hip_y)
        foot = (knee[0] + face * 0.02 * h, feet_y - 0.02 * h)
        parts += [("line", (cx, hip_y), knee, leg_t, pants), ("line", knee, foot, leg_t, pants),
                  ("ellipse", (foot[0] + face * 0.03 * h, foot[1]), (0.05 * h, 0.02 * h), shoes)]
    else:
        stride = abs(rng.normal(0.0, 0.25 if side else 0.12))
        for sgn in (-1.0, 1.0):
            hx = cx + (0.0 if side else sgn * 0.05 * h)
            ang = sgn * stride + rng.normal(0.0, 0.04)
            bend = abs(rng.normal(0.0, 0.12))
            knee = (hx + math.sin(ang) * 0.25 * h, hip_y + math.cos(ang) * 0.25 * h)
            a2 = ang - bend * (1.0 if ang > 0 else -1.0) * 0.5
            foot = (knee[0] + math.sin(a2) * 0.23 * h, knee[1] + math.cos(a2) * 0.23 * h)
            parts += [("line", (hx, hip_y), knee, leg_t, pants),
                      ("line", knee, foot, leg_t, pants),
                      ("ellipse", (foot[0] + (face * 0.03 * h if side else 0.0), foot[1]),
                       (0.045 * h, 0.02 * h), shoes)]
    # Torso (a coat/dress sometimes reaches below the hips).
    hem = hip_y + (rng.uniform(0.05, 0.2) * h if rng.random() < 0.2 else 0.02 * h)
    parts.append(("poly", np.array([[cx + lean - half_sh, sh_y], [cx + lean + half_sh, sh_y],
                                    [cx + half_hip * 1.05, hem], [cx - half_hip * 1.05, hem]]),
                  shirt))
    # Arms: two segments, mostly hanging, sometimes raised or swinging.
    for sgn in ((-1.0, 1.0) if not side else (face,)):
        sx = cx + lean + sgn * (half_sh - 0.3 * arm_t)
        up = rng.random() < 0.08
        a1 = (math.pi * 0.85 if up else abs(rng.normal(0.12, 0.15))) * sgn
        if side:
            a1 = rng.normal(0.0, 0.35)
        elbow = (sx + math.sin(a1) * 0.17 * h, sh_y + 0.02 * h + math.cos(a1) * 0.17 * h)
        a2 = a1 + (sgn if not side else face) * abs(rng.normal(0.2, 0.3))
        hand = (elbow[0] + math.sin(a2) * 0.16 * h, elbow[1] + math.cos(a2) * 0.16 * h)
        parts += [("line", (sx, sh_y + 0.02 * h), elbow, arm_t, shirt),
                  ("line", elbow, hand, arm_t, shirt if long_sleeves else skin),
                  ("ellipse", hand, (0.028 * h, 0.028 * h), skin)]
    # Neck and head (hair as the upper half, sometimes a hat).
    head_c = (cx + lean * 1.3 + (face * 0.01 * h if side else 0.0), sh_y - 0.085 * h)
    axes = (0.052 * h, 0.068 * h)
    parts.append(("line", (head_c[0], sh_y - 0.04 * h), (cx + lean, sh_y + 0.01 * h),
                  max(1.5, 0.05 * h), skin))
    head = [("ellipse", head_c, axes, skin),
            ("half_ellipse", (head_c[0], head_c[1] - 0.012 * h), (axes[0] * 1.04, axes[1] * 0.92),
             hair)]
    if rng.random() < 0.15:  # hat: brim + crown
        hat = _color(rng)
        top = head_c[1] - axes[1]
        head += [("line", (head_c[0] - axes[0] * 1.4, top + 0.025 * h),
                  (head_c[0] + axes[0] * 1.4, top + 0.025 * h), max(1.0, 0.015 * h), hat),
                 ("poly", np.array([[head_c[0] - axes[0], top + 0.02 * h],
                                    [head_c[0] + axes[0], top + 0.02 * h],
                                    [head_c[0] + axes[0] * 0.85, top - 0.035 * h],
                                    [head_c[0] - axes[0] * 0.85, top - 0.035 * h]]), hat)]
    return parts + head, head


def extent(parts: list) -> np.ndarray:
    """Analytic [x1, y1, x2, y2] of a primitive list (what the rasteriser covers)."""
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    for p in parts:
        if p[0] == "poly":
            pts = p[1]
            lo, hi = np.minimum(lo, pts.min(0)), np.maximum(hi, pts.max(0))
        elif p[0] == "line":
            r = p[3] / 2.0
            for q in (p[1], p[2]):
                lo, hi = np.minimum(lo, np.subtract(q, r)), np.maximum(hi, np.add(q, r))
        else:
            c, a = np.asarray(p[1]), np.asarray(p[2])
            lo, hi = np.minimum(lo, c - a), np.maximum(hi, c + a if p[0] == "ellipse"
                                                       else c + [a[0], 0.0])
    return np.concatenate([lo, hi])


def draw(img: np.ndarray, parts: list, color=None) -> None:
    """Rasterise primitives; ``color`` overrides every part's colour (label maps)."""
    for p in parts:
        c = p[-1] if color is None else color
        if p[0] == "poly":
            cv2.fillConvexPoly(img, np.round(p[1]).astype(np.int32), c)
        elif p[0] == "line":
            cv2.line(img, (round(p[1][0]), round(p[1][1])), (round(p[2][0]), round(p[2][1])),
                     c, max(1, round(p[3])))
        else:
            center = (round(p[1][0]), round(p[1][1]))
            axes = (max(1, round(p[2][0])), max(1, round(p[2][1])))
            start = 180 if p[0] == "half_ellipse" else 0
            cv2.ellipse(img, center, axes, 0, start, 360, c, -1)


def distractor_parts(rng, cx: float, base_y: float, s: float) -> list:
    """Non-person clutter standing at depth ``base_y`` with person-height scale ``s``."""
    kind = rng.integers(5)
    if kind == 0:  # pole with a sign
        c = _color(rng, 60, 200)
        top = base_y - s * rng.uniform(1.2, 2.5)
        return [("line", (cx, base_y), (cx, top), max(1.0, 0.04 * s), c),
                ("poly", np.array([[cx - 0.2 * s, top], [cx + 0.2 * s, top],
                                   [cx + 0.2 * s, top + 0.25 * s], [cx - 0.2 * s, top + 0.25 * s]]),
                 _color(rng))]
    if kind == 1:  # tree
        top = base_y - s * rng.uniform(0.8, 1.6)
        return [("line", (cx, base_y), (cx, top), max(2.0, 0.08 * s), _jitter(rng, np.array([30, 60, 90]))),
                ("ellipse", (cx, top), (0.45 * s, 0.4 * s), _jitter(rng, np.array([40, 120, 50]), 30))]
    if kind == 2:  # car
        w, hh = s * rng.uniform(1.4, 2.2), s * 0.45
        body = _color(rng)
        return [("poly", np.array([[cx - w / 2, base_y - 0.12 * s], [cx + w / 2, base_y - 0.12 * s],
                                   [cx + w / 2, base_y - hh], [cx - w / 2, base_y - hh]]), body),
                ("poly", np.array([[cx - w / 4, base_y - hh], [cx + w / 4, base_y - hh],
                                   [cx + w / 5, base_y - 0.75 * s], [cx - w / 5, base_y - 0.75 * s]]),
                 _jitter(rng, np.array([120, 100, 90]), 30)),
                ("ellipse", (cx - w / 3, base_y - 0.1 * s), (0.1 * s, 0.1 * s), (20, 20, 20)),
                ("ellipse", (cx + w / 3, base_y - 0.1 * s), (0.1 * s, 0.1 * s), (20, 20, 20))]
    if kind == 3:  # crate / bin
        w, hh = s * rng.uniform(0.3, 0.7), s * rng.uniform(0.3, 0.8)
        return [("poly", np.array([[cx - w / 2, base_y], [cx + w / 2, base_y],
                                   [cx + w / 2, base_y - hh], [cx - w / 2, base_y - hh]]), _color(rng))]
    # bush / ball
    r = s * rng.uniform(0.12, 0.35)
    return [("ellipse", (cx, base_y - r), (r * rng.uniform(1.0, 2.0), r), _color(rng))]


def background(rng, h: int, w: int, horizon: float) -> np.ndarray:
    """Sky/ground gradient + smooth colour blotches + buildings and street lines."""
    sky, ground = rng.integers(60, 240, 3), rng.integers(30, 180, 3)
    t = np.clip((np.arange(h, dtype=np.float32) - horizon) / 8.0 + 0.5, 0, 1)[:, None, None]
    img = (sky * (1 - t) + ground * t).astype(np.float32) * np.ones((1, w, 1), np.float32)
    for cell, amp in ((48, 45.0), (12, 20.0)):
        small = rng.normal(0.0, amp, (h // cell + 2, w // cell + 2, 3)).astype(np.float32)
        img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    x = rng.uniform(-0.1 * w, 0.1 * w)
    while x < w and horizon > 10:  # buildings along the horizon, with window grids
        bw, bh = rng.uniform(0.1, 0.35) * w, rng.uniform(0.3, 1.2) * horizon
        x1, y1, x2, y2 = int(x), int(horizon - bh), int(x + bw), int(horizon + 4)
        cv2.rectangle(img, (x1, y1), (x2, y2), _color(rng, 40, 220), -1)
        win, step = _color(rng), int(rng.integers(6, 16))
        for wy in range(y1 + 4, y2 - 6, step):
            for wx in range(x1 + 3, x2 - 5, step):
                cv2.rectangle(img, (wx, wy), (wx + step // 2, wy + step // 2), win, -1)
        x += bw + rng.uniform(0, 0.1) * w
    for _ in range(int(rng.integers(2, 8))):  # street lines / cables
        p = (int(rng.integers(0, w)), int(rng.integers(int(horizon), h)))
        q = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p, q, _color(rng), int(rng.integers(1, 4)))
    return img


def ignore_regions(rng, img: np.ndarray, horizon: float) -> List[Tuple[float, ...]]:
    """Distant dense crowds (tiny head blobs) and posters of people: tag "mask" regions."""
    h, w = img.shape[:2]
    regions = []
    if rng.random() < 0.3:  # distant crowd along the horizon
        rw, rh = rng.uniform(0.2, 0.5) * w, rng.uniform(0.04, 0.08) * h
        x1, y1 = rng.uniform(0, w - rw), max(0.0, horizon - rh * 0.6)
        n = int(rw * rh / 12)
        xs, ys = rng.uniform(x1, x1 + rw, n), rng.uniform(y1, y1 + rh, n)
        for x, y in zip(xs, ys):
            c = tuple(int(v) for v in _HAIR[rng.integers(len(_HAIR))])
            cv2.rectangle(img, (int(x - 1), int(y)), (int(x + 1), int(y + 5)), _color(rng), -1)
            cv2.circle(img, (int(x), int(y)), 2, c, -1)
        regions.append((x1, y1, x1 + rw, y1 + rh + 5))
    if rng.random() < 0.12 and horizon > 60:  # poster with printed people on a wall
        pw, ph = rng.uniform(0.12, 0.25) * w, rng.uniform(0.5, 0.9) * horizon
        x1, y1 = rng.uniform(0, w - pw), rng.uniform(0, horizon - ph)
        cv2.rectangle(img, (int(x1), int(y1)), (int(x1 + pw), int(y1 + ph)), _color(rng, 150, 256), -1)
        for k in range(int(rng.integers(1, 4))):
            parts, _ = person_parts(rng, x1 + pw * (k + 1) / 4, y1 + ph * 0.95, ph * 0.8)
            draw(img, parts)
        regions.append((x1, y1, x1 + pw, y1 + ph))
    return regions
