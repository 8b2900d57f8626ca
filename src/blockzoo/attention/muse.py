"""MUSE: parallel multi-scale attention — self-attention beside convolutions.

Paper: MUSE: Parallel Multi-Scale Attention for Sequence to Sequence Learning (Zhao,
arXiv 1911.09483, 2019).

Letters: B batch, N tokens, C model dim (= dim), h heads, d = C / h, k_i kernel sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, listened, own
from blockzoo._kept import derived
from blockzoo.attention.dot_product import scaled_dot_product_attention
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, register, tokens

__all__ = ["MUSEAttention"]


@register(
    name="muse_attention",
    family="attention",
    paper="MUSE: Parallel Multi-Scale Attention for Sequence to Sequence Learning",
    arxiv="1911.09483",
    year=2019,
    input="tokens",
    example=Example(config=dict(dim=16, num_heads=4), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=4, num_heads=2)),
)
class MUSEAttention(nn.Module):
    r"""MUSE: global self-attention plus depthwise-separable convs of several widths.

    Zhao et al., "MUSE: Parallel Multi-Scale Attention for Sequence to Sequence
    Learning", arXiv 1911.09483, section 2 (shared projection, dynamic selection).

    Equation::

        Q, K, V = x W^Q, x W^K, x W^V                      (V shared by both branches)
        Attn    = Concat_heads(softmax(Q K^T / sqrt(d)) V) W^O
        Conv    = sum_i softmax(alpha)_i  Pointwise_i(DepthwiseConv_{k_i}(V))
        y       = Attn + Conv

    Args:
        dim: C, the token width.
        num_heads: h; must divide C.
        kernel_sizes: the convolution widths k_i (odd; the paper uses 1, 3, 5... up to 15
            across layers).
        qkv_bias: biases on the q, k, v projections.
        dropout: dropout on the attention weights.

    Shape:
        - Input: (B, N, C), C = dim, any N.
        - Output: (B, N, C).

    Deviations:
        The branch weights alpha are learned scalars (one per kernel size) under a
        softmax, the paper's "dynamic selection" without its gating input.

    Example:
        >>> muse = MUSEAttention(64, num_heads=8)
        >>> muse(torch.randn(2, 20, 64)).shape
        torch.Size([2, 20, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        kernel_sizes: Sequence[int] = (1, 3, 5),
        qkv_bias: bool = True,
        dropout: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require_divides("MUSEAttention", "num_heads", num_heads, "dim", dim)
        ks = tuple(kernel_sizes)
        require(len(ks) > 0 and all(k > 0 and k % 2 for k in ks),
                f"MUSEAttention: kernel_sizes={ks} must be positive odd numbers")
        self.dim, self.num_heads, self.kernel_sizes, self.dropout = dim, num_heads, ks, dropout
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(dim, dim, **fk)
        self.depthwise = nn.ModuleList(nn.Conv1d(dim, dim, k, padding=k // 2, groups=dim, **fk) for k in ks)
        self.pointwise = nn.ModuleList(nn.Conv1d(dim, dim, 1, **fk) for _ in ks)
        self.alpha = nn.Parameter(torch.zeros(len(ks), **fk))
        self.attn_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[2] == self.dim):
            check_shape(x, "B N C", name="MUSEAttention", C=self.dim)  # raises, naming the misfit
        b, n, c = x.shape
        h = self.num_heads
        if not torch.is_grad_enabled() and not self._modules["attn_map"].active:
            out = self._inference(x, b, n, c, h)
            if out is not None:
                return out
        q, k, v = self.qkv(x).view(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        p = self.dropout if self.training else 0.0
        if self.attn_map.active:
            att, w = scaled_dot_product_attention(q, k, v, None, p, return_weights=True)
            self.attn_map(w)  # (B, h, N, N)
        else:
            att = scaled_dot_product_attention(q, k, v, None, p)  # (B, h, N, d)
        att = self.proj(att.transpose(1, 2).reshape(b, n, c))  # (B, N, C)
        vc = v.transpose(1, 2).reshape(b, n, c).transpose(1, 2)  # (B, C, N)
        weights = self.alpha.softmax(0)
        # sum_i softmax(alpha)_i Pointwise_i(DepthwiseConv_i(V))
        branches = zip(weights, self.depthwise, self.pointwise, strict=True)
        conv = sum(wi * pw(dw(vc)) for wi, dw, pw in branches)  # (B, C, N)
        return att + conv.transpose(1, 2)  # (B, N, C)

    def _merged_convs(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The conv branches and the output bias as one k_max-wide convolution (weight (C, C,
        k_max), bias (C,)): sum_i softmax(alpha)_i PW_i(DW_i(V)) + b^O is linear in V with
        all kernels centred, so M[o, c, t] = sum_i a_i W^P_i[o, c] W^D_i[c, t - (k_max - k_i) / 2]
        and b = sum_i a_i (W^P_i b^D_i + b^P_i) + b^O; kept until a parameter changes.
        None when a submodule is hooked, not a stock Conv1d, or a parameter is parametrized."""
        mods = self._modules
        dws, pws = list(mods["depthwise"]._modules.values()), list(mods["pointwise"]._modules.values())
        convs = (*dws, *pws)
        if (listened(mods["depthwise"], mods["pointwise"], mods["proj"], *convs)
                or any(type(m) is not nn.Conv1d or m.padding_mode != "zeros" for m in convs)
                or type(mods["proj"]) is not nn.Linear):
            return None
        tensors = [self._parameters.get("alpha"), mods["proj"]._parameters.get("bias")]
        for m in convs:
            p = m._parameters
            if "weight" not in p or "bias" not in p or p["weight"] is None:
                return None
            tensors += [p["weight"], p["bias"]]
        if tensors[0] is None:
            return None
        k_max = max(self.kernel_sizes)
        count = len(dws)

        def build(alpha: torch.Tensor, out_bias: torch.Tensor | None,
                  *wb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            a = alpha.softmax(0)
            w0 = wb[0]
            weight = w0.new_zeros(self.dim, self.dim, k_max)
            bias = w0.new_zeros(self.dim) if out_bias is None else out_bias.clone()
            for i in range(count):
                wd, bd = wb[2 * i], wb[2 * i + 1]  # (C, 1, k_i), (C,)
                wp, bp = wb[2 * (count + i)][:, :, 0], wb[2 * (count + i) + 1]  # (C, C), (C,)
                k = wd.shape[-1]
                off = (k_max - k) // 2
                weight[:, :, off:off + k] += a[i] * wp[:, :, None] * wd[:, 0][None]
                if bd is not None:
                    bias += a[i] * (wp @ bd)
                if bp is not None:
                    bias += a[i] * bp
            return weight, bias

        return derived(self, "convs", tuple(tensors), build)

    def _inference(self, x: torch.Tensor, b: int, n: int, c: int, h: int) -> torch.Tensor | None:
        """``forward`` without autograd (None where the branches cannot be merged): the conv
        branches and W^O's bias as one convolution of V (``_merged_convs``; was 2 x len(
        kernel_sizes) convolutions, scalings and sums), and the attention's output projection
        accumulated onto it in one batched product."""
        merged = self._merged_convs()
        if merged is None:
            return None
        weight, bias = merged
        mods = self._modules
        q, k, v = call(mods["qkv"], x).view(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        p = self.dropout if self.training else 0.0
        att = scaled_dot_product_attention(q, k, v, None, p).transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        vc = v.transpose(1, 2).reshape(b, n, c).transpose(1, 2)  # (B, C, N)
        conv = F.conv1d(vc, weight, bias, padding=weight.shape[-1] // 2)  # (B, C, N)
        w_o = own(mods["proj"], "weight")
        # att W^O^T + (sum_i a_i PW_i(DW_i(V)) + b^O)
        return torch.baddbmm(conv.transpose(1, 2), att, w_o.t().expand(b, c, c))  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, kernel_sizes={self.kernel_sizes}"
