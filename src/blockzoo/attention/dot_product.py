"""Scaled dot-product attention and multi-head self- / cross-attention.

Papers: Attention Is All You Need (Vaswani, arXiv 1706.03762, 2017); rotary
positions as an option: RoFormer (Su, arXiv 2104.09864, 2021).

Letters: B batch, L query length, S key length, C model dim (= dim), h heads,
d head dim, E = h * d the inner (all-heads) width.

Mask conventions follow the PyTorch operator each piece mirrors:

- ``scaled_dot_product_attention`` follows ``F.scaled_dot_product_attention``: a boolean
  ``attn_mask`` is True where a query MAY attend; a float mask is added to the logits.
- ``MultiHeadAttention`` follows ``nn.MultiheadAttention``: a boolean ``attn_mask`` or
  ``key_padding_mask`` is True where attention is NOT allowed (padding); float masks
  are added to the logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, listened, own
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, register, tokens

__all__ = ["MultiHeadAttention", "causal_mask", "merge_masks", "scaled_dot_product_attention"]

# One query over at least this many keys is reassociated (``MultiHeadAttention._one_query``):
# below it the standard path's fewer, larger ops cost less than the saved projections.
_ONE_QUERY_MIN_KEYS = 16


def causal_mask(length: int, source_length: int | None = None, *, device: Any = None) -> torch.Tensor:
    """Boolean (L, S) mask, True where query i may attend key j (j <= i, top-left aligned)."""
    s = length if source_length is None else source_length
    return torch.ones(length, s, dtype=torch.bool, device=device).tril()


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    *,
    reference: bool = False,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Scaled dot-product attention, fused (SDPA) or explicit.

    Vaswani et al., "Attention Is All You Need", arXiv 1706.03762, eq. (1)::

        Attention(Q, K, V) = softmax(Q K^T * scale + M) V,   scale = 1 / sqrt(d) by default

    where ``M`` is 0 where attention is allowed and -inf elsewhere (boolean mask, causal),
    or the given float mask. The fast path is ``F.scaled_dot_product_attention``; the
    reference path (``reference=True`` or ``return_weights=True``) computes the softmax
    explicitly and can return the weights. Both paths use the same conventions as
    ``F.scaled_dot_product_attention``: boolean mask True = may attend; causal is
    top-left aligned (query i sees keys j <= i); a causal flag combines with a mask.

    Args:
        q: queries (..., L, d).
        k: keys (..., S, d).
        v: values (..., S, d_v).
        attn_mask: boolean or float mask broadcastable to (..., L, S).
        dropout_p: dropout on the attention weights (only pass > 0 in training).
        is_causal: mask keys after each query's position.
        scale: logit scale (default 1 / sqrt(d)).
        reference: use the explicit softmax path even when weights are not returned.
        return_weights: return ``(output, weights)``; implies the explicit path.

    Shape:
        - q (..., L, d), k (..., S, d), v (..., S, d_v); output (..., L, d_v);
          weights (..., L, S). A row whose every key is masked gives NaN on both paths
          (as in PyTorch).

    Example:
        >>> q = k = v = torch.randn(2, 4, 10, 8)
        >>> scaled_dot_product_attention(q, k, v, is_causal=True).shape
        torch.Size([2, 4, 10, 8])
    """
    if not (reference or return_weights):
        if attn_mask is not None and attn_mask.requires_grad and not torch.is_grad_enabled():
            # a learned float mask (a relative bias) under no_grad: its views keep requires_grad,
            # which sends SDPA to its unfused math kernel; detached it takes the fused one
            attn_mask = attn_mask.detach()
        if attn_mask is not None and attn_mask.dim() == 3 and q.dim() == 4:
            attn_mask = attn_mask[None]  # (a 3-D mask sends SDPA to its math kernel on CPU; 4-D: fused)
        if is_causal and attn_mask is not None:  # SDPA takes one or the other: merge them
            tril = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
            if attn_mask.dtype == torch.bool:
                attn_mask = attn_mask & tril
            else:
                attn_mask = attn_mask.masked_fill(~tril, float("-inf"))
            is_causal = False
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )
    length, source = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # Q K^T * scale
    logits = (q @ k.transpose(-2, -1)) * scale  # (..., L, S)
    if is_causal:
        logits = logits.masked_fill(~causal_mask(length, source, device=q.device), float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask
    weights = logits.softmax(dim=-1)  # (..., L, S)
    dropped = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    out = dropped @ v  # (..., L, d_v)
    return (out, weights) if return_weights else out


def merge_masks(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    *,
    batch: int,
    num_heads: int,
    length: int,
    source: int,
    dtype: torch.dtype,
    name: str = "MultiHeadAttention",
) -> torch.Tensor | None:
    """Merge ``nn.MultiheadAttention``-style masks into one SDPA-style mask.

    Inputs follow ``nn.MultiheadAttention`` (boolean True = NOT allowed; float = added):
    ``attn_mask`` (L, S), (B * h, L, S) or (B, h, L, S); ``key_padding_mask`` (B, S).
    Returns ``None``, a boolean mask (True = may attend) or a float mask, broadcastable
    to (B, h, L, S).
    """
    masks: list[torch.Tensor] = []
    if attn_mask is not None:
        if attn_mask.dim() == 2:
            check_shape(attn_mask, "L S", name=name, arg="attn_mask", L=length, S=source)
            m = attn_mask
        elif attn_mask.dim() == 3:
            check_shape(attn_mask, "BH L S", name=name, arg="attn_mask",
                        BH=batch * num_heads, L=length, S=source)
            m = attn_mask.view(batch, num_heads, length, source)  # (B, h, L, S)
        else:
            check_shape(attn_mask, "B h L S", name=name, arg="attn_mask",
                        B=batch, h=num_heads, L=length, S=source)
            m = attn_mask
        masks.append(m)
    if key_padding_mask is not None:
        check_shape(key_padding_mask, "B S", name=name, arg="key_padding_mask", B=batch, S=source)
        masks.append(key_padding_mask[:, None, None, :])  # (B, 1, 1, S)
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        allowed = ~masks[0]
        for m in masks[1:]:
            allowed = allowed & ~m
        return allowed
    total: torch.Tensor | None = None
    for m in masks:
        add = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf")) \
            if m.dtype == torch.bool else m.to(dtype)
        total = add if total is None else total + add
    return total


@register(
    name="multi_head_attention",
    family="attention",
    paper="Attention Is All You Need",
    arxiv="1706.03762",
    year=2017,
    input="tokens",
    example=Example(config=dict(dim=16, num_heads=4), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=8, num_heads=2)),
)
class MultiHeadAttention(nn.Module):
    r"""Multi-head scaled dot-product attention, self- or cross-, with masks.

    Vaswani et al., "Attention Is All You Need", arXiv 1706.03762, section 3.2.2.

    Equation::

        head_i = softmax((X_q W_i^Q)(X_k W_i^K)^T / sqrt(d) + M) (X_v W_i^V)
        MultiHead(X_q, X_k, X_v) = Concat(head_1, ..., head_h) W^O

    ``forward(x)`` is self-attention; ``forward(query, key, value)`` is cross-attention.
    Masks follow ``nn.MultiheadAttention``: boolean True = not allowed, float = added to
    the logits. With ``need_weights`` the output is ``(out, weights)`` with weights
    averaged over heads (B, L, S), like ``nn.MultiheadAttention``; otherwise the fused
    ``F.scaled_dot_product_attention`` runs and only ``out`` is returned. Weights pass
    through ``attn_map`` (B, h, L, S); while it is recorded the explicit path is used.

    Args:
        dim: C, the query (and output) width.
        num_heads: h.
        head_dim: d, the width of each head (default ``dim // num_heads``, which must
            then divide ``dim``).
        qkv_bias: biases on the q, k, v projections.
        out_bias: bias on the output projection.
        dropout: dropout on the attention weights (training only).
        proj_dropout: dropout after the output projection.
        kdim: width of the key input (default ``dim``).
        vdim: width of the value input (default ``dim``).
        fused_qkv: one (3E, C) projection for q, k, v (as ``nn.MultiheadAttention``'s
            ``in_proj_weight``); needs ``kdim == vdim == dim``. Otherwise three
            separate projections ``q_proj``, ``k_proj``, ``v_proj``.
        causal: default for ``forward``'s ``is_causal`` (mask keys after each query).
        rope: apply rotary position embedding (RoFormer) to q and k of every head;
            needs an even ``head_dim``.
        rope_base: the rotary base (10000 in RoFormer).

    Shape:
        - query: (B, L, C), C = dim; key: (B, S, C_k), C_k = kdim; value: (B, S, C_v),
          C_v = vdim. Any L, S.
        - key_padding_mask: (B, S); attn_mask: (L, S), (B * h, L, S) or (B, h, L, S).
        - Output: (B, L, C); weights (need_weights): (B, L, S) averaged, or (B, h, L, S).

    Deviations:
        ``is_causal=True`` builds the causal mask itself (``nn.MultiheadAttention`` takes
        it only as a hint beside an explicit ``attn_mask``). In training with dropout the
        returned weights are those before dropout (``nn.MultiheadAttention`` returns the
        dropped ones). ``add_bias_kv`` and ``add_zero_attn`` are not provided.

    Example:
        >>> mha = MultiHeadAttention(64, num_heads=8)
        >>> mha(torch.randn(2, 10, 64)).shape
        torch.Size([2, 10, 64])
        >>> out, w = mha(torch.randn(2, 10, 64), need_weights=True)
        >>> w.shape
        torch.Size([2, 10, 10])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        dropout: float = 0.0,
        proj_dropout: float = 0.0,
        kdim: int | None = None,
        vdim: int | None = None,
        fused_qkv: bool = True,
        causal: bool = False,
        rope: bool = False,
        rope_base: float = 10000.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(dim > 0 and num_heads > 0, f"MultiHeadAttention: dim={dim}, num_heads={num_heads} "
                "must be positive")
        if head_dim is None:
            head_dim = require_divides("MultiHeadAttention", "num_heads", num_heads, "dim", dim,
                                       hint="(or give head_dim)")
        require(head_dim > 0, f"MultiHeadAttention: head_dim={head_dim} must be positive")
        require(0.0 <= dropout < 1.0 and 0.0 <= proj_dropout < 1.0,
                f"MultiHeadAttention: dropout={dropout}, proj_dropout={proj_dropout} must be in [0, 1)")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        self.kdim = kdim if kdim is not None else dim
        self.vdim = vdim if vdim is not None else dim
        self.inner = num_heads * head_dim
        self.dropout = dropout
        self.causal = causal
        fk = dict(device=device, dtype=dtype)
        self.fused_qkv = fused_qkv
        if fused_qkv:
            require(self.kdim == dim and self.vdim == dim,
                    f"MultiHeadAttention: fused_qkv needs kdim == vdim == dim, got kdim={self.kdim}, "
                    f"vdim={self.vdim}, dim={dim}")
            self.qkv = nn.Linear(dim, 3 * self.inner, bias=qkv_bias, **fk)
        else:
            self.q_proj = nn.Linear(dim, self.inner, bias=qkv_bias, **fk)
            self.k_proj = nn.Linear(self.kdim, self.inner, bias=qkv_bias, **fk)
            self.v_proj = nn.Linear(self.vdim, self.inner, bias=qkv_bias, **fk)
        self.out_proj = nn.Linear(self.inner, dim, bias=out_bias, **fk)
        self.proj_drop = nn.Dropout(proj_dropout)
        if rope:
            from blockzoo.attention.positional import RotaryEmbedding

            self.rope: nn.Module | None = RotaryEmbedding(head_dim, base=rope_base)
        else:
            self.rope = None
        self.attn_map = AttentionMap("weights")

    def _project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, self_attn: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mods = self._modules
        if not self.fused_qkv:  # each projection as its functional op unless hooked (_fastcall)
            return call(mods["q_proj"], query), call(mods["k_proj"], key), call(mods["v_proj"], value)
        if self_attn:
            return self.qkv(query).chunk(3, dim=-1)  # 3 x (B, L, E)
        if key is value:  # keys and values of one source: one product with the (2E, C) rows
            e = self.inner
            weight, bias = own(self.qkv, "weight"), own(self.qkv, "bias")
            q = F.linear(query, weight[:e], None if bias is None else bias[:e])
            kv = F.linear(key, weight[e:], None if bias is None else bias[e:])  # (B, S, 2E)
            return (q, *kv.chunk(2, dim=-1))
        w = self.qkv.weight.chunk(3, dim=0)
        b = self.qkv.bias.chunk(3, dim=0) if self.qkv.bias is not None else (None, None, None)
        return F.linear(query, w[0], b[0]), F.linear(key, w[1], b[1]), F.linear(value, w[2], b[2])

    def _one_query(self, query: torch.Tensor, z: torch.Tensor, b: int, s: int) -> torch.Tensor | None:
        """One query over keys and values of one source z (class attention), reassociated:
        q_h (W_k,h z_j) = (q_h W_k,h) z_j and sum_j a_j W_v,h z_j = W_v,h (sum_j a_j z_j), so the
        S keys and values are never projected (O(h S C) instead of O(S C E) per sample; the key
        bias shifts every logit of the query alike and cancels in the softmax, the value bias is
        added once as the weights sum to 1). Eval without autograd on stock unhooked Linears
        only; None: the standard path."""
        mods = self._modules
        qm, km, vm = mods["q_proj"], mods["k_proj"], mods["v_proj"]
        if (type(qm) is not nn.Linear or type(km) is not nn.Linear or type(vm) is not nn.Linear
                or self.kdim != self.vdim or listened(qm, km, vm) or torch.jit.is_tracing()
                or torch._C._are_functorch_transforms_active()):
            return None
        qp, kp, vp = qm._parameters, km._parameters, vm._parameters
        if not ("weight" in qp and "bias" in qp and "weight" in kp and "bias" in kp
                and "weight" in vp and "bias" in vp):
            return None  # a parametrized tensor (computed through the attribute): the standard path
        wq, bq, wk, wv, bv = qp["weight"], qp["bias"], kp["weight"], vp["weight"], vp["bias"]
        if torch.is_grad_enabled() and (query.requires_grad or z.requires_grad or any(
                t is not None and t.requires_grad for t in (wq, bq, wk, kp["bias"], wv, bv))):
            return None
        h, d, c = self.num_heads, self.head_dim, self.kdim
        q = F.linear(query.reshape(b, self.dim), wq, bq).mul_(d ** -0.5)  # (B, E), scaled as SDPA does
        qk = torch.bmm(q.view(b, h, d).transpose(0, 1), wk.view(h, d, c))  # (h, B, C): q_h W_k,h
        attn = torch.bmm(qk.transpose(0, 1), z.transpose(1, 2)).softmax(-1)  # (B, h, S)
        az = torch.bmm(attn, z)  # (B, h, C): sum_j a_j z_j
        out = torch.bmm(az.transpose(0, 1), wv.view(h, d, c).transpose(1, 2))  # (h, B, d): W_v,h (A z)
        out = out.transpose(0, 1).reshape(b, 1, self.inner)  # (B, 1, E)
        if bv is not None:
            out = out + bv
        return call(mods["out_proj"], out)  # (B, 1, C)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
        need_weights: bool = False,
        average_attn_weights: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        name = "MultiHeadAttention"
        if isinstance(query, torch.Tensor) and query.ndim == 3 and query.shape[2] == self.dim:
            b, n = query.shape[0], query.shape[1]
        else:
            check_shape(query, "B L C", name=name, arg="query", C=self.dim)  # raises, naming the misfit
        mods = self._modules
        if key is None:
            key = query
        if value is None:
            value = key
        self_attn = key is query and value is query
        if self_attn and self.kdim == self.dim and self.vdim == self.dim:
            s = n  # key and value are the query, already checked
        elif (isinstance(key, torch.Tensor) and key.ndim == 3 and key.shape[0] == b
              and key.shape[2] == self.kdim and (value is key and self.vdim == self.kdim)):
            s = key.shape[1]  # one (B, S, C) source of keys and values, checked by integers
        else:
            s = check_shape(key, "B S C", name=name, arg="key", B=b, C=self.kdim)["S"]
            check_shape(value, "B S C", name=name, arg="value", B=b, S=s, C=self.vdim)
        h, d = self.num_heads, self.head_dim
        if (n == 1 and value is key and not self.fused_qkv and not torch.compiler.is_compiling()
                and s >= _ONE_QUERY_MIN_KEYS and attn_mask is None and key_padding_mask is None
                and not need_weights and self.rope is None
                and not (self.causal if is_causal is None else is_causal) and not mods["attn_map"]._recording
                and not (self.training and (self.dropout > 0 or mods["proj_drop"].p > 0))):
            out = self._one_query(query, key, b, s)
            if out is not None:
                return out
        if self_attn and self.fused_qkv:
            # the projection as its functional op unless hooked (blockzoo._fastcall)
            q, k, v = call(mods["qkv"], query).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, L, d)
        else:
            q, k, v = self._project(query, key, value, self_attn)
            q = q.view(b, n, h, d).transpose(1, 2)  # (B, h, L, d)
            k = k.view(b, s, h, d).transpose(1, 2)  # (B, h, S, d)
            v = v.view(b, s, h, d).transpose(1, 2)  # (B, h, S, d)
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)
        causal = self.causal if is_causal is None else is_causal
        mask = None if attn_mask is None and key_padding_mask is None else merge_masks(
            attn_mask, key_padding_mask, batch=b, num_heads=h, length=n, source=s, dtype=q.dtype, name=name)
        p = self.dropout if self.training else 0.0
        attn_map = mods["attn_map"]
        explicit = need_weights or attn_map.active
        if not explicit and mask is None and not causal:  # the fused kernel, without the wrapper's tests
            res = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            res = scaled_dot_product_attention(q, k, v, mask, p, causal, return_weights=explicit)
        if explicit:
            out, weights = res
            weights = attn_map(weights)  # (B, h, L, S)
        else:
            out, weights = res, None
        out = out.transpose(1, 2).reshape(b, n, self.inner)  # (B, L, E)
        out = call(mods["out_proj"], out)  # (B, L, C)
        if self.training and mods["proj_drop"].p > 0:
            out = mods["proj_drop"](out)
        if not need_weights:
            return out
        return out, (weights.mean(dim=1) if average_attn_weights else weights)

    def extra_repr(self) -> str:
        extra = ""
        if self.kdim != self.dim or self.vdim != self.dim:
            extra = f", kdim={self.kdim}, vdim={self.vdim}"
        return (f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}{extra}, "
                f"fused_qkv={self.fused_qkv}, causal={self.causal}, rope={self.rope is not None}")
