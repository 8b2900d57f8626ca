"""Helpers shared by the convolution blocks (private: not a room of its own).

Letters: B batch, C input channels, O output channels, g groups, k kernel size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.act import LayerSpec
from blockzoo.checks import ShapeError, require


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """The padding that keeps H and W at stride 1 for an odd kernel: d (k - 1) / 2."""
    return dilation * (kernel_size - 1) // 2


def conv_out_shape(shape: Any, cfg: Any) -> tuple[int, ...]:
    """Output shape rule of a conv block from its config, for ``Example(out_shape=...)``:
    (B, dim_out or C, H', W') with ``H' = floor((H + 2 p - d (k - 1) - 1) / s) + 1``, where
    k = kernel_size, s = stride, d = dilation and p = padding (default ``same_padding``);
    the constructors' defaults k = 3, s = 1, d = 1 apply where the config gives none."""
    k, s, d = cfg.get("kernel_size", 3), cfg.get("stride", 1), cfg.get("dilation", 1)
    p = cfg.get("padding")
    p = same_padding(k, d) if p is None else p

    def out(n: int) -> int:
        return (n + 2 * p - d * (k - 1) - 1) // s + 1

    return (shape[0], cfg.get("dim_out") or shape[1], out(shape[2]), out(shape[3]))


def per_sample_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> torch.Tensor:
    """Convolve each sample with its own kernel, as one grouped convolution.

    The batch is folded into the channels: sample b's C channels become group
    block b, so ``groups * B`` groups apply ``B`` different kernels at once.

    Args:
        x: (B, C, H, W).
        weight: (B, O, C / groups, k, k), one kernel per sample.
        bias: (B, O) or None.
    """
    b, c, h, w = x.shape
    o = weight.shape[1]
    out = F.conv2d(
        x.reshape(1, b * c, h, w),  # (1, B C, H, W)
        weight.reshape(b * o, *weight.shape[2:]),  # (B O, C/g, k, k)
        None if bias is None else bias.reshape(b * o),
        stride,
        padding,
        dilation,
        groups * b,
    )
    return out.reshape(b, o, *out.shape[-2:])  # (B, O, H', W')


def make_attention(
    attention: LayerSpec, channels: int, kwargs: dict[str, Any] | None, **fk: Any
) -> nn.Module:
    """An image-attention block on ``channels`` by registered name, class or factory.

    ``None`` gives ``nn.Identity``. A name is looked up in the registry and must be
    an image block; its class defaults apply (not its small example config).
    """
    from blockzoo.registry import spec  # at call time: the attention room may load later

    kw = dict(kwargs or {})
    if attention is None:
        return nn.Identity()
    if isinstance(attention, str):
        s = spec(attention)
        require(
            s.input == "image" and s.family == "attention",
            f"attention={attention!r} is a {s.family} block on {s.input} inputs, "
            "not an image attention block",
        )
        return s.builder(channels, **kw, **_accepted(s.builder, fk))
    return attention(channels, **kw)


def _accepted(builder: Any, fk: dict[str, Any]) -> dict[str, Any]:
    import inspect

    params = inspect.signature(builder).parameters
    return {k: v for k, v in fk.items() if k in params}


def raise_small(name: str, x: torch.Tensor, minimum: int) -> None:
    """Raise ``ShapeError``: the input's H or W is below what the block needs."""
    raise ShapeError(
        f"{name}: expected input (B, C, H, W) with H, W >= {minimum}, got {tuple(x.shape)}"
    )


def init_kernel_bank(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Initialise a bank of K conv kernels (K, O, C/g, k, k) as K independent ``nn.Conv2d``.

    Each kernel gets ``nn.Conv2d``'s default: Kaiming-uniform with a = sqrt(5),
    i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for its bias.
    """
    import math

    fan_in = weight[0, 0].numel()
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        if bias is not None:
            bias.uniform_(-bound, bound)


# activations that act on each element alone (so on (B, H, W, C) tokens as on (B, C, H, W))
ELEMENTWISE_ACTS = (nn.GELU, nn.ReLU, nn.SiLU, nn.ReLU6, nn.Hardswish, nn.Sigmoid, nn.Tanh, nn.Identity)


def is_pointwise(conv: nn.Module | None) -> bool:
    """A stock 1 x 1 conv, stride 1, no padding, one group: a linear map over channels."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1)
