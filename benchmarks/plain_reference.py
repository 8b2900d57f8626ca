"""Ours against the same algorithm written plainly in PyTorch (issue 19, goal 3).

Each reference below is written from the paper as a reader would write it in plain
PyTorch (``nn.Linear`` / ``nn.Conv2d`` / ``F.scaled_dot_product_attention``, channels-last
tokens where the paper's code works on tokens), takes its weights from our block, and
must give our block's output (max abs difference <= 1e-4 relative to the output's scale,
checked before timing; a row whose reference disagrees is reported, not timed).

Timing: eval mode under ``torch.no_grad``, one intra-op thread, at two configs per block:
``example x8`` (the registered example config and input size, batch 8: the sub-ms regime
where fixed per-call overhead shows) and ``large`` (width 64, images 32x32 / 256 tokens,
batch 8). Noise handling: ``--passes`` passes; in each pass ours and the reference are
timed call by call, ``--reps`` calls each, in an order that alternates from pass to pass,
and each pass keeps its median call. The table gives the min over passes of those
medians (min-of-medians) for both, their ratio ``plain / ours`` (> 1: ours faster), the
quartiles of the per-pass ratios, and each side's spread (max / min - 1 of its pass
medians). A block is flagged below parity only when even its upper-quartile ratio is
under 0.95 (``below``); otherwise a ratio under 0.95 is within noise (``noise?``). The
geometric mean of the ratios is printed per config.

    PYTHONPATH=src python benchmarks/plain_reference.py
    PYTHONPATH=src python benchmarks/plain_reference.py --only se s2_attention --format markdown

With ``--compile`` ours runs as ``blockzoo.compile(block)`` (inductor; compiled during the
warm-up, ~10-30 s per row on a small CPU) against the same plain *eager* reference, and the
geometric mean is also printed over ``ELEMENTWISE``, the blocks whose time is dominated by
elementwise and reduction work (pooling, gates, norms: what inductor fuses), issue 19 goal 4:

    PYTHONPATH=src python benchmarks/plain_reference.py --compile --only se eca sge simam coord_attention grn
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from plain_common import linear_from, reference_registry  # these six beside this script
from plain_conv_mlp import REFS as CONV_MLP_REFS
from plain_elementwise import REFS as ELEMENTWISE_REFS
from plain_image_attention_a import REFS as IMAGE_A_REFS
from plain_image_attention_b import REFS as IMAGE_B_REFS
from plain_tokens import REFS as TOKEN_REFS
from torch import nn

import blockzoo
from blockzoo.bench.report import FORMATS, render

REFS, reference = reference_registry()
# Blocks whose forward is mostly elementwise / reduction work (no large matmul or conv):
# the rows over which --compile's geometric mean is reported (the last three's references
# are in plain_elementwise.py).
ELEMENTWISE = ("se", "eca", "sge", "simam", "coord_attention", "grn", "cbam", "triplet_attention",
               "shuffle_attention")


# ---------------------------------------------------------------- channel / spatial gates


@reference("se")
class PlainSE(nn.Module):
    """Hu et al. 1709.01507: s = sigmoid(W2 relu(W1 GAP(x))), y = s * x (two nn.Linear)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.fc1, self.fc2 = linear_from(b.fc1), linear_from(b.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * s[:, :, None, None]


@reference("eca")
class PlainECA(nn.Module):
    """Wang et al. 1910.03151: s = sigmoid(conv1d_k(GAP(x))) across channels, y = s * x."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, b.kernel_size, padding=b.kernel_size // 2, bias=False)
        self.conv.weight.data.copy_(b.conv.weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.conv(x.mean((2, 3))[:, None, :]))  # (B, 1, C)
        return x * s[:, 0, :, None, None]


@reference("sge")
class PlainSGE(nn.Module):
    """Li et al. 1905.09646: per group, c = sum_c GAP(x) * x, normalised over space, gate."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.groups, self.eps = b.groups, b.eps
        self.weight = nn.Parameter(b.weight.detach().clone())
        self.bias = nn.Parameter(b.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = x.view(B * self.groups, -1, H, W)
        t = (x * x.mean((2, 3), keepdim=True)).sum(1).view(B * self.groups, -1)
        t = (t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + self.eps)
        t = t.view(B, self.groups, H, W) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return (x * torch.sigmoid(t.view(B * self.groups, 1, H, W))).view(B, C, H, W)


@reference("simam")
class PlainSimAM(nn.Module):
    """Yang et al. (ICML 2021): 1/e* = (x - mu)^2 / (4 (var + lambda)) + 1/2, y = sigmoid(1/e*) x."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.lam = b.lambda_

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean((2, 3), keepdim=True)).pow(2)
        return x * torch.sigmoid(d / (4 * (d.sum((2, 3), keepdim=True) / n + self.lam)) + 0.5)


@reference("coord_attention")
class PlainCoordAttention(nn.Module):
    """Hou et al. 2103.02907: pool along W and along H, shared 1x1 conv-BN-act, two gates."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.conv1 = linear_from(b.conv1)
        self.conv_h, self.conv_w = linear_from(b.conv_h), linear_from(b.conv_w)
        self.norm, self.act = b.norm, b.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H = x.shape[2]
        z = torch.cat([x.mean(3), x.mean(2)], 2)  # (B, C, H + W)
        f = self.conv1(z.transpose(1, 2)).transpose(1, 2)  # (B, c, H + W)
        f = self.act(self.norm(f[..., None]))[..., 0]
        gh = torch.sigmoid(self.conv_h(f[..., :H].transpose(1, 2))).transpose(1, 2)  # (B, C, H)
        gw = torch.sigmoid(self.conv_w(f[..., H:].transpose(1, 2))).transpose(1, 2)  # (B, C, W)
        return x * gh[..., None] * gw[:, :, None, :]


@reference("grn")
class PlainGRN(nn.Module):
    """Woo et al. 2301.00808, Algorithm 1 on NCHW: G = ||X||_2 over (H, W), N = G / (mean_c G + eps),
    Y = gamma (X N) + beta + X."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.gamma = nn.Parameter(b.weight.detach().clone().view(1, -1, 1, 1))
        self.beta = nn.Parameter(b.bias.detach().clone().view(1, -1, 1, 1))
        self.eps = b.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.norm(x, p=2, dim=(2, 3), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + self.eps)
        return self.gamma * (x * n) + self.beta + x


# ---------------------------------------------------------------- token-style image blocks


def _shift(x: torch.Tensor, order: str) -> torch.Tensor:
    """S2-MLP's shift on channels-last (B, H, W, C) by four channel quarters; borders kept."""
    c = x.shape[-1] // 4
    out = x.clone()
    a, b = (1, 2) if order == "hw" else (2, 1)  # axis of the first pair, of the second pair
    for i, (axis, step) in enumerate(((a, 1), (a, -1), (b, 1), (b, -1))):
        src = x[..., i * c:(i + 1) * c]
        n = x.shape[axis]
        if step > 0:
            out[..., i * c:(i + 1) * c].narrow(axis, 1, n - 1).copy_(src.narrow(axis, 0, n - 1))
        else:
            out[..., i * c:(i + 1) * c].narrow(axis, 0, n - 1).copy_(src.narrow(axis, 1, n - 1))
    return out


@reference("s2_attention")
class PlainS2Attention(nn.Module):
    """Yu et al. 2108.01072, as its code: tokens (B, H, W, C), nn.Linear, split attention."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.c = b.channels
        self.expand, self.proj = linear_from(b.expand), linear_from(b.proj)
        self.fc1, self.fc2 = linear_from(b.attn_fc1), linear_from(b.attn_fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.expand(x.permute(0, 2, 3, 1))  # (B, H, W, 3C)
        x1, x2, x3 = t.split(self.c, -1)
        u = torch.stack([_shift(x1, "hw"), _shift(x2, "wh"), x3], 1)  # (B, 3, H, W, C)
        a = self.fc2(F.gelu(self.fc1(u.sum(1).mean((1, 2))))).view(-1, 3, self.c).softmax(1)
        y = (a[:, :, None, None, :] * u).sum(1)  # (B, H, W, C)
        return self.proj(y).permute(0, 3, 1, 2)


@reference("axial_attention")
class PlainAxial(nn.Module):
    """Ho et al. 1912.12180: multi-head attention along H, then along W (tokens, nn.Linear)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d = b.num_heads, b.head_dim
        self.axes = [p.axis for p in b.passes]
        self.qkv = nn.ModuleList(linear_from(p.qkv) for p in b.passes)
        self.proj = nn.ModuleList(linear_from(p.proj) for p in b.passes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        for axis, qkv, proj in zip(self.axes, self.qkv, self.proj, strict=True):
            if axis == "h":
                t = t.transpose(1, 2)  # (B, W, H, C): each column a sequence
            q, k, v = qkv(t).view(*t.shape[:3], 3, self.h, self.d).permute(3, 0, 1, 4, 2, 5)
            y = F.scaled_dot_product_attention(q, k, v)  # (B, S, h, L, d)
            t = proj(y.transpose(2, 3).flatten(3))
            if axis == "h":
                t = t.transpose(1, 2)
        return t.permute(0, 3, 1, 2)


@reference("csra")
class PlainCSRA(nn.Module):
    """Zhu & Wu 2108.02456: per head, s = M x / ||m||, logits = mean s + lam * att(s)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv2d(b.channels, b.num_classes, 1, bias=False) for _ in b.heads)
        for mine, theirs in zip(self.heads, b.heads, strict=True):
            mine.weight.data.copy_(theirs.weight.detach())
        self.temps, self.lam = b.temperatures, b.lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0
        for head, t in zip(self.heads, self.temps, strict=True):
            s = head(x) / torch.norm(head.weight, dim=1, keepdim=True).transpose(0, 1)
            s = s.flatten(2)  # (B, K, N)
            att = s.amax(2) if math.isinf(t) else ((t * s).softmax(2) * s).sum(2)
            out = out + s.mean(2) + self.lam * att
        return out


# ---------------------------------------------------------------- conv blocks


def _conv_bn_relu(cba: nn.Module) -> nn.Sequential:
    conv = nn.Conv2d(cba.conv.in_channels, cba.conv.out_channels, cba.conv.kernel_size,
                     cba.conv.stride, cba.conv.padding, cba.conv.dilation, cba.conv.groups,
                     bias=cba.conv.bias is not None)
    conv.load_state_dict(cba.conv.state_dict())
    bn = nn.BatchNorm2d(cba.conv.out_channels)
    bn.load_state_dict(cba.bn.state_dict())
    return nn.Sequential(conv, bn, nn.ReLU())


@reference("depthwise_separable")
class PlainDepthwiseSeparable(nn.Module):
    """Howard et al. 1704.04861: depthwise kxk conv-BN-ReLU, pointwise 1x1 conv-BN-ReLU."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.dw, self.pw = _conv_bn_relu(b.dw), _conv_bn_relu(b.pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


@reference("condconv")
class PlainCondConv(nn.Module):
    """Yang et al. 1904.04971: r = sigmoid(R GAP(x)), W = sum_e r_e W_e, per-sample conv."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.route = linear_from(b.route)
        self.weight = nn.Parameter(b.weight.detach().clone())
        self.bias = None if b.bias is None else nn.Parameter(b.bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = b.stride, b.padding, b.dilation, b.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        E, O = self.weight.shape[:2]
        r = torch.sigmoid(self.route(x.mean((2, 3))))  # (B, E)
        w = (r @ self.weight.view(E, -1)).view(B * O, *self.weight.shape[2:])
        bias = None if self.bias is None else (r @ self.bias).view(-1)
        y = F.conv2d(x.reshape(1, B * C, H, W), w, bias, self.stride, self.padding, self.dilation,
                     self.groups * B)
        return y.view(B, O, *y.shape[2:])


# ---------------------------------------------------------------- token attention


@reference("multi_head_attention")
class PlainMHA(nn.Module):
    """Vaswani et al. 1706.03762: fused qkv nn.Linear, SDPA, output nn.Linear."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d = b.num_heads, b.head_dim
        self.qkv, self.out = linear_from(b.qkv), linear_from(b.out_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.out(y.transpose(1, 2).reshape(B, N, self.h * self.d))


@reference("transformer_encoder_block")
class PlainEncoderBlock(nn.Module):
    """Vaswani et al. 1706.03762 (or pre-norm): attention and MLP sublayers with residuals."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.attn = PlainMHA(b.attn)
        self.norm1, self.norm2 = nn.LayerNorm(b.dim), nn.LayerNorm(b.dim)
        self.norm1.load_state_dict(b.norm1.state_dict())
        self.norm2.load_state_dict(b.norm2.state_dict())
        self.fc1, self.fc2 = linear_from(b.fc1), linear_from(b.fc2)
        self.act = b.act
        self.norm_first = b.norm_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.attn(self.norm1(x))
            return x + self.fc2(self.act(self.fc1(self.norm2(x))))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.fc2(self.act(self.fc1(x))))


# ---------------------------------------------------------------- MLP blocks


def _mlp_linears(mlp: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    a, b = (m for m in mlp.layers if isinstance(m, nn.Linear))
    return linear_from(a), linear_from(b)


@reference("mixer")
class PlainMixer(nn.Module):
    """Tolstikhin et al. 2105.01601: token MLP across patches, channel MLP across channels."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(b.dim), nn.LayerNorm(b.dim)
        self.norm1.load_state_dict(b.norm1.state_dict())
        self.norm2.load_state_dict(b.norm2.state_dict())
        self.t1, self.t2 = _mlp_linears(b.token_mlp)
        self.c1, self.c2 = _mlp_linears(b.channel_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.t2(F.gelu(self.t1(self.norm1(x).transpose(1, 2)))).transpose(1, 2)
        return x + self.c2(F.gelu(self.c1(self.norm2(x))))


# ---------------------------------------------------------------- more families (issue 19, goal 3)


@reference("cbam")
class PlainCBAM(nn.Module):
    """Woo et al. 1807.06521: M_c = sigmoid(MLP(avg) + MLP(max)), then
    M_s = sigmoid(BN(conv7x7([mean_c; max_c]))), each multiplied in."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        mlp = b.channel_gate.mlp
        self.fc1, self.fc2 = linear_from(mlp[0]), linear_from(mlp[2])
        self.conv, self.bn = copy.deepcopy(b.spatial_gate.conv), copy.deepcopy(b.spatial_gate.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def mlp(t: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(t)))

        x = x * torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
        p = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.bn(self.conv(p)))


@reference("external_attention")
class PlainExternalAttention(nn.Module):
    """Guo et al. 2105.02358: A = softmax over tokens of x M_k^T, l1-normalised over the
    memory, out = A M_v^T."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.mk, self.mv, self.eps = linear_from(b.mk), linear_from(b.mv), b.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.mk(x).softmax(1)
        return self.mv(a / (self.eps + a.sum(2, keepdim=True)))


@reference("linear_attention")
class PlainLinearAttention(nn.Module):
    """Katharopoulos et al. 2006.16236: phi = elu + 1, out = phi(Q) (phi(K)^T V) / (phi(Q) sum phi(K))."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d, self.eps = b.num_heads, b.head_dim, b.eps
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        num = q @ (k.transpose(-1, -2) @ v)  # (B, h, N, d)
        den = q @ k.sum(2, keepdim=True).transpose(-1, -2)  # (B, h, N, 1)
        return self.proj((num / (den + self.eps)).transpose(1, 2).reshape(B, N, self.h * self.d))


@reference("gmlp")
class PlainGMLP(nn.Module):
    """Liu et al. 2105.08050: Z = gelu(LN(X) U), s(Z) = Z_1 * (W LN(Z_2) + b), Y = X + s(Z) V."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.norm, self.gnorm = copy.deepcopy(b.norm), copy.deepcopy(b.sgu.norm)
        self.proj_in, self.proj_out = linear_from(b.proj_in), linear_from(b.proj_out)
        self.w = nn.Parameter(b.sgu.weight.detach().clone())
        self.b = nn.Parameter(b.sgu.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1, z2 = F.gelu(self.proj_in(self.norm(x))).chunk(2, -1)
        gate = torch.matmul(self.w, self.gnorm(z2)) + self.b[:, None]  # (B, N, D/2)
        return x + self.proj_out(z1 * gate)


@reference("resmlp")
class PlainResMLP(nn.Module):
    """Touvron et al. 2105.03404: Aff(x) = alpha x + beta; X = X + s_1 T(Lin_tok(T(Aff_1 X)));
    Y = X + s_2 MLP(Aff_2 X)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.a1, self.b1 = b.norm1.alpha.detach().clone(), b.norm1.beta.detach().clone()
        self.a2, self.b2 = b.norm2.alpha.detach().clone(), b.norm2.beta.detach().clone()
        (self.tok,) = (linear_from(m) for m in b.token_mlp.layers if isinstance(m, nn.Linear))
        self.c1, self.c2 = _mlp_linears(b.channel_mlp)
        self.s1, self.s2 = b.scale1.detach().clone(), b.scale2.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.s1 * self.tok((self.a1 * x + self.b1).transpose(1, 2)).transpose(1, 2)
        return x + self.s2 * self.c2(F.gelu(self.c1(self.a2 * x + self.b2)))


@reference("convmixer_block")
class PlainConvMixer(nn.Module):
    """Trockman & Kolter 2201.09792: z' = BN(gelu(DWConv(z))) + z, y = BN(gelu(PWConv(z')))."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.dw, self.bn1 = copy.deepcopy(b.dw), copy.deepcopy(b.bn1)
        self.pw, self.bn2 = copy.deepcopy(b.pw), copy.deepcopy(b.bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(F.gelu(self.dw(x))) + x
        return self.bn2(F.gelu(self.pw(x)))


def _conv_bn(cba: nn.Module, act: nn.Module) -> nn.Sequential:
    seq = _conv_bn_relu(cba)
    seq[2] = act
    return seq


@reference("inverted_residual")
class PlainInvertedResidual(nn.Module):
    """Sandler et al. 1801.04381: 1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1 project-BN,
    plus x when the shape is kept."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(b.expand, nn.ReLU6()), _conv_bn(b.dw, nn.ReLU6()),
                                  _conv_bn(b.project, nn.Identity()))
        self.residual = b.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


@reference("involution")
class PlainInvolution(nn.Module):
    """Li et al. 2103.06255, as the paper's PyTorch code: a per-position K x K kernel per group,
    H = W_1 relu(BN(W_0 pool(X))), applied through ``F.unfold`` (B, C K K, H' W')."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.pool, self.reduce = copy.deepcopy(b.pool), copy.deepcopy(b.reduce)
        self.span = copy.deepcopy(b.span)
        self.k, self.g, self.s, self.c = b.kernel_size, b.groups, b.stride, b.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, k, g = x.shape[0], self.k, self.g
        w = self.span(self.reduce.act(self.reduce.bn(self.reduce.conv(self.pool(x)))))  # (B, G K K, H', W')
        h, wd = w.shape[-2:]
        w = w.view(B, g, k * k, h, wd).unsqueeze(2)  # (B, G, 1, K K, H', W')
        u = F.unfold(x, k, padding=(k - 1) // 2, stride=self.s).view(B, g, self.c // g, k * k, h, wd)
        return (w * u).sum(3).view(B, self.c, h, wd)


@reference("linformer_attention")
class PlainLinformer(nn.Module):
    """Wang et al. 2006.04768: softmax(Q (E K)^T / sqrt(d)) (F V), E, F: (k, n) projections."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.h, self.d = b.num_heads, b.head_dim
        self.qkv, self.proj = linear_from(b.qkv), linear_from(b.proj)
        self.e = b.e.detach().clone()
        self.f = self.e if b.f is None else b.f.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, -1)
        k = (self.e[:, :N] @ k).view(B, -1, self.h, self.d).transpose(1, 2)  # (B, h, k, d)
        v = (self.f[:, :N] @ v).view(B, -1, self.h, self.d).transpose(1, 2)
        q = q.view(B, N, self.h, self.d).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, self.h * self.d))


@reference("sk")
class PlainSK(nn.Module):
    """Li et al. 1903.06586, as the paper's code: branch maps U_m (conv-BN-ReLU) stacked,
    z = fc(GAP(sum_m U_m)), a = softmax over branches of A z, V = sum_m a_m U_m."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.branches = copy.deepcopy(b.branches)
        self.fuse, self.select, self.c = copy.deepcopy(b.fuse), copy.deepcopy(b.select), b.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.stack([br(x) for br in self.branches], 1)  # (B, M, C, H, W)
        z = self.fuse(u.sum(1).mean((2, 3), keepdim=True))
        a = self.select(z).view(x.shape[0], -1, self.c, 1, 1).softmax(1)
        return (a * u).sum(1)


@reference("bam")
class PlainBAM(nn.Module):
    """Park et al. 1807.06514: M = sigmoid(M_c(GAP x) + M_s(x)), y = x + x M."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.mc, self.ms = copy.deepcopy(b.channel_branch), copy.deepcopy(b.spatial_branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x * torch.sigmoid(self.mc(x.mean((2, 3), keepdim=True)) + self.ms(x))


@reference("triplet_attention")
class PlainTriplet(nn.Module):
    """Misra et al. 2010.03045, as the paper's code: each branch rotates x, Z-pools
    [max; mean] over its first axis, conv7x7-BN-sigmoid, scales and rotates back; mean of 3."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.gates = nn.ModuleList(nn.Sequential(copy.deepcopy(g.conv), copy.deepcopy(g.norm))
                                   for g in (b.gate_cw, b.gate_ch, b.gate_hw))

    @staticmethod
    def _gate(seq: nn.Module, x: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return x * torch.sigmoid(seq(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g_cw, g_ch, g_hw = self.gates
        y1 = self._gate(g_cw, x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)  # pool over H: (C, W) plane
        y2 = self._gate(g_ch, x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # pool over W: (H, C) plane
        y3 = self._gate(g_hw, x)  # pool over C: (H, W) plane
        return (y1 + y2 + y3) / 3


# ---------------------------------------------------------------- the run

# after the references above, so the default order keeps them first
for _more in (ELEMENTWISE_REFS, IMAGE_A_REFS, IMAGE_B_REFS, TOKEN_REFS, CONV_MLP_REFS):
    REFS.update(_more)

# The registered entries that goal 3 covers: every image-attention, token-attention, MLP and
# conv block. ``--check`` and tests/test_plain_reference.py list those still without a reference.
COVERED_FAMILIES = (("attention", "image"), ("attention", "tokens"), ("mlp", "image"), ("mlp", "tokens"),
                    ("mlp", "vector"), ("conv", "image"))


def covered_names() -> list[str]:
    """The registered names goal 3 asks a reference for, in registry order."""
    return [n for n in blockzoo.list_blocks()
            if (blockzoo.spec(n).family, blockzoo.spec(n).input) in COVERED_FAMILIES]


def check(name: str, cfg: str = "example x8") -> float:
    """The reference's max difference from our block relative to the output's scale (eval,
    no_grad, float32, same weights; random BatchNorm statistics)."""
    block, args = configs(name)[cfg]
    _randomise_bn(block)
    plain = REFS[name](block).eval()
    with torch.no_grad():
        want, got = block(*args), plain(*args)
    if want.shape != got.shape:
        raise AssertionError(f"{name}: reference gives {tuple(got.shape)}, ours {tuple(want.shape)}")
    return (want - got).abs().max().item() / max(want.abs().max().item(), 1e-12)


def configs(name: str) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    """The two configs of a block: (built block in eval mode, input args)."""
    s = blockzoo.spec(name)
    out = {}
    torch.manual_seed(0)
    out["example x8"] = (s.build_example().eval(), s.make_input(batch=8))
    over: dict[str, object] = {}
    cfg = s.example.config
    size = (32, 32) if s.input == "image" else (256,)
    map_bound = s.input == "image" and "height" in cfg and "width" in cfg  # FCs over H, W (sMLP, ViP)
    if s.width_arg:
        over[s.width_arg] = 64
        # hidden widths grow with the width (LeFF's and S2-MLP's hidden, a bottleneck's width)
        grow = 64 / cfg[s.width_arg] if isinstance(cfg.get(s.width_arg), int) else 1
        for key in ("hidden",) + (() if map_bound else ("width",)):
            if isinstance(cfg.get(key), int):
                over[key] = max(1, round(cfg[key] * grow))
    if "dim_out" in cfg:
        over["dim_out"] = 64
    if map_bound:
        over["height"], over["width"] = size
    if "max_size" in cfg:  # a size-bound table (CoAtNet's relative bias)
        over["max_size"] = size[0]
    if s.size_arg and s.input == "tokens":  # a length-bound block (MLP-Mixer's token MLP)
        over[s.size_arg] = size[0]
    torch.manual_seed(0)
    out["large"] = (s.build_example(**over).eval(), s.make_input(batch=8, size=size, config=over))
    return out


def _randomise_bn(m: nn.Module) -> None:
    """Random BatchNorm statistics (1-D and 2-D), and random values for every parameter that
    starts at or near zero (layer scales of 1e-6, zero gates, GRN's gamma and beta): with those
    at their initial values a block is nearly the identity, and a reference that returned its
    input would pass the check."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None:
                bn.running_mean.copy_(torch.rand(bn.running_mean.shape, generator=g) - 0.5)
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) * 1.5 + 0.5)
        for p in m.parameters():
            if p.numel() and p.abs().max().item() <= 1e-3:
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)


def time_pair(ours: Callable[[], object], plain: Callable[[], object], reps: int,
              passes: int) -> tuple[list[float], list[float]]:
    """Per pass, the median seconds of ``reps`` calls of each; the order alternates by pass."""
    a_med, b_med = [], []
    for p in range(passes):
        order = ((ours, a_med), (plain, b_med)) if p % 2 == 0 else ((plain, b_med), (ours, a_med))
        for fn, sink in order:
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            sink.append(statistics.median(ts))
    return a_med, b_med


def run_row(name: str, cfg: str, block: nn.Module, args: tuple[torch.Tensor, ...], passes: int,
            budget_s: float, compiled: bool = False, aot: bool = False) -> dict[str, object]:
    row: dict[str, object] = {"block": name, "config": cfg}
    _randomise_bn(block)
    plain = REFS[name](block).eval()
    if compiled:
        import torch._dynamo as dynamo  # (``import torch._dynamo`` would make ``torch`` a local name here)

        dynamo.reset()
        block = blockzoo.compile(block, example_inputs=args, aot=True) if aot else blockzoo.compile(block)
    with torch.no_grad():
        want, got = block(*args), plain(*args)
        err = (want - got).abs().max().item() / max(want.abs().max().item(), 1e-12)
        if err > 1e-4:
            row["note"] = f"reference differs: max rel err {err:.2e}"
            return row
        for _ in range(5):  # warm-up: allocator, caches, lazy inits
            block(*args)
            plain(*args)
        t0 = time.perf_counter()
        for _ in range(3):
            block(*args)
            plain(*args)
        one = (time.perf_counter() - t0) / 6
        reps = max(15, min(2000, int(budget_s / passes / 2 / max(one, 1e-7))))
        ours_t, plain_t = time_pair(lambda: block(*args), lambda: plain(*args), reps, passes)
    ratios = sorted(p / o for p, o in zip(plain_t, ours_t, strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    ratio = min(plain_t) / min(ours_t)
    row.update({
        "ours us": 1e6 * min(ours_t), "plain us": 1e6 * min(plain_t), "plain/ours": ratio,
        "ratio q1": q1, "ratio q3": q3,
        "ours spread %": 100 * (max(ours_t) / min(ours_t) - 1),
        "plain spread %": 100 * (max(plain_t) / min(plain_t) - 1),
        "reps": reps,
        "verdict": "below" if q3 < 0.95 else ("noise?" if ratio < 0.95 else "ok"),
    })
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="restrict to these names")
    ap.add_argument("--configs", nargs="*", default=["example x8", "large"])
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per block and config")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--format", choices=FORMATS, default="table")
    ap.add_argument("--compile", action="store_true", help="ours as blockzoo.compile(block), inductor")
    ap.add_argument("--aot", action="store_true",
                    help="with --compile: ours as blockzoo.compile(block, example_inputs=..., aot=True), "
                         "torch.export + AOTInductor, no dynamo guards")
    ap.add_argument("--check", action="store_true",
                    help="only check each reference against our block at every config (no timing), "
                         "and list the covered entries without a reference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only or list(REFS)
    if args.check:
        bad = 0
        for name in names:
            for cfg in args.configs:
                try:
                    err = check(name, cfg)
                    verdict = "ok" if err <= 1e-4 else "DIFFERS"
                except Exception as e:  # report every row
                    err, verdict = float("nan"), f"{type(e).__name__}: {str(e)[:100]}"
                bad += verdict != "ok"
                print(f"{name:32s} {cfg:11s} max rel err {err:.2e}  {verdict}")
        missing = [n for n in covered_names() if n not in REFS]
        print(f"{len(REFS)} references; covered entries without one ({len(missing)}): "
              f"{' '.join(missing) or '-'}")
        raise SystemExit(1 if bad else 0)
    how = f" | ours compiled ({'AOTInductor' if args.aot else 'inductor'}), plain eager" * args.compile
    print(f"machine: {platform.machine()} | python {platform.python_version()} | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()} | eval, no_grad, fp32 | {args.passes} passes, "
          f"ours/plain alternated, min of per-pass medians"
          f"{how}")
    rows = []
    for name in names:
        for cfg, (block, inp) in configs(name).items():
            if cfg not in args.configs:
                continue
            try:
                rows.append(run_row(name, cfg, block, inp, args.passes, args.budget, args.compile, args.aot))
            except Exception as e:  # report, don't hide: the row says what failed
                rows.append({"block": name, "config": cfg, "note": f"{type(e).__name__}: {str(e)[:80]}"})
    cols = ["block", "config", "ours us", "plain us", "plain/ours", "ratio q1", "ratio q3",
            "ours spread %", "plain spread %", "reps", "verdict", "note"]
    print(render(rows, args.format, cols))
    for cfg in args.configs:
        r = [row["plain/ours"] for row in rows if row["config"] == cfg and "plain/ours" in row]
        if r:
            gm = math.exp(sum(math.log(v) for v in r) / len(r))
            print(f"geometric mean plain/ours, {cfg}: {gm:.3f} over {len(r)} blocks")
        r = [row["plain/ours"] for row in rows
             if row["config"] == cfg and row["block"] in ELEMENTWISE and "plain/ours" in row]
        if r:
            gm = math.exp(sum(math.log(v) for v in r) / len(r))
            print(f"geometric mean plain/ours over the elementwise blocks, {cfg}: {gm:.3f} over {len(r)}")


if __name__ == "__main__":
    main()
