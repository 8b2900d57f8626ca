"""Plain-PyTorch references for more blocks (issue 19, goal 3: every image-attention,
token-attention, MLP and conv block has one).

Imported by ``plain_reference.py``, which checks each against our block (same weights, max
relative difference <= 1e-4) before timing it. Written from the papers' equations the way a
reader would write them in plain PyTorch, not from our blocks; they take our block's weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

REFS: dict[str, type[nn.Module]] = {}


def _ref(name: str):  # a class decorator
    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        REFS[name] = cls
        return cls

    return deco


def linear_from(conv_or_linear: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` holding a 1x1 conv's (or a linear's) weights."""
    w = conv_or_linear.weight.detach()
    lin = nn.Linear(w.shape[1], w.shape[0], bias=conv_or_linear.bias is not None)
    lin.weight.data.copy_(w.reshape(w.shape[0], w.shape[1]))
    if conv_or_linear.bias is not None:
        lin.bias.data.copy_(conv_or_linear.bias.detach())
    return lin


def _conv1x1(conv: nn.Module) -> nn.Conv2d:
    """An ``nn.Conv2d`` (1x1) holding a 1x1 conv's weights."""
    c = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
    c.load_state_dict(conv.state_dict())
    return c


def _copy_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A fresh ``nn.Conv2d`` with a conv's hyper-parameters and weights."""
    c = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    c.load_state_dict(conv.state_dict())
    return c


@_ref("acmix")
class PlainACmix(nn.Module):
    """Pan et al. 2111.14556, eq. (12)-(13) as the authors' code: shared 1x1 q, k, v; K_a x K_a
    window attention through ``F.unfold``; light FC over the 3h maps then a grouped shift conv;
    y = alpha F_att + beta F_conv."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.q, self.k, self.v = _conv1x1(b.q), _conv1x1(b.k), _conv1x1(b.v)
        self.fc, self.dep_conv = _copy_conv(b.fc), _copy_conv(b.dep_conv)
        self.rel_bias = nn.Parameter(b.rel_bias.detach().clone())  # (h, K_a^2)
        self.alpha = nn.Parameter(b.alpha.detach().clone())
        self.beta = nn.Parameter(b.beta.detach().clone())
        self.h, self.d, self.ka, self.kc = b.num_heads, b.head_dim, b.kernel_att, b.kernel_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h, d, ka, N = self.h, self.d, self.ka, H * W
        q, k, v = self.q(x), self.k(x), self.v(x)
        # attention: each pixel's query against the keys of its window (outside pixels masked)
        ku = F.unfold(k, ka, padding=ka // 2).view(B, h, d, ka * ka, N)
        vu = F.unfold(v, ka, padding=ka // 2).view(B, h, d, ka * ka, N)
        inside = F.unfold(torch.ones(1, 1, H, W, dtype=x.dtype), ka, padding=ka // 2).view(ka * ka, N) > 0
        logits = torch.einsum("bhdn,bhdtn->bhtn", q.view(B, h, d, N), ku) / math.sqrt(d)
        logits = (logits + self.rel_bias[:, :, None]).masked_fill(~inside, float("-inf"))
        f_att = torch.einsum("bhtn,bhdtn->bhdn", logits.softmax(2), vu).reshape(B, C, H, W)
        # convolution: f = FC([q; k; v]) per feature index, then the grouped shift conv
        f = self.fc(torch.cat([q.view(B, h, d, N), k.view(B, h, d, N), v.view(B, h, d, N)], 1))
        f_conv = self.dep_conv(f.permute(0, 2, 1, 3).reshape(B, -1, H, W))
        return self.alpha * f_att + self.beta * f_conv


@_ref("affinity_mixing")
class PlainAffinityMixing(nn.Module):
    """Gao et al. 2106.01401, eq. (5) as Container-Light's code: [Q, K, V] = W_in x,
    y = W_out (sigmoid(a) softmax(Q K^T / sqrt(d)) V + (1 - sigmoid(a)) DWConv(V))."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.conv1, self.conv, self.conv2 = _copy_conv(b.conv1), _copy_conv(b.conv), _copy_conv(b.conv2)
        self.a = None if b.sa_weight is None else nn.Parameter(b.sa_weight.detach().clone())
        self.h, self.d = b.num_heads, b.head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.conv1(x)
        static = self.conv(qkv[:, -C:])
        if self.a is None:
            return self.conv2(static)
        q, k, v = qkv.view(B, 3, self.h, self.d, H * W).transpose(-1, -2).unbind(1)  # (B, h, N, d) each
        dyn = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(B, C, H, W)
        a = torch.sigmoid(self.a)
        return self.conv2(a * dyn + (1 - a) * static)


@_ref("coatnet_relative_attention")
class PlainCoAtNetRelAttention(nn.Module):
    """Dai et al. 2106.04803, eq. (3): softmax_j(q_i . k_j / sqrt(d) + w[i - j]) v_j over all pixels,
    w a (2 H_max - 1) x (2 W_max - 1) table per head indexed by the 2-D offset i - j."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.qkv, self.proj = _conv1x1(b.qkv), _conv1x1(b.proj)
        self.table = nn.Parameter(b.rel_table.detach().clone())  # (h, 2 H_max - 1, 2 W_max - 1)
        self.h, self.d, (self.mh, self.mw) = b.num_heads, b.head_dim, b.max_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()  # pixel i = (ys[i], xs[i])
        bias = self.table[:, ys[:, None] - ys[None, :] + self.mh - 1, xs[:, None] - xs[None, :] + self.mw - 1]
        q, k, v = self.qkv(x).view(B, 3, self.h, self.d, H * W).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, h, N, d)
        return self.proj(y.transpose(-1, -2).reshape(B, -1, H, W))


@_ref("conv_position_encoding")
class PlainConvPosEnc(nn.Module):
    """Xu et al. 2104.06399 (CoaT's CPE; Chu et al. 2102.10882's PEG): y = x + DWConv_{k x k}(x)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.proj = _copy_conv(b.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x)


@_ref("factorized_attention")
class PlainFactorizedAttention(nn.Module):
    """Xu et al. 2104.06399, eq. (8) as CoaT's code on tokens: (Q / sqrt(d)) (softmax_N(K)^T V)
    + Q o DWConv(V), the heads split over depthwise kernels, then the output nn.Linear."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)
        self.h, self.d = b.num_heads, b.head_dim
        self.convs = nn.ModuleList(_copy_conv(c) for c in b.crpe.conv_list) if b.crpe is not None else None
        self.splits = None if b.crpe is None else [c.in_channels for c in b.crpe.conv_list]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        N = H * W
        q, k, v = self.qkv(t).view(B, N, 3, self.h, self.d).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        kv = torch.einsum("bhnk,bhnv->bhkv", k.softmax(dim=2), v)  # (B, h, d, d)
        out = torch.einsum("bhnk,bhkv->bhnv", q, kv) / math.sqrt(self.d)
        if self.convs is not None:
            v_img = v.transpose(-1, -2).reshape(B, C, H, W)
            parts = v_img.split(self.splits, 1)  # the heads of each kernel size
            conv_v = torch.cat([conv(p) for conv, p in zip(self.convs, parts, strict=True)], 1)
            out = out + q * conv_v.reshape(B, self.h, self.d, N).transpose(-1, -2)
        y = self.proj(out.transpose(1, 2).reshape(B, N, C))
        return y.transpose(1, 2).reshape(B, C, H, W)
