r"""gMLP: an MLP with a spatial gating unit across tokens.

Paper: Pay Attention to MLPs (Liu, arXiv 2105.08050, 2021).

Letters: B batch, N tokens, C channels (dim), D hidden width (d_ffn).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, invoke, listened, own
from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import require
from blockzoo.mlp.mixer import check_tokens
from blockzoo.registry import Example, register, tokens

__all__ = ["GMLPBlock", "SpatialGatingUnit"]


class SpatialGatingUnit(nn.Module):
    r"""Spatial gating unit: half the channels gate the other half after a linear map across tokens.

    Liu et al., "Pay Attention to MLPs", arXiv 2105.08050, Eq. (2)-(3)::

        Z = [Z_1, Z_2]                      split channels in half
        f(Z_2) = W LN(Z_2) + b              W: N x N (init near 0), b: N (init 1)
        s(Z) = Z_1 * f(Z_2)

    The gate f(Z_2) passes through ``attn_map`` (kind "gate").

    Args:
        dim: D, channels of Z (even); the output has D / 2.
        num_tokens: N, fixed by W.
        norm_layer: the norm on Z_2 (paper: LayerNorm).
        init_eps: W ~ U(-init_eps / N, init_eps / N) (paper: near-zero).

    Shape:
        - Input: (B, N, D); output: (B, N, D / 2).
    """

    def __init__(
        self, dim: int, num_tokens: int, *, norm_layer: LayerSpec = "layernorm", init_eps: float = 1e-3,
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        require(dim % 2 == 0, f"SpatialGatingUnit: dim={dim} must be even (it is split in half)")
        self.dim, self.num_tokens = dim, num_tokens
        fk = dict(device=device, dtype=dtype)
        self.norm = create_norm(norm_layer, dim // 2, **fk)
        self.weight = nn.Parameter(torch.empty(num_tokens, num_tokens, **fk).uniform_(
            -init_eps / num_tokens, init_eps / num_tokens))
        self.bias = nn.Parameter(torch.ones(num_tokens, **fk))
        self.attn_map = AttentionMap("gate")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if (not isinstance(z, torch.Tensor) or z.ndim != 3 or z.shape[1] != self.num_tokens
                or z.shape[2] != self.dim):
            check_tokens(z, "SpatialGatingUnit", self.num_tokens, self.dim)  # raises, naming the misfit
        mods = self._modules
        z1, z2 = z.chunk(2, dim=-1)  # (B, N, D/2) each
        # f(Z_2) = W LN(Z_2) + b, mixing across tokens
        w, b = own(self, "weight"), own(self, "bias")
        # one batched matmul with the bias as its addend, on (B, N, D/2) as it lies (an einsum
        # or a matmul of the 2-D W with the 3-D norm permutes and copies)
        gate = torch.baddbmm(b[:, None], w.expand(z.shape[0], -1, -1), call(mods["norm"], z2))  # (B, N, D/2)
        am = mods["attn_map"]
        if not (torch.is_grad_enabled() or am._recording or am._forward_hooks or am._forward_pre_hooks):
            return gate.mul_(z1)  # a fresh gate nobody else sees: multiplied in place
        return z1 * am(gate)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_tokens={self.num_tokens}"


@register(
    name="gmlp",
    family="mlp",
    paper="Pay Attention to MLPs",
    arxiv="2105.08050",
    year=2021,
    input="tokens",
    example=Example(config=dict(dim=16, num_tokens=8, hidden=32), inputs=tokens(), size=(8,), sizes=((8,),),
                    out_shape="same", tiny=dict(dim=4, hidden=6)),
    size_arg="num_tokens",
)
class GMLPBlock(nn.Module):
    r"""gMLP block: channel projection, spatial gating unit across tokens, projection back, residual.

    Liu et al., "Pay Attention to MLPs", arXiv 2105.08050, Eq. (1)::

        Z = act(norm(X) U)              U: C -> D
        Z~ = s(Z)                       spatial gating unit, D -> D / 2
        Y = X + Z~ V                    V: D / 2 -> C

    Args:
        dim: C, channels per token.
        num_tokens: N, fixed by the gating unit's N x N map; other N raise
            ``ShapeError`` naming ``num_tokens``.
        hidden: D, even (default 6 C, the paper's d_ffn = 6 d_model).
        act_layer: activation after U (paper: GELU).
        norm_layer: the pre-norm (paper: LayerNorm).
        sgu_norm_layer: the gating unit's norm on Z_2 (paper: LayerNorm).

    Shape:
        - Input: (B, N, C), N = num_tokens, C = dim.
        - Output: (B, N, C).

    Deviations:
        - No tiny attention branch (the paper's aMLP variant) and no stochastic depth.

    Example:
        >>> block = GMLPBlock(64, 49)
        >>> block(torch.randn(2, 49, 64)).shape
        torch.Size([2, 49, 64])
    """

    def __init__(
        self, dim: int, num_tokens: int, *, hidden: int | None = None, act_layer: LayerSpec = "gelu",
        norm_layer: LayerSpec = "layernorm", sgu_norm_layer: LayerSpec = "layernorm",
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        self.dim, self.num_tokens = dim, num_tokens
        self.hidden = hidden or 6 * dim
        require(self.hidden % 2 == 0, f"GMLPBlock: hidden={self.hidden} must be even")
        fk = dict(device=device, dtype=dtype)
        self.norm = create_norm(norm_layer, dim, **fk)
        self.proj_in = nn.Linear(dim, self.hidden, **fk)
        self.act = create_act(act_layer, **fk)
        self.sgu = SpatialGatingUnit(self.hidden, num_tokens, norm_layer=sgu_norm_layer, **fk)
        self.proj_out = nn.Linear(self.hidden // 2, dim, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1] != self.num_tokens
                or x.shape[2] != self.dim):
            check_tokens(x, "GMLPBlock", self.num_tokens, self.dim)  # raises, naming the misfit
        mods = self._modules  # stock modules as their ops unless hooked (blockzoo._fastcall)
        # Y = X + s(act(norm(X) U)) V
        z = call(mods["act"], call(mods["proj_in"], call(mods["norm"], x)))  # (B, N, D)
        proj_out = mods["proj_out"]
        y = call(proj_out, invoke(mods["sgu"], z))
        # without autograd and hooks the projection's fresh output takes the residual in place
        return x + y if torch.is_grad_enabled() or y is x or listened(proj_out) else y.add_(x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_tokens={self.num_tokens}, hidden={self.hidden}"
