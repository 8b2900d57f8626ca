"""Pyramid Split Attention: multi-scale grouped convs with SE weights softmaxed across scales.

Paper: EPSANet: An Efficient Pyramid Squeeze Attention Block on Convolutional Neural
Network (Zhang, arXiv 2105.14447, 2021).

Letters: B batch, C channels, H W spatial, S scales, c = C / S channels per scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, listened
from blockzoo.act import LayerSpec, create_act
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.conv._functional import ELEMENTWISE_ACTS, is_pointwise
from blockzoo.registry import Example, images, register

__all__ = ["PyramidSplitAttention"]


@register(
    name="epsa",
    family="attention",
    paper="EPSANet: An Efficient Pyramid Squeeze Attention Block on Convolutional Neural Network",
    arxiv="2105.14447",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, groups=(1, 2, 2, 4), reduction=2), inputs=images(),
                    size=(8, 8), out_shape="same",
                    tiny=dict(channels=8, kernel_sizes=(3, 5), groups=(1, 2))),
)
class PyramidSplitAttention(nn.Module):
    r"""PSA module: S multi-scale grouped convs of the whole input, softmax SE weights.

    Zhang et al., "EPSANet: An Efficient Pyramid Squeeze Attention Block on Convolutional
    Neural Network", arXiv 2105.14447.

    Equation, S scales of c = C / S output channels each::

        F_i   = conv_{k_i x k_i, groups G_i}(x)                     (SPC module, C -> c)
        Z_i   = sigmoid(W_2 relu(W_1 GAP(F_i) + b_1) + b_2)           (SE weight, c -> c/r -> c)
        att_i = exp(Z_i) / sum_j exp(Z_j)                             (softmax across the S scales)
        y     = cat_i(att_i * F_i)

    Args:
        channels: C, the input (and output) channels; a multiple of S.
        kernel_sizes: k_i of the S scales (paper: (3, 5, 7, 9)), odd.
        groups: G_i of the S convs (paper's code: (1, 4, 8, 16)); each divides C and C / S.
        reduction: r of the SE weight module (paper: 16); hidden max(1, c // r).
        act_layer: the SE hidden activation (paper: ReLU).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        - The paper's text splits x into S channel groups before the convs; the authors'
          release (murufeng/EPSANet ``PSAModule``, which produced the paper's numbers)
          gives every scale's conv the whole input (C -> C / S, groups G_i). We follow
          the release: S times the conv parameters of the split reading.
        - The release concatenates the weighted scales in reverse order (scale S-1
          first); we keep the paper's order cat(F_0, ..., F_{S-1}). The two differ only
          by a fixed permutation of output channel blocks.
        - The SE hidden width is max(1, c // r); the release's c // r is 0 when c < r.
        - Only stride 1 (the release's strided variant is not covered).

    Example:
        >>> psa = PyramidSplitAttention(64)
        >>> psa(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_sizes: Sequence[int] = (3, 5, 7, 9),
        groups: Sequence[int] = (1, 4, 8, 16),
        reduction: int = 16,
        act_layer: LayerSpec = "relu",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        kernel_sizes, groups = tuple(kernel_sizes), tuple(groups)
        s = len(kernel_sizes)
        require(s >= 1 and len(groups) == s,
                f"PyramidSplitAttention: kernel_sizes={kernel_sizes} and groups={groups} differ in length")
        require(channels % s == 0,
                f"PyramidSplitAttention: channels={channels} must be a multiple of S={s} scales")
        c = channels // s
        require(all(channels % g == 0 and c % g == 0 for g in groups),
                f"PyramidSplitAttention: groups={groups} must each divide channels={channels} "
                f"and channels/S={c}")
        require(all(k % 2 == 1 for k in kernel_sizes),
                f"PyramidSplitAttention: kernel_sizes={kernel_sizes} must be odd")
        require(reduction >= 1, f"PyramidSplitAttention: reduction={reduction} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.channels, self.split = channels, c
        self.kernel_sizes, self.groups = kernel_sizes, groups
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, c, k, padding=k // 2, groups=g, bias=False, **fk)
            for k, g in zip(kernel_sizes, groups, strict=True)
        )
        hidden = max(1, c // reduction)
        # One SE weight module shared by the S scales, as in the authors' release.
        self.se = nn.Sequential(
            nn.Conv2d(c, hidden, 1, **fk), create_act(act_layer, **fk), nn.Conv2d(hidden, c, 1, **fk),
            nn.Sigmoid(),
        )
        self.attn_map = AttentionMap("channel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="PyramidSplitAttention", C=self.channels)
        b, h, w = dims["B"], dims["H"], dims["W"]
        if not (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing()):
            fast = self._forward_eval(x, b, h, w)
            if fast is not None:
                return fast
        # F_i = conv_i(x): every scale reads the whole input
        f = torch.stack([conv(x) for conv in self.convs], 1)  # (B, S, c, H, W)
        # Z_i = SE(F_i), one module for all scales
        z = self.se(f.mean((3, 4)).flatten(0, 1)[..., None, None])  # (B S, c, 1, 1)
        # att_i = softmax over the S scales of Z_i
        att = self.attn_map(z.view(b, -1, self.split, 1, 1).softmax(1))  # (B, S, c, 1, 1)
        return (att * f).reshape(b, self.channels, h, w)

    def _forward_eval(self, x: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor | None:
        """forward without autograd for the stock layout (nobody hooked): the grouped convs on a
        channels-last copy of x (2-3x faster on CPU than on (B, C, H, W) at small sizes; the
        scales are then stacked into (B, S, c, H, W) as before), the SE's 1 x 1 convs on the
        pooled (B S, c) vectors as matrix products, the weighting in place. None otherwise."""
        convs, se = list(self.convs._modules.values()), self.se
        layers = list(se._modules.values()) if type(se) is nn.Sequential else []
        if (len(layers) != 4 or not is_pointwise(layers[0]) or type(layers[1]) not in ELEMENTWISE_ACTS
                or not is_pointwise(layers[2]) or type(layers[3]) is not nn.Sigmoid
                or any(type(c) is not nn.Conv2d or "weight" not in c._parameters for c in convs)
                or listened(self.convs, se, *convs, *layers)):
            return None
        p1, p2 = layers[0]._parameters, layers[2]._parameters
        if not all(k in p for p in (p1, p2) for k in ("weight", "bias")):
            return None  # a parametrized tensor: the module path
        nchw = x.is_contiguous()
        if not (nchw or x.is_contiguous(memory_format=torch.channels_last)):
            return None
        # a small (B, C, H, W) map: the convs on a channels-last copy (at 8 x 64 x 32 x 32 the
        # 9 x 9 conv gains nothing there and the copy costs)
        xc = x.contiguous(memory_format=torch.channels_last) if nchw and x.numel() <= _SMALL else x
        # F_i = conv_i(x): every scale reads the whole input
        fs = [c._conv_forward(xc, c._parameters["weight"], c._parameters["bias"]) for c in convs]
        if xc is x:
            f = torch.stack(fs, 1)  # (B, S, c, H, W), in x's layout as before
        else:
            f = x.new_empty((b, len(fs), self.split, h, w))  # (B, S, c, H, W), contiguous as before
            torch.stack(fs, 1, out=f)
        # Z_i = SE(F_i), one module for all scales
        z = F.linear(f.mean((3, 4)).flatten(0, 1), p1["weight"].flatten(1), p1["bias"])  # (B S, hidden)
        z = F.linear(call(layers[1], z), p2["weight"].flatten(1), p2["bias"]).sigmoid_()  # (B S, c)
        # att_i = softmax over the S scales of Z_i
        att = self.attn_map(z.view(b, -1, self.split, 1, 1).softmax(1))  # (B, S, c, 1, 1)
        return f.mul_(att).view(b, self.channels, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_sizes={self.kernel_sizes}, groups={self.groups}"


_SMALL = 1 << 15  # input elements up to which EPSA's convs run on a channels-last copy
