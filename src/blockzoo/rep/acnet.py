r"""ACNet asymmetric convolution block: k x k + 1 x k + k x 1 conv-BN branches, one k x k at deploy.

Paper: ACNet: Strengthening the Kernel Skeletons for Powerful CNN via Asymmetric
Convolution Blocks (Ding, arXiv 1908.03930, 2019).

Letters: B batch, C input channels, O output channels, g groups, k kernel size, H W spatial.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from blockzoo.act import LayerSpec
from blockzoo.checks import require
from blockzoo.registry import Example, images, register
from blockzoo.rep.fuse import ConvBN, RepConv, rep_out_shape

__all__ = ["ACBlock"]


@register(
    name="acnet",
    family="rep",
    paper="ACNet: Strengthening the Kernel Skeletons for Powerful CNN via Asymmetric Convolution Blocks",
    arxiv="1908.03930",
    year=2019,
    input="image",
    example=Example(config=dict(channels=8), inputs=images(), size=(8, 8), out_shape=rep_out_shape,
                    tiny=dict(channels=2)),
)
class ACBlock(RepConv):
    r"""Asymmetric Convolution Block: a square conv strengthened by horizontal and vertical kernels.

    Ding et al., "ACNet: Strengthening the Kernel Skeletons for Powerful CNN via
    Asymmetric Convolution Blocks", arXiv 1908.03930.

    Equation (training form)::

        y = act(BN_s(W_kxk * x) + BN_h(W_1xk * x) + BN_v(W_kx1 * x))

    Deploy form (branch additivity of convolution): the 1 x k kernel is the middle row,
    the k x 1 kernel the middle column of one k x k kernel::

        y = act(W' * x + b'),  W' = t_s W_kxk + pad(t_h W_1xk) + pad(t_v W_kx1),  t = gamma / sqrt(var + eps)

    Args:
        channels: C, input channels.
        dim_out: O, output channels (default C).
        kernel_size: k, odd and >= 3.
        stride: 1 or 2.
        dilation: d; padding is d (k - 1) / 2 for the square kernel and the same along
            the long side of the asymmetric ones.
        groups: g, dividing C and O.
        act_layer: activation after the sum (default none: the ACB replaces a conv-BN,
            the network's own activation follows).
        deploy: build the fused single-conv form directly.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, O, H', W'), O = dim_out, H' = floor((H - 1) / stride) + 1.

    Deviations:
        - 'same' padding only: the paper also discusses padding = 0, where the
          asymmetric branches need cropping; ``dilation`` is an extension.

    Example:
        >>> block = ACBlock(16, 32).eval()
        >>> x = torch.randn(2, 16, 9, 7)
        >>> torch.allclose(block(x), block.reparameterize()(x), atol=1e-5)
        True
    """

    def __init__(
        self, channels: int, dim_out: int | None = None, *, kernel_size: int = 3, stride: int = 1,
        dilation: int = 1, groups: int = 1, act_layer: LayerSpec = None, deploy: bool = False,
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__(channels, dim_out, kernel_size=kernel_size, stride=stride, dilation=dilation,
                         groups=groups, act_layer=act_layer, deploy=deploy, device=device, dtype=dtype)
        require(kernel_size >= 3, f"ACBlock: kernel_size={kernel_size} must be >= 3")
        if deploy:
            return
        c, o, k, p, fk = self.channels, self.dim_out, kernel_size, self.padding, self._fk
        common = dict(stride=stride, dilation=dilation, groups=groups, **fk)
        self.branches = nn.ModuleDict({
            "square": ConvBN(c, o, (k, k), padding=(p, p), **common),
            "hor": ConvBN(c, o, (1, k), padding=(0, p), **common),
            "ver": ConvBN(c, o, (k, 1), padding=(p, 0), **common),
        })
