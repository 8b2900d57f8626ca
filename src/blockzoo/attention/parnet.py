"""ParNet attention: the RepVGG-SSE block with its skip-squeeze-excitation branch.

Paper: Non-deep Networks (Goyal, arXiv 2110.07641, 2021).

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, folded_conv_bn, listened
from blockzoo._kept import derived
from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape
from blockzoo.registry import Example, images, register

__all__ = ["ParNetAttention"]

# BN(conv_1x1 x) + BN(conv_3x3 x) as one 3x3 convolution (RepVGG's merge: each branch's norm
# folded into its conv by ``_fastcall.folded_conv_bn``, the 1x1 kernel added at the 3x3
# centre), for inference: kept by ``_kept.derived`` on the two folds, which are kept while their
# sources are unchanged (a refold is a new tensor, and so a new merge).


def _merged_branches(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    c1, c3 = block._modules["conv1x1"], block._modules["conv3x3"]
    if (type(c1) is not nn.Sequential or type(c3) is not nn.Sequential or len(c1) != 2 or len(c3) != 2
            or listened(c1, c3)):
        return None
    conv1, conv3 = c1[0], c3[0]
    if (type(conv1) is not nn.Conv2d or type(conv3) is not nn.Conv2d or conv1.kernel_size != (1, 1)
            or conv3.kernel_size != (3, 3) or conv1.stride != (1, 1) or conv3.stride != (1, 1)
            or conv1.padding != (0, 0) or conv3.padding != (1, 1) or conv1.dilation != (1, 1)
            or conv3.dilation != (1, 1) or conv1.groups != 1 or conv3.groups != 1):
        return None
    f1, f3 = folded_conv_bn(conv1, c1[1], x), folded_conv_bn(conv3, c3[1], x)
    if f1 is None or f3 is None:
        return None
    return derived(block, "merged", (*f1, *f3),
                   lambda w1, b1, w3, b3: (w3 + F.pad(w1, (1, 1, 1, 1)), b3 + b1))  # (O, C, 3, 3), (O,)


@register(
    name="parnet_attention",
    family="attention",
    paper="Non-deep Networks",
    arxiv="2110.07641",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4)),
)
class ParNetAttention(nn.Module):
    r"""ParNet's RepVGG-SSE block: 1x1 and 3x3 conv branches plus a skip-squeeze-excitation.

    Goyal et al., "Non-deep Networks", arXiv 2110.07641.

    Equation::

        b_1 = BN(conv_1x1(x))
        b_3 = BN(conv_3x3(x))
        s   = BN(x)                                        the skip branch
        SSE = s * sigmoid(W GAP(s))                        one bias-free 1x1 conv C -> C
                                                           (no bottleneck)
        y   = act(b_1 + b_3 + SSE)

    Args:
        channels: C, the input (and output) channels.
        act_layer: the output activation (paper: SiLU).
        norm_layer: the branches' normalisation (paper: BN).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        The paper does not say whether the SSE's 1x1 conv has a bias; the authors' release
        (imankgoyal/NonDeepNetworks, ``SE1`` -> ``ConvSig``) has none, and neither do we.
        Only the equal-width, stride-1 block is covered (the release's downsampling
        variant, with its ``2 * sigmoid`` gate on the input, is not).

    Example:
        >>> pa = ParNetAttention(64)
        >>> pa(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, act_layer: LayerSpec = "silu",
                 norm_layer: LayerSpec = "batchnorm2d", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.channels = channels
        self.conv1x1 = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False, **fk),
                                     create_norm(norm_layer, channels, **fk))
        self.conv3x3 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False, **fk),
                                     create_norm(norm_layer, channels, **fk))
        self.skip_norm = create_norm(norm_layer, channels, **fk)
        self.excite = nn.Conv2d(channels, channels, 1, bias=False, **fk)
        self.act = create_act(act_layer, **fk)
        self.attn_map = AttentionMap("channel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="ParNetAttention", C=self.channels)  # raises
        mods = self._modules
        merged = _merged_branches(self, x)  # None under autograd, training, hooks, tracing
        if merged is not None:
            # Inference: b_1 + b_3 as one 3x3 convolution; SSE added in place; act in place.
            s = call(mods["skip_norm"], x)
            z = s.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
            gate = mods["attn_map"](call(mods["excite"], z).sigmoid_())
            y = F.conv2d(x, merged[0], merged[1], 1, 1).addcmul_(s, gate)
            act = mods["act"]
            if type(act) is nn.SiLU and not listened(act):
                return F.silu(y, inplace=True)  # y is this call's own tensor
            return call(act, y)
        s = self.skip_norm(x)
        # SSE = BN(x) * sigmoid(W GAP(BN(x)))
        gate = self.attn_map(torch.sigmoid(self.excite(s.mean((2, 3), keepdim=True))))  # (B, C, 1, 1)
        return self.act(self.conv1x1(x) + self.conv3x3(x) + s * gate)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
