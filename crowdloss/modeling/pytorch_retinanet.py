"""yhenon's pytorch-retinanet state dicts -> our names (weight format "pytorch_retinanet").

Its ``ResNet`` detector keeps the torchvision backbone names (``conv1``, ``bn1``,
``layer1..4``) and adds::

    fpn.P5_1 / P4_1 / P3_1          1x1 laterals on C5 / C4 / C3  -> fpn_lateral5 / 4 / 3
    fpn.P5_2 / P4_2 / P3_2          3x3 outputs                    -> fpn_output5 / 4 / 3
    fpn.P6, fpn.P7_2                P6 (3x3/2 on C5), P7 (3x3/2)   -> top_block.p6 / p7
    regressionModel.conv1..4        box tower (3x3, ReLU)          -> head.bbox_subnet.0/2/4/6
    regressionModel.output          A x 4 deltas                   -> head.bbox_pred
    classificationModel.conv1..4    class tower                    -> head.cls_subnet.0/2/4/6
    classificationModel.output      A x K sigmoid logits           -> head.cls_score

The channel layouts need no reordering: its heads are applied to (N, C, H, W) maps and
flattened as (H, W, A, K) / (H, W, A, 4), i.e. channel ``a * K + k`` / ``a * 4 + c``, which is
``permute_to_N_R_K``'s layout. Its anchor ``a`` is ratio-major (``MODEL.ANCHOR_GENERATOR.ORDER``
"ratio_major"), so the checkpoint is only right in a model built by ``PyTorchRetinaNetConfig``.
The format is registered by ``crowdloss.engine.weight_formats`` with the torchvision input
convention (RGB, ImageNet mean / std, stride in the 3x3 conv).

Files: its COCO model (``coco_resnet_50_map_0_335_state_dict.pt``) and the seed fork's
checkpoints are plain state dicts (``torch.save(model.state_dict())``, ``module.`` prefixes of
DataParallel are removed by the loader). Files written by upstream's ``train.py``
(``torch.save(retinanet.module)``) pickle the whole module and are refused by the
weights-only reader: load them in a pytorch-retinanet checkout and save ``.state_dict()``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Dict, List, Tuple

import torch

from crowdloss.modeling.backbone.weights import convert_torchvision_names

__all__ = ["looks_pytorch_retinanet", "convert_pytorch_retinanet_names"]

_FPN = {"P3_1": "fpn_lateral3", "P4_1": "fpn_lateral4", "P5_1": "fpn_lateral5",
        "P3_2": "fpn_output3", "P4_2": "fpn_output4", "P5_2": "fpn_output5",
        "P6": "top_block.p6", "P7_2": "top_block.p7"}
_HEADS = {"regressionModel": ("head.bbox_subnet", "head.bbox_pred"),
          "classificationModel": ("head.cls_subnet", "head.cls_score")}
_FPN_KEY = re.compile(r"^fpn\.(P\d(?:_\d)?)\.(weight|bias)$")
_HEAD_KEY = re.compile(
    r"^(regressionModel|classificationModel)\.(conv(\d+)|output)\.(weight|bias)$")
_SIGNATURE = ("fpn.P3_1.weight", "regressionModel.conv1.weight",
              "classificationModel.output.weight")


def looks_pytorch_retinanet(state_dict: Mapping) -> bool:
    """Its detector's names: the FPN lateral, both heads and a torchvision ``layer1``."""
    keys = {str(k) for k in state_dict}
    return (all(k in keys for k in _SIGNATURE)
            and any(k.startswith("layer1.") for k in keys))


def convert_pytorch_retinanet_names(state_dict: Mapping
                                    ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename a pytorch-retinanet state dict to ours (table in the module docstring).

    Returns:
        (converted state dict, dropped names). Nothing is dropped: the file has no classifier
        of ImageNet; unknown names are kept as they are (the load summary lists them).
    """
    backbone = {k: v for k, v in state_dict.items()
                if not str(k).startswith(("fpn.", "regressionModel.", "classificationModel."))}
    out, dropped = convert_torchvision_names(backbone)
    for name, value in state_dict.items():
        name = str(name)
        if m := _FPN_KEY.match(name):
            level, attr = m.groups()
            out[f"{_FPN[level]}.{attr}" if level in _FPN else name] = value
        elif m := _HEAD_KEY.match(name):
            head, layer, index, attr = m.groups()
            tower, output = _HEADS[head]
            # towers are Sequential(conv, ReLU, conv, ReLU, ...): conv i sits at 2 (i - 1)
            new = f"{tower}.{2 * (int(index) - 1)}" if index else output
            out[f"{new}.{attr}"] = value
        elif name.startswith(("fpn.", "regressionModel.", "classificationModel.")):
            out[name] = value
    return out, dropped
