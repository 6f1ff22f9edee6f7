"""Box coders: anchor deltas (R-CNN / RetinaNet) and point-to-side distances (FCOS).

Shapes broadcast over leading dims: (R, 4) with (R, 4), or e.g. (1, R, 2) points against
(M, 1, 4) boxes for the (M, R, 4) ltrb of every GT/point pair.
"""
import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["Box2BoxTransform", "Shift2BoxTransform"]

# Same clamp as detectron2 / cvpods: exp(dw) can never blow a box past 1000 / 16 x its anchor.
_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _check_weights(weights: Sequence[float], name: str) -> tuple:
    weights = tuple(float(w) for w in weights)
    if len(weights) != 4 or any(w <= 0 for w in weights):
        raise ValueError(f"{name}: weights must be 4 positive numbers, got {weights}")
    return weights


class Box2BoxTransform:
    """Center/size deltas (dx, dy, dw, dh) between xyxy boxes (Faster R-CNN, arXiv 1506.01497).

    dx = wx * (tx - sx) / sw, dy = wy * (ty - sy) / sh, dw = ww * log(tw / sw), dh = wh * log(th / sh)
    with (sx, sy, sw, sh) the source box centre and size.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), scale_clamp: float = _DEFAULT_SCALE_CLAMP):
        self.weights = _check_weights(weights, "Box2BoxTransform")
        self.scale_clamp = float(scale_clamp)

    def get_deltas(self, src_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """Deltas that turn ``src_boxes`` (R, 4) into ``target_boxes`` (R, 4) -> (R, 4)."""
        if src_boxes.shape[-1] != 4 or target_boxes.shape[-1] != 4:
            raise ValueError(
                f"Box2BoxTransform.get_deltas: expected (..., 4) boxes, got {tuple(src_boxes.shape)} "
                f"and {tuple(target_boxes.shape)}"
            )
        src_boxes = src_boxes.to(target_boxes.dtype)
        sw = src_boxes[..., 2] - src_boxes[..., 0]
        sh = src_boxes[..., 3] - src_boxes[..., 1]
        sx = src_boxes[..., 0] + 0.5 * sw
        sy = src_boxes[..., 1] + 0.5 * sh
        tw = target_boxes[..., 2] - target_boxes[..., 0]
        th = target_boxes[..., 3] - target_boxes[..., 1]
        tx = target_boxes[..., 0] + 0.5 * tw
        ty = target_boxes[..., 1] + 0.5 * th
        wx, wy, ww, wh = self.weights
        return torch.stack(
            [wx * (tx - sx) / sw, wy * (ty - sy) / sh, ww * torch.log(tw / sw), wh * torch.log(th / sh)],
            dim=-1,
        )

    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Apply (R, 4 * k) ``deltas`` to (R, 4) ``boxes`` -> (R, 4 * k) xyxy."""
        if deltas.shape[-1] % 4 != 0 or boxes.shape[-1] != 4:
            raise ValueError(
                f"Box2BoxTransform.apply_deltas: expected (..., 4k) deltas and (..., 4) boxes, got "
                f"{tuple(deltas.shape)} and {tuple(boxes.shape)}"
            )
        boxes = boxes.to(deltas.dtype)
        w = (boxes[..., 2] - boxes[..., 0]).unsqueeze(-1)
        h = (boxes[..., 3] - boxes[..., 1]).unsqueeze(-1)
        cx = boxes[..., 0].unsqueeze(-1) + 0.5 * w
        cy = boxes[..., 1].unsqueeze(-1) + 0.5 * h
        wx, wy, ww, wh = self.weights
        dx = deltas[..., 0::4] / wx
        dy = deltas[..., 1::4] / wy
        dw = (deltas[..., 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[..., 3::4] / wh).clamp(max=self.scale_clamp)
        pcx, pcy = dx * w + cx, dy * h + cy
        pw, ph = torch.exp(dw) * w, torch.exp(dh) * h
        out = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=-1)
        return out.reshape(deltas.shape)


class Shift2BoxTransform:
    """Distances (l, t, r, b) from a point (shift) to the four sides of a box (FCOS, arXiv 1904.01355)."""

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)):
        self.weights = _check_weights(weights, "Shift2BoxTransform")

    def get_deltas(self, shifts: Tensor, boxes: Tensor) -> Tensor:
        """ltrb of ``shifts`` (..., 2) xy to ``boxes`` (..., 4) xyxy (broadcast) -> (..., 4).

        Points outside a box get at least one negative distance.
        """
        if shifts.shape[-1] != 2 or boxes.shape[-1] != 4:
            raise ValueError(
                f"Shift2BoxTransform.get_deltas: expected (..., 2) shifts and (..., 4) boxes, got "
                f"{tuple(shifts.shape)} and {tuple(boxes.shape)}"
            )
        shifts = shifts.to(boxes.dtype)
        deltas = torch.cat([shifts - boxes[..., :2], boxes[..., 2:] - shifts], dim=-1)
        return deltas * deltas.new_tensor(self.weights)

    def apply_deltas(self, deltas: Tensor, shifts: Tensor) -> Tensor:
        """xyxy boxes from ltrb ``deltas`` (..., 4) around ``shifts`` (..., 2) -> (..., 4)."""
        if deltas.shape[-1] != 4 or shifts.shape[-1] != 2:
            raise ValueError(
                f"Shift2BoxTransform.apply_deltas: expected (..., 4) deltas and (..., 2) shifts, got "
                f"{tuple(deltas.shape)} and {tuple(shifts.shape)}"
            )
        deltas = deltas / deltas.new_tensor(self.weights)
        shifts = shifts.to(deltas.dtype)
        return torch.cat([shifts - deltas[..., :2], shifts + deltas[..., 2:]], dim=-1)
