"""Plain-PyTorch references for more elementwise / reduction-dominated blocks (issue 19, goal 4).

Imported by ``plain_reference.py``, which checks each against our block (same weights, max
relative difference <= 1e-4) before timing it. Written from the papers' equations the way a
reader would (the official codes' rotations and module calls included), not from our blocks.
They widen ``ELEMENTWISE``, the rows over which ``plain_reference.py --compile`` reports its
geometric mean: blocks whose work is pooling, gating and norms over the whole map, with at
most a small conv on a pooled 1- or 2-channel map. Not included: BAM (two 3x3 dilated convs
on C/r channels at full resolution: conv-dominated), the attention blocks with C x C
projections.
"""

from __future__ import annotations

import torch
from torch import nn

REFS: dict[str, type[nn.Module]] = {}


def _ref(name: str):  # a class decorator
    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        REFS[name] = cls
        return cls

    return deco


def _copy_conv(conv: nn.Conv2d) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=conv.bias is not None)
    new.load_state_dict(conv.state_dict())
    return new


def _copy_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(bn.num_features, eps=bn.eps)
    new.load_state_dict(bn.state_dict())
    return new.eval()


@_ref("cbam")
class PlainCBAM(nn.Module):
    """Woo et al. 1807.06521: M_c = sigmoid(MLP(avg) + MLP(max)) with nn.Linear, x' = M_c x;
    M_s = sigmoid(BN(conv7([mean_c x'; max_c x']))), y = M_s x'."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        c1, act, c2 = b.channel_gate.mlp
        self.mlp = nn.Sequential(nn.Linear(c1.in_channels, c1.out_channels, bias=c1.bias is not None), act,
                                 nn.Linear(c2.in_channels, c2.out_channels, bias=c2.bias is not None))
        for lin, conv in ((self.mlp[0], c1), (self.mlp[2], c2)):
            lin.weight.data.copy_(conv.weight.detach().flatten(1))
            if conv.bias is not None:
                lin.bias.data.copy_(conv.bias.detach())
        self.conv, self.bn = _copy_conv(b.spatial_gate.conv), _copy_bn(b.spatial_gate.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mc = torch.sigmoid(self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3))))
        x = x * mc[:, :, None, None]
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.bn(self.conv(s)))


class _ZGate(nn.Module):
    """Triplet attention's branch on an already rotated map: Z-pool over dim 1, conv, BN, gate."""

    def __init__(self, g: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn = _copy_conv(g.conv), _copy_bn(g.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.bn(self.conv(z)))


@_ref("triplet_attention")
class PlainTriplet(nn.Module):
    """Misra et al. 2010.03045, as the paper draws it: rotate x so each branch pools one axis,
    gate the rotated tensor, rotate back, average the three branches."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.cw, self.ch, self.hw = _ZGate(b.gate_cw), _ZGate(b.gate_ch), _ZGate(b.gate_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y_cw = self.cw(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)  # pool H, conv over (C, W)
        y_ch = self.ch(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # pool W, conv over (H, C)
        return (y_cw + y_ch + self.hw(x)) / 3


@_ref("shuffle_attention")
class PlainShuffleAttention(nn.Module):
    """Zhang & Yang 2102.00240: per group, channel half x1 * sigmoid(W1 GAP(x1) + b1), spatial half
    x2 * sigmoid(W2 GN(x2) + b2), concatenate, channel shuffle with 2 groups."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.groups, self.channels = b.groups, b.channels
        for n in ("cweight", "cbias", "sweight", "sbias"):
            setattr(self, n, nn.Parameter(getattr(b, n).detach().clone()))
        self.gn = nn.GroupNorm(b.gn.num_groups, b.gn.num_channels, eps=b.gn.eps)
        self.gn.load_state_dict(b.gn.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = x.view(B * self.groups, -1, H, W)
        x1, x2 = x.chunk(2, dim=1)
        y1 = x1 * torch.sigmoid(self.cweight * x1.mean((2, 3), keepdim=True) + self.cbias)
        y2 = x2 * torch.sigmoid(self.sweight * self.gn(x2) + self.sbias)
        out = torch.cat([y1, y2], 1).view(B, -1, H, W)
        return out.view(B, 2, C // 2, H, W).transpose(1, 2).reshape(B, C, H, W)
