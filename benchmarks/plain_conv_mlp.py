"""Plain-PyTorch references of the conv blocks and the image MLPs (issue 19, goal 3; the
rules they follow are in ``plain_common.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from plain_common import linear_from, reference_registry  # beside this file
from torch import nn

REFS, _ref = reference_registry()


def _conv(c: nn.Module) -> nn.Conv2d:
    """A fresh ``nn.Conv2d`` holding a conv's weights (same geometry)."""
    conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                     c.groups, bias=c.bias is not None)
    conv.load_state_dict(c.state_dict())
    return conv


def _bn(n: nn.Module) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(n.num_features, eps=n.eps)
    bn.load_state_dict(n.state_dict())
    return bn


def _ln(n: nn.Module) -> nn.LayerNorm:
    ln = nn.LayerNorm(n.normalized_shape, eps=n.eps, elementwise_affine=n.weight is not None)
    ln.load_state_dict(n.state_dict())
    return ln


def _shortcut(s: nn.Module) -> nn.Module:
    """ResNet's shortcut: the identity, or option B (strided 1x1 conv, BN)."""
    return nn.Identity() if isinstance(s, nn.Identity) else nn.Sequential(_conv(s.conv), _bn(s.bn))


# ---------------------------------------------------------------- conv blocks


@_ref("conv_bn_act")
class PlainConvBnAct(nn.Module):
    """Ioffe & Szegedy 1502.03167: y = relu(BN(W * x)), BN with the running statistics in eval."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn = _conv(b.conv), _bn(b.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


@_ref("resnet_basic")
class PlainBasicBlock(nn.Module):
    """He et al. 1512.03385: y = relu(BN(conv3x3(relu(BN(conv3x3_s(x))))) + S(x)), S option B."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(b.conv1), _bn(b.bn1)
        self.conv2, self.bn2 = _conv(b.conv2), _bn(b.bn2)
        self.shortcut = _shortcut(b.shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@_ref("resnet_bottleneck")
class PlainBottleneck(nn.Module):
    """He et al. 1512.03385 (torchvision's v1.5: stride on the 3x3): 1x1-BN-relu, 3x3_s-BN-relu,
    1x1-BN, y = relu(F(x) + S(x))."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(b.conv1), _bn(b.bn1)
        self.conv2, self.bn2 = _conv(b.conv2), _bn(b.bn2)
        self.conv3, self.bn3 = _conv(b.conv3), _bn(b.bn3)
        self.shortcut = _shortcut(b.shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


@_ref("resnext_block")
class PlainResNeXt(PlainBottleneck):
    """Xie et al. 1611.05431, Fig. 3(c): the bottleneck with a grouped 3x3 conv (cardinality g)."""


@_ref("mbconv")
class PlainMBConv(nn.Module):
    """Tan & Le 1905.11946 (MBConv, SE of 1709.01507): 1x1 expand-BN-SiLU, depthwise-BN-SiLU,
    h * sigmoid(W2 silu(W1 GAP(h))), 1x1 project-BN, plus x when the shape is kept."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.expand = (nn.Identity() if isinstance(b.expand, nn.Identity)
                       else nn.Sequential(_conv(b.expand.conv), _bn(b.expand.bn), nn.SiLU()))
        self.dw = nn.Sequential(_conv(b.dw.conv), _bn(b.dw.bn), nn.SiLU())
        self.se1, self.se2 = linear_from(b.se.fc1), linear_from(b.se.fc2)
        self.project = nn.Sequential(_conv(b.project.conv), _bn(b.project.bn))
        self.residual = b.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.expand(x))
        s = torch.sigmoid(self.se2(F.silu(self.se1(h.mean((2, 3))))))
        out = self.project(h * s[:, :, None, None])
        return x + out if self.residual else out


