"""DANet: position attention (over H W positions) and channel attention (over C), summed.

Paper: Dual Attention Network for Scene Segmentation (Fu, arXiv 1809.02983, 2019).

Letters: B batch, C channels, H W spatial, N = H W positions, c = the query/key width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, listened
from blockzoo._kept import derived, pointwise_params, stacked_pointwise
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["DANet", "DANetChannelAttention", "DANetPositionAttention"]


def _fused(x: torch.Tensor) -> bool:
    """Whether PAM runs as fused SDPA (no N x N map in memory): off the CPU only. On the CPU
    SDPA has no fused kernel for a value width (C) other than the query width (c), and its
    math path costs more than PAM's two bmm's."""
    return x.device.type != "cpu"


# From this many positions on, PAM on the CPU runs as fused SDPA over queries and keys padded
# to the value width (2x faster than bmm + softmax + bmm at C = 64, 32 x 32; slower at 16 x 16).
_SDPA_MIN_POSITIONS = 1024


def _pad_qkv(wq: torch.Tensor, bq: torch.Tensor | None, wk: torch.Tensor, bk: torch.Tensor | None,
             wv: torch.Tensor, bv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(3C, C) weight and (3C,) bias of [query; key; value] with the c-wide query and key rows
    zero-padded to C."""
    c, ch = wq.shape[0], wv.shape[0]
    w, b = wv.new_zeros(3 * ch, ch), wv.new_zeros(3 * ch)
    w[:c], w[ch:ch + c], w[2 * ch:] = wq.view(c, ch), wk.view(c, ch), wv.view(ch, ch)
    for i, bias in enumerate((bq, bk, bv)):
        if bias is not None:
            b[i * ch:i * ch + bias.shape[0]] = bias
    return w, b


def _weights(amap: AttentionMap, s: torch.Tensor) -> torch.Tensor:
    """The (B, L, L) softmax weights through ``amap`` as (B, 1, L, L), when someone listens."""
    if amap._recording or amap._forward_hooks or amap._forward_pre_hooks:
        return amap(s.unsqueeze(1)).squeeze(1)
    return s


class DANetPositionAttention(nn.Module):
    r"""DANet's position attention module (PAM): every position attends to every position.

    Equation, with B' = W_b x, C' = W_c x, D = W_d x (1x1 convs) flattened to N = H W::

        s_ji = exp(B'_i . C'_j) / sum_i exp(B'_i . C'_j)        (N x N, softmax over i)
        E_j  = alpha * sum_i s_ji D_i + x_j

    Args:
        channels: C.
        reduction: B', C' have max(1, C // reduction) channels (paper: 8).
        init_scale: the initial alpha (paper: 0, so the module starts as identity).

    Shape:
        - Input: (B, C, H, W), any H, W; Output: (B, C, H, W).

    Deviations:
        The key conv (``key``: W_b, B'_i for the attended position i) has no bias
        (DANet's has one): a bias b would add b . C'_j to the logit of every i alike,
        which the softmax over i cancels, so it could never change the output.
    """

    def __init__(self, channels: int, *, reduction: int = 8, init_scale: float = 0.0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(reduction >= 1, f"DANet: reduction={reduction} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.channels = channels
        self.qk_channels = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, self.qk_channels, 1, **fk)
        self.key = nn.Conv2d(channels, self.qk_channels, 1, bias=False, **fk)  # the softmax cancels a bias
        self.value = nn.Conv2d(channels, channels, 1, **fk)
        self.alpha = nn.Parameter(torch.full((), float(init_scale), **fk))
        self.attn_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="DANetPositionAttention", C=self.channels)  # raises
        return torch.addcmul(x, self.alpha, self._attend(x))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """sum_i s_ji D_i, (B, C, H, W)."""
        b, ch, h, w = x.shape
        mods = self._modules
        qm, km, vm = mods["query"], mods["key"], mods["value"]
        if (not torch.compiler.is_compiling() and h * w >= _SDPA_MIN_POSITIONS and x.device.type == "cpu"
                and not mods["attn_map"].active and not listened(mods["attn_map"])):
            out = self._padded_sdpa(x)
            if out is not None:
                return out
        qkv = stacked_pointwise(self, (qm, km, vm), x)  # (B, 2c + C, H, W), one conv in eval
        if qkv is None:
            q, k, v = call(qm, x).flatten(2), call(km, x).flatten(2), call(vm, x).flatten(2)
        else:
            c = self.qk_channels
            q, k, v = qkv[:, :c].flatten(2), qkv[:, c:2 * c].flatten(2), qkv[:, 2 * c:].flatten(2)
        # q, k (B, c, N), v (B, C, N)
        amap = mods["attn_map"]
        if amap.active or not _fused(x):
            # s_ji = softmax_i(B'_i . C'_j), unscaled (B, N, N)
            s = _weights(amap, torch.bmm(q.transpose(1, 2), k).softmax(-1))
            return torch.bmm(v, s.transpose(1, 2)).view(b, ch, h, w)  # D s^T
        # fused SDPA (no N x N map in memory), energies unscaled as in the paper
        out = F.scaled_dot_product_attention(q.transpose(1, 2).unsqueeze(1), k.transpose(1, 2).unsqueeze(1),
                                             v.transpose(1, 2).unsqueeze(1), scale=1.0)  # (B, 1, N, C)
        return out.squeeze(1).transpose(1, 2).reshape(b, ch, h, w)

    def _padded_sdpa(self, x: torch.Tensor) -> torch.Tensor | None:
        """sum_i s_ji D_i through fused SDPA on the CPU at many positions: one projection of the
        (B, N, C) tokens to queries and keys zero-padded to the value width C (the zeros add
        nothing to any energy) and values, so that SDPA's fused kernel applies (it needs one
        width); None where the cached padded weights do not apply (autograd, hooks, compile)."""
        mods = self._modules
        params = pointwise_params((mods["query"], mods["key"], mods["value"]), x)
        wb = None if params is None else derived(self, "padded_qkv", params, _pad_qkv)
        if wb is None:
            return None
        b, ch, h, w = x.shape
        t = F.linear(x.flatten(2).transpose(1, 2), wb[0], wb[1]).unsqueeze(1)  # (B, 1, N, 3C)
        out = F.scaled_dot_product_attention(t[..., :ch], t[..., ch:2 * ch], t[..., 2 * ch:], scale=1.0)
        return out.squeeze(1).transpose(1, 2).view(b, ch, h, w)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, qk_channels={self.qk_channels}"


