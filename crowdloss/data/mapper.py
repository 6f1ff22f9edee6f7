"""Dataset dict -> model input (docs/internals.md "Model input")."""
from __future__ import annotations

import numpy as np
import torch

from ..config.access import cfg_get
from ..structures import Instances
from .image_io import BadImageError, read_image
from .transforms import build_transforms

__all__ = ["DatasetMapper", "read_image"]


class DatasetMapper:
    """Read, augment and pack one dataset dict.

    Output: ``image`` uint8 (3, H, W) tensor after the pipeline, ``instances``
    (image_size=(H, W), gt_boxes float32 (M, 4), gt_classes long (M,), -1 = ignore), and the
    ORIGINAL ``height``/``width`` (the model maps predictions back to them).
    """

    def __init__(self, cfg, is_train: bool = True):
        key = "INPUT.AUG.TRAIN_PIPELINES" if is_train else "INPUT.AUG.TEST_PIPELINES"
        self.pipeline = build_transforms(cfg_get(cfg, key, []))
        self.image_format = cfg_get(cfg, "INPUT.FORMAT", "BGR")
        self.is_train = is_train

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
        annos = dataset_dict.get("annotations", [])
        boxes = np.array([a["bbox"] for a in annos], dtype=np.float32).reshape(-1, 4)
        classes = torch.tensor([a["category_id"] for a in annos], dtype=torch.long)
        image, boxes = self.pipeline(image, boxes, rng)
        H, W = image.shape[:2]
        # One copy into CHW layout; the model's normalisation needs contiguous memory anyway.
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out = {"image": tensor, "height": dataset_dict["height"],
               "width": dataset_dict["width"], "file_name": path,
               "image_id": dataset_dict["image_id"]}
        out["instances"] = Instances((H, W), gt_boxes=torch.from_numpy(boxes), gt_classes=classes)
        return out
