"""Talking-heads attention: multi-head attention whose heads exchange logits and weights.

Papers: Talking-Heads Attention (Shazeer, Lan, Cheng, Ding, Hou; arXiv 2003.02436, 2020);
used in every self-attention layer of CaiT, Going deeper with Image Transformers
(Touvron et al., arXiv 2103.17239, 2021).

Letters: B batch, N tokens, C model dim (= dim), h heads, d head dim, E = h d.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, listened
from blockzoo._kept import derived
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, register, tokens

__all__ = ["TalkingHeadsAttention"]


def _scaled_mixes(scale: float, wl: torch.Tensor, bl: torch.Tensor | None, ww: torch.Tensor,
                  bw: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """(P_l scale, b_l, P_w, b_w): the logit scale folded into the logit mix."""
    return wl * scale, bl, ww, bw


def _mix(p: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor) -> torch.Tensor:
    """sum_i P[j, i] A_i (+ b[j]) for (B, h, M) maps A: one (batched) matmul."""
    b = a.shape[0]
    if bias is None:
        return torch.matmul(p, a)
    return torch.baddbmm(bias.view(1, -1, 1), p.expand(b, -1, -1), a)


@register(
    name="talking_heads_attention",
    family="attention",
    paper="Talking-Heads Attention",
    arxiv="2003.02436",
    year=2020,
    input="tokens",
    example=Example(config=dict(dim=16, num_heads=4), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=8, num_heads=2)),
)
class TalkingHeadsAttention(nn.Module):
    r"""Multi-head self-attention with learned h x h mixing of the heads before and after the softmax.

    Shazeer et al., "Talking-Heads Attention", arXiv 2003.02436, Sec. 4 (Algorithm
    "TalkingHeadsAttention"); CaiT, Touvron et al., arXiv 2103.17239, Sec. 2.

    Equation, per head i = 1..h (q_i, k_i, v_i: head i of the q, k, v projections)::

        L_i  = q_i k_i^T / sqrt(d)                              (N x N logits)
        L'_j = sum_i P_l[j, i] L_i                              (talking before the softmax)
        W_j  = softmax(L'_j)                                    (over keys)
        W'_j = sum_i P_w[j, i] W_i + b_w[j]                     (talking after the softmax)
        y    = Concat_j(W'_j v_j) W^O + b^O

    With P_l = P_w = I and b_w = 0 this is multi-head attention.

    Args:
        dim: C, the token width.
        num_heads: h (the same number of logit, weight and value heads, as in CaiT).
        head_dim: d (default C // h, which must then divide C).
        qkv_bias: biases on the q, k, v projections (CaiT: True).
        dropout: dropout on the mixed attention weights W' (training only).
        logit_bias: a bias b_l on the mixing before the softmax (no effect on the output;
            CaiT's checkpoints have one).

    Shape:
        - Input: (B, N, C), C = dim, any N.
        - Output: (B, N, C).

    Deviations:
        The mixing after the softmax has a bias b_w, as in CaiT's released code and
        PyTorch Image Models (the paper's algorithm has none). Their mixing before the
        softmax has a bias b_l too, which changes nothing (b_l[j] is added to every
        logit of head j alike and cancels in the softmax): off by default,
        ``logit_bias=True`` keeps it so that CaiT holds its checkpoints' tensors. One
        head count h throughout (the paper allows different numbers of query-key,
        logit, weight and value heads).

    Example:
        >>> attn = TalkingHeadsAttention(64, num_heads=4)
        >>> attn(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        logit_bias: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(dim > 0 and num_heads > 0,
                f"TalkingHeadsAttention: dim={dim}, num_heads={num_heads} must be positive")
        if head_dim is None:
            head_dim = require_divides("TalkingHeadsAttention", "num_heads", num_heads, "dim", dim,
                                       hint="(or give head_dim)")
        require(head_dim > 0, f"TalkingHeadsAttention: head_dim={head_dim} must be positive")
        require(0.0 <= dropout < 1.0, f"TalkingHeadsAttention: dropout={dropout} must be in [0, 1)")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        inner = num_heads * head_dim
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias, **fk)
        self.proj_l = nn.Linear(num_heads, num_heads, bias=logit_bias, **fk)  # P_l (b_l)
        self.proj_w = nn.Linear(num_heads, num_heads, **fk)  # P_w, b_w
        self.attn_drop = nn.Dropout(dropout)
        self.out_proj = nn.Linear(inner, dim, **fk)
        self.attn_map = AttentionMap("mixed")

    def _eval(self, x: torch.Tensor, b: int, n: int) -> torch.Tensor | None:
        """``forward`` without autograd in fewer passes and no permutes for the head mixing:
        1/sqrt(d) folded into P_l (kept, :func:`derived`), and each mix one batched matmul over
        the (B, h, N N) maps with its bias added in the same op. None where this does not apply
        (a recorded map, active dropout, hooks, parametrized or non-stock mixes)."""
        mods = self._modules
        pl, pw, drop = mods["proj_l"], mods["proj_w"], mods["attn_drop"]
        if (mods["attn_map"].active or type(pl) is not nn.Linear or type(pw) is not nn.Linear
                or (drop.training and drop.p > 0) or listened(pl, pw, drop, mods["attn_map"])
                or "weight" not in pl._parameters or "weight" not in pw._parameters):
            return None
        mixes = derived(self, "talk", (pl._parameters["weight"], pl._parameters["bias"],
                                       pw._parameters["weight"], pw._parameters["bias"]),
                        functools.partial(_scaled_mixes, self.head_dim ** -0.5))
        if mixes is None:
            return None
        h, d = self.num_heads, self.head_dim
        q, k, v = call(mods["qkv"], x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        # P_l L = (P_l / sqrt(d)) (q k^T) (+ b_l), mixed over h as (h, h) @ (B, h, N N)
        logits = torch.matmul(q, k.transpose(-2, -1)).view(b, h, n * n)
        logits = _mix(mixes[0], mixes[1], logits)
        # W' = P_w softmax(.) + b_w
        weights = _mix(mixes[2], mixes[3], logits.view(b, h, n, n).softmax(-1).view(b, h, n * n))
        y = torch.matmul(weights.view(b, h, n, n), v).transpose(1, 2).reshape(b, n, h * d)  # (B, N, E)
        return call(mods["out_proj"], y)

    @staticmethod
    def _talk(attn: torch.Tensor, mix: nn.Linear) -> torch.Tensor:
        # sum_i P[j, i] A_i (+ b[j]): a linear map over the head axis
        return mix(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, h, N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[2] != self.dim:
            check_shape(x, "B N C", name="TalkingHeadsAttention", C=self.dim)  # raises
        b, n = x.shape[0], x.shape[1]
        h, d = self.num_heads, self.head_dim
        if not (torch.is_grad_enabled() or torch.compiler.is_compiling()):
            y = self._eval(x, b, n)
            if y is not None:
                return y
        q, k, v = self.qkv(x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        # L_i = q_i k_i^T / sqrt(d)
        logits = (q * d**-0.5) @ k.transpose(-2, -1)  # (B, h, N, N)
        # W' = P_w softmax(P_l L (+ b_l)) + b_w
        weights = self._talk(self._talk(logits, self.proj_l).softmax(dim=-1), self.proj_w)
        weights = self.attn_drop(self.attn_map(weights))
        y = (weights @ v).transpose(1, 2).reshape(b, n, h * d)  # (B, N, E)
        return self.out_proj(y)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"
