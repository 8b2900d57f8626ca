r"""CrossViT's cross-attention: the class token alone queries all tokens.

Paper: CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification
(Chen et al., arXiv 2103.14899, 2021).

Letters: B batch, N tokens (the class token first), C channels (= dim), h heads,
d = C / h head dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, invoke
from blockzoo.act import LayerSpec, create_norm
from blockzoo.attention.dot_product import MultiHeadAttention
from blockzoo.checks import check_shape
from blockzoo.registry import Example, register, tokens

__all__ = ["ClassCrossAttention"]


@register(
    name="class_cross_attention",
    family="attention",
    paper="CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification",
    arxiv="2103.14899",
    year=2021,
    input="tokens",
    # Softmax is invariant to a key bias: q (k_j + b_k) moves all of one query's logits by q b_k.
    exempt={"grad": "the key projection's bias gets a zero gradient: q (k_j + b_k) = q k_j + q b_k shifts "
                    "every logit of a query alike, which softmax cancels; it is kept because the released "
                    "checkpoints have it"},
    example=Example(config=dict(dim=16, num_heads=2), inputs=tokens("dim"), size=(8,), out_shape="same",
                    tiny=dict(dim=4, num_heads=2)),
)
class ClassCrossAttention(nn.Module):
    r"""Cross-attention with the class token as the only query (CrossViT's fusion), pre-norm and residual.

    Chen et al., "CrossViT", arXiv 2103.14899, Sec. 3.3, Eq. (5)-(7).

    Equation, x' = [x_cls; x_patch] (in CrossViT: one branch's class token, projected,
    with the other branch's patch tokens)::

        q = x'_cls W_q,   k = x' W_k,   v = x' W_v
        CA(x') = softmax(q k^T / sqrt(C / h)) v          (multi-head, then W^O)
        y_cls = x'_cls + CA(LN(x'))

    Only one query: linear in N where self-attention is quadratic. The patch tokens pass
    through unchanged.

    Args:
        dim: C. num_heads: h.
        qkv_bias: biases of W_q, W_k, W_v (CrossViT: True).
        norm_layer: (LayerNorm). norm_eps: its epsilon (the released code: 1e-6).

    Shape:
        - Input: (B, N, C), C = dim, N >= 1 (token 0 is the class token).
        - Output: (B, N, C): token 0 is y_cls, the others are the input's.

    Deviations:
        The released block returns y_cls alone ((B, 1, C)); this one keeps the other tokens,
        so it can sit in any token stream. No dropout.

    Example:
        >>> ca = ClassCrossAttention(192, num_heads=3)
        >>> ca(torch.randn(2, 197, 192)).shape
        torch.Size([2, 197, 192])
    """

    def __init__(self, dim: int, num_heads: int = 8, *, qkv_bias: bool = True,
                 norm_layer: LayerSpec = "layernorm", norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.dim = dim
        self.norm1 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias=qkv_bias, fused_qkv=False, **fk)

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """y_cls = x'_cls + CA(LN(x')): (B, N, C) -> (B, 1, C)."""
        mods = self._modules  # submodules without their call cost unless hooked (_fastcall)
        z = call(mods["norm1"], x)
        return x[:, :1] + invoke(mods["attn"], z[:, :1], z, z)  # (B, 1, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[2] != self.dim:
            check_shape(x, "B N C", name="ClassCrossAttention", C=self.dim)  # raises, naming the misfit
        return torch.cat([self.forward_cls(x), x[:, 1:]], 1)  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