@_ref("convnextv2_block")
class PlainConvNeXtV2(nn.Module):
    """Woo et al. 2301.00808, Fig. 5 as the paper's code: dwconv7x7, then on (B, H, W, C) tokens
    LN, Linear, GELU, GRN (G = ||X||_2 over H, W; N = G / (mean_c G + eps); gamma X N + beta + X),
    Linear, plus x."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.dwconv, self.norm = _conv(b.conv_dw), _ln(b.norm)
        self.pwconv1, self.pwconv2 = linear_from(b.mlp.fc1), linear_from(b.mlp.fc2)
        self.gamma = nn.Parameter(b.mlp.grn.weight.detach().clone())
        self.beta = nn.Parameter(b.mlp.grn.bias.detach().clone())
        self.eps = b.mlp.grn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.dwconv(x).permute(0, 2, 3, 1))  # (B, H, W, C)
        h = F.gelu(self.pwconv1(h))
        g = torch.norm(h, p=2, dim=(1, 2), keepdim=True)
        h = self.gamma * (h * (g / (g.mean(-1, keepdim=True) + self.eps))) + self.beta + h
        return x + self.pwconv2(h).permute(0, 3, 1, 2)


@_ref("dynamic_conv")
class PlainDynamicConv(nn.Module):
    """Chen et al. 1912.03458, Eq. (1)-(3): pi = softmax(W2 relu(W1 GAP(x)) / tau),
    W~ = sum_k pi_k W_k, b~ = sum_k pi_k b_k, one conv per sample (as a grouped conv over the batch)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.fc1, self.fc2 = linear_from(b.fc1), linear_from(b.fc2)
        self.weight = nn.Parameter(b.weight.detach().clone())  # (K, O, C / g, k, k)
        self.bias = None if b.bias is None else nn.Parameter(b.bias.detach().clone())  # (K, O)
        self.tau = b.temperature
        self.stride, self.padding, self.dilation, self.groups = b.stride, b.padding, b.dilation, b.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        O = self.weight.shape[1]
        pi = torch.softmax(self.fc2(F.relu(self.fc1(x.mean((2, 3))))) / self.tau, -1)  # (B, K)
        w = torch.einsum("bk,koiuv->boiuv", pi, self.weight).reshape(B * O, *self.weight.shape[2:])
        bias = None if self.bias is None else (pi @ self.bias).reshape(-1)
        y = F.conv2d(x.reshape(1, B * C, H, W), w, bias, self.stride, self.padding, self.dilation,
                     self.groups * B)
        return y.view(B, O, *y.shape[2:])


@_ref("efficientformer_meta4d")
class PlainMeta4D(nn.Module):
    """Li et al. 2206.01191, Eq. (3)-(4): I = X + s1 (AvgPool3x3(X) - X) (PoolFormer's pool, padding
    not counted), Y = I + s2 BN(conv1x1(GELU(BN(conv1x1(I)))))."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.k = b.pool_size
        self.s1 = nn.Parameter(b.scale1.detach().clone().view(-1, 1, 1))
        self.s2 = nn.Parameter(b.scale2.detach().clone().view(-1, 1, 1))
        self.fc1, self.norm1 = _conv(b.mlp[0].conv), _bn(b.mlp[0].bn)
        self.fc2, self.norm2 = _conv(b.mlp[1].conv), _bn(b.mlp[1].bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.avg_pool2d(x, self.k, 1, self.k // 2, count_include_pad=False)
        x = x + self.s1 * (pool - x)
        return x + self.s2 * self.norm2(self.fc2(F.gelu(self.norm1(self.fc1(x)))))


def _gnconv(g: nn.Module) -> nn.Module:
    mods = nn.Module()
    mods.proj_in, mods.dwconv, mods.proj_out = _conv(g.proj_in), _conv(g.dwconv), _conv(g.proj_out)
    mods.pws = nn.ModuleList(_conv(c) for c in g.pws)
    return mods


@_ref("gnconv")
class PlainGnConv(nn.Module):
    """Rao et al. 2207.14284, Eq. (3.3)-(3.4) as the authors' code: [p0, q] = phi_in(x),
    f = dwconv(q) / alpha split into C_0..C_{n-1}; p_{k+1} = g_k(p_k) * f_k; y = phi_out(p_n)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.m, self.dims, self.scale = _gnconv(b), list(b.dims), b.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        pwa, abc = torch.split(m.proj_in(x), (self.dims[0], sum(self.dims)), dim=1)
        dw_list = torch.split(m.dwconv(abc) * self.scale, self.dims, dim=1)
        x = pwa * dw_list[0]
        for i, pw in enumerate(m.pws):
            x = pw(x) * dw_list[i + 1]
        return m.proj_out(x)


