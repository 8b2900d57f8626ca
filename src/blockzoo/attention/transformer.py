"""The Transformer encoder block, pre-norm and post-norm, from ``MultiHeadAttention``.

Papers: Attention Is All You Need (Vaswani, arXiv 1706.03762, 2017) — post-norm;
On Layer Normalization in the Transformer Architecture (Xiong, arXiv 2002.04745,
2020) — pre-norm, as used by ViT (Dosovitskiy, arXiv 2010.11929).

Letters: B batch, N tokens, C model dim (= dim), F feed-forward width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, invoke, listened
from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.attention.dot_product import MultiHeadAttention
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, register, tokens

__all__ = ["TransformerEncoderBlock"]


@register(
    name="transformer_encoder_block",
    family="attention",
    paper="Attention Is All You Need",
    arxiv="1706.03762",
    year=2017,
    input="tokens",
    example=Example(config=dict(dim=16, num_heads=4, mlp_ratio=2.0), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=8, num_heads=2)),
)
class TransformerEncoderBlock(nn.Module):
    r"""Transformer encoder layer: self-attention and a feed-forward net, each residual.

    Vaswani et al., "Attention Is All You Need", arXiv 1706.03762 (post-norm); Xiong et
    al., arXiv 2002.04745 (pre-norm).

    Equation::

        FFN(x) = W_2 dropout(act(W_1 x + b_1)) + b_2
        pre-norm  (norm_first=True):   x = x + drop(MHA(LN_1(x)));  y = x + drop(FFN(LN_2(x)))
        post-norm (norm_first=False):  x = LN_1(x + drop(MHA(x)));  y = LN_2(x + drop(FFN(x)))

    With the same weights it equals ``nn.TransformerEncoderLayer(batch_first=True)`` of
    the same ``norm_first`` and activation (tested).

    Args:
        dim: C, the token width.
        num_heads: h of the attention.
        mlp_ratio: F = int(C * mlp_ratio), the feed-forward hidden width (4 in the paper).
        head_dim: per-head width (default C // h).
        qkv_bias: biases on the q, k, v projections.
        dropout: dropout on the residual branches and inside the FFN (paper: P_drop = 0.1,
            Sec. 5.4, the base model).
        attn_dropout: dropout on the attention weights (paper: none).
        act_layer: the FFN activation (paper: ReLU, eq. (2); ViT passes GELU).
        norm_layer: the normalisation (LayerNorm).
        norm_first: pre-norm (True, as ViT) or post-norm (paper: False,
            LayerNorm(x + Sublayer(x)), Sec. 3.1).
        norm_eps: the norms' epsilon (default: the norm's own, 1e-5 for LayerNorm; DeiT's
            and ViT's released code use 1e-6).
        causal: default causal masking for every forward.

    The defaults are the paper's base encoder layer (post-norm, ReLU, dropout 0.1),
    which are also ``nn.TransformerEncoderLayer``'s; until issue 15 they were ViT's
    (pre-norm, GELU, no dropout), which ``VisionTransformer`` passes explicitly.

    Shape:
        - Input: (B, N, C), C = dim, any N; optional ``key_padding_mask`` (B, N) and
          ``attn_mask`` (N, N) as in ``nn.MultiheadAttention`` (True = not allowed).
        - Output: (B, N, C).

    Example:
        >>> block = TransformerEncoderBlock(64, num_heads=4).eval()
        >>> block(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        mlp_ratio: float = 4.0,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        act_layer: LayerSpec = "relu",
        norm_layer: LayerSpec = "layernorm",
        norm_first: bool = False,
        causal: bool = False,
        norm_eps: float | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(mlp_ratio > 0, f"TransformerEncoderBlock: mlp_ratio={mlp_ratio} must be positive")
        self.dim, self.norm_first = dim, norm_first
        self.hidden = int(dim * mlp_ratio)
        fk = dict(device=device, dtype=dtype)
        self.attn = MultiHeadAttention(dim, num_heads, head_dim=head_dim, qkv_bias=qkv_bias,
                                       dropout=attn_dropout, causal=causal, **fk)
        eps = {} if norm_eps is None else {"eps": norm_eps}
        self.norm1 = create_norm(norm_layer, dim, **eps, **fk)
        self.norm2 = create_norm(norm_layer, dim, **eps, **fk)
        self.fc1 = nn.Linear(dim, self.hidden, **fk)
        self.act = create_act(act_layer, **fk)
        self.fc2 = nn.Linear(self.hidden, dim, **fk)
        self.drop_ffn = nn.Dropout(dropout)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        # W_2 dropout(act(W_1 x + b_1)) + b_2
        mods = self._modules
        return call(mods["fc2"], call(mods["drop_ffn"], call(mods["act"], call(mods["fc1"], x))))

    def _fused(self, x: torch.Tensor) -> torch.Tensor | None:
        """``forward(x)`` without masks as PyTorch's fused inference kernel
        (``torch._transformer_encoder_layer_fwd``, what ``nn.TransformerEncoderLayer`` runs in
        eval), or None where that kernel would not compute exactly this block: autograd,
        training, compiling or tracing, any hook or recorded map, a submodule that is not the
        stock one, odd h (as PyTorch's own guard). Its attention is explicit (bmm, softmax):
        faster than the fused SDPA kernel on many short sequences (PatchwiseTransformer's
        patches), slower on long ones, so callers opt in; forward never calls it."""
        if (torch.is_grad_enabled() or self.training or torch.compiler.is_compiling()
                or torch.jit.is_tracing() or torch.jit.is_scripting()
                or not torch.backends.mha.get_fastpath_enabled() or torch.is_autocast_enabled()
                or x.device.type not in ("cpu", "cuda")):
            return None
        mods = self._modules
        attn, norm1, norm2, fc1, fc2, act = (mods[k] for k in ("attn", "norm1", "norm2", "fc1", "fc2", "act"))
        if type(attn) is not MultiHeadAttention or attn.training or not attn.fused_qkv or attn.causal \
                or attn.rope is not None or attn.inner != self.dim or attn.num_heads % 2 \
                or attn.attn_map.active:
            return None
        qkv, out = attn._modules["qkv"], attn._modules["out_proj"]
        if not (type(qkv) is type(out) is type(fc1) is type(fc2) is nn.Linear
                and type(norm1) is type(norm2) is nn.LayerNorm and norm1.eps == norm2.eps
                and (type(act) is nn.ReLU or (type(act) is nn.GELU and act.approximate == "none"))):
            return None
        args = (qkv.weight, qkv.bias, out.weight, out.bias, norm1.weight, norm1.bias, norm2.weight,
                norm2.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
        if any(a is None for a in args) or torch.overrides.has_torch_function((x, *args)) \
                or listened(attn, qkv, out, norm1, norm2, fc1, fc2, act, mods["drop_ffn"], mods["drop1"],
                            mods["drop2"], attn._modules["proj_drop"]):
            return None
        return torch._transformer_encoder_layer_fwd(
            x, self.dim, attn.num_heads, args[0], args[1], args[2], args[3], type(act) is nn.GELU,
            self.norm_first, norm1.eps, *args[4:], None, None)

    def forward(
        self,
        x: torch.Tensor,
        *,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
    ) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[2] != self.dim:
            check_shape(x, "B N C", name="TransformerEncoderBlock", C=self.dim)  # raises, naming the misfit
        # Submodules from ``_modules``, run without ``nn.Module.__call__`` unless hooked
        # (blockzoo._fastcall; the same ops, ~1-2 us less per module call).
        mods = self._modules
        attn, norm1, norm2 = mods["attn"], mods["norm1"], mods["norm2"]
        drop1, drop2 = mods["drop1"], mods["drop2"]
        masks = dict(key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal)
        if self.norm_first:
            x = x + call(drop1, invoke(attn, call(norm1, x), **masks))
            return x + call(drop2, self._ffn(call(norm2, x)))
        x = call(norm1, x + call(drop1, invoke(attn, x, **masks)))
        return call(norm2, x + call(drop2, self._ffn(x)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, norm_first={self.norm_first}"
