"""Plain-PyTorch references of image-attention blocks, ACmix to the global filter (issue 19,
goal 3; the rules they follow are in ``plain_common.py``)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from plain_common import linear_from, reference_registry  # beside this file
from torch import nn

REFS, _ref = reference_registry()


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


def _torch_copy(m: nn.Module) -> nn.Module:
    """A copy of a module built only from ``torch.nn`` layers (conv, norms, activations)."""
    assert all(type(s).__module__.startswith("torch.nn") for s in m.modules()), m
    return copy.deepcopy(m)


def _windows(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """Swin's window_partition: (B, H, W, C) -> (B nW, wh ww, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def _unwindows(x: torch.Tensor, wh: int, ww: int, B: int, H: int, W: int) -> torch.Tensor:
    """Swin's window_reverse: (B nW, wh ww, C) -> (B, H, W, C)."""
    x = x.view(B, H // wh, W // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, -1)


def _swin_mask(H: int, W: int, wh: int, ww: int, sh: int, sw: int, cross: float) -> torch.Tensor:
    """Swin's attention mask of the rolled map: (nW, N, N), ``cross`` between sub-windows."""
    img = torch.zeros(1, H, W, 1)
    cnt = 0
    for hs in (slice(0, -wh), slice(-wh, -sh if sh else None), slice(-sh, None) if sh else slice(0, 0)):
        for ws in (slice(0, -ww), slice(-ww, -sw if sw else None), slice(-sw, None) if sw else slice(0, 0)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    lab = _windows(img, wh, ww)[..., 0]  # (nW, N)
    diff = lab[:, None, :] != lab[:, :, None]
    return torch.zeros(diff.shape).masked_fill(diff, cross)


@_ref("cosine_window_attention")
class PlainCosineWindowAttention(nn.Module):
    """Liu et al. 2111.09883, eq. (2)-(4) as the Swin V2 code: roll, window partition,
    softmax(cos(q, k) / tau + 16 sigmoid(G(log-spaced offsets)) + mask) V, window reverse,
    roll back (sizes a multiple of the window, or one window)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d = b.num_heads, b.head_dim
        self.window, self.shift, self.pretrained = b.window_size, b.shift_size, b.pretrained_window_size
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)
        self.q_bias = None if b.q_bias is None else nn.Parameter(b.q_bias.detach().clone())
        self.v_bias = None if b.v_bias is None else nn.Parameter(b.v_bias.detach().clone())
        self.logit_scale = nn.Parameter(b.logit_scale.detach().clone())  # (h, 1, 1)
        self.cpb1, self.cpb2 = linear_from(b.cpb_mlp[0]), linear_from(b.cpb_mlp[2])

    def position_bias(self, wh: int, ww: int) -> torch.Tensor:
        ph, pw = self.pretrained if self.pretrained[0] > 0 else (wh, ww)
        rh = torch.arange(-(wh - 1), wh, dtype=torch.float32) / max(ph - 1, 1)
        rw = torch.arange(-(ww - 1), ww, dtype=torch.float32) / max(pw - 1, 1)
        table = torch.stack(torch.meshgrid(rh, rw, indexing="ij"), -1) * 8  # (2wh-1, 2ww-1, 2)
        table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
        table = self.cpb2(torch.relu(self.cpb1(table))).view(-1, self.h)  # (R, h)
        coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
        index = (rel[..., 0] + wh - 1) * (2 * ww - 1) + rel[..., 1] + ww - 1
        return 16 * torch.sigmoid(table[index.flatten()].view(wh * ww, wh * ww, -1).permute(2, 0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        (wh, ww), (sh, sw) = self.window, self.shift
        if H <= wh:  # one window along the axis, no shift (as the released code)
            wh, sh = H, 0
        if W <= ww:
            ww, sw = W, 0
        t = x.permute(0, 2, 3, 1)
        if sh or sw:
            t = torch.roll(t, (-sh, -sw), (1, 2))
        win = _windows(t, wh, ww)  # (B nW, N, C)
        Bn, N, _ = win.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = F.linear(win, self.qkv.weight, bias).view(Bn, N, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)  # (B nW, h, N, N)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        attn = attn + self.position_bias(wh, ww)
        if sh or sw:
            mask = _swin_mask(H, W, wh, ww, sh, sw, -100.0)  # (nW, N, N)
            nW = mask.shape[0]
            attn = (attn.view(B, nW, self.h, N, N) + mask[None, :, None]).view(Bn, self.h, N, N)
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(Bn, N, C)
        t = _unwindows(self.proj(y), wh, ww, B, H, W)
        if sh or sw:
            t = torch.roll(t, (sh, sw), (1, 2))
        return t.permute(0, 3, 1, 2)


@_ref("cot")
class PlainCoT(nn.Module):
    """Li 2107.12292, eq. (1)-(3) as the CoTNet release's CotLayer: K_1 = conv-BN-ReLU(x),
    A = GN(W_delta ReLU(BN(W_theta [x; K_1]))), K_2(p) = sum_o A(p, o) V(p + o) with channel c using
    head c mod G, then radix-2 split attention over {K_2, K_1}."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.key_embed, self.embed = _torch_copy(b.key_embed), _torch_copy(b.embed)
        self.conv1x1, self.bn, self.act = _torch_copy(b.conv1x1), _torch_copy(b.bn), _torch_copy(b.act)
        self.se = _torch_copy(b.se)
        self.k, self.g = b.kernel_size, b.num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        k, g = self.k, self.g
        k1 = self.key_embed(x)
        a = self.embed(torch.cat([x, k1], 1)).view(B, g, k * k, H, W)
        a = a.repeat(1, C // g, 1, 1, 1)  # (B, C, K, H, W): channel c takes head c mod G
        v = F.unfold(self.conv1x1(x), k, padding=k // 2).view(B, C, k * k, H, W)
        k2 = self.act(self.bn((a * v).sum(2)))
        s = self.se((k1 + k2).mean((2, 3), keepdim=True)).view(B, C, 2).softmax(2)
        return s[:, :, 0, None, None] * k2 + s[:, :, 1, None, None] * k1


@_ref("criss_cross_attention")
class PlainCrissCross(nn.Module):
    """Huang et al. 1811.11721, eq. (1)-(2) as CCNet's pure-PyTorch module: column and row energies
    by bmm (the pixel itself masked from the column), one softmax over both, y = gamma A V + x."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.query, self.key, self.value = _conv1x1(b.query), _conv1x1(b.key), _conv1x1(b.value)
        self.gamma = nn.Parameter(b.gamma.detach().clone())
        self.recurrence = b.recurrence

    def _once(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)
        q_h = q.permute(0, 3, 1, 2).reshape(B * W, -1, H).transpose(1, 2)  # (B W, H, C'): columns
        q_w = q.permute(0, 2, 1, 3).reshape(B * H, -1, W).transpose(1, 2)  # (B H, W, C'): rows
        k_h, k_w = k.permute(0, 3, 1, 2).reshape(B * W, -1, H), k.permute(0, 2, 1, 3).reshape(B * H, -1, W)
        v_h, v_w = v.permute(0, 3, 1, 2).reshape(B * W, -1, H), v.permute(0, 2, 1, 3).reshape(B * H, -1, W)
        inf = torch.diag(torch.full((H,), float("-inf")))  # the pixel itself, counted in its row
        e_h = (torch.bmm(q_h, k_h) + inf).view(B, W, H, H).permute(0, 2, 1, 3)  # (B, H, W, H)
        e_w = torch.bmm(q_w, k_w).view(B, H, W, W)
        a = torch.cat([e_h, e_w], 3).softmax(3)
        a_h = a[..., :H].permute(0, 2, 1, 3).reshape(B * W, H, H)
        a_w = a[..., H:].reshape(B * H, W, W)
        out_h = torch.bmm(v_h, a_h.transpose(1, 2)).view(B, W, -1, H).permute(0, 2, 3, 1)
        out_w = torch.bmm(v_w, a_w.transpose(1, 2)).view(B, H, -1, W).permute(0, 2, 1, 3)
        return self.gamma * (out_h + out_w) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = self._once(x)
        return x


@_ref("crossformer_cel")
class PlainCrossFormerCEL(nn.Module):
    """Wang et al. 2108.00154, Sec. 3.1: y = LN([conv_{K_1, s}(x); conv_{K_2, s}(x); ...]) over channels."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_copy_conv(c) for c in b.convs)
        self.norm = None
        if isinstance(b.norm, nn.LayerNorm):
            self.norm = nn.LayerNorm(b.dim_out, eps=b.norm.eps)
            self.norm.load_state_dict(b.norm.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([conv(x) for conv in self.convs], 1)
        return y if self.norm is None else self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _PlainCrossFormerAttention(nn.Module):
    """Group attention of CrossFormer's code on tokens (sizes a multiple of the group / interval)."""

    long: bool

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)
        self.h, self.d, self.size = b.num_heads, b.head_dim, b.size
        self.dpb = None if b.dpb is None else _torch_copy(b.dpb.mlp)

    def position_bias(self, gh: int, gw: int) -> torch.Tensor:
        """DPB(i - j): the MLP on every offset of a gh x gw group, gathered to (h, M, M)."""
        offs = torch.stack(torch.meshgrid(torch.arange(1 - gh, gh), torch.arange(1 - gw, gw), indexing="ij"))
        pos = self.dpb(offs.flatten(1).t().float())  # ((2gh-1)(2gw-1), h)
        coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (M, M, 2)
        index = (rel[..., 0] + gh - 1) * (2 * gw - 1) + rel[..., 1] + gw - 1
        return pos[index.flatten()].view(gh * gw, gh * gw, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        sh, sw = min(self.size[0], H), min(self.size[1], W)
        t = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if self.long:  # LDA: pixels I apart, group (i mod I, j mod I); gh = H / I members a side
            gh, gw = H // sh, W // sw
            t = t.reshape(B, gh, sh, gw, sw, C).permute(0, 2, 4, 1, 3, 5)
        else:  # SDA: G x G adjacent pixels
            gh, gw = sh, sw
            t = t.reshape(B, H // sh, sh, W // sw, sw, C).permute(0, 1, 3, 2, 4, 5)
        g = t.reshape(-1, gh * gw, C)  # (B n, M, C)
        q, k, v = self.qkv(g).view(g.shape[0], gh * gw, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        bias = None if self.dpb is None else self.position_bias(gh, gw)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(g.shape)
        y = self.proj(y)
        if self.long:
            y = y.view(B, sh, sw, gh, gw, C).permute(0, 3, 1, 4, 2, 5)
        else:
            y = y.view(B, H // sh, W // sw, sh, sw, C).permute(0, 1, 3, 2, 4, 5)
        return y.reshape(B, H, W, C).permute(0, 3, 1, 2)


@_ref("crossformer_sda")
class PlainCrossFormerSDA(_PlainCrossFormerAttention):
    """Wang et al. 2108.00154, Sec. 3.2 (SDA): softmax(q k^T / sqrt(d) + DPB(i - j)) v within each
    G x G group of adjacent pixels, as CrossFormer's code (tokens, nn.Linear, SDPA)."""

    long = False


@_ref("crossformer_lda")
class PlainCrossFormerLDA(_PlainCrossFormerAttention):
    """Wang et al. 2108.00154, Sec. 3.2 (LDA): softmax(q k^T / sqrt(d) + DPB(i - j)) v within each
    group of pixels sampled every I pixels, as CrossFormer's code (tokens, nn.Linear, SDPA)."""

    long = True


@_ref("danet")
class PlainDANet(nn.Module):
    """Fu et al. 1809.02983, eq. (2) (PAM, as the official PAM_Module: bmm energies, softmax)
    and eq. (4) (CAM: softmax_i(x_i . x_j), the paper's sign), summed."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        p = b.position
        self.query, self.key, self.value = _conv1x1(p.query), _conv1x1(p.key), _conv1x1(p.value)
        self.alpha = nn.Parameter(p.alpha.detach().clone())
        self.beta = nn.Parameter(b.channel.beta.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        # position attention: E_j = alpha sum_i s_ji D_i + x_j
        q = self.query(x).view(B, -1, H * W).transpose(1, 2)  # (B, N, c)
        s = torch.bmm(q, self.key(x).view(B, -1, H * W)).softmax(-1)  # (B, N, N)
        pam = torch.bmm(self.value(x).view(B, C, H * W), s.transpose(1, 2)).view(B, C, H, W)
        # channel attention: E_j = beta sum_i x_ji x_i + x_j
        a = x.view(B, C, H * W)
        cam = torch.bmm(torch.bmm(a, a.transpose(1, 2)).softmax(-1), a).view(B, C, H, W)
        return (self.alpha * pam + x) + (self.beta * cam + x)


@_ref("deformable_attention")
class PlainDeformableAttention(nn.Module):
    """Xia et al. 2201.00520, eq. (8)-(10) as DAT's code: offsets from a depthwise-conv/LN/GELU net on
    q, keys and values at bilinear samples of x (grid_sample, align_corners), a bias bilinearly read
    from the relative-position table at each continuous displacement, SDPA. Offsets in pixels
    (s r tanh) and a fixed +-R table, as our block (see its deviations)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.q, self.k, self.v, self.proj = _conv1x1(b.q), _conv1x1(b.k), _conv1x1(b.v), _conv1x1(b.proj)
        off = b.offset
        self.off_conv, self.off_proj = _copy_conv(off[0]), _copy_conv(off[3])
        self.off_norm = nn.LayerNorm(off[1].normalized_shape, eps=off[1].eps)
        self.off_norm.load_state_dict(off[1].state_dict())
        self.table = None if b.rpe_table is None else nn.Parameter(b.rpe_table.detach().clone())
        self.h, self.g, self.d, self.r = b.num_heads, b.num_groups, b.head_dim, b.stride
        self.s, self.R = b.offset_range, b.pos_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        g, h, d, r = self.g, self.h, self.d, self.r
        q = self.q(x)
        # offsets: theta(q) per group, (B g, Hk, Wk, 2) in pixels as (row, col)
        o = self.off_conv(q.reshape(B * g, C // g, H, W))
        o = self.off_proj(F.gelu(self.off_norm(o.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)))
        Hk, Wk = o.shape[-2:]
        o = self.s * r * o.tanh().permute(0, 2, 3, 1)
        rows = (torch.arange(Hk, dtype=x.dtype) * r + (r - 1) / 2).clamp(max=H - 1)
        cols = (torch.arange(Wk, dtype=x.dtype) * r + (r - 1) / 2).clamp(max=W - 1)
        pos = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1) + o  # (B g, Hk, Wk, 2)
        # normalised (x, y) grid for grid_sample with align_corners=True: pixel p -> 2 p / (L - 1) - 1
        grid = torch.stack([2 * pos[..., 1] / (W - 1) - 1, 2 * pos[..., 0] / (H - 1) - 1], -1)
        xs = F.grid_sample(x.reshape(B * g, C // g, H, W), grid, mode="bilinear", align_corners=True)
        xs = xs.reshape(B, C, Hk, Wk)
        M = Hk * Wk
        qh = q.view(B, h, d, H * W).transpose(-2, -1)
        kh = self.k(xs).view(B, h, d, M).transpose(-2, -1)
        vh = self.v(xs).view(B, h, d, M).transpose(-2, -1)
        bias = None
        if self.table is not None:
            qy, qx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
            qpos = torch.stack([qy, qx], -1).to(x.dtype).reshape(1, H * W, 1, 2)
            disp = (qpos - pos.reshape(B * g, 1, M, 2)) / self.R  # (B g, N, M, 2), table edge at +-1
            table = self.table.reshape(g, h // g, *self.table.shape[1:]).repeat(B, 1, 1, 1)  # (B g, h/g, ...)
            bias = F.grid_sample(table, disp.flip(-1), mode="bilinear", padding_mode="border",
                                 align_corners=True).reshape(B, h, H * W, M)
        y = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias)
        return self.proj(y.transpose(-2, -1).reshape(B, C, H, W))


@_ref("double_attention")
class PlainDoubleAttention(nn.Module):
    """Chen et al. 1810.11579, eq. (4)-(5): G = A softmax_N(B)^T (gather), Z = G softmax_n(V)
    (distribute), y = x + W_z Z; written with torch.bmm."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.phi, self.theta, self.rho = _conv1x1(b.phi), _conv1x1(b.theta), _conv1x1(b.rho)
        self.proj, self.residual = _conv1x1(b.proj), b.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        a = self.phi(x).view(B, -1, H * W)  # (B, m, N)
        att_gather = F.softmax(self.theta(x).view(B, -1, H * W), dim=-1)  # (B, n, N)
        att_distribute = F.softmax(self.rho(x).view(B, -1, H * W), dim=1)  # (B, n, N)
        global_desc = torch.bmm(a, att_gather.permute(0, 2, 1))  # (B, m, n)
        z = torch.bmm(global_desc, att_distribute).view(B, -1, H, W)
        y = self.proj(z)
        return x + y if self.residual else y


@_ref("epsa")
class PlainEPSA(nn.Module):
    """Zhang et al. 2105.14447, eq. (1)-(6) as the release's PSAModule: each scale's grouped conv on
    the whole input, one shared SE weight per scale, softmax across scales, weighted scales
    concatenated in the paper's order."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_copy_conv(c) for c in b.convs)
        self.fc1, self.act, self.fc2 = _conv1x1(b.se[0]), _torch_copy(b.se[1]), _conv1x1(b.se[2])
        self.split = b.split

    def se_weight(self, f: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(f, 1)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        feats = [conv(x) for conv in self.convs]
        att = torch.cat([self.se_weight(f) for f in feats], 1).view(B, len(feats), self.split, 1, 1)
        att = att.softmax(1)
        weighted = torch.cat(feats, 1).view(B, len(feats), self.split, H, W) * att
        return weighted.reshape(B, C, H, W)


@_ref("gated_positional_self_attention")
class PlainGPSA(nn.Module):
    """d'Ascoli et al. 2103.10697, eq. (5)-(6) as ConViT's GPSA: A = (1 - sigma(lambda))
    softmax(Q K^T / sqrt(d)) + sigma(lambda) softmax(v_pos . r_ij), renormalised by its row sums,
    y = W_out (A V); offsets r_ij = (dx, dy, dx^2 + dy^2) built for an H x W grid (ConViT's code
    assumes a square one)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.qkv, self.out_proj = linear_from(b.qkv), linear_from(b.out_proj)
        self.pos_proj = linear_from(b.pos_proj)
        self.gating_param = nn.Parameter(b.gating_param.detach().clone())
        self.h, self.d = b.num_heads, b.head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        N = H * W
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(t).reshape(B, N, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        ys, xs = ys.flatten().float(), xs.flatten().float()
        dx, dy = xs[None, :] - xs[:, None], ys[None, :] - ys[:, None]
        rel = torch.stack([dx, dy, dx**2 + dy**2], -1)  # (N, N, 3)
        pos_score = self.pos_proj(rel).permute(2, 0, 1).softmax(-1)  # (h, N, N)
        patch_score = (q @ k.transpose(-2, -1) / math.sqrt(self.d)).softmax(-1)  # (B, h, N, N)
        gate = torch.sigmoid(self.gating_param).view(1, -1, 1, 1)
        attn = (1.0 - gate) * patch_score + gate * pos_score
        attn = attn / attn.sum(-1, keepdim=True)
        y = self.out_proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        return y.transpose(1, 2).reshape(B, C, H, W)


@_ref("global_filter")
class PlainGlobalFilter(nn.Module):
    """Rao et al. 2107.00645, eq. (3)-(4) as GFNet's GlobalFilter on channels-last tokens:
    y = IFFT2(K * FFT2(x)) (orthonormal rfft2); at another input size K's real and imaginary parts
    are first resized bilinearly (our block's extension, see its deviations)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.complex_weight = nn.Parameter(b.weight.detach().clone())  # (C, h, w // 2 + 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, C, H, W = x.shape
        weight = self.complex_weight
        if weight.shape[1:3] != (H, W // 2 + 1):
            w = F.interpolate(weight.permute(3, 0, 1, 2).reshape(1, 2 * C, *weight.shape[1:3]),
                              size=(H, W // 2 + 1), mode="bilinear", align_corners=True)
            weight = w.view(2, C, H, W // 2 + 1).permute(1, 2, 3, 0)
        t = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        spec = torch.fft.rfft2(t, dim=(1, 2), norm="ortho")  # (B, H, W // 2 + 1, C)
        spec = spec * torch.view_as_complex(weight.contiguous()).permute(1, 2, 0)
        return torch.fft.irfft2(spec, s=(H, W), dim=(1, 2), norm="ortho").permute(0, 3, 1, 2)