class DANetChannelAttention(nn.Module):
    r"""DANet's channel attention module (CAM): every channel attends to every channel.

    Equation, with x flattened to (C, N), N = H W::

        x_ji = exp(x_i . x_j) / sum_i exp(x_i . x_j)         (C x C, softmax over i)
        E_j  = beta * sum_i x_ji x_i + x_j

    Args:
        channels: C.
        init_scale: the initial beta (paper: 0).

    Shape:
        - Input: (B, C, H, W), any H, W (nothing depends on a fixed size); Output: same.

    Deviations:
        The paper's Eq. 3 is explicit, exp(A_i . A_j), and is followed. The official
        code (junfu1115/DANet, ``CAM_Module``) takes the softmax of
        ``max_i(energy) - energy``; the row maximum is cancelled by the softmax, so it
        computes softmax_i(-A_i . A_j): the same block with the energies' sign flipped
        (channels attend most to the channels least like them).
    """

    def __init__(self, channels: int, *, init_scale: float = 0.0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.channels = channels
        self.beta = nn.Parameter(torch.full((), float(init_scale), device=device, dtype=dtype))
        self.attn_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="DANetChannelAttention", C=self.channels)  # raises
        return torch.addcmul(x, self.beta, self._attend(x))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """sum_i x_ji x_i, (B, C, H, W): two bmm's (the C x C map is small; N is SDPA's head
        width here, where its fused kernels gain nothing)."""
        a = x.flatten(2)  # (B, C, N)
        # x_ji = softmax_i(x_i . x_j) (B, C, C)
        s = _weights(self._modules["attn_map"], torch.bmm(a, a.transpose(1, 2)).softmax(-1))
        return torch.bmm(s, a).view_as(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


@register(
    name="danet",
    family="attention",
    paper="Dual Attention Network for Scene Segmentation",
    arxiv="1809.02983",
    year=2019,
    input="image",
    example=Example(config=dict(channels=16, init_scale=0.5), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4, reduction=2)),
)
class DANet(nn.Module):
    r"""DANet dual attention: position attention + channel attention, summed.

    Fu et al., "Dual Attention Network for Scene Segmentation", arXiv 1809.02983.

    Equation (PAM and CAM as in ``DANetPositionAttention``/``DANetChannelAttention``)::

        PAM: E_j = alpha * sum_i softmax_i(B'_i . C'_j) D_i + x_j      over N = H W positions
        CAM: E_j = beta  * sum_i softmax_i(x_i . x_j)   x_i + x_j      over C channels
        y    = PAM(x) + CAM(x)

    Neither module has a size-dependent part: both work at any H, W, including sizes
    never seen at construction.

    Args:
        channels: C, the input channels.
        reduction: PAM's query/key width is max(1, C // reduction) (paper: 8).
        init_scale: the initial alpha and beta (paper: 0, so both modules start as
            identity and their convolutions receive no gradient at the first step).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        The segmentation head's 3x3 convolutions before and after each module belong
        to the head, not to the attention, and are left out; the two modules' outputs
        are summed as in the paper. Softmax energies are unscaled, as in the paper
        (no 1/sqrt(c)). PAM follows the official ``PAM_Module``
        (junfu1115/DANet): query/key width C // 8, value C -> C, all with biases, except
        the key conv's bias, which the softmax over the keys cancels (see
        ``DANetPositionAttention``). CAM follows the paper's Eq. 3, not the official
        ``CAM_Module``'s softmax of negated energies (see ``DANetChannelAttention``).

    Example:
        >>> da = DANet(64)
        >>> da(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, reduction: int = 8, init_scale: float = 0.0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.channels = channels
        self.position = DANetPositionAttention(channels, reduction=reduction, init_scale=init_scale, **fk)
        self.channel = DANetChannelAttention(channels, init_scale=init_scale, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="DANet", C=self.channels)  # raises, naming the misfit
        mods = self._modules
        pam, cam = mods["position"], mods["channel"]
        if listened(pam, cam):
            return pam(x) + cam(x)
        # PAM(x) + CAM(x) = (alpha P + x) + (beta Q + x), three elementwise ops
        return torch.addcmul(torch.addcmul(x, pam.alpha, pam._attend(x)), cam.beta, cam._attend(x)) + x

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
