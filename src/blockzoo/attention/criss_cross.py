"""Criss-cross attention: each pixel attends to the pixels of its own row and column.

Paper: CCNet: Criss-Cross Attention for Semantic Segmentation (Huang, Wang, Huang,
Huang, Wei, Liu; arXiv 1811.11721, 2019).

Letters: B batch, C channels, C' reduced channels, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, listened
from blockzoo._kept import derived
from blockzoo._memo import memo_table
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.conv._functional import is_pointwise
from blockzoo.registry import Example, images, register

__all__ = ["CrissCrossAttention"]


@memo_table()
def _self_mask(h: int, device: torch.device) -> torch.Tensor:
    """(H, H) boolean identity: the pixel itself, dropped from its column's energies."""
    return torch.eye(h, dtype=torch.bool, device=device)


@register(
    name="criss_cross_attention",
    family="attention",
    paper="CCNet: Criss-Cross Attention for Semantic Segmentation",
    arxiv="1811.11721",
    year=2019,
    input="image",
    example=Example(config=dict(channels=16, reduction=4, gamma_init=0.5), inputs=images(),
                    size=(8, 8), out_shape="same",
                    tiny=dict(channels=4, reduction=2, gamma_init=0.5)),
)
class CrissCrossAttention(nn.Module):
    r"""Criss-cross attention: one softmax over the H + W - 1 pixels of a pixel's row and column.

    Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", arXiv 1811.11721.

    Equation, for pixel u = (i, j) and its criss-cross set Omega_u (column j, then row i,
    the pixel itself counted once)::

        Q = W_q x,  K = W_k x   (1x1 convs, C -> C'),   V = W_v x   (1x1 conv, C -> C)
        d_{u,t} = Q_u . K_t                                t in Omega_u
        A_u     = softmax_t(d_{u,t})                       (no 1/sqrt(C') scaling, as in CCNet)
        y_u     = gamma * sum_t A_{u,t} V_t + x_u

    With ``recurrence=R`` the module is applied R times with shared weights (the
    paper's RCCA uses R = 2, which lets every pixel reach the whole image).

    Args:
        channels: C, input and output channels.
        reduction: C' = channels // reduction, the query/key width (paper: 8).
        recurrence: R, how many times the module is applied with shared weights.
        gamma_init: initial value of the learned residual scale gamma (paper: 0).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        - ``recurrence`` defaults to 1 (the criss-cross module itself); set 2 for RCCA.
        - W_k has no bias (CCNet's key conv has one): it adds Q_u . b_k to d_{u,t} for
          every t in Omega_u alike, which softmax_t cancels, so it cannot change the output.
        - Otherwise equal to the authors' pure-PyTorch ``CrissCrossAttention``
          (speedinghzl/CCNet: the pixel itself masked out of the column energies, one
          softmax over column and row, gamma starting at 0); the RCCA head's convs around
          the module (before, after, and the concatenation with x) are not part of it.

    Example:
        >>> cca = CrissCrossAttention(64, recurrence=2)
        >>> cca(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 8,
        recurrence: int = 1,
        gamma_init: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(reduction >= 1 and channels // reduction >= 1,
                f"CrissCrossAttention: reduction={reduction} must be in [1, channels={channels}]")
        require(recurrence >= 1, f"CrissCrossAttention: recurrence={recurrence} must be >= 1")
        self.channels, self.recurrence = channels, recurrence
        self.qk_channels = channels // reduction
        fk = dict(device=device, dtype=dtype)
        self.query = nn.Conv2d(channels, self.qk_channels, 1, **fk)
        self.key = nn.Conv2d(channels, self.qk_channels, 1, bias=False, **fk)  # softmax_t cancels a bias
        self.value = nn.Conv2d(channels, channels, 1, **fk)
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init), **fk))
        self.attn_map = AttentionMap("weights")

    def _once(self, x: torch.Tensor) -> torch.Tensor:
        H = x.shape[2]
        mods = self._modules
        q, k, v = call(mods["query"], x), call(mods["key"], x), call(mods["value"], x)
        # d over the column, batched over (b, j): e_col[b, j, i, i'] = Q[:, i, j] . K[:, i', j]
        e_col = torch.matmul(q.permute(0, 3, 2, 1), k.permute(0, 3, 1, 2))  # (B, W, H, H)
        # the pixel itself belongs to the row part: drop it from the column part
        e_col = e_col.masked_fill_(_self_mask(H, x.device), float("-inf"))
        # d over the row, batched over (b, i): e_row[b, i, j, j'] = Q[:, i, j] . K[:, i, j']
        e_row = torch.matmul(q.permute(0, 2, 3, 1), k.permute(0, 2, 1, 3))  # (B, H, W, W)
        # A_u = softmax over the H + W - 1 pixels of the cross
        a = torch.cat([e_col.transpose(1, 2), e_row], dim=-1)  # (B, H, W, H+W)
        a = mods["attn_map"](a.softmax(dim=-1))
        # y_u = sum_t A_{u,t} V_t, over the column (batched over (b, j)) and the row (over (b, i))
        y_col = torch.matmul(a[..., :H].transpose(1, 2), v.permute(0, 3, 2, 1))  # (B, W, H, C)
        y = torch.matmul(a[..., H:], v.permute(0, 2, 3, 1)) + y_col.transpose(1, 2)  # (B, H, W, C)
        return torch.addcmul(x, self.gamma, y.permute(0, 3, 1, 2))  # gamma y + x, (B, C, H, W)

    def _qkv_tokens(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Without autograd, for stock unhooked 1 x 1 convs: the query, key and value maps as one
        (2 C' + C, C) weight and bias (the key's absent bias as zeros), cached; else None."""
        mods = self._modules
        qm, km, vm = mods["query"], mods["key"], mods["value"]
        if (torch.is_grad_enabled() or not (is_pointwise(qm) and is_pointwise(km) and is_pointwise(vm))
                or listened(qm, km, vm)):
            return None
        pq, pk, pv = qm._parameters, km._parameters, vm._parameters
        if not all(n in p for p in (pq, pk, pv) for n in ("weight", "bias")):
            return None  # a parametrized tensor: the module path
        tensors = (pq["weight"], pq["bias"], pk["weight"], pk["bias"], pv["weight"], pv["bias"])

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                w = torch.cat([t.flatten(1) for t in tensors[::2]])  # (2 C' + C, C)
                b = torch.cat([t if t is not None else w.new_zeros(m.out_channels)
                               for t, m in zip(tensors[1::2], (qm, km, vm), strict=True)])
            return w, b

        return derived(self, "criss_cross.qkv", tensors, lambda *_: build())

    def _once_tokens(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``_once`` with Q, K, V as one matrix product on (B, H, W, C) tokens: the row products
        read V in place and only the column pass copies it (three 1 x 1 convs ran per sample and
        both passes copied V out of (B, C, H, W))."""
        H, c = x.shape[2], self.qk_channels
        t = torch.nn.functional.linear(x.permute(0, 2, 3, 1), w, b)  # (B, H, W, 2C' + C)
        q, k, v = t.split([c, c, self.channels], dim=-1)
        # d over the column, batched over (b, j): e_col[b, j, i, i'] = Q[:, i, j] . K[:, i', j]
        e_col = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1))  # (B, W, H, H)
        # the pixel itself belongs to the row part: drop it from the column part
        e_col = e_col.masked_fill_(_self_mask(H, x.device), float("-inf"))
        # d over the row, batched over (b, i): e_row[b, i, j, j'] = Q[:, i, j] . K[:, i, j']
        e_row = torch.matmul(q, k.transpose(2, 3))  # (B, H, W, W)
        # A_u = softmax over the H + W - 1 pixels of the cross
        a = torch.cat([e_col.transpose(1, 2), e_row], dim=-1)  # (B, H, W, H+W)
        a = self._modules["attn_map"](a.softmax(dim=-1))
        # y_u = sum_t A_{u,t} V_t, over the column (batched over (b, j)) and the row (over (b, i))
        y_col = torch.matmul(a[..., :H].transpose(1, 2), v.transpose(1, 2))  # (B, W, H, C)
        y = torch.matmul(a[..., H:], v).add_(y_col.transpose(1, 2))  # (B, H, W, C)
        return torch.addcmul(x, self.gamma, y.permute(0, 3, 1, 2))  # gamma y + x, (B, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="CrissCrossAttention", C=self.channels)  # raises
        fused = self._qkv_tokens()
        for _ in range(self.recurrence):
            x = self._once(x) if fused is None else self._once_tokens(x, *fused)
        return x

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, qk_channels={self.qk_channels}, "
                f"recurrence={self.recurrence}")
