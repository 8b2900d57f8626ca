"""External attention: attention to two small learned memories shared by all samples.

Paper: Beyond Self-attention: External Attention using Two Linear Layers for Visual
Tasks (Guo, arXiv 2105.02358, 2021).

Letters: B batch, N tokens, C model dim (= dim), S memory size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, register, tokens

__all__ = ["ExternalAttention"]


@register(
    name="external_attention",
    family="attention",
    paper="Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks",
    arxiv="2105.02358",
    year=2021,
    input="tokens",
    example=Example(config=dict(dim=16, memory_size=8), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=4, memory_size=3)),
)
class ExternalAttention(nn.Module):
    r"""External attention: two learned memories M_k, M_v and double normalisation.

    Guo et al., "Beyond Self-attention: External Attention using Two Linear Layers for
    Visual Tasks", arXiv 2105.02358, eqs. (5)-(6) and the double normalisation (sec. 3.2).

    Equation::

        A~ = x M_k^T                              (B, N, S)
        A^ = softmax over the tokens N of A~      (column normalisation)
        A  = A^ / (eps + sum_s A^_{:, s})         (l1 over the memory S, row normalisation)
        y  = A M_v                                (B, N, C)

    Cost O(N S C): linear in N.

    Args:
        dim: C, the token width.
        memory_size: S, the number of memory slots (64 in the paper).
        eps: the l1 normaliser's guard (1e-9 in the paper).

    Shape:
        - Input: (B, N, C), C = dim, any N.
        - Output: (B, N, C).

    Deviations:
        The paper's multi-head variant (EAMLP) splits C into heads; this is the single-head
        block of eq. (5)-(6) and Algorithm 1, which the official segmentation code
        (MenghaoGuo/EANet, ``External_attention``) wraps in a 1x1 conv before and a
        1x1 conv + BN, residual and ReLU after; those belong to its head and are left
        out. Its core matches this block: softmax over the N positions, then l1 over the
        S slots with eps 1e-9, bias-free M_k, M_v. Initialisation follows it too:
        M_k ~ N(0, 2 / C) and M_v starts as M_k^T. The official code makes M_v a view
        of M_k's storage (``linear_1.weight.data = linear_0.weight.data.permute(...)``),
        which keeps the two tied for the whole training; the paper says the key and
        value memories are two different units, so here they start equal and are then
        trained as separate parameters.

    Example:
        >>> ea = ExternalAttention(64, memory_size=64)
        >>> ea(torch.randn(2, 49, 64)).shape
        torch.Size([2, 49, 64])
    """

    def __init__(
        self, dim: int, memory_size: int = 64, *, eps: float = 1e-9, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__()
        require(memory_size > 0, f"ExternalAttention: memory_size={memory_size} must be positive")
        self.dim, self.memory_size, self.eps = dim, memory_size, eps
        fk = dict(device=device, dtype=dtype)
        self.mk = nn.Linear(dim, memory_size, bias=False, **fk)
        self.mv = nn.Linear(memory_size, dim, bias=False, **fk)
        self.attn_map = AttentionMap("weights")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """M_k ~ N(0, 2 / C) and M_v = M_k^T, the official code's start."""
        with torch.no_grad():
            nn.init.normal_(self.mk.weight, std=(2.0 / self.dim) ** 0.5)
            self.mv.weight.copy_(self.mk.weight.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[2] != self.dim:
            check_shape(x, "B N C", name="ExternalAttention", C=self.dim)  # raises, naming the misfit
        mods = self._modules  # the memories as F.linear unless hooked (blockzoo._fastcall)
        a = call(mods["mk"], x).softmax(dim=1)  # (B, N, S), softmax over tokens
        # A = A^ / (eps + sum_s A^)
        a = mods["attn_map"](a / (self.eps + a.sum(dim=2, keepdim=True)))  # (B, N, S)
        return call(mods["mv"], a)  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, memory_size={self.memory_size}"
