"""Small building blocks shared by backbones and heads: frozen BN, norm factory, conv wrapper.

Norm names follow detectron2/cvpods configs: "" / None (no norm), "BN", "SyncBN", "FrozenBN",
"GN" (32 groups), plus "FrozenStatsBN" (statistics fixed, affine trained: pytorch-retinanet). Every norm with parameters is an ``nn.modules.batchnorm._NormBase`` or an
``nn.GroupNorm`` so the optimizer can put it in the no-weight-decay group;
``FrozenBatchNorm2d`` has no parameters at all (only buffers), so it never reaches the optimizer.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn

from crowdloss.utils import comm

__all__ = [
    "FrozenBatchNorm2d",
    "FrozenStatsBatchNorm2d",
    "convert_frozen_batchnorm",
    "get_norm",
    "Conv2d",
    "c2_msra_fill",
    "c2_xavier_fill",
]

NormSpec = Union[str, None, Callable[[int], nn.Module]]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers.

    Computes ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` as one
    per-channel scale and shift. Detection fine-tunes with 1-2 images per device, far too few for
    batch statistics, so the ImageNet statistics are kept as they are (the convention of every
    MSRA / detectron2 / cvpods ResNet detector).

    Args:
        num_features: number of channels C.
        eps: added to the variance; 1e-5 like ``nn.BatchNorm2d``.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Folding into one scale/shift keeps it a cheap elementwise op (and fuses under AMP).
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        scale = scale.reshape(1, -1, 1, 1).to(x.dtype)
        shift = shift.reshape(1, -1, 1, 1).to(x.dtype)
        return x * scale + shift

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # BN checkpoints carry a step counter a frozen layer has no use for; drop it quietly
        # instead of reporting it as an unexpected key.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Return ``module`` with every BatchNorm / SyncBatchNorm replaced by a frozen copy.

        A BN module passed directly is returned as a new FrozenBatchNorm2d; otherwise children
        are replaced in place and the same module is returned.
        """
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = cls(module.num_features, eps=module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            ref = next(iter(module.buffers()), None)
            return frozen if ref is None else frozen.to(ref.device)
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics (never updates them),
    while its affine weight and bias stay trainable.

    This is what pytorch-retinanet trains with: its ``freeze_bn()`` puts every BatchNorm in
    eval mode after ``model.train()``, and the optimizer still updates gamma and beta. Being an
    ``nn.BatchNorm2d`` it has the usual state-dict names and sits in the optimizer's norm group
    (``WEIGHT_DECAY_NORM``); ``FREEZE_AT`` turns it into a ``FrozenBatchNorm2d`` like any BN.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                        self.bias, False, 0.0, self.eps)


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` by ``FrozenBatchNorm2d`` (see the classmethod)."""
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)


def get_norm(norm: NormSpec, channels: int, *, num_groups: int = 32) -> Optional[nn.Module]:
    """Build the normalization layer named by a config string.

    Args:
        norm: "" / None (returns None), "BN", "SyncBN", "FrozenBN", "FrozenStatsBN", "GN", or
            a callable taking ``channels`` and returning a module.
        channels: number of channels to normalize.
        num_groups: groups for "GN" (32 as in arXiv 1803.08494).

    Returns:
        The module, or None for no normalization.
    """
    if norm is None or norm == "":
        return None
    if callable(norm) and not isinstance(norm, str):
        return norm(channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        # nn.SyncBatchNorm needs a process group and crashes without one; on one process it is
        # plain BN anyway.
        if comm.get_world_size() > 1:
            return nn.SyncBatchNorm(channels)
        return nn.BatchNorm2d(channels)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "FrozenStatsBN":
        return FrozenStatsBatchNorm2d(channels)
    if norm == "GN":
        if channels % num_groups != 0:
            raise ValueError(
                f"norm 'GN' uses {num_groups} groups, but the layer has {channels} channels, "
                f"which is not a multiple of {num_groups}; choose a channel count divisible by "
                f"{num_groups} (e.g. FPN.OUT_CHANNELS) or another NORM"
            )
        return nn.GroupNorm(num_groups, channels)
    raise ValueError(
        f"unknown norm {norm!r}; expected one of '', 'BN', 'SyncBN', 'FrozenBN', "
        "'FrozenStatsBN', 'GN'"
    )


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with an optional norm (child named ``norm``) and activation after it.

    Keeping the norm as a child of the conv gives the detectron2 parameter names
    (``conv1.weight``, ``conv1.norm.weight``) that published checkpoints use.

    Args:
        *args, **kwargs: as ``nn.Conv2d``.
        norm: a module (e.g. from ``get_norm``) or None.
        activation: a callable applied last, or None.
    """

    def __init__(self, *args, norm: Optional[nn.Module] = None,
                 activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def c2_msra_fill(module: nn.Module) -> None:
    """Caffe2's "MSRAFill": Kaiming-normal (fan_out, ReLU; arXiv 1502.01852), zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's "XavierFill": uniform with bound sqrt(3 / fan_in), zero bias (used by FPN)."""
    # kaiming_uniform_ with a=1 gives exactly bound sqrt(3 / fan_in).
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)
