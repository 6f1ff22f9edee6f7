"""Export a dense detector's network (backbone + head) to TorchScript or ONNX; everything
around it (resize, normalisation, padding, anchors, decoding, NMS, rescaling) stays the eager
detector's plain PyTorch.

    net = DenseNetwork(model)                         # images (N, 3, H, W) -> flat outputs
    export_onnx(model, "retinanet.onnx", example)     # or export_torchscript(...)
    exported = ExportedDetector(model, onnx_network("retinanet.onnx"))
    outputs = exported(batched_inputs)                # = model(batched_inputs) in eval mode

Why the split: NMS and anchor generation are data-dependent, shape-dependent plain PyTorch
that neither exporter carries faithfully (an exported NMS would be onnxruntime's, with its own
tie and threshold rules); the network is where the time goes (benchmarks/predictor.py). The
exported graph takes the normalised, padded batch the detector's ``preprocess_image`` makes,
with dynamic batch, height and width, and returns the head's outputs flattened to
``(N, R, C)`` class logits and ``(N, R, 4)`` box deltas (and ``(N, R, 1)`` quality logits for
FCOS-style heads), R over levels, rows, columns and anchors as ``DenseOutputs`` orders them.
Level sizes are recovered from the padded size: every ResNet-FPN level is ceil(H / stride)
(each stride-2 conv, pool and P6 / P7 maps n to ceil(n / 2)), checked against R.

Shapes: N images, H x W the padded batch, R priors, C logits per prior.
"""
from __future__ import annotations

import os
from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn

from crowdloss.modeling.dense_outputs import DenseOutputs, permute_to_N_R_K

__all__ = ["DenseNetwork", "ExportedDetector", "detections_from_outputs", "export_torchscript",
           "load_torchscript", "export_onnx", "onnx_network", "OUTPUT_NAMES"]

OUTPUT_NAMES = ("logits", "deltas", "quality")


class DenseNetwork(nn.Module):
    """The exportable part of a ``DenseDetector``: backbone + head, outputs flattened."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone, self.head = detector.backbone, detector.head
        self.in_features = list(detector.head_in_features)
        self.dims = [detector.num_logits, 4, 1]

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        features = self.backbone(images)
        predictions = self.head([features[f] for f in self.in_features])
        return tuple(torch.cat([permute_to_N_R_K(x, d) for x in per_level], dim=1)
                     for per_level, d in zip(predictions, self.dims))


def detections_from_outputs(detector, outputs: Sequence[torch.Tensor],
                            padded_size: Tuple[int, int],
                            image_sizes: List[Tuple[int, int]]) -> list:
    """The detector's own inference on a network's flat outputs: priors for the padded size,
    decoding, thresholds, NMS (``DenseDetector.inference_single_image``).

    Raises:
        ValueError: the outputs' R is not the priors' (a backbone whose levels are not
            ceil(H / stride)).
    """
    h, w = padded_size
    logits = outputs[0].float()
    shapes = [(-(-h // s), -(-w // s)) for s in detector.prior_generator.strides]
    # Empty stand-ins: the prior generator reads only their spatial size and device.
    stand_ins = [logits.new_empty((1, 0, lh, lw)) for lh, lw in shapes]
    priors = detector.prior_generator(stand_ins)
    if logits.shape[1] != len(priors):
        raise ValueError(f"the network returned {logits.shape[1]} priors for a {h}x{w} input, "
                         f"the levels ceil(H / stride) give {len(priors)}")
    quality = outputs[2].float() if len(outputs) > 2 else None
    dense = DenseOutputs(priors, logits, outputs[1].float(), quality,
                         detector.box_coder.apply_deltas)
    return [detector.inference_single_image(dense, i, size, padded_size=padded_size)
            for i, size in enumerate(image_sizes)]


class ExportedDetector:
    """``detector``'s eval forward with its network replaced by ``network`` (an exported one):
    same input (model input dicts) and output (``[{"instances": ...}]`` in image pixels)."""

    def __init__(self, detector: nn.Module, network: Callable[[torch.Tensor], Sequence]):
        self.detector = detector.eval()
        self.network = network

    @torch.no_grad()
    def __call__(self, batched_inputs: List[dict]) -> List[dict]:
        images, sizes = self.detector.preprocess_image(batched_inputs)
        outputs = self.network(images)
        results = detections_from_outputs(self.detector, outputs, tuple(images.shape[-2:]),
                                          sizes)
        return self.detector.postprocess(results, batched_inputs, sizes)


def _example(detector, example: torch.Tensor) -> torch.Tensor:
    if example.dim() != 4:
        raise ValueError(f"export: the example must be a normalised, padded (N, 3, H, W) "
                         f"batch, got shape {tuple(example.shape)}")
    return example.to(detector.device)


@torch.no_grad()
def export_torchscript(detector: nn.Module, path: str, example: torch.Tensor) -> str:
    """Trace ``DenseNetwork(detector)`` on ``example`` and save it to ``path``.

    Sizes are traced as shape operations, so the saved module runs on other batch and image
    sizes (tested); data-dependent branches do not exist in the network part.
    """
    network = DenseNetwork(detector.eval()).eval()
    traced = torch.jit.trace(network, (_example(detector, example),), check_trace=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    traced.save(path)
    return path


def load_torchscript(path: str, device: str = "cpu") -> Callable:
    return torch.jit.load(path, map_location=device).eval()


@torch.no_grad()
def export_onnx(detector: nn.Module, path: str, example: torch.Tensor, *,
                opset: int = 17) -> str:
    """Export ``DenseNetwork(detector)`` to ONNX at ``path`` (dynamic N, H, W and R), with the
    TorchScript-based exporter (no onnxscript needed; the ``onnx`` package is: requirements-
    export.txt)."""
    network = DenseNetwork(detector.eval()).eval()
    example = _example(detector, example)
    num_outputs = len(network(example))
    names = list(OUTPUT_NAMES[:num_outputs])
    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    axes.update({n: {0: "batch", 1: "priors"} for n in names})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.onnx.export(network, (example,), path, input_names=["images"], output_names=names,
                      dynamic_axes=axes, opset_version=opset, dynamo=False)
    return path


def onnx_network(path: str, *, threads: int = 0) -> Callable:
    """An onnxruntime session of an exported network, as a callable on torch tensors.

    Raises:
        ImportError: onnxruntime is not installed (``pip install -r requirements-export.txt``).
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("running an ONNX network needs onnxruntime: pip install -r "
                          "requirements-export.txt") from e
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run(images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = session.run(None, {"images": images.detach().cpu().numpy()})
        return tuple(torch.from_numpy(o) for o in outs)

    return run
