"""Dataset dict -> model input (docs/internals.md "Model input")."""
from __future__ import annotations

import numpy as np
import torch

from ..config.access import cfg_get
from ..structures import Instances
from .annotations import Annotations
from .image_io import BadImageError, read_image
from .transforms import build_transforms

__all__ = ["DatasetMapper", "read_image"]


class DatasetMapper:
    """Read, augment and pack one dataset dict.

    The pipeline sees the image and all its annotations (``Annotations``: boxes, classes with
    -1 = ignore); afterwards ONE :func:`~crowdloss.data.boxes.clip_and_drop` clips the
    boxes to the output image and drops those left without area (e.g. by a crop).

    Output: ``image`` uint8 (3, H, W) tensor after the pipeline, ``instances``
    (image_size=(H, W), gt_boxes float32 (M, 4), gt_classes long (M,), -1 = ignore), and the
    ORIGINAL ``height``/``width`` (the model maps predictions back to them).
    """

    def __init__(self, cfg, is_train: bool = True):
        key = "INPUT.AUG.TRAIN_PIPELINES" if is_train else "INPUT.AUG.TEST_PIPELINES"
        self.pipeline = build_transforms(cfg_get(cfg, key))
        self.image_format = cfg_get(cfg, "INPUT.FORMAT")
        self.is_train = is_train
        # Colour transforms must know the channel order; a mismatch would silently turn the
        # hue the wrong way, so refuse it here.
        for t in self.pipeline.transforms:
            fmt = getattr(t, "image_format", None)
            if fmt is not None and fmt != self.image_format:
                raise ValueError(f"{key}: {type(t).__name__}(image_format={fmt!r}) but "
                                 f"INPUT.FORMAT is {self.image_format!r}; set the same order")

    def __call__(self, dataset_dict: dict, rng=None) -> dict:
        """Raises ``BadImageError`` (naming the path) for a missing, truncated or corrupt
        image, and for one whose decoded size is not the dataset dict's (the file changed
        after loading); the loaders decide whether that skips the image."""
        path = dataset_dict["file_name"]
        image = read_image(path, self.image_format)
        h, w = image.shape[:2]
        if (h, w) != (dataset_dict["height"], dataset_dict["width"]):
            raise BadImageError(f"bad image {path}: it is {h}x{w} (height x width) but was "
                                f"{dataset_dict['height']}x{dataset_dict['width']} when the "
                                "dataset was loaded", path)
        annos = Annotations.from_dataset_dict(dataset_dict.get("annotations", []), path)
        image, annos = self.pipeline(image, annos, rng)
        H, W = image.shape[:2]
        annos, _ = annos.clip_and_drop(H, W)
        # One copy into CHW layout; the model's normalisation needs contiguous memory anyway.
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out = {"image": tensor, "height": dataset_dict["height"],
               "width": dataset_dict["width"], "file_name": path,
               "image_id": dataset_dict["image_id"]}
        out["instances"] = Instances((H, W), gt_boxes=torch.from_numpy(annos.boxes),
                                     gt_classes=torch.from_numpy(annos.classes))
        return out
