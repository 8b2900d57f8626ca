"""BAM: a bottleneck attention module adding channel and spatial attention.

Paper: BAM: Bottleneck Attention Module (Park, arXiv 1807.06514, 2018).

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import sequential
from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["BAM"]


@register(
    name="bam",
    family="attention",
    paper="BAM: Bottleneck Attention Module",
    arxiv="1807.06514",
    year=2018,
    input="image",
    example=Example(config=dict(channels=16, reduction=4), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4, reduction=2, dilation=1)),
)
class BAM(nn.Module):
    r"""BAM: x + x * sigmoid(M_c(x) + M_s(x)), channel and dilated-conv spatial branches.

    Park et al., "BAM: Bottleneck Attention Module", arXiv 1807.06514.

    Equation::

        M_c(x) = BN(MLP(AvgPool(x)))                   MLP: C -> C/r -> C       (B, C, 1, 1)
        M_s(x) = BN(f_3^{1x1}(f_2^{3x3}(f_1^{3x3}(f_0^{1x1}(x)))))                (B, 1, H, W)
                 f_0: C -> C/r; f_1, f_2: dilated 3x3 (dilation d) with BN + act;
                 f_3: C/r -> 1
        M(x)   = sigmoid(M_c(x) + M_s(x))              broadcast to (B, C, H, W)
        y      = x + x * M(x)

    Args:
        channels: C, the input channels.
        reduction: r of both branches (paper: 16); width max(1, C // r).
        dilation: d of the two 3x3 convs (paper: 4).
        act_layer: activation inside the branches (paper: ReLU).
        norm_layer: the branches' normalisation (paper: BN); ``None`` for none.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        A conv followed by the norm has no bias (the official code's have one): BN
        subtracts each channel's mean, which removes a per-channel bias exactly, so
        that bias could never change the output. With ``norm_layer=None`` the convs
        keep their biases (the ``ConvBnAct`` rule).

        The official code (Jongchan/attention-module, ``MODELS/bam.py``) differs from
        the paper's equations in three places; the equations are explicit, so they win
        (issue 17's rule), and the paper's ablation (Table 2b) reports the sum better:

        - it combines the branches by a product, ``1 + sigmoid(M_c * M_s)``; here the
          paper's sum ``sigmoid(M_c + M_s)`` (Eq. 1 and Sec. 3, "Combine two attention
          branches");
        - its channel MLP has BatchNorm1d + ReLU after the first FC and no BN on the
          output; here the paper's ``BN(MLP(AvgPool(x)))`` (Eq. 2);
        - its spatial branch ends in the 1x1 conv without BN; here the paper's final BN
          (Eq. 3).

    Example:
        >>> bam = BAM(64)
        >>> bam(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        dilation: int = 4,
        act_layer: LayerSpec = "relu",
        norm_layer: LayerSpec = "batchnorm2d",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(reduction >= 1, f"BAM: reduction={reduction} must be >= 1")
        require(dilation >= 1, f"BAM: dilation={dilation} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.channels = channels
        self.dilation = dilation
        self.hidden = hidden = max(1, channels // reduction)
        bias = norm_layer is None  # the norm after a conv cancels its bias
        self.channel_branch = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, **fk),
            create_act(act_layer, **fk),
            nn.Conv2d(hidden, channels, 1, bias=bias, **fk),
            create_norm(norm_layer, channels, **fk),
        )
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 1, bias=bias, **fk),
                                   create_norm(norm_layer, hidden, **fk), create_act(act_layer, **fk)]
        for _ in range(2):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation, bias=bias, **fk),
                       create_norm(norm_layer, hidden, **fk), create_act(act_layer, **fk)]
        layers += [nn.Conv2d(hidden, 1, 1, bias=bias, **fk), create_norm(norm_layer, 1, **fk)]
        self.spatial_branch = nn.Sequential(*layers)
        self.attn_map = AttentionMap("channel_spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="BAM", C=self.channels)  # raises, naming the misfit
        mods = self._modules  # stock layers as their ops unless hooked (blockzoo._fastcall)
        mc = sequential(mods["channel_branch"], x.mean((2, 3), keepdim=True))  # (B, C, 1, 1)
        ms = sequential(mods["spatial_branch"], x)  # (B, 1, H, W)
        # M = sigmoid(M_c + M_s); y = x + x * M
        m = mods["attn_map"](torch.sigmoid(mc + ms))  # (B, C, H, W)
        return x + x * m

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}, dilation={self.dilation}"
