"""Activations and normalisations chosen by name, shared by every family.

``create_act("gelu")`` and ``create_norm("layernorm", 64)`` let a block take
``act_layer``/``norm_layer`` as a name, a class or a factory, so configs stay
plain data (JSON-able) and the CLI can set them. The MLP, the figures of
``blockzoo plot activations`` and every block use these same functions.

Papers: PReLU — Delving Deep into Rectifiers (He, arXiv 1502.01852, 2015);
GELU — Gaussian Error Linear Units (Hendrycks, arXiv 1606.08415, 2016).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import direct
from blockzoo.registry import unknown_name

__all__ = ["ACTIVATIONS", "NORMS", "LayerNorm2d", "LayerSpec", "create_act", "create_norm", "without_bias"]

LayerSpec = str | type[nn.Module] | Callable[..., nn.Module] | None

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
}

# Activations whose modules own parameters and so accept device/dtype.
_PARAMETRIC = {nn.PReLU}


def create_act(
    act: LayerSpec, *, device: Any = None, dtype: Any = None, **kwargs: Any
) -> nn.Module:
    """An activation module from a name (``"relu"``), a class, a factory or ``None``.

    ``None`` gives ``nn.Identity``. Unknown names list close matches.
    """
    if act is None:
        return nn.Identity()
    if isinstance(act, str):
        key = act.lower()
        if key not in ACTIVATIONS:
            raise unknown_name("activation", act, sorted(ACTIVATIONS))
        act = ACTIVATIONS[key]
    if act in _PARAMETRIC:
        return act(device=device, dtype=dtype, **kwargs)
    return act(**kwargs)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, at every position (ConvNeXt's
    "channels_first" LayerNorm): the same as ``nn.LayerNorm(C)`` on (B, H, W, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, H, W)


@direct(LayerNorm2d)
def _layer_norm_2d(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``LayerNorm2d.forward`` as its functional op, for ``blockzoo._fastcall.call``."""
    p = m._parameters
    y = F.layer_norm(x.permute(0, 2, 3, 1), m.normalized_shape, p["weight"], p["bias"], m.eps)
    return y.permute(0, 3, 1, 2)  # (B, C, H, W)


def _layernorm(dim: int, **kw: Any) -> nn.Module:
    return nn.LayerNorm(dim, **kw)


def _layernorm2d(dim: int, **kw: Any) -> nn.Module:
    return LayerNorm2d(dim, **kw)


def _batchnorm1d(dim: int, **kw: Any) -> nn.Module:
    return nn.BatchNorm1d(dim, **kw)


def _batchnorm2d(dim: int, **kw: Any) -> nn.Module:
    return nn.BatchNorm2d(dim, **kw)


def _groupnorm1(dim: int, **kw: Any) -> nn.Module:
    return nn.GroupNorm(1, dim, **kw)


def _rmsnorm(dim: int, **kw: Any) -> nn.Module:
    return nn.RMSNorm(dim, **kw)


NORMS: dict[str, Callable[..., nn.Module]] = {
    "layernorm": _layernorm,
    "layernorm2d": _layernorm2d,
    "batchnorm1d": _batchnorm1d,
    "batchnorm": _batchnorm2d,
    "batchnorm2d": _batchnorm2d,
    "groupnorm": _groupnorm1,
    "rmsnorm": _rmsnorm,
}


def create_norm(
    norm: LayerSpec, dim: int, *, device: Any = None, dtype: Any = None, **kwargs: Any
) -> nn.Module:
    """A normalisation over ``dim`` features from a name, class, factory or ``None``.

    Names: layernorm, layernorm2d (over the C of (B, C, H, W)), batchnorm1d, batchnorm /
    batchnorm2d, groupnorm (one group),
    rmsnorm. ``None`` gives ``nn.Identity``.
    """
    if norm is None:
        return nn.Identity()
    if isinstance(norm, str):
        key = norm.lower()
        if key not in NORMS:
            raise unknown_name("norm layer", norm, sorted(NORMS))
        norm = NORMS[key]
    return norm(dim, device=device, dtype=dtype, **kwargs)


def without_bias(layer: nn.Module) -> nn.Module:
    """``layer`` with its additive ``bias`` removed (set to ``None``, as ``bias=False`` does).

    For a norm or linear layer whose shift a later layer cancels exactly (a LayerNorm
    shift that a BatchNorm after a 1x1 conv subtracts again): such a parameter cannot
    change the output, so it is not kept. torch's linear, conv and norm layers all
    accept ``bias=None`` in their forward. A layer without a bias is returned as is.
    """
    if isinstance(getattr(layer, "bias", None), nn.Parameter):
        layer.register_parameter("bias", None)
    return layer
