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


@_ref("halo_attention")
class PlainHalo(nn.Module):
    """Vaswani et al. 2103.12731: per b x b block, softmax((q k^T + q (r^H + r^W)^T) / sqrt(d)) v over
    the block's (b + 2s)^2 window (``F.unfold``), keys outside the image masked, then W_o."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.q, self.kv, self.proj = linear_from(b.q), linear_from(b.kv), linear_from(b.proj)
        self.b, self.s, self.h, self.d = b.block_size, b.halo_size, b.num_heads, b.head_dim
        w = self.b + 2 * self.s
        i, u = torch.arange(self.b), torch.arange(w)
        idx = u[None, :] - i[:, None] + self.b - 1  # (b, w): table row of offset u - s - i
        rh, rw = b.rel_h.detach()[idx], b.rel_w.detach()[idx]  # (b, w, d)
        # r[(i_h, i_w), (u_h, u_w)] = r^H[u_h - i_h] + r^W[u_w - i_w]
        self.rel = (rh[:, None, :, None] + rw[None, :, None, :]).reshape(self.b ** 2, w * w, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        bs, s, h, d = self.b, self.s, self.h, self.d
        w = bs + 2 * s
        ph, pw = (-H) % bs, (-W) % bs
        xp = F.pad(x, (0, pw, 0, ph))
        nh, nw = xp.shape[2] // bs, xp.shape[3] // bs
        t = xp.permute(0, 2, 3, 1)  # (B, Hp, Wp, C)
        q = self.q(t).view(B, nh, bs, nw, bs, h, d).permute(0, 1, 3, 5, 2, 4, 6)
        q = q.reshape(B, nh * nw, h, bs * bs, d)
        kv = self.kv(t).permute(0, 3, 1, 2)  # (B, 2 h d, Hp, Wp)
        kv = F.unfold(kv, w, padding=s, stride=bs).view(B, 2, h, d, w * w, nh * nw)
        k, v = kv.permute(1, 0, 5, 2, 4, 3)  # (B, n, h, w w, d)
        ones = F.pad(x.new_ones(1, 1, H, W), (0, pw, 0, ph))
        valid = F.unfold(ones, w, padding=s, stride=bs)[0].T > 0.5  # (n, w w)
        logits = (q @ k.transpose(-1, -2) + torch.einsum("...id,ijd->...ij", q, self.rel)) / math.sqrt(d)
        logits = logits.masked_fill(~valid[None, :, None, None, :], float("-inf"))
        y = logits.softmax(-1) @ v  # (B, n, h, b b, d)
        y = y.view(B, nh, nw, h, bs, bs, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, nh * bs, nw * bs, h * d)
        return self.proj(y[:, :H, :W]).permute(0, 3, 1, 2)