@_ref("hornet_block")
class PlainHorNetBlock(nn.Module):
    """Rao et al. 2207.14284, Sec. 3.2 as the authors' code: x = x + gamma1 gnConv(LN(x)); then on
    (B, H, W, C) tokens x = x + gamma2 Linear(GELU(Linear(LN(x))))."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.norm1, self.norm2 = _ln(b.norm1), _ln(b.norm2)
        self.gnconv = PlainGnConv(b.gnconv)
        self.pwconv1, self.pwconv2 = linear_from(b.mlp.fc1), linear_from(b.mlp.fc2)
        one = torch.ones(b.dim)
        self.gamma1 = nn.Parameter(one if b.gamma1 is None else b.gamma1.detach().clone().view(-1))
        self.gamma2 = nn.Parameter(one if b.gamma2 is None else b.gamma2.detach().clone().view(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # LN over channels
        x = x + self.gamma1.view(-1, 1, 1) * self.gnconv(h)
        t = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        t = self.gamma2 * self.pwconv2(F.gelu(self.pwconv1(self.norm2(t))))
        return x + t.permute(0, 3, 1, 2)


def _unit(u: nn.Module) -> nn.Sequential:
    """A conv [-BN] -ReLU unit (Inception's every conv)."""
    layers = [_conv(u.conv)] + ([] if isinstance(u.bn, nn.Identity) else [_bn(u.bn)])
    return nn.Sequential(*layers, nn.ReLU())


def _units(m: nn.Module) -> nn.Sequential:
    return nn.Sequential(*(_unit(u) for u in m)) if isinstance(m, nn.Sequential) else _unit(m)


@_ref("inception")
class PlainInception(nn.Module):
    """Szegedy et al. 1409.4842, Fig. 2(b): [conv1x1(x), conv3x3(conv1x1(x)), conv5x5(conv1x1(x)),
    conv1x1(maxpool3x3(x))] concatenated over channels, ReLU after every conv."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.b1, self.b3, self.b5 = _units(b.branch1), _units(b.branch3), _units(b.branch5)
        bp = b.branch_pool
        self.proj = _unit(bp[1]) if isinstance(bp, nn.Sequential) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.proj(F.max_pool2d(x, 3, 1, 1))
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), pooled], 1)


@_ref("patchconvnet_block")
class PlainPatchConvBlock(nn.Module):
    """Touvron et al. 2112.13692, Sec. 3 as the authors' Conv_blocks_se in a layer-scale block: on
    (B, N, C) tokens x + gamma * map(LN(x)), map = conv1x1, GELU, dwconv3x3, GELU, SE, conv1x1."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.norm = _ln(b.norm)
        self.conv1, self.dwconv, self.conv2 = _conv(b.conv1), _conv(b.dwconv), _conv(b.conv2)
        self.se1, self.se2 = linear_from(b.se.fc1), linear_from(b.se.fc2)
        self.gamma = nn.Parameter(b.gamma.detach().clone().view(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        h = self.norm(t).transpose(1, 2).reshape(B, C, H, W)
        h = F.gelu(self.dwconv(F.gelu(self.conv1(h))))
        h = h * torch.sigmoid(self.se2(F.relu(self.se1(h.mean((2, 3))))))[:, :, None, None]
        t = t + self.gamma * self.conv2(h).reshape(B, C, H * W).transpose(1, 2)
        return t.transpose(1, 2).reshape(B, C, H, W)


@_ref("pit_pooling")
class PlainPiTPooling(nn.Module):
    """Heo et al. 2103.16302, Sec. 3.2: the token map through a depthwise (s+1)x(s+1) conv of stride s
    with channel multiplier C'/C (one nn.Conv2d, groups = C); class tokens through nn.Linear."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.conv, self.fc = _conv(b.conv), linear_from(b.fc)

    def forward(self, x: torch.Tensor, cls_tokens: torch.Tensor | None = None):
        y = self.conv(x)
        return y if cls_tokens is None else (y, self.fc(cls_tokens))


@_ref("leff")
class PlainLeFF(nn.Module):
    """Yuan et al. 2103.11816, Eq. (4)-(6): on (B, N, C) tokens GELU(BN(Linear_1)), restored to the
    H x W map, GELU(BN(DWConv)), flattened, BN(Linear_2) (no GELU after it, as the authors' code)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.fc1, self.fc2 = linear_from(b.conv1), linear_from(b.conv3)
        self.dw = _conv(b.conv2)
        self.bn1, self.bn3 = nn.BatchNorm1d(b.hidden, eps=b.bn1.eps), nn.BatchNorm1d(b.dim, eps=b.bn3.eps)
        self.bn1.load_state_dict(b.bn1.state_dict())
        self.bn3.load_state_dict(b.bn3.state_dict())
        self.bn2 = _bn(b.bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        h = F.gelu(self.bn1(self.fc1(t).transpose(1, 2)))  # (B, E, N): BatchNorm1d over E
        h = F.gelu(self.bn2(self.dw(h.reshape(B, -1, H, W)))).flatten(2).transpose(1, 2)  # (B, N, E)
        return self.bn3(self.fc2(h).transpose(1, 2)).reshape(B, C, H, W)


# ---------------------------------------------------------------- MLP blocks


def _mlp_linears(mlp: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    a, b = (m for m in mlp.layers if isinstance(m, nn.Linear))
    return linear_from(a), linear_from(b)


@_ref("permute_mlp")
class PlainWeightedPermuteMLP(nn.Module):
    """Hou et al. 2106.12368, Sec. 3.2 as the authors' WeightedPermuteMLP on (B, H, W, C): FC over
    (H, S) of each segment and column, over (W, S) of each segment and row, over C; split attention
    a = softmax over branches of MLP(mean(X_H + X_W + X_C)) laid out (B, C, 3); Y = proj(sum a X)."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.s = b.segment_size
        self.mlp_h, self.mlp_w, self.mlp_c = linear_from(b.fc_h), linear_from(b.fc_w), linear_from(b.fc_c)
        self.proj = linear_from(b.proj)
        self.fc1, self.fc2 = _mlp_linears(b.reweight)
        # the authors read the reweight output as (C, 3); ours holds it as (3, C): same rows, reordered
        c = b.channels
        order = torch.arange(3 * c).view(3, c).t().reshape(-1)  # row c * 3 + j <- our row j * C + c
        self.fc2.weight.data.copy_(self.fc2.weight.data[order])
        self.fc2.bias.data.copy_(self.fc2.bias.data[order])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        B, H, W, C = x.shape
        S = self.s
        G = C // S  # the authors' segment_dim
        h = x.reshape(B, H, W, G, S).permute(0, 3, 2, 1, 4).reshape(B, G, W, H * S)
        h = self.mlp_h(h).reshape(B, G, W, H, S).permute(0, 3, 2, 1, 4).reshape(B, H, W, C)
        w = x.reshape(B, H, W, G, S).permute(0, 1, 3, 2, 4).reshape(B, H, G, W * S)
        w = self.mlp_w(w).reshape(B, H, G, W, S).permute(0, 1, 3, 2, 4).reshape(B, H, W, C)
        c = self.mlp_c(x)
        a = (h + w + c).permute(0, 3, 1, 2).flatten(2).mean(2)
        a = self.fc2(F.gelu(self.fc1(a))).reshape(B, C, 3).permute(2, 0, 1).softmax(dim=0)
        a = a[:, :, None, None, :]  # (3, B, 1, 1, C)
        return self.proj(h * a[0] + w * a[1] + c * a[2]).permute(0, 3, 1, 2)


@_ref("repmlp")
class PlainRepMLP(nn.Module):
    """Ding et al. 2105.01883 (train form, as the authors' RepMLP code): global perceptron
    v = FC_2(relu(FC_1(BN(avgpool_{h x w} X)))) repeated over each partition, partition perceptron
    BN(FC_3 x_p) (grouped FC on the (C, h, w)-flattened partition), local perceptron
    sum_k BN_k(conv_k x_p) inside the partition; Y = F + L + v."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.c, self.h, self.w, self.g = b.channels, b.h, b.w, b.groups
        self.gp_bn, self.fc1, self.fc2 = _bn(b.gp_bn), _conv(b.gp_fc1), _conv(b.gp_fc2)
        self.fc3_weight = nn.Parameter(b.fc3.weight.detach().clone())  # (C h w, C h w / g, 1, 1)
        self.fc3_bn = _bn(b.fc3_bn)
        self.convs = nn.ModuleList(nn.Sequential(_conv(m.conv), _bn(m.bn)) for m in b.local.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h, w = self.h, self.w
        hp, wp = H // h, W // w
        v = self.fc2(F.relu(self.fc1(self.gp_bn(F.adaptive_avg_pool2d(x, (hp, wp))))))  # (B, C, hp, wp)
        v = v.repeat_interleave(h, dim=2).repeat_interleave(w, dim=3)  # (B, C, H, W)
        parts = x.reshape(B, C, hp, h, wp, w).permute(0, 2, 4, 1, 3, 5).reshape(-1, C, h, w)
        fc3 = F.conv2d(parts.reshape(-1, C * h * w, 1, 1), self.fc3_weight, groups=self.g)
        out = self.fc3_bn(fc3.reshape(-1, C, h, w))
        for conv in self.convs:
            out = out + conv(parts)
        out = out.reshape(B, hp, wp, C, h, w).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)
        return out + v


def _spatial_shift(x: torch.Tensor) -> torch.Tensor:
    """S2-MLP's Eq. (4) on (B, H, W, C), four channel quarters shifted by one along W, W, H, H."""
    c = x.shape[-1] // 4
    out = x.clone()
    out[:, :, 1:, :c] = x[:, :, :-1, :c]
    out[:, :, :-1, c:2 * c] = x[:, :, 1:, c:2 * c]
    out[:, 1:, :, 2 * c:3 * c] = x[:, :-1, :, 2 * c:3 * c]
    out[:, :-1, :, 3 * c:4 * c] = x[:, 1:, :, 3 * c:4 * c]
    return out


@_ref("s2mlp")
class PlainS2MLP(nn.Module):
    """Yu et al. 2106.07477 on (B, H, W, C) tokens: U = X + FC_2(shift(GELU(FC_1(LN X)))),
    Y = U + FC_4(GELU(FC_3(LN U)))."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.norm1, self.norm2 = _ln(b.norm1), _ln(b.norm2)
        self.fc1, self.fc2 = linear_from(b.fc1), linear_from(b.fc2)
        self.fc3, self.fc4 = _mlp_linears(b.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        t = t + self.fc2(_spatial_shift(F.gelu(self.fc1(self.norm1(t)))))
        t = t + self.fc4(F.gelu(self.fc3(self.norm2(t))))
        return t.permute(0, 3, 1, 2)


@_ref("smlp")
class PlainSparseMLP(nn.Module):
    """Tang et al. 2109.05422, Eq. (4)-(6): X_H = W_H mixing along H, X_W along W (shared by all
    channels; einsum), Y = conv1x1_fuse([X, X_H, X_W])."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.wh = nn.Parameter(b.proj_h.weight.detach().clone())
        self.ww = nn.Parameter(b.proj_w.weight.detach().clone())
        zero_h, zero_w = torch.zeros(b.height), torch.zeros(b.width)
        self.bh = nn.Parameter(zero_h if b.proj_h.bias is None else b.proj_h.bias.detach().clone())
        self.bw = nn.Parameter(zero_w if b.proj_w.bias is None else b.proj_w.bias.detach().clone())
        self.fuse = _conv(b.fuse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_h = torch.einsum("bchw,gh->bcgw", x, self.wh) + self.bh[:, None]
        x_w = torch.einsum("bchw,vw->bchv", x, self.ww) + self.bw
        return self.fuse(torch.cat([x, x_h, x_w], 1))
