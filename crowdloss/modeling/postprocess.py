"""Map detections from the network's input resolution back to the original image."""
from __future__ import annotations

import torch

from crowdloss.ops import clip_boxes, nonempty_boxes
from crowdloss.structures import Instances

__all__ = ["detector_postprocess"]


def detector_postprocess(results: Instances, output_height: int, output_width: int) -> Instances:
    """Rescale ``pred_boxes`` from ``results.image_size`` (the resized input the model saw) to
    (output_height, output_width) (the original image), clip them to it and drop boxes that
    became empty.

    Args:
        results: Instances with ``pred_boxes`` (D, 4) xyxy plus any other per-box fields.
        output_height, output_width: original image size (the dataset dict's height/width).

    Returns:
        A new Instances of image_size (output_height, output_width) with D' <= D boxes.
    """
    output_height, output_width = int(output_height), int(output_width)
    if output_height <= 0 or output_width <= 0:
        raise ValueError(
            f"detector_postprocess: output size must be positive, got "
            f"({output_height}, {output_width})"
        )
    in_h, in_w = results.image_size
    scale = torch.tensor(
        [output_width / in_w, output_height / in_h, output_width / in_w, output_height / in_h],
        dtype=results.pred_boxes.dtype,
        device=results.pred_boxes.device,
    )
    out = Instances((output_height, output_width))
    for name, value in results.get_fields().items():
        out.set(name, value)
    boxes = clip_boxes(results.pred_boxes * scale, (output_height, output_width))
    out.pred_boxes = boxes
    return out[nonempty_boxes(boxes)]
