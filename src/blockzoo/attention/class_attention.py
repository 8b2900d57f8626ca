"""Class attention: only the class token queries; the patch tokens are keys and values.

Paper: Going deeper with Image Transformers (CaiT; Touvron, Cord, Sablayrolles, Synnaeve,
Jegou; arXiv 2103.17239, 2021), Sec. 3 "class-attention layers". VOLO (Yuan et al., arXiv
2106.13112) ends with the same layers (without layer-scale). Built from the catalogue's
``MultiHeadAttention`` (cross-attention from one query to all tokens) and ``MLP``.

Letters: B batch, N tokens (the class token first, then the N - 1 patch tokens), C model
dim (= dim), h heads, d head dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, invoke, own
from blockzoo.act import LayerSpec, create_norm
from blockzoo.attention.dot_product import MultiHeadAttention
from blockzoo.checks import check_shape, require
from blockzoo.mlp.mlp import MLP
from blockzoo.registry import Example, register, tokens

__all__ = ["ClassAttention", "ClassAttentionBlock"]

_CAIT = dict(paper="Going deeper with Image Transformers", arxiv="2103.17239", year=2021)


def _class_token_shape(shape: Any, cfg: Any) -> tuple[int, int, int]:
    return (shape[0], 1, shape[2])  # (B, 1, C)


@register(
    name="class_attention",
    family="attention",
    input="tokens",
    example=Example(config=dict(dim=16, num_heads=4), inputs=tokens("dim"), size=(8,),
                    out_shape=_class_token_shape, tiny=dict(dim=8, num_heads=2)),
    **_CAIT,
)
class ClassAttention(MultiHeadAttention):
    r"""Class attention: multi-head attention whose one query is the class token.

    Touvron et al., "Going deeper with Image Transformers", arXiv 2103.17239, Sec. 3,
    Eq. (4)-(5).

    Equation, with z = [x_class; x_1; ...; x_{N-1}] (the class token first)::

        Q = W_q x_class + b_q,   K = W_k z,   V = W_v z + b_v
        A = softmax(Q K^T / sqrt(d))                (per head: 1 x N)
        out_CA = W_o Concat_heads(A V) + b_o         (the class token's update only)

    The patch tokens are not queries: the cost is O(N) instead of O(N^2), and they are
    not changed (the class-attention stage of CaiT freezes them).

    Args:
        dim: C, the token width.
        num_heads: h.
        head_dim: d (default C // h).
        qkv_bias: biases on the q and v projections (CaiT: True; VOLO: False).
        key_bias: with ``qkv_bias``, a bias on the k projection too (no effect on the output).
        dropout: dropout on the attention weights (training only).

    Shape:
        - Input: (B, N, C), C = dim, N >= 1, the class token at index 0.
        - Output: (B, 1, C), the class token's attention output.

    q, k, v are separate projections, as in CaiT's released code (VOLO's fused k, v
    projection is the same two maps stacked; its weights load split in two).

    Deviations:
        With ``qkv_bias`` the query and value projections have biases and the key
        projection has one only with ``key_bias=True``: q b_k is the same for every key
        and cancels in the softmax. CaiT's released code has it (``ClassAttentionBlock``
        in ``cait_xxs24`` keeps it, so the model holds its checkpoints' tensors).

    Example:
        >>> ca = ClassAttention(64, num_heads=4)
        >>> ca(torch.randn(2, 1 + 49, 64)).shape
        torch.Size([2, 1, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        key_bias: bool = False,
        dropout: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(dim, num_heads, head_dim=head_dim, qkv_bias=qkv_bias, dropout=dropout,
                         fused_qkv=False, device=device, dtype=dtype)
        if not key_bias:  # q b_k is the same for every key and cancels in the softmax
            self.k_proj.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[2] != self.dim:
            check_shape(x, "B N C", name="ClassAttention", C=self.dim)  # raises, naming the misfit
        # out_CA = W_o softmax(Q K^T / sqrt(d)) V,  Q from x_class, K and V from z
        return super().forward(x[:, :1], x, x)  # (B, 1, C)


@register(
    name="class_attention_block",
    family="attention",
    input="tokens",
    example=Example(config=dict(dim=16, num_heads=4, mlp_ratio=2.0), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=8, num_heads=2)),
    **_CAIT,
)
class ClassAttentionBlock(nn.Module):
    r"""CaiT's class-attention layer: class attention and an MLP that update the class token only.

    Touvron et al., "Going deeper with Image Transformers", arXiv 2103.17239, Sec. 3 and
    Fig. 2 (with LayerScale, Sec. 2, Eq. (3)); VOLO's "class attention" post layers
    (arXiv 2106.13112, Sec. 3) are the same without LayerScale.

    Equation, with z = [x_class; x_patches]::

        x_class' = x_class + diag(s_1) CA(LN_1(z))
        x_class''= x_class' + diag(s_2) MLP(LN_2(x_class'))       MLP: Linear - GELU - Linear
        output   = [x_class''; x_patches]                          (patches unchanged)

    s_1, s_2 are LayerScale's learned per-channel factors (initialised to
    ``layer_scale``); without ``layer_scale`` they are 1 (VOLO).

    Args:
        dim: C. num_heads: h. head_dim: d (default C // h).
        mlp_ratio: the MLP's hidden width / C (CaiT: 4, VOLO: 3).
        qkv_bias: biases on the q and v projections. key_bias: and on the k projection
            (``ClassAttention``: no effect; CaiT's checkpoints have it).
        layer_scale: initial value of s_1, s_2 (CaiT-XXS: 1e-5); ``None``: no LayerScale.
        act_layer: the MLP's activation (GELU). norm_layer: (LayerNorm).
        norm_eps: the two norms' epsilon (CaiT's code: 1e-6; VOLO's: 1e-5).

    Shape:
        - Input: (B, N, C), C = dim, N >= 1, the class token at index 0.
        - Output: (B, N, C): the class token updated, the others as they came.

    Example:
        >>> block = ClassAttentionBlock(64, num_heads=4, layer_scale=1e-5)
        >>> block(torch.randn(2, 1 + 49, 64)).shape
        torch.Size([2, 50, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        head_dim: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        key_bias: bool = False,
        layer_scale: float | None = None,
        act_layer: LayerSpec = "gelu",
        norm_layer: LayerSpec = "layernorm",
        norm_eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(mlp_ratio > 0, f"ClassAttentionBlock: mlp_ratio={mlp_ratio} must be positive")
        fk = dict(device=device, dtype=dtype)
        self.dim, self.layer_scale = dim, layer_scale
        self.norm1 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.attn = ClassAttention(dim, num_heads, head_dim=head_dim, qkv_bias=qkv_bias, key_bias=key_bias,
                                   **fk)
        self.norm2 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim, act_layer=act_layer, **fk)
        if layer_scale is None:
            self.register_parameter("scale1", None)
            self.register_parameter("scale2", None)
        else:
            self.scale1 = nn.Parameter(torch.full((dim,), float(layer_scale), **fk))
            self.scale2 = nn.Parameter(torch.full((dim,), float(layer_scale), **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[2] != self.dim:
            check_shape(x, "B N C", name="ClassAttentionBlock", C=self.dim)  # raises, naming the misfit
        mods = self._modules
        s1, s2 = own(self, "scale1"), own(self, "scale2")
        cls = x[:, :1]  # (B, 1, C)
        # x_class' = x_class + diag(s_1) CA(LN_1(z))  (submodules without their call cost unless hooked)
        a = invoke(mods["attn"], call(mods["norm1"], x))
        cls = cls + a if s1 is None else torch.addcmul(cls, s1, a)
        # x_class'' = x_class' + diag(s_2) MLP(LN_2(x_class'))
        m = invoke(mods["mlp"], call(mods["norm2"], cls))
        cls = cls + m if s2 is None else torch.addcmul(cls, s2, m)
        return torch.cat([cls, x[:, 1:]], 1)  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, layer_scale={self.layer_scale}"
