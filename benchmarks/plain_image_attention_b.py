"""Plain-PyTorch references of image-attention blocks, halo attention to ConTNet's patch-wise
layer (issue 19, goal 3; the rules they follow are in ``plain_common.py``)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from plain_common import linear_from, reference_registry  # beside this file
from torch import nn

REFS, _ref = reference_registry()


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
        rel = (rh[:, None, :, None] + rw[None, :, None, :]).reshape(self.b ** 2, w * w, -1)
        self.register_buffer("rel", rel)

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


def _linear_bn(ln: nn.Module) -> nn.Sequential:
    """LeViT's Linear + BatchNorm1d over (tokens, features) as an ``nn.Linear`` and a copied BN."""
    bn = copy.deepcopy(ln.bn) if isinstance(ln.bn, nn.BatchNorm1d) else nn.Identity()
    return nn.Sequential(linear_from(ln.linear), bn)


def _tokens_bn(seq: nn.Sequential, t: torch.Tensor) -> torch.Tensor:
    """``seq`` (Linear, BN1d) on (B, N, C) tokens: BN over all B N tokens, as LeViT's code."""
    y = seq[0](t)
    return seq[1](y.flatten(0, 1)).view_as(y)


@_ref("levit_attention")
class PlainLeViT(nn.Module):
    """Graham et al. 2104.01136 Sec. 4.2-4.3: softmax(Q K^T / sqrt(d) + B^h[|dx|, |dy|]) V per head,
    hard-swish, projection; Linear+BN projections; offsets past the R x R table clipped to R - 1."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d, self.e, self.s, self.r = b.num_heads, b.key_dim, b.val_dim, b.stride, b.resolution
        self.o = b.dim_out
        if self.s == 1:
            self.qkv = _linear_bn(b.qkv)
        else:
            self.kv, self.q = _linear_bn(b.kv), _linear_bn(b.q)
        self.act, self.proj = copy.deepcopy(b.act), _linear_bn(b.proj)
        self.ab = nn.Parameter(b.attention_biases.detach().clone())  # (h, R R)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        h, d, e, s, r = self.h, self.d, self.e, self.s, self.r
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        if s == 1:
            q, k, v = _tokens_bn(self.qkv, t).view(B, H * W, h, 2 * d + e).split([d, d, e], -1)
            hq, wq = H, W
        else:
            k, v = _tokens_bn(self.kv, t).view(B, H * W, h, d + e).split([d, e], -1)
            xs = x[:, :, ::s, ::s]
            hq, wq = xs.shape[-2:]
            q = _tokens_bn(self.q, xs.flatten(2).transpose(1, 2)).view(B, hq * wq, h, d)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, h, N, *)
        # |offset| per axis between query (s i, s j) and key (i', j'), clipped to the table
        dev = x.device
        ky, kx = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij")
        qy, qx = torch.meshgrid(torch.arange(0, H, s, device=dev), torch.arange(0, W, s, device=dev),
                                indexing="ij")
        dy = (qy.reshape(-1, 1) - ky.reshape(1, -1)).abs().clamp(max=r - 1)
        dx = (qx.reshape(-1, 1) - kx.reshape(1, -1)).abs().clamp(max=r - 1)
        attn = (q @ k.transpose(-1, -2)) * d ** -0.5 + self.ab[:, dy * r + dx]
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, hq * wq, h * e)
        y = _tokens_bn(self.proj, self.act(y))
        return y.transpose(1, 2).reshape(B, self.o, hq, wq)


def _split_linear(lin: nn.Linear, n: int) -> list[nn.Linear]:
    """A fused projection (e.g. qkv) as ``n`` separate ``nn.Linear`` (its output rows in ``n`` chunks)."""
    ws = lin.weight.detach().chunk(n, 0)
    bs = lin.bias.detach().chunk(n, 0) if lin.bias is not None else (None,) * n
    out = []
    for w, bias in zip(ws, bs, strict=True):
        m = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        m.weight.data.copy_(w)
        if bias is not None:
            m.bias.data.copy_(bias)
        out.append(m)
    return out


@_ref("lightweight_mhsa")
class PlainLMHSA(nn.Module):
    """Guo et al. 2107.06263 Eq. (3)-(4), as the authors' code: x' = BN(DWConv_{k, stride k}(x)),
    head_j = softmax(Q_j K'_j^T / sqrt(d) + B_j) V'_j, W^O; B bilinearly resized off its grid."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.k = b.num_heads, b.sr_ratio
        self.wq, self.wk, self.wv = _split_linear(b.attn.qkv, 3)
        self.wo = linear_from(b.attn.out_proj)
        self.sr = copy.deepcopy(b.sr) if b.sr is not None else None  # Conv2d (depthwise) + BatchNorm2d
        pos = None if b.relative_pos is None else b.relative_pos.detach().clone()  # (h, N_0, M_0)
        self.register_buffer("pos", pos)
        self.grid = b.bias_size

    def _bias(self, H: int, W: int) -> torch.Tensor:
        (H0, W0), k, h = self.grid, self.k, self.h
        if (H0, W0) == (H, W):
            return self.pos
        # resize the query axes, then the key axes, each with bilinear interpolation
        t = self.pos.view(h, H0, W0, -1).permute(0, 3, 1, 2)  # (h, M_0, H_0, W_0)
        t = F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False)  # (h, M_0, H, W)
        t = t.reshape(h, H0 // k, W0 // k, H * W).permute(0, 3, 1, 2)  # (h, N, h_0, w_0)
        t = F.interpolate(t, size=(H // k, W // k), mode="bilinear", align_corners=False)
        return t.flatten(2)  # (h, N, M)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.h
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        r = t if self.sr is None else self.sr(x).flatten(2).transpose(1, 2)  # (B, M, C)
        q = self.wq(t).view(B, H * W, h, -1).transpose(1, 2)
        k = self.wk(r).view(B, r.shape[1], h, -1).transpose(1, 2)
        v = self.wv(r).view(B, r.shape[1], h, -1).transpose(1, 2)
        bias = None if self.pos is None else self._bias(H, W)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, h, N, d)
        return self.wo(y.transpose(1, 2).reshape(B, H * W, C)).transpose(1, 2).reshape(B, C, H, W)


@_ref("lsa")
class PlainLSA(nn.Module):
    """Chu et al. 2104.13840 Sec. 3.2 Eq. (1), as Twins' code: zero-pad to multiples of k, cut k x k
    groups, MHSA (fused qkv nn.Linear, SDPA, W^O) inside each group, crop."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.k = b.attn.num_heads, b.window_size
        self.qkv, self.proj = linear_from(b.attn.qkv), linear_from(b.attn.out_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        k, h = self.k, self.h
        t = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, (-W) % k, 0, (-H) % k))  # (B, Hp, Wp, C)
        Hp, Wp = t.shape[1:3]
        g = t.view(B, Hp // k, k, Wp // k, k, C).transpose(2, 3).reshape(B, -1, k * k, C)  # (B, G, k k, C)
        q, kk, v = self.qkv(g).view(*g.shape[:3], 3, h, C // h).permute(3, 0, 1, 4, 2, 5)  # (B, G, h, k k, d)
        y = F.scaled_dot_product_attention(q, kk, v).transpose(2, 3).reshape(g.shape)
        y = self.proj(y).view(B, Hp // k, Wp // k, k, k, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        return y[:, :H, :W].permute(0, 3, 1, 2)


@_ref("moa_attention")
class PlainMOA(nn.Module):
    """Patel et al. 2201.12903: z = W_r x; one query token per w x w window, keys/values from the
    window grown by o (``F.unfold``), global MHSA over windows, W_u back to pixels, 1x1 conv."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.w, self.o, self.h, self.D, self.cr = b.window_size, b.overlap, b.num_heads, b.dim, b.reduced
        self.reduce, self.expand = linear_from(b.reduce), linear_from(b.expand)
        self.q, self.kv, self.unembed = linear_from(b.q), linear_from(b.kv), linear_from(b.unembed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        w, o, h, D, cr = self.w, self.o, self.h, self.D, self.cr
        z = self.reduce(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C', H, W)
        z = F.pad(z, (0, (-W) % w, 0, (-H) % w))
        Hp, Wp = z.shape[-2:]
        nh, nw = Hp // w, Wp // w
        qp = z.view(B, cr, nh, w, nw, w).permute(0, 2, 4, 1, 3, 5).reshape(B, nh * nw, cr * w * w)
        kp = F.unfold(z, w + 2 * o, stride=w, padding=o).transpose(1, 2)  # (B, n, C' (w + 2o)^2)
        q = self.q(qp).view(B, -1, h, D // h).transpose(1, 2)
        k, v = self.kv(kp).view(B, -1, 2, h, D // h).permute(2, 0, 3, 1, 4)
        u = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, -1, D)
        y = self.unembed(u).view(B, nh, nw, cr, w, w).permute(0, 1, 4, 2, 5, 3).reshape(B, Hp, Wp, cr)
        return self.expand(y[:, :H, :W]).permute(0, 3, 1, 2)


def _plain_seq(seq: nn.Module) -> nn.Sequential:
    """A conv-BN-act stack's torch layers (copies) in a plain ``nn.Sequential``."""
    return nn.Sequential(*(copy.deepcopy(m) for m in seq))


def _layer_norm(ln: nn.LayerNorm) -> nn.LayerNorm:
    out = nn.LayerNorm(ln.normalized_shape, eps=ln.eps, bias=ln.bias is not None)
    out.load_state_dict(ln.state_dict())
    return out


class _PreNormLayer(nn.Module):
    """z = z + W_o MHSA(LN(z)); z = z + MLP(LN(z)) over (..., N, D), qkv one nn.Linear."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.h = layer.num_heads
        self.norm1, self.norm2 = _layer_norm(layer.norm1), _layer_norm(layer.norm2)
        self.qkv, self.proj = linear_from(layer.qkv), linear_from(layer.proj)
        self.mlp = nn.Sequential(*(copy.deepcopy(m) for m in layer.mlp))

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        *lead, N, D = z.shape
        q, k, v = self.qkv(self.norm1(z)).view(-1, N, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (L, h, N, d)
        z = z + self.proj(y.transpose(1, 2).reshape(*lead, N, D))
        return z + self.mlp(self.norm2(z))


@_ref("mobilevit_block")
class PlainMobileViT(nn.Module):
    """Mehta & Rastegari 2110.02178: X_L = 1x1(conv-BN-act(X)); unfold p x p patches to (P, N, D);
    pre-norm transformer across patches, LN; fold; X_F = conv1x1-BN-act; Y = conv-BN-act([X; X_F])."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.p, self.D = b.patch_size, b.dim
        self.local = nn.Sequential(_plain_seq(b.local[0]), copy.deepcopy(b.local[1]))
        self.layers = nn.ModuleList(_PreNormLayer(layer) for layer in b.layers)
        self.norm = _layer_norm(b.norm)
        self.proj, self.fuse = _plain_seq(b.proj), _plain_seq(b.fuse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        p, D = self.p, self.D
        z = F.pad(self.local(x), (0, (-W) % p, 0, (-H) % p))
        Hp, Wp = z.shape[-2:]
        nh, nw = Hp // p, Wp // p
        # unfold: (B, D, nh, p, nw, p) -> (B, p, p, nh, nw, D) -> (B P, N, D)
        z = z.view(B, D, nh, p, nw, p).permute(0, 3, 5, 2, 4, 1).reshape(B * p * p, nh * nw, D)
        mask = None
        if (Hp, Wp) != (H, W):  # keys at padded pixels are masked
            valid = F.pad(x.new_ones(H, W), (0, Wp - W, 0, Hp - H)) > 0.5
            valid = valid.view(nh, p, nw, p).permute(1, 3, 0, 2).reshape(p * p, 1, 1, nh * nw)
            mask = valid.repeat(B, 1, 1, 1)  # (B P, 1, 1, N), True = attend
        for layer in self.layers:
            z = layer(z, mask)
        z = self.norm(z)
        z = z.view(B, p, p, nh, nw, D).permute(0, 5, 3, 1, 4, 2).reshape(B, D, Hp, Wp)
        return self.fuse(torch.cat([x, self.proj(z[:, :, :H, :W])], 1))


@_ref("outlook_attention")
class PlainOutlook(nn.Module):
    """Yuan et al. 2106.13112 Eq. (1)-(5), as VOLO's code on (B, H, W, C): v = W_v x, A = softmax(W_A
    avgpool(x) / sqrt(d)) per centre (K^2 x K^2), Y = A v over the ``F.unfold`` window, ``F.fold``, W_o."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d, self.K, self.s = b.num_heads, b.head_dim, b.kernel_size, b.stride
        self.v, self.attn, self.proj = linear_from(b.v), linear_from(b.attn), linear_from(b.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h, d, K, s = self.h, self.d, self.K, self.s
        t = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        v = self.v(t).permute(0, 3, 1, 2)  # (B, C, H, W)
        v = F.unfold(v, K, padding=K // 2, stride=s)  # (B, C K K, L)
        v = v.reshape(B, h, d, K * K, -1).permute(0, 1, 4, 3, 2)  # (B, h, L, K K, d)
        L = v.shape[2]
        pooled = F.avg_pool2d(x, s, s, ceil_mode=True).permute(0, 2, 3, 1)  # (B, H/s, W/s, C)
        a = self.attn(pooled).reshape(B, L, h, K * K, K * K).transpose(1, 2)  # (B, h, L, K K, K K)
        a = (a * d ** -0.5).softmax(-1)
        y = (a @ v).permute(0, 1, 4, 3, 2).reshape(B, C * K * K, L)
        y = F.fold(y, (H, W), K, padding=K // 2, stride=s)  # (B, C, H, W)
        return self.proj(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@_ref("parnet_attention")
class PlainParNet(nn.Module):
    """Goyal et al. 2110.07641: y = SiLU(BN(conv1x1 x) + BN(conv3x3 x) + BN(x) * sigmoid(W GAP(BN(x))))."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.conv1x1, self.conv3x3 = _plain_seq(b.conv1x1), _plain_seq(b.conv3x3)
        self.bn, self.fc, self.act = copy.deepcopy(b.skip_norm), linear_from(b.excite), copy.deepcopy(b.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.bn(x)
        sse = s * torch.sigmoid(self.fc(s.mean((2, 3))))[:, :, None, None]
        return self.act(self.conv1x1(x) + self.conv3x3(x) + sse)


@_ref("patch_embed")
class PlainPatchEmbed(nn.Module):
    """Dosovitskiy et al. 2010.11929 Eq. (1): patches flattened to x_p in R^(p p C), z = E x_p + b
    (one nn.Linear), tokens in row-major order, optional LayerNorm."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.p, self.pad = b.patch_size, b.pad
        w = b.proj.weight.detach()  # (D, C, p, p) -> E: (D, p p C), the paper's (p1 p2 c) flattening
        self.E = nn.Linear(w[0].numel(), w.shape[0], bias=b.proj.bias is not None)
        self.E.weight.data.copy_(w.permute(0, 2, 3, 1).reshape(w.shape[0], -1))
        if b.proj.bias is not None:
            self.E.bias.data.copy_(b.proj.bias.detach())
        self.norm = _layer_norm(b.norm) if isinstance(b.norm, nn.LayerNorm) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        if self.pad:
            x = F.pad(x, (0, -x.shape[3] % p, 0, -x.shape[2] % p))
        B, C, H, W = x.shape
        xp = x.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, -1, p * p * C)
        return self.norm(self.E(xp))


class _PlainPSA(nn.Module):
    """Liu et al. 2107.00782 Eq. (1)-(5): A^ch = sigmoid(LN(W_z(W_v x softmax_N(W_q x)))),
    A^sp = sigmoid(softmax_C(GAP(W_q x)) W_v x); parallel A^ch x + A^sp x, sequential A^sp(z) z."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        ch, sp = b.channel_branch, b.spatial_branch
        self.ch_wv, self.ch_wq, self.ch_wz = copy.deepcopy(ch.wv), copy.deepcopy(ch.wq), copy.deepcopy(ch.wz)
        self.ln = _layer_norm(ch.norm)
        self.sp_wq, self.sp_wv = copy.deepcopy(sp.wq), copy.deepcopy(sp.wv)
        self.sequential = b.mode == "sequential"

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        v = self.ch_wv(x).flatten(2)  # (B, C/2, N)
        q = self.ch_wq(x).flatten(2).softmax(-1)  # (B, 1, N)
        z = self.ch_wz(torch.matmul(v, q.transpose(1, 2))[..., None])  # (B, C, 1, 1)
        return torch.sigmoid(self.ln(z.flatten(1)))[:, :, None, None]

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        q = self.sp_wq(x).mean((2, 3)).softmax(-1)[:, None, :]  # (B, 1, C/2)
        v = self.sp_wv(x)  # (B, C/2, H, W)
        return torch.sigmoid(torch.matmul(q, v.flatten(2))).view(x.shape[0], 1, *x.shape[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.channel_gate(x) * x
        if self.sequential:
            return self.spatial_gate(z) * z
        return z + self.spatial_gate(x) * x


@_ref("polarized_parallel")
class PlainPSAParallel(_PlainPSA):
    """Liu et al. 2107.00782 Eq. (1)-(4): y = A^ch(x) x + A^sp(x) x."""


@_ref("polarized_sequential")
class PlainPSASequential(_PlainPSA):
    """Liu et al. 2107.00782 Eq. (1)-(3), (5): y = A^sp(z) z, z = A^ch(x) x."""


def _win_partition(t: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, Hp, Wp, *) -> (B, nW, wh ww, *), Swin's ``window_partition``."""
    B, Hp, Wp = t.shape[:3]
    t = t.reshape(B, Hp // wh, wh, Wp // ww, ww, *t.shape[3:]).transpose(2, 3)
    return t.reshape(B, (Hp // wh) * (Wp // ww), wh * ww, *t.shape[5:])


@_ref("shifted_window_attention")
class PlainSwin(nn.Module):
    """Liu et al. 2103.14030 Sec. 3.2 Eq. (4), as Swin's code: roll by -s, window_partition,
    softmax(Q K^T / sqrt(d) + B_hat[rel] + mask) V per window, W^O, window_reverse, roll back."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d = b.num_heads, b.head_dim
        self.M, self.s = b.window_size, b.shift_size
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)
        self.table = nn.Parameter(b.relative_position_bias_table.detach().clone())  # ((2M-1)^2, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        (Mh, Mw), (sh, sw), h, d = self.M, self.s, self.h, self.d
        wh, sh = (H, 0) if H <= Mh else (Mh, sh)  # an axis within one window: one unshifted window
        ww, sw = (W, 0) if W <= Mw else (Mw, sw)
        t = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, (-W) % ww, 0, (-H) % wh))  # (B, Hp, Wp, C)
        Hp, Wp = t.shape[1:3]
        t = torch.roll(t, (-sh, -sw), (1, 2))
        win = _win_partition(t, wh, ww)  # (B, nW, N, C)
        nW, N = win.shape[1:3]
        q, k, v = self.qkv(win).view(B, nW, N, 3, h, d).permute(3, 0, 1, 4, 2, 5)  # (B, nW, h, N, d)
        # relative position bias: offsets (dy, dx) within the window into the (2M-1)^2 table
        dev = x.device
        ys, xs = torch.meshgrid(torch.arange(wh, device=dev), torch.arange(ww, device=dev), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        rel = (ys[:, None] - ys[None, :] + Mh - 1) * (2 * Mw - 1) + (xs[:, None] - xs[None, :] + Mw - 1)
        attn = (q @ k.transpose(-1, -2)) * d ** -0.5 + self.table[rel].permute(2, 0, 1)  # (B, nW, h, N, N)
        # shifted-window mask: label the sub-windows of the rolled map (the code's slices)
        img = x.new_zeros(Hp, Wp)
        hs = (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)) if sh else (slice(None),)
        ws = (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)) if sw else (slice(None),)
        for i, a in enumerate(hs):
            for j, c in enumerate(ws):
                img[a, c] = 3 * i + j
        real = torch.roll(F.pad(x.new_ones(H, W), (0, Wp - W, 0, Hp - H)), (-sh, -sw), (0, 1)) > 0.5
        lab, real = _win_partition(img[None], wh, ww)[0], _win_partition(real[None], wh, ww)[0]  # (nW, N)
        blocked = (lab[:, :, None] != lab[:, None, :]) | (real[:, :, None] & ~real[:, None, :])
        attn = attn.masked_fill(blocked[:, None], float("-inf"))
        y = (attn.softmax(-1) @ v).transpose(2, 3).reshape(B, nW, N, h * d)
        y = self.proj(y).view(B, Hp // wh, Wp // ww, wh, ww, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        y = torch.roll(y, (sh, sw), (1, 2))
        return y[:, :H, :W].permute(0, 3, 1, 2)


@_ref("shuffle_window_attention")
class PlainShuffleWindow(nn.Module):
    """Huang et al. 2106.03650, as its code's rearranges: window (i, j) = {x[a g_h + i, b g_w + j]}
    ('(ws1 hh) (ws2 ww)'), per window softmax(Q K^T / sqrt(d) + B_hat[rel]) V, W^O, tokens put back."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d, self.M, self.shuffle = b.num_heads, b.head_dim, b.window_size, b.shuffle
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)
        self.table = nn.Parameter(b.relative_position_bias_table.detach().clone())

    def _split(self, t: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
        """(B, Hp, Wp, *) -> (B, g_h, g_w, wh, ww, *): shuffled '(ws hh)' or regular '(hh ws)' axes."""
        B, Hp, Wp = t.shape[:3]
        gh, gw = Hp // wh, Wp // ww
        if self.shuffle:
            return t.reshape(B, wh, gh, ww, gw, *t.shape[3:]).permute(0, 2, 4, 1, 3, *range(5, t.dim() + 2))
        return t.reshape(B, gh, wh, gw, ww, *t.shape[3:]).permute(0, 1, 3, 2, 4, *range(5, t.dim() + 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        (Mh, Mw), h, d = self.M, self.h, self.d
        wh, ww = min(H, Mh), min(W, Mw)
        t = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, (-W) % ww, 0, (-H) % wh))  # (B, Hp, Wp, C)
        Hp, Wp = t.shape[1:3]
        gh, gw, N = Hp // wh, Wp // ww, wh * ww
        win = self._split(t, wh, ww).reshape(B, gh * gw, N, C)
        q, k, v = self.qkv(win).view(B, gh * gw, N, 3, h, d).permute(3, 0, 1, 4, 2, 5)  # (B, nW, h, N, d)
        dev = x.device
        ys, xs = torch.meshgrid(torch.arange(wh, device=dev), torch.arange(ww, device=dev), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        rel = (ys[:, None] - ys[None, :] + Mh - 1) * (2 * Mw - 1) + (xs[:, None] - xs[None, :] + Mw - 1)
        attn = (q @ k.transpose(-1, -2)) * d ** -0.5 + self.table[rel].permute(2, 0, 1)
        real = F.pad(x.new_ones(1, H, W), (0, Wp - W, 0, Hp - H)) > 0.5
        real = self._split(real, wh, ww).reshape(gh * gw, N)
        attn = attn.masked_fill(~real[:, None, None, :], float("-inf"))  # padded keys
        y = self.proj((attn.softmax(-1) @ v).transpose(2, 3).reshape(B, gh, gw, wh, ww, h * d))
        if self.shuffle:  # back: (B, g_h, g_w, wh, ww, C) -> (B, wh, g_h, ww, g_w, C)
            y = y.permute(0, 3, 1, 4, 2, 5)
        else:
            y = y.permute(0, 1, 3, 2, 4, 5)
        return y.reshape(B, Hp, Wp, C)[:, :H, :W].permute(0, 3, 1, 2)


@_ref("spatial_reduction_attention")
class PlainSRA(nn.Module):
    """Wang et al. 2102.12122 Eq. (3)-(4), as PVT's code: q = W^Q x; SR(x) = LN(Conv_{R, stride R}(x));
    k, v = W^KV SR(x) (one nn.Linear); softmax(Q K^T / sqrt(d)) V per head; W^O."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h = b.attn.num_heads
        wq, wk, wv = _split_linear(b.attn.qkv, 3)
        self.q = wq
        self.kv = nn.Linear(wk.in_features, 2 * wk.out_features, bias=wk.bias is not None)
        self.kv.weight.data.copy_(torch.cat([wk.weight.data, wv.weight.data]))
        if wk.bias is not None:
            self.kv.bias.data.copy_(torch.cat([wk.bias.data, wv.bias.data]))
        self.proj = linear_from(b.attn.out_proj)
        self.sr = copy.deepcopy(b.sr) if b.sr is not None else None
        self.norm = _layer_norm(b.norm) if b.sr is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.h
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        r = t if self.sr is None else self.norm(self.sr(x).flatten(2).transpose(1, 2))  # (B, M, C)
        q = self.q(t).view(B, H * W, h, C // h).transpose(1, 2)
        k, v = self.kv(r).view(B, -1, 2, h, C // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        return self.proj(y).transpose(1, 2).reshape(B, C, H, W)


@_ref("hierarchical_mhsa")
class PlainHMHSA(nn.Module):
    """Liu et al. 2106.03180 Sec. 3, as HAT-Net's code: A0 = MHSA within G x G grids of GN(x) W^qkv,
    X1 = GN(x + A0), P = GN(AvgPool_r X1), A1 = softmax((X1 W^q)(P W^k)^T / sqrt(d)) P W^v,
    out = (A1 + X1) W^p (G = 1: MHSA(GN(x)) W^p)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d, self.G, self.r = b.num_heads, b.head_dim, b.grid_size, b.ds_ratio
        self.norm, self.qkv, self.proj = copy.deepcopy(b.norm), copy.deepcopy(b.qkv), copy.deepcopy(b.proj)
        if self.G > 1:
            self.grid_norm, self.ds_norm = copy.deepcopy(b.grid_norm), copy.deepcopy(b.ds_norm)
            self.q, self.kv = copy.deepcopy(b.q), copy.deepcopy(b.kv)

    def _local(self, qkv: torch.Tensor) -> torch.Tensor:
        B, _, H, W = qkv.shape
        G, h, d = self.G, self.h, self.d
        qkv = F.pad(qkv, (0, (-W) % G, 0, (-H) % G))
        Hp, Wp = qkv.shape[-2:]
        gh, gw = Hp // G, Wp // G
        q, k, v = qkv.view(B, 3, h, d, gh, G, gw, G).permute(1, 0, 4, 6, 2, 5, 7, 3).reshape(
            3, B, gh * gw, h, G * G, d)
        attn = (q @ k.transpose(-1, -2)) * d ** -0.5  # (B, n, h, G^2, G^2)
        real = F.pad(qkv.new_ones(H, W), (0, Wp - W, 0, Hp - H)) > 0.5
        real = real.view(gh, G, gw, G).transpose(1, 2).reshape(gh * gw, G * G)  # (n, G^2)
        attn = attn.masked_fill(~real[:, None, None, :], float("-inf"))  # padded keys
        a = (attn.softmax(-1) @ v).view(B, gh, gw, h, G, G, d).permute(0, 3, 6, 1, 4, 2, 5)
        return a.reshape(B, h * d, Hp, Wp)[:, :, :H, :W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h, d = self.h, self.d
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        if self.G == 1:
            q, k, v = qkv.view(B, 3, h, d, H * W).permute(1, 0, 2, 4, 3)
            a = F.scaled_dot_product_attention(q, k, v)
            return self.proj(a.transpose(-1, -2).reshape(B, C, H, W))
        x1 = self.grid_norm(x + self._local(qkv))
        p = F.avg_pool2d(x1, self.r, self.r, ceil_mode=True) if self.r > 1 else x1
        q = self.q(x1).view(B, h, d, H * W).transpose(-1, -2)  # (B, h, N, d)
        k, v = self.kv(self.ds_norm(p)).view(B, 2, h, d, -1).transpose(-1, -2).unbind(1)  # (B, h, M, d)
        a = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(B, C, H, W)
        return self.proj(a + x1)


@_ref("patchwise_transformer")
class PlainPatchwiseTransformer(nn.Module):
    """Yan et al. 2104.13497 Sec. 3, as ConTNet's code: per P x P patch, X + concat(E_row[i], E_col[j]),
    then ``nn.TransformerEncoderLayer`` (post-norm, GELU) over the patch's P^2 tokens."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        enc = b.encoder
        C, self.p = b.dim, b.patch_size
        self.layer = nn.TransformerEncoderLayer(C, enc.attn.num_heads, enc.fc1.out_features, dropout=0.0,
                                                activation="gelu", batch_first=True,
                                                norm_first=enc.norm_first, layer_norm_eps=enc.norm1.eps)
        a = self.layer.self_attn
        for (w, bias), src in (((a.in_proj_weight, a.in_proj_bias), enc.attn.qkv),
                               ((a.out_proj.weight, a.out_proj.bias), enc.attn.out_proj)):
            w.data.copy_(src.weight.detach())
            bias.data.copy_(src.bias.detach() if src.bias is not None else torch.zeros_like(bias))
        for mine, theirs in ((self.layer.linear1, enc.fc1), (self.layer.linear2, enc.fc2),
                             (self.layer.norm1, enc.norm1), (self.layer.norm2, enc.norm2)):
            mine.load_state_dict(theirs.state_dict())
        p, half = self.p, C // 2
        pos = torch.cat([b.pos_row.detach()[:, None, :].expand(p, p, half),
                         b.pos_col.detach()[None, :, :].expand(p, p, half)], -1)  # (P, P, C)
        self.pos = nn.Parameter(pos.reshape(p * p, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        p = self.p
        t = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, (-W) % p, 0, (-H) % p))  # (B, Hp, Wp, C)
        Hp, Wp = t.shape[1:3]
        nh, nw = Hp // p, Wp // p
        z = t.view(B, nh, p, nw, p, C).transpose(2, 3).reshape(B * nh * nw, p * p, C) + self.pos
        pad = None
        if (Hp, Wp) != (H, W):  # padded tokens are masked out as keys
            real = F.pad(x.new_ones(H, W), (0, Wp - W, 0, Hp - H)) > 0.5
            pad = ~real.view(nh, p, nw, p).transpose(1, 2).reshape(1, nh * nw, p * p)
            pad = pad.expand(B, -1, -1).reshape(-1, p * p)
        z = self.layer(z, src_key_padding_mask=pad)
        z = z.view(B, nh, nw, p, p, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        return z[:, :H, :W].permute(0, 3, 1, 2)
