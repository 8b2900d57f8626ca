r"""Diverse Branch Block: k x k, 1x1, 1x1-then-k x k and 1x1-then-average branches, one k x k at deploy.

Paper: Diverse Branch Block: Building a Convolution as an Inception-like Unit
(Ding, arXiv 2103.13425, 2021).

Letters: B batch, C input channels, O output channels, M intermediate channels,
g groups, k kernel size, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.act import LayerSpec, without_bias
from blockzoo.checks import require
from blockzoo.registry import Example, images, register
from blockzoo.rep.fuse import (
    ConvBN,
    Kernel,
    RepConv,
    avg_kernel,
    fuse_bn,
    identity_kernel,
    merge_1x1_kxk,
    rep_out_shape,
)

__all__ = ["BNAndPad", "DiverseBranchBlock"]


class BNAndPad(nn.Module):
    r"""BatchNorm whose output is padded with the BN's value for a zero input (not with zeros).

    ``BN(0) = beta - mu gamma / sqrt(var + eps)`` per channel (batch statistics in
    training, running statistics in eval). Padding with it makes a 1x1 conv + BN
    followed by an unpadded k x k conv equal to one padded k x k conv (DBB, Sec. 3.3).

    Args:
        channels: C; padding: p on every side.
        bias: whether the BN has its shift beta (``False``: beta = 0, no parameter).

    Shape:
        - Input: (B, C, H, W); output: (B, C, H + 2p, W + 2p).
    """

    def __init__(self, channels: int, padding: int, *, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.padding = padding
        self.bn = nn.BatchNorm2d(channels, device=device, dtype=dtype)
        if not bias:
            without_bias(self.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        if self.padding == 0:
            return y
        bn = self.bn
        if bn.training or bn.running_mean is None:
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        else:
            mean, var = bn.running_mean, bn.running_var
        # c = BN(0) = beta - mu gamma / sqrt(var + eps)
        c = -mean * bn.weight / (var + bn.eps).sqrt()
        c = (c if bn.bias is None else bn.bias + c).reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        p = self.padding
        return F.pad(y - c, (p, p, p, p)) + c  # (B, C, H + 2p, W + 2p)

    def extra_repr(self) -> str:
        return f"padding={self.padding}"


class _OneByOneThenKxK(nn.Module):
    """1x1 conv -> BN-and-pad -> k x k conv (no padding) -> BN, all grouped (DBB transform III)."""

    def __init__(self, c: int, m: int, o: int, k: int, stride: int, groups: int, fk: dict) -> None:
        super().__init__()
        self.groups = groups
        self.conv1 = nn.Conv2d(c, m, 1, groups=groups, bias=False, **fk)
        self.bn1 = BNAndPad(m, (k - 1) // 2, bias=False, **fk)  # bn2 cancels its shift
        self.conv2 = nn.Conv2d(m, o, k, stride=stride, groups=groups, bias=False, **fk)
        self.bn2 = nn.BatchNorm2d(o, **fk)
        if m == c:  # the paper initialises the 1x1 as the identity
            with torch.no_grad():
                self.conv1.weight.copy_(identity_kernel(c, groups, 1, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.bn1(self.conv1(x))))

    def fused(self) -> Kernel:
        w1, b1 = fuse_bn(self.conv1.weight, None, self.bn1.bn)
        w2, b2 = fuse_bn(self.conv2.weight, None, self.bn2)
        return merge_1x1_kxk(w1, b1, w2, b2, self.groups)


class _OneByOneThenAvg(nn.Module):
    """1x1 conv -> BN-and-pad -> k x k average pool (no padding) -> BN (DBB transforms III + V)."""

    def __init__(self, c: int, o: int, k: int, stride: int, groups: int, fk: dict) -> None:
        super().__init__()
        self.groups, self.k = groups, k
        self.conv1 = nn.Conv2d(c, o, 1, groups=groups, bias=False, **fk)
        self.bn1 = BNAndPad(o, (k - 1) // 2, bias=False, **fk)  # bn2 cancels its shift
        self.pool = nn.AvgPool2d(k, stride=stride, padding=0)
        self.bn2 = nn.BatchNorm2d(o, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.pool(self.bn1(self.conv1(x))))

    def fused(self) -> Kernel:
        w1, b1 = fuse_bn(self.conv1.weight, None, self.bn1.bn)
        w = self.conv1.weight
        avg = avg_kernel(w.shape[0], self.groups, self.k, device=w.device, dtype=w.dtype)
        w2, b2 = fuse_bn(avg, None, self.bn2)
        return merge_1x1_kxk(w1, b1, w2, b2, self.groups)


@register(
    name="dbb",
    family="rep",
    paper="Diverse Branch Block: Building a Convolution as an Inception-like Unit",
    arxiv="2103.13425",
    year=2021,
    input="image",
    example=Example(config=dict(channels=8, dim_out=12, groups=2), inputs=images(), size=(8, 8),
                    out_shape=rep_out_shape, tiny=dict(channels=2, dim_out=2, groups=1)),
)
class DiverseBranchBlock(RepConv):
    r"""Diverse Branch Block: an Inception-like four-branch unit that deploys as one k x k conv.

    Ding et al., "Diverse Branch Block: Building a Convolution as an Inception-like
    Unit", arXiv 2103.13425.

    Equation (training form; every conv and BN grouped by g)::

        y = act( BN(W_kxk * x)                                  k x k branch
               + BN(W_1x1 * x)                                  1x1 branch (multi-scale)
               + BN(W_kxk' * pad_c(BN(W_a * x)))                1x1 -> k x k (sequential)
               + BN(avgpool_k(pad_c(BN(W_b * x)))) )            1x1 -> average pool

    ``pad_c`` pads with the preceding BN's value for a zero input (``BNAndPad``) so the
    sequential branches are exactly convolutions of x. Deploy form: one k x k conv, via
    BN folding (I), branch addition (II), 1x1-k x k merging per group (III, IV),
    average pooling as a conv (V) and centring the 1x1 kernel (VI).

    Args:
        channels: C, input channels.
        dim_out: O, output channels (default C).
        kernel_size: k, odd and >= 3.
        stride: 1 or 2.
        groups: g, dividing C, O and M.
        internal_channels: M, width between the 1x1 and the k x k of the sequential
            branch (default C, the 1x1 initialised as the identity as in the paper).
        act_layer: activation after the sum (default none: the DBB replaces a conv-BN).
        deploy: build the fused single-conv form directly.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, O, H', W'), O = dim_out, H' = floor((H - 1) / stride) + 1.

    Deviations:
        - No dilation (the average-pool branch has no dilated form).
        - In training, the padding value of ``BNAndPad`` uses the batch statistics the
          BN normalises with (eval: running ones), so the training-time branch is also
          a convolution of x; exactness of the fusion (eval) is unaffected.
        - The first BN of the two sequential branches has no shift beta (the official
          code's has one): padded with BN(0), beta is a constant over the whole map, which
          the k x k conv (or average pool) keeps constant per channel and the second BN
          subtracts, so it could never change the output.

    Example:
        >>> block = DiverseBranchBlock(16, 32, stride=2).eval()
        >>> x = torch.randn(2, 16, 9, 7)
        >>> torch.allclose(block(x), block.reparameterize()(x), atol=1e-5)
        True
    """

    def __init__(
        self, channels: int, dim_out: int | None = None, *, kernel_size: int = 3, stride: int = 1,
        groups: int = 1, internal_channels: int | None = None, act_layer: LayerSpec = None,
        deploy: bool = False, device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__(channels, dim_out, kernel_size=kernel_size, stride=stride, groups=groups,
                         act_layer=act_layer, deploy=deploy, device=device, dtype=dtype)
        require(kernel_size >= 3, f"DiverseBranchBlock: kernel_size={kernel_size} must be >= 3")
        m = internal_channels or channels
        require(m % groups == 0, f"DiverseBranchBlock: groups={groups} must divide internal_channels={m}")
        self.internal_channels = m
        if deploy:
            return
        c, o, k, fk = self.channels, self.dim_out, kernel_size, self._fk
        self.branches = nn.ModuleDict({
            "conv_kxk": ConvBN(c, o, k, stride=stride, padding=self.padding, groups=groups, **fk),
            "conv_1x1": ConvBN(c, o, 1, stride=stride, groups=groups, **fk),
            "conv_1x1_kxk": _OneByOneThenKxK(c, m, o, k, stride, groups, fk),
            "conv_1x1_avg": _OneByOneThenAvg(c, o, k, stride, groups, fk),
        })

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, internal_channels={self.internal_channels}"
