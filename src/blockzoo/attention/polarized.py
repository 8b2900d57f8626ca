"""Polarized Self-Attention: a channel-only and a spatial-only branch, parallel or sequential.

Paper: Polarized Self-Attention: Towards High-quality Pixel-wise Regression (Liu, arXiv
2107.00782, 2021).

Letters: B batch, C channels, H W spatial, N = H W.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import listened
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import ConfigError, check_shape
from blockzoo.registry import Example, images, register

__all__ = [
    "PolarizedChannel",
    "PolarizedParallel",
    "PolarizedSelfAttention",
    "PolarizedSequential",
    "PolarizedSpatial",
]


def _stock(*mods: nn.Module) -> bool:
    """True when ``mods`` are exactly the stock convs / LayerNorm built here and nobody hooks
    them: their weights may then be applied in another order (see the branches' forward)."""
    return all(type(m) in (nn.Conv2d, nn.LayerNorm) for m in mods) and not listened(*mods)


class PolarizedChannel(nn.Module):
    r"""PSA's channel-only branch: A^ch (B, C, 1, 1) in (0, 1).

    Equation::

        A^ch(x) = sigmoid(LN(W_z( W_v(x) softmax_N(W_q(x)) )))
                  W_v: 1x1 C -> C/2 reshaped (C/2, N); W_q: 1x1 C -> 1 reshaped (N, 1);
                  W_z: 1x1 C/2 -> C; LN over the C channels

    Args:
        channels: C (at least 2).

    Shape:
        - Input: (B, C, H, W); Output: the gate (B, C, 1, 1).

    Deviations:
        W_v, W_q and W_z have no bias, as in the official code (DeLightCMU/PSA,
        ``PSA.py``); W_v and W_q start Kaiming-normal (fan_in), as there.
    """

    def __init__(self, channels: int, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        half = max(1, channels // 2)
        self.wv = nn.Conv2d(channels, half, 1, bias=False, **fk)  # official: all 1x1 convs bias-free
        self.wq = nn.Conv2d(channels, 1, 1, bias=False, **fk)
        self.wz = nn.Conv2d(half, channels, 1, bias=False, **fk)
        self.norm = nn.LayerNorm(channels, **fk)
        self.attn_map = AttentionMap("weights")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_in) W_v, W_q, as the official code; W_z keeps torch's default."""
        for conv in (self.wv, self.wq):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = self._modules
        wv, wq, wz, norm = mods["wv"], mods["wq"], mods["wz"], mods["norm"]
        if _stock(wv, wq, wz, norm):
            # The same products in a cheaper order: W_v (x softmax_N(W_q x)) pools x first,
            # so W_v maps one (C,) vector per sample instead of all N positions; W_z is a
            # linear map of that vector (no 1x1 conv call on a 1x1 map).
            q = mods["attn_map"](wq._conv_forward(x, wq.weight, None).flatten(2).softmax(-1))  # (B, 1, N)
            xq = torch.bmm(x.flatten(2), q.transpose(1, 2)).squeeze(-1)  # (B, C)
            z = F.linear(F.linear(xq, wv.weight.flatten(1)), wz.weight.flatten(1))  # (B, C)
            z = F.layer_norm(z, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
            return torch.sigmoid(z)[:, :, None, None]  # (B, C, 1, 1)
        v = self.wv(x).flatten(2)  # (B, C/2, N)
        q = self.attn_map(self.wq(x).flatten(2).softmax(-1))  # (B, 1, N)
        # W_v(x) softmax(W_q(x)): one attention-weighted pool over the N positions
        pooled = (v @ q.transpose(1, 2)).unsqueeze(-1)  # (B, C/2, 1, 1)
        z = self.wz(pooled).flatten(1)  # (B, C)
        return torch.sigmoid(self.norm(z))[..., None, None]  # (B, C, 1, 1)


class PolarizedSpatial(nn.Module):
    r"""PSA's spatial-only branch: A^sp (B, 1, H, W) in (0, 1).

    Equation::

        A^sp(x) = sigmoid( softmax_C(GAP(W_q(x))) W_v(x) )
                  W_q, W_v: 1x1 C -> C/2; GAP over H W gives (1, C/2); W_v reshaped (C/2, N)

    Args:
        channels: C (at least 2).

    Shape:
        - Input: (B, C, H, W); Output: the gate (B, 1, H, W).

    Deviations:
        W_q and W_v have no bias and start Kaiming-normal (fan_in), as in the official
        code (DeLightCMU/PSA, ``PSA.py``).
    """

    def __init__(self, channels: int, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        half = max(1, channels // 2)
        self.wq = nn.Conv2d(channels, half, 1, bias=False, **fk)  # official: bias-free
        self.wv = nn.Conv2d(channels, half, 1, bias=False, **fk)
        self.attn_map = AttentionMap("weights")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_in) W_q, W_v, as the official code."""
        for conv in (self.wq, self.wv):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = self._modules
        wq, wv = mods["wq"], mods["wv"]
        if _stock(wq, wv):
            # The same products in a cheaper order: GAP(W_q x) = W_q GAP(x), and
            # q (W_v x) = (q W_v) x, so neither 1x1 conv runs over the N positions.
            q = mods["attn_map"](F.linear(x.mean((2, 3)), wq.weight.flatten(1)).softmax(-1))  # (B, C/2)
            qv = torch.mm(q, wv.weight.flatten(1)).unsqueeze(1)  # (B, 1, C)
            s = torch.bmm(qv, x.flatten(2)).view(x.shape[0], 1, x.shape[2], x.shape[3])  # (B, 1, H, W)
            return torch.sigmoid(s)
        q = self.attn_map(self.wq(x).mean((2, 3)).softmax(-1)).unsqueeze(1)  # (B, 1, C/2)
        v = self.wv(x)  # (B, C/2, H, W)
        # softmax(GAP(W_q x)) W_v(x)
        s = (q @ v.flatten(2)).view(v.shape[0], 1, *v.shape[2:])  # (B, 1, H, W)
        return torch.sigmoid(s)


class PolarizedSelfAttention(nn.Module):
    r"""Polarized Self-Attention: channel-only and spatial-only gates, parallel or sequential.

    Liu et al., "Polarized Self-Attention: Towards High-quality Pixel-wise Regression",
    arXiv 2107.00782.

    Equation (branches as in ``PolarizedChannel`` / ``PolarizedSpatial``)::

        A^ch(x) = sigmoid(LN(W_z(W_v^ch(x) softmax_N(W_q^ch(x)))))          (B, C, 1, 1)
        A^sp(x) = sigmoid(softmax_C(GAP(W_q^sp(x))) W_v^sp(x))              (B, 1, H, W)
        parallel:   y = A^ch(x) * x + A^sp(x) * x
        sequential: y = A^sp(z) * z,   z = A^ch(x) * x

    Args:
        channels: C, the input channels (at least 2; the branches' inner width is C // 2).
        mode: ``"parallel"`` or ``"sequential"``.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        The paper's equations are explicit and followed where the official code
        (DeLightCMU/PSA, ``semantic-segmentation/network/PSA.py``) leaves them: its
        parallel ``PSA_p`` has no LayerNorm in the channel branch and takes the spatial
        softmax over the H W positions of the product (not over the C/2 channels of the
        pooled query); its sequential ``PSA_s`` replaces W_z by a C/2 -> C/8 -> C
        bottleneck with LayerNorm and ReLU and takes softmax_{HW} of W_v(x) before the
        product. Where the paper is silent the official code is followed: all five 1x1
        convs are bias-free and W_q, W_v start Kaiming-normal (fan_in).

    Example:
        >>> psa = PolarizedSelfAttention(64, mode="sequential")
        >>> psa(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, mode: str = "parallel", device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        if mode not in ("parallel", "sequential"):
            raise ConfigError(f"PolarizedSelfAttention: mode={mode!r} must be 'parallel' or 'sequential'")
        if channels < 2:
            raise ConfigError(f"PolarizedSelfAttention: channels={channels} must be >= 2")
        fk = dict(device=device, dtype=dtype)
        self.channels, self.mode = channels, mode
        self.channel_branch = PolarizedChannel(channels, **fk)
        self.spatial_branch = PolarizedSpatial(channels, **fk)
        self.channel_map = AttentionMap("channel")
        self.spatial_map = AttentionMap("spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name=type(self).__name__, C=self.channels)  # raises
        mods = self._modules
        ch, sp = mods["channel_branch"], mods["spatial_branch"]
        if listened(ch, sp):
            ch_gate, sp_gate = ch, sp
        else:  # the branches' forward without nn.Module.__call__
            ch_gate, sp_gate = ch.forward, sp.forward
        z = x * mods["channel_map"](ch_gate(x))  # (B, C, H, W)
        if self.mode == "parallel":
            # y = A^ch(x) x + A^sp(x) x
            return torch.addcmul(z, x, mods["spatial_map"](sp_gate(x)))
        # y = A^sp(z) z, z = A^ch(x) x
        return z * mods["spatial_map"](sp_gate(z))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mode={self.mode!r}"


_PAPER = dict(family="attention",
              paper="Polarized Self-Attention: Towards High-quality Pixel-wise Regression",
              arxiv="2107.00782", year=2021, input="image")


@register(name="polarized_parallel", **_PAPER,
          example=Example(config=dict(channels=16), inputs=images(), size=(8, 8), out_shape="same",
                          tiny=dict(channels=4)))
class PolarizedParallel(PolarizedSelfAttention):
    r"""Polarized Self-Attention, parallel layout: y = A^ch(x) * x + A^sp(x) * x.

    Liu et al., arXiv 2107.00782; the branches and their equations are in
    ``PolarizedSelfAttention``.

    Args:
        channels: C, the input channels (at least 2).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        As in ``PolarizedSelfAttention``: the paper's equations, bias-free convs.

    Example:
        >>> PolarizedParallel(64)(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__(channels, mode="parallel", device=device, dtype=dtype)


@register(name="polarized_sequential", **_PAPER,
          example=Example(config=dict(channels=16), inputs=images(), size=(8, 8), out_shape="same",
                          tiny=dict(channels=4)))
class PolarizedSequential(PolarizedSelfAttention):
    r"""Polarized Self-Attention, sequential layout: y = A^sp(z) * z, z = A^ch(x) * x.

    Liu et al., arXiv 2107.00782; the branches and their equations are in
    ``PolarizedSelfAttention``.

    Args:
        channels: C, the input channels (at least 2).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        As in ``PolarizedSelfAttention``: the paper's equations, bias-free convs.

    Example:
        >>> PolarizedSequential(64)(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__(channels, mode="sequential", device=device, dtype=dtype)
