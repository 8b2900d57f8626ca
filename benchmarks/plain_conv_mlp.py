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


def _linear(m: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` holding a 1x1 conv's (or a linear's) weights."""
    w = m.weight.detach()
    lin = nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None)
    lin.weight.data.copy_(w.reshape(w.shape[0], w.shape[1]))
    if m.bias is not None:
        lin.bias.data.copy_(m.bias.detach())
    return lin


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
        self.se1, self.se2 = _linear(b.se.fc1), _linear(b.se.fc2)
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
        self.pwconv1, self.pwconv2 = _linear(b.mlp.fc1), _linear(b.mlp.fc2)
        self.gamma = nn.Parameter(b.mlp.grn.weight.detach().clone())
        self.beta = nn.Parameter(b.mlp.grn.bias.detach().clone())
        self.eps = b.mlp.grn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.dwconv(x).permute(0, 2, 3, 1))  # (B, H, W, C)
        h = F.gelu(self.pwconv1(h))
        g = torch.norm(h, p=2, dim=(1, 2), keepdim=True)
        h = self.gamma * (h * (g / (g.mean(-1, keepdim=True) + self.eps))) + self.beta + h
        return x + self.pwconv2(h).permute(0, 3, 1, 2)
