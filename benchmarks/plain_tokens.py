"""Plain-PyTorch references for more blocks (issue 19, goal 3: every image-attention,
token-attention, MLP and conv block has one).

Imported by ``plain_reference.py``, which checks each against our block (same weights, max
relative difference <= 1e-4) before timing it. Written from the papers' equations the way a
reader would write them in plain PyTorch, not from our blocks; they take our block's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

REFS: dict[str, type[nn.Module]] = {}


def _ref(name: str):  # a class decorator
    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        REFS[name] = cls
        return cls

    return deco


def _linear(m: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` holding a linear's (or a 1x1 conv's) weights."""
    w = m.weight.detach()
    lin = nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None)
    lin.weight.data.copy_(w.reshape(w.shape[0], w.shape[1]))
    if m.bias is not None:
        lin.bias.data.copy_(m.bias.detach())
    return lin


def _layernorm(m: nn.Module) -> nn.LayerNorm:
    ln = nn.LayerNorm(m.normalized_shape, eps=m.eps, elementwise_affine=m.weight is not None,
                      bias=getattr(m, "bias", None) is not None)
    ln.load_state_dict(m.state_dict())
    return ln


# ---------------------------------------------------------------- Attention Free Transformer


class _PlainAFT(nn.Module):
    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.qkv, self.proj = _linear(b.qkv), _linear(b.proj)


@_ref("aft_full")
class PlainAFTFull(_PlainAFT):
    """Zhai 2105.14103, eq. (2) as the paper's pseudocode: Y = sigmoid(Q) * (exp(w) @ (exp(K) V))
    / (exp(w) @ exp(K)), both exponentials shifted by their max; then W^O."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__(b)
        self.w = nn.Parameter(b.pos_bias.detach().clone())

    def bias(self, n: int) -> torch.Tensor:
        return self.w[:n, :n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        w = self.bias(x.shape[1])
        exp_k = torch.exp(k - k.max(dim=1, keepdim=True)[0])
        exp_w = torch.exp(w - w.max(dim=1, keepdim=True)[0])
        y = torch.sigmoid(q) * torch.matmul(exp_w, exp_k * v) / torch.matmul(exp_w, exp_k)
        return self.proj(y)


@_ref("aft_local")
class PlainAFTLocal(PlainAFTFull):
    """Zhai 2105.14103, eq. (3): AFT-full with w_tt' set to 0 where |t - t'| >= s."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__(b)
        self.s = b.window

    def bias(self, n: int) -> torch.Tensor:
        t = torch.arange(n)
        return torch.where((t[:, None] - t[None, :]).abs() < self.s, self.w[:n, :n], 0.0)


@_ref("aft_simple")
class PlainAFTSimple(_PlainAFT):
    """Zhai 2105.14103, eq. (4): Y_t = sigmoid(Q_t) * sum_t' softmax(K)_t' V_t' (softmax over tokens)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.proj(torch.sigmoid(q) * (F.softmax(k, dim=1) * v).sum(1, keepdim=True))


@_ref("aft_conv")
class PlainAFTConv(_PlainAFT):
    """Zhai 2105.14103, eq. (5) on a 1-D sequence: per head, num = conv(exp(K) V, exp(w) - 1) +
    sum exp(K) V, den likewise with exp(K); Y = sigmoid(Q) num / den (nn.Conv1d per head)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__(b)
        self.h, s = b.num_heads, b.kernel_size
        d = b.hidden_dim // self.h
        # one depthwise conv, its kernel exp(w_i) - 1 shared by the d channels of head i
        self.conv = nn.Conv1d(b.hidden_dim, b.hidden_dim, s, padding=s // 2, groups=b.hidden_dim, bias=False)
        self.conv.weight.data.copy_((b.pos_bias.detach().exp() - 1).repeat_interleave(d, 0)[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        exp_k = torch.exp(k - k.max(dim=1, keepdim=True)[0]).transpose(1, 2)  # (B, D, T)
        exp_kv = exp_k * v.transpose(1, 2)
        num = self.conv(exp_kv) + exp_kv.sum(-1, keepdim=True)
        den = self.conv(exp_k) + exp_k.sum(-1, keepdim=True)
        return self.proj(torch.sigmoid(q) * (num / den).transpose(1, 2))


# ---------------------------------------------------------------- class-token attention


class _PlainClassAttn(nn.Module):
    """Multi-head attention of the class token (query) over all tokens (keys, values)."""

    def __init__(self, mha: nn.Module) -> None:
        super().__init__()
        self.h, self.d = mha.num_heads, mha.head_dim
        self.q, self.k, self.v = _linear(mha.q_proj), _linear(mha.k_proj), _linear(mha.v_proj)
        self.proj = _linear(mha.out_proj)

    def forward(self, cls: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        B, N, _ = z.shape
        q = self.q(cls).view(B, 1, self.h, self.d).transpose(1, 2)  # (B, h, 1, d)
        k = self.k(z).view(B, N, self.h, self.d).transpose(1, 2)  # (B, h, N, d)
        v = self.v(z).view(B, N, self.h, self.d).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h, 1, d)
        return self.proj(y.transpose(1, 2).reshape(B, 1, self.h * self.d))


@_ref("class_attention")
class PlainClassAttention(nn.Module):
    """Touvron et al. 2103.17239 (CaiT), eq. (4)-(5): softmax(W_q x_cls (W_k z)^T / sqrt(d)) W_v z, W_o."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.attn = _PlainClassAttn(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x[:, :1], x)


@_ref("class_attention_block")
class PlainClassAttentionBlock(nn.Module):
    """Touvron et al. 2103.17239 (CaiT), Fig. 2: x_cls += s1 CA(LN(z)); x_cls += s2 MLP(LN(x_cls))."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.norm1, self.norm2 = _layernorm(b.norm1), _layernorm(b.norm2)
        self.attn = _PlainClassAttn(b.attn)
        fc1, fc2 = (m for m in b.mlp.layers if isinstance(m, nn.Linear))
        self.mlp = nn.Sequential(_linear(fc1), nn.GELU(), _linear(fc2))
        one = torch.ones(b.dim)
        self.s1 = nn.Parameter(one.clone() if b.scale1 is None else b.scale1.detach().clone())
        self.s2 = nn.Parameter(one.clone() if b.scale2 is None else b.scale2.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.norm1(x)
        cls = x[:, :1] + self.s1 * self.attn(z[:, :1], z)
        cls = cls + self.s2 * self.mlp(self.norm2(cls))
        return torch.cat([cls, x[:, 1:]], 1)


@_ref("class_cross_attention")
class PlainClassCrossAttention(nn.Module):
    """Chen et al. 2103.14899 (CrossViT), eq. (5)-(7): y_cls = x_cls + CA(LN(x')), patches unchanged."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.norm = _layernorm(b.norm1)
        self.attn = _PlainClassAttn(b.attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.norm(x)
        return torch.cat([x[:, :1] + self.attn(z[:, :1], z), x[:, 1:]], 1)
