r"""MobileOne block: k over-parameterized conv-BN branches + a 1x1 scale branch + identity-BN.

Paper: MobileOne: An Improved One millisecond Mobile Backbone (Vasu, arXiv 2206.04040, 2022).

Letters: B batch, C input channels, O output channels, g groups, k kernel size, H W spatial.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from blockzoo.act import LayerSpec
from blockzoo.checks import require
from blockzoo.registry import Example, images, register
from blockzoo.rep.fuse import BNIdentity, ConvBN, RepConv, rep_out_shape

__all__ = ["MobileOneBlock"]


@register(
    name="mobileone",
    family="rep",
    paper="MobileOne: An Improved One millisecond Mobile Backbone",
    arxiv="2206.04040",
    year=2022,
    input="image",
    example=Example(config=dict(channels=8, groups=8, num_branches=2), inputs=images(), size=(8, 8),
                    out_shape=rep_out_shape, tiny=dict(channels=2, groups=2)),
)
class MobileOneBlock(RepConv):
    r"""MobileOne block: ``num_branches`` parallel k x k conv-BN, a 1x1 conv-BN and identity-BN.

    Vasu et al., "MobileOne: An Improved One millisecond Mobile Backbone", arXiv 2206.04040.

    Equation (training form)::

        y = act(sum_{i=1..n} BN_i(W_i * x) + BN_s(W_s * x) + BN_0(x))
            n = num_branches (the paper's k); W_s 1x1 (the "scale" branch, only if k > 1);
            BN_0(x) only if C = O and stride 1

    Deploy form: one k x k conv ``y = act(W' * x + b')``, the sum of the folded kernels.
    The paper's MobileOne unit is a depthwise block (g = C, k = 3) followed by a
    pointwise block (k = 1); this class is either one, chosen by ``groups`` and
    ``kernel_size``.

    Args:
        channels: C, input channels.
        dim_out: O, output channels (default C).
        kernel_size: k, odd (3 for the depthwise block, 1 for the pointwise block).
        stride: 1 or 2.
        dilation: d; padding is d (k - 1) / 2.
        groups: g, dividing C and O (C for the depthwise block).
        num_branches: n, the number of over-parameterized k x k branches (paper: 1-5).
        act_layer: activation after the sum (paper: ReLU).
        use_scale: keep the 1x1 scale branch when k > 1 (paper: yes).
        use_identity: keep the identity-BN branch where shapes allow (paper: yes).
        deploy: build the fused single-conv form directly.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, O, H', W'), O = dim_out, H' = floor((H - 1) / stride) + 1.

    Deviations:
        - ``dilation`` is an extension (the paper uses d = 1); the fusion stays exact.

    Example:
        >>> block = MobileOneBlock(16, groups=16, num_branches=3).eval()
        >>> x = torch.randn(2, 16, 9, 7)
        >>> torch.allclose(block(x), block.reparameterize()(x), atol=1e-5)
        True
    """

    def __init__(
        self, channels: int, dim_out: int | None = None, *, kernel_size: int = 3, stride: int = 1,
        dilation: int = 1, groups: int = 1, num_branches: int = 1, act_layer: LayerSpec = "relu",
        use_scale: bool = True, use_identity: bool = True, deploy: bool = False,
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__(channels, dim_out, kernel_size=kernel_size, stride=stride, dilation=dilation,
                         groups=groups, act_layer=act_layer, deploy=deploy, device=device, dtype=dtype)
        require(num_branches >= 1, f"MobileOneBlock: num_branches={num_branches} must be >= 1")
        self.num_branches, self.use_scale, self.use_identity = num_branches, use_scale, use_identity
        if deploy:
            return
        c, o, fk = self.channels, self.dim_out, self._fk
        branches: dict[str, nn.Module] = {
            f"conv_kxk_{i}": ConvBN(c, o, kernel_size, stride=stride, padding=self.padding,
                                    dilation=dilation, groups=groups, **fk)
            for i in range(num_branches)
        }
        if use_scale and kernel_size > 1:
            branches["scale"] = ConvBN(c, o, 1, stride=stride, groups=groups, **fk)
        if use_identity and c == o and stride == 1:
            branches["identity"] = BNIdentity(c, groups, **fk)
        self.branches = nn.ModuleDict(branches)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_branches={self.num_branches}"
