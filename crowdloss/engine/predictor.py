"""``Predictor``: an experiment's model on one numpy image, for notebooks and the demo.

    from crowdloss.engine.predictor import Predictor

    predictor = Predictor.from_experiment("playground/detection/synthcrowd/retinanet...",
                                          weights="output/.../model_final.pth")
    det = predictor(cv2.imread("street.jpg"))          # BGR, as OpenCV reads it
    det = predictor(pil_array, image_format="RGB")     # or RGB
    det.boxes, det.scores, det.classes, det.names()    # original-image pixels, xyxy

Inside: the image goes to the config's channel order (``INPUT.FORMAT``), through the test
pipeline (``INPUT.AUG.TEST_PIPELINES``, e.g. the shorter side to 608), into the model, whose
detections come back rescaled to the given image, clipped to it and capped at
``TEST.DETECTIONS_PER_IMAGE`` - exactly what ``pods_test`` scores, so a notebook sees the
numbers the evaluation sees.

Shapes: H x W the given image, D detections.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import torch

__all__ = ["Detections", "Predictor", "resolve_weights"]

logger = logging.getLogger("crowdloss.engine")


class Detections(NamedTuple):
    """One image's detections, numpy, in its own pixels (xyxy, x2 = right edge)."""

    boxes: np.ndarray       # (D, 4) float32
    scores: np.ndarray      # (D,) float32, descending
    classes: np.ndarray     # (D,) int64
    class_names: Sequence[str]

    def names(self) -> List[str]:
        return [self.class_names[int(c)] for c in self.classes]

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, threshold: float) -> "Detections":
        keep = self.scores > threshold
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep],
                          self.class_names)


def resolve_weights(cfg, weights: Optional[str] = None) -> str:
    """The file a predictor (or the demo) loads: ``weights``, else the newest checkpoint of
    ``OUTPUT_DIR``, else ``MODEL.WEIGHTS``.

    Raises:
        FileNotFoundError: none of them exists, saying where it looked.
    """
    if weights:
        return weights
    out = cfg.OUTPUT_DIR
    if out:
        from crowdloss.engine.checkpoint import Checkpointer

        newest = Checkpointer(torch.nn.Module(), out).get_checkpoint_file()
        if newest:
            return newest
    if cfg.MODEL.WEIGHTS:
        return cfg.MODEL.WEIGHTS
    raise FileNotFoundError(f"no weights to predict with: pass weights=..., train the "
                            f"experiment (OUTPUT_DIR {out or '(unset)'} has no checkpoint) or "
                            "set MODEL.WEIGHTS")


class Predictor:
    """Run a detector on numpy images (see the module docstring).

    Args:
        cfg: the resolved config (test pipeline, input format, device).
        model: the built model with its weights loaded; put in eval mode here.
        class_names: names of the model's classes (default: ``thing_classes`` of the first
            test dataset, else "class<k>").
    """

    def __init__(self, cfg, model: torch.nn.Module, *, class_names: Optional[Sequence[str]] = None):
        from crowdloss.data.transforms import build_transforms

        self.cfg = cfg
        self.model = model.eval()
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("BGR", "RGB"):
            raise ValueError(f"Predictor: INPUT.FORMAT must be 'BGR' or 'RGB', got "
                             f"{self.input_format!r}")
        self.pipeline = build_transforms(cfg.INPUT.AUG.TEST_PIPELINES)
        self.class_names = list(class_names) if class_names else _class_names(cfg, model)

    @classmethod
    def from_experiment(cls, exp_dir: str, overrides: Sequence[str] = (), *,
                        weights: Optional[str] = None, device: str = "cpu",
                        class_names: Optional[Sequence[str]] = None) -> "Predictor":
        """Build an experiment's model from its dir (+ ``KEY VALUE`` overrides) and load
        ``weights`` (default: ``resolve_weights``), which must fill
        ``MODEL.WEIGHTS_MIN_COVERAGE.TEST`` of it. ``MODEL.WEIGHTS_CLASSES`` applies when the
        file loaded is the experiment's ``MODEL.WEIGHTS``."""
        from crowdloss.cli.common import load_experiment
        from crowdloss.cli.process import register_config_datasets
        from crowdloss.config import default_output_dir, validate_config
        from crowdloss.engine.class_remap import class_remap_from_config
        from crowdloss.engine.weights import load_weights
        from crowdloss.modeling.meta_arch import place_model

        exp = load_experiment(exp_dir)
        cfg = copy.deepcopy(exp.config)
        cfg.merge_from_list(list(overrides))
        validate_config(cfg)
        register_config_datasets(cfg)
        cfg.MODEL.DEVICE = device
        if not cfg.OUTPUT_DIR:
            cfg.OUTPUT_DIR = default_output_dir(exp.dir)
        path = resolve_weights(cfg, weights)
        model = place_model(exp.build_model(cfg), cfg)
        remap = None
        if cfg.MODEL.WEIGHTS_CLASSES and path == cfg.MODEL.WEIGHTS:
            remap = class_remap_from_config(cfg, "DATASETS.TEST")
        least = float(cfg.MODEL.WEIGHTS_MIN_COVERAGE.TEST)
        load_weights(model, path, min_coverage=least, cfg=cfg, class_remap=remap,
                     requirement=f"MODEL.WEIGHTS_MIN_COVERAGE.TEST = {least:g}")
        logger.info("Predictor: %s with %s", os.path.basename(exp.dir), path)
        return cls(cfg, model, class_names=class_names)

    def preprocess(self, image: np.ndarray, image_format: str = "BGR") -> dict:
        """The model input of one HWC uint8 image in ``image_format`` ("BGR" or "RGB")."""
        from crowdloss.data.annotations import Annotations

        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
                and image.dtype == np.uint8):
            raise ValueError(f"Predictor: expected an (H, W, 3) uint8 array, got "
                             f"{type(image).__name__} {getattr(image, 'shape', '')} "
                             f"{getattr(image, 'dtype', '')}")
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"image_format must be 'BGR' or 'RGB', got {image_format!r}")
        if image_format != self.input_format:
            image = image[:, :, ::-1]
        h, w = image.shape[:2]
        # Test pipelines are deterministic; the generator only satisfies the contract.
        resized, _ = self.pipeline(np.ascontiguousarray(image), Annotations.empty(),
                                   np.random.default_rng(0))
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return {"image": tensor, "height": h, "width": w}

    @torch.no_grad()
    def __call__(self, image: np.ndarray, image_format: str = "BGR") -> Detections:
        """Detections of ``image`` (H, W, 3) uint8 in ``image_format``, in its pixels."""
        return self.postprocess(self.model([self.preprocess(image, image_format)])[0])

    def postprocess(self, output: dict) -> Detections:
        inst = output["instances"].to("cpu")
        return Detections(inst.pred_boxes.numpy().astype(np.float32),
                          inst.scores.numpy().astype(np.float32),
                          inst.pred_classes.numpy().astype(np.int64), self.class_names)


def _class_names(cfg, model) -> List[str]:
    from crowdloss.data.catalog import MetadataCatalog

    num = getattr(model, "num_classes", None)
    for names in (cfg.DATASETS.TEST, cfg.DATASETS.TRAIN):
        for name in ([names] if isinstance(names, str) else list(names or ())):
            classes = MetadataCatalog.get(name).get("thing_classes")
            if classes and (num is None or len(classes) == num):
                return list(classes)
    return [f"class{k}" for k in range(num or 0)]
