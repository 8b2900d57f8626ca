"""Plain-PyTorch references of the token-attention blocks, the position encodings and the MLP
(issue 19, goal 3; the rules they follow are in ``plain_common.py``)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from plain_common import linear_from, reference_registry  # beside this file
from torch import nn

REFS, _ref = reference_registry()


def _layernorm(m: nn.Module) -> nn.LayerNorm:
    ln = nn.LayerNorm(m.normalized_shape, eps=m.eps, elementwise_affine=m.weight is not None,
                      bias=getattr(m, "bias", None) is not None)
    ln.load_state_dict(m.state_dict())
    return ln


# ---------------------------------------------------------------- Attention Free Transformer


class _PlainAFT(nn.Module):
    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)


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
        self.q, self.k, self.v = linear_from(mha.q_proj), linear_from(mha.k_proj), linear_from(mha.v_proj)
        self.proj = linear_from(mha.out_proj)

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
        self.mlp = nn.Sequential(linear_from(fc1), nn.GELU(), linear_from(fc2))
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


@_ref("emsa")
class PlainEMSA(nn.Module):
    """Zhang & Yang 2105.13677 (ResT), eq. (2), as its code on a 1-D sequence: K, V from a strided
    depthwise conv + LayerNorm; A = InstanceNorm(softmax(Conv1x1(Q K^T / sqrt(d)))); A V W^O."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d, r, c = b.num_heads, b.head_dim, b.sr_ratio, b.dim
        self.q, self.kv, self.proj = linear_from(b.q), linear_from(b.kv), linear_from(b.proj)
        self.sr = None
        if r > 1:  # the 1-D version of the (r+1) x (r+1) stride-r conv: its central row
            self.sr = nn.Conv1d(c, c, r + 1, stride=r, padding=r // 2, groups=c, bias=b.sr.bias is not None)
            self.sr.weight.data.copy_(b.sr.weight.detach()[:, :, r // 2])
            if b.sr.bias is not None:
                self.sr.bias.data.copy_(b.sr.bias.detach())
            self.norm = _layernorm(b.sr_norm)
        self.transform = None
        if self.h > 1:
            self.transform = nn.Conv2d(self.h, self.h, 1, bias=False)
            self.transform.weight.data.copy_(b.transform.weight.detach())
            self.transform_norm = nn.InstanceNorm2d(self.h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.h, self.d).permute(0, 2, 1, 3)
        if self.sr is not None:
            x = self.norm(self.sr(x.permute(0, 2, 1)).permute(0, 2, 1))  # (B, M, C)
        k, v = self.kv(x).reshape(B, -1, 2, self.h, self.d).permute(2, 0, 3, 1, 4)
        attn = q @ k.transpose(-2, -1) * self.d ** -0.5
        if self.transform is not None:
            attn = self.transform_norm(self.transform(attn).softmax(dim=-1))
        else:
            attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


# ---------------------------------------------------------------- positional encodings


@_ref("learned_pe")
class PlainLearnedPE(nn.Module):
    """Dosovitskiy et al. 2010.11929 (ViT): y = x + E_pos[:N], E_pos learned (max_len, C)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(b.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos_embed[: x.shape[1]]


@_ref("sinusoidal_pe")
class PlainSinusoidalPE(nn.Module):
    """Vaswani et al. 1706.03762, Sec. 3.5: PE(pos, 2i) = sin(pos / base^(2i/C)), PE(pos, 2i+1) = cos(...);
    y = x * scale + PE (the table built for the input's length, in float32)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.dim, self.base, self.scale = b.dim, b.base, b.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        pos = torch.arange(n, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, self.dim, 2, dtype=torch.float32) * (-math.log(self.base) / self.dim))
        pe = torch.zeros(n, self.dim)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div[: self.dim // 2])
        return x * self.scale + pe


@_ref("rope")
class PlainRoPE(nn.Module):
    """Su et al. 2104.09864 (RoFormer), eq. (34): y = x * cos(m theta) + rotate_every_two(x) * sin(m theta),
    theta_i = base^(-2i/d), each angle repeated for its pair."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.dim, self.base = b.dim, b.base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-2]
        theta = self.base ** (-torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim)
        angles = torch.arange(n, dtype=torch.float32)[:, None] * theta  # (N, d/2)
        cos = angles.cos().repeat_interleave(2, -1)
        sin = angles.sin().repeat_interleave(2, -1)
        rot = torch.stack([-x[..., 1::2], x[..., 0::2]], -1).flatten(-2)  # (-x1, x0, -x3, x2, ...)
        return x * cos + rot * sin


# ---------------------------------------------------------------- MLP


@_ref("mlp")
class PlainMLP(nn.Module):
    """Rumelhart et al. (Nature 1986): y = W_{L+1} act(... act(W_1 x + b_1) ...) + b_{L+1} (nn.Sequential)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for m in b.layers:
            if isinstance(m, nn.Linear):
                layers.append(linear_from(m))
            elif not isinstance(m, (nn.Identity, nn.Dropout)):  # activation (and norm, if any)
                layers.append(copy.deepcopy(m))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------- token attention variants


@_ref("local_attention")
class PlainLocalAttention(nn.Module):
    """Beltagy et al. 2004.05150 (Longformer), sliding window without global tokens: each query attends
    to keys j in [i - w_l, i + w_r], softmax(q_i k_j / sqrt(d)) v_j; windows gathered with Tensor.unfold."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d = b.num_heads, b.head_dim
        self.left, self.right = b.window
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        w = self.left + self.right + 1
        q, k, v = self.qkv(x).view(B, N, 3, self.h, self.d).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        k = F.pad(k, (0, 0, self.left, self.right)).unfold(2, w, 1)  # (B, h, N, d, w)
        v = F.pad(v, (0, 0, self.left, self.right)).unfold(2, w, 1)
        scores = torch.einsum("bhnd,bhndw->bhnw", q, k) / math.sqrt(self.d)
        j = torch.arange(N)[:, None] + torch.arange(-self.left, self.right + 1)  # (N, w) key positions
        scores = scores.masked_fill((j < 0) | (j >= N), float("-inf"))
        y = torch.einsum("bhnw,bhndw->bhnd", scores.softmax(-1), v)
        return self.proj(y.transpose(1, 2).reshape(B, N, self.h * self.d))


def _conv1d(m: nn.Conv1d) -> nn.Conv1d:
    conv = nn.Conv1d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                     bias=m.bias is not None)
    conv.load_state_dict(m.state_dict())
    return conv


@_ref("muse_attention")
class PlainMUSE(nn.Module):
    """Zhao et al. 1911.09483 (MUSE), Sec. 2: y = MHA(x) + sum_i softmax(alpha)_i PW_i(DW_{k_i}(V)),
    V shared by the attention and the depthwise-separable conv branches."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h = b.num_heads
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)
        self.dw = nn.ModuleList(_conv1d(m) for m in b.depthwise)
        self.pw = nn.ModuleList(_conv1d(m) for m in b.pointwise)
        self.alpha = nn.Parameter(b.alpha.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).chunk(3, -1)  # (B, N, C)
        heads = [t.view(B, N, self.h, C // self.h).transpose(1, 2) for t in (q, k, v)]
        att = self.proj(F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(B, N, C))
        vc = v.transpose(1, 2)  # (B, C, N)
        a = self.alpha.softmax(0)
        conv = sum(a[i] * pw(dw(vc)) for i, (dw, pw) in enumerate(zip(self.dw, self.pw, strict=True)))
        return att + conv.transpose(1, 2)


@_ref("performer_attention")
class PlainPerformer(nn.Module):
    """Choromanski et al. 2009.14794 (FAVOR+, Lemma 1, eq. (4)): phi(x) = exp(omega x - |x|^2/2) / sqrt(m)
    on x / d^(1/4), out = D^-1 phi(Q) (phi(K)^T V); the block's current omega (m, d)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d, self.causal = b.num_heads, b.head_dim, b.causal
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)
        self.register_buffer("omega", b.features.detach().clone())

    def phi(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        x = x * self.d ** -0.25
        logits = x @ self.omega.T - (x ** 2).sum(-1, keepdim=True) / 2  # (B, h, N, m)
        # stabiliser as the official code: per-row max for queries, global max for keys (cancels)
        stab = logits.amax(-1, keepdim=True) if is_query else logits.amax((-2, -1), keepdim=True)
        return torch.exp(logits - stab) / math.sqrt(self.omega.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        q, k = self.phi(q, True), self.phi(k, False)  # (B, h, N, m)
        if self.causal:  # prefix sums of k_j v_j^T and k_j
            kv = torch.einsum("bhnm,bhnd->bhnmd", k, v).cumsum(2)
            y = torch.einsum("bhnm,bhnmd->bhnd", q, kv) / (q * k.cumsum(2)).sum(-1, keepdim=True)
        else:
            y = (q @ (k.transpose(-2, -1) @ v)) / (q @ k.sum(2)[..., None])
        return self.proj(y.transpose(1, 2).reshape(B, N, self.h * self.d))


def _conv2d(m: nn.Conv2d) -> nn.Conv2d:
    conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                     bias=m.bias is not None)
    conv.load_state_dict(m.state_dict())
    return conv


@_ref("re_attention")
class PlainReAttention(nn.Module):
    """Zhou et al. 2103.11886 (DeepViT), eq. (3), as its code: A = softmax(Q K^T / sqrt(d)),
    A' = BN(Conv1x1_heads(A)), y = Concat(A' V) W^O."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d = b.num_heads, b.head_dim
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)
        self.reatten = _conv2d(b.reatten_matrix)
        self.bn = nn.BatchNorm2d(self.h, eps=b.var_norm.eps)
        self.bn.load_state_dict(b.var_norm.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * self.d ** -0.5).softmax(dim=-1)
        attn = self.bn(self.reatten(attn))
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


@_ref("separable_self_attention")
class PlainSeparableSelfAttention(nn.Module):
    """Mehta & Rastegari 2206.02680 (MobileViTv2), eq. (3)-(4), as its code: one fused projection to
    [I | K | V]; c_s = softmax_N(x W_I), c_v = sum_N c_s K, y = (ReLU(V) * c_v) W_O."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.c = b.dim
        w = torch.cat([b.to_i.weight, b.to_k.weight, b.to_v.weight]).detach()
        self.qkv = nn.Linear(self.c, 1 + 2 * self.c)  # W_I's bias: 0 (the softmax over N cancels it)
        self.qkv.weight.data.copy_(w)
        self.qkv.bias.data.zero_()
        for i, m in ((1, b.to_k), (1 + self.c, b.to_v)):
            if m.bias is not None:
                self.qkv.bias.data[i:i + self.c].copy_(m.bias.detach())
        self.out_proj = linear_from(b.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv(x).split([1, self.c, self.c], dim=-1)
        context_scores = F.softmax(query, dim=1)  # (B, N, 1)
        context_vector = (key * context_scores).sum(dim=1, keepdim=True)  # (B, 1, C)
        return self.out_proj(F.relu(value) * context_vector)


@_ref("simplified_self_attention")
class PlainSimplifiedSelfAttention(nn.Module):
    """Vaswani et al. 1706.03762, eq. (1) with identity q/k/v projections: per head
    softmax(x_i x_i^T / sqrt(d)) x_i, then W^O."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h = b.num_heads
        self.proj = linear_from(b.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        heads = x.view(B, N, self.h, C // self.h).transpose(1, 2)
        y = F.scaled_dot_product_attention(heads, heads, heads)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


@_ref("talking_heads_attention")
class PlainTalkingHeads(nn.Module):
    """Shazeer et al. 2003.02436, Sec. 4 (einsum algorithm; b_w as CaiT's code): L = Q K^T / sqrt(d),
    W = softmax(P_l L) over keys, W' = P_w W + b_w, y = Concat(W' V) W^O."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d = b.num_heads, b.head_dim
        self.qkv, self.out = linear_from(b.qkv), linear_from(b.out_proj)
        self.p_l = nn.Parameter(b.proj_l.weight.detach().clone())
        self.b_l = None if b.proj_l.bias is None else nn.Parameter(b.proj_l.bias.detach().clone())
        self.p_w = nn.Parameter(b.proj_w.weight.detach().clone())
        self.b_w = nn.Parameter(b.proj_w.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        logits = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(self.d)
        logits = torch.einsum("bhnm,jh->bjnm", logits, self.p_l)
        if self.b_l is not None:
            logits = logits + self.b_l[:, None, None]
        weights = torch.einsum("bhnm,jh->bjnm", logits.softmax(-1), self.p_w) + self.b_w[:, None, None]
        y = torch.einsum("bhnm,bhmd->bnhd", weights, v)
        return self.out(y.reshape(B, N, self.h * self.d))


@_ref("ufo_attention")
class PlainUFO(nn.Module):
    """Song 2109.14382 (UFO-ViT), eqs. (5)-(7): per head, XNorm(Q) XNorm(K^T V), XNorm(a) = gamma a / ||a||_2
    (over each query's channels, over K^T V's key-channel axis); then W^O."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d = b.num_heads, b.head_dim
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)
        self.gamma = nn.Parameter(b.gamma.detach().clone())  # (h, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        kv = k.transpose(-2, -1) @ v  # (B, h, d, d)
        y = (self.gamma * F.normalize(q, dim=-1)) @ (self.gamma * F.normalize(kv, dim=-2))
        return self.proj(y.transpose(1, 2).reshape(B, N, self.h * self.d))
