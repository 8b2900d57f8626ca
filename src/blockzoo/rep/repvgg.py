r"""RepVGG block: k x k conv-BN + 1x1 conv-BN + identity-BN in training, one k x k conv at deploy.

Paper: RepVGG: Making VGG-style ConvNets Great Again (Ding, arXiv 2101.03697, 2021).

Letters: B batch, C input channels, O output channels, g groups, k kernel size, H W spatial.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from blockzoo.act import LayerSpec
from blockzoo.registry import Example, images, register
from blockzoo.rep.fuse import BNIdentity, ConvBN, RepConv, rep_out_shape

__all__ = ["RepVGGBlock"]


@register(
    name="repvgg",
    family="rep",
    paper="RepVGG: Making VGG-style ConvNets Great Again",
    arxiv="2101.03697",
    year=2021,
    input="image",
    example=Example(config=dict(channels=8), inputs=images(), size=(8, 8), out_shape=rep_out_shape,
                    tiny=dict(channels=2)),
)
class RepVGGBlock(RepConv):
    r"""RepVGG block: three parallel branches in training, one k x k conv at inference.

    Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", arXiv 2101.03697.

    Equation (training form; BN_* use batch statistics in training, running ones in eval)::

        y = act(BN_k(W_k * x) + BN_1(W_1 * x) + BN_0(x))       BN_0(x) only if C = O, stride 1

    Deploy form (after ``reparameterize()``), with each BN folded and the 1x1 and
    identity kernels centred in k x k::

        y = act(W' * x + b'),   W' = t_k W_k + pad(t_1 W_1) + pad(t_0 I),   t = gamma / sqrt(var + eps)

    Args:
        channels: C, input channels.
        dim_out: O, output channels (default C); when O != C or stride > 1 the
            identity branch is absent.
        kernel_size: k (paper: 3), odd.
        stride: 1 or 2.
        dilation: d; padding is d (k - 1) / 2.
        groups: g, dividing C and O.
        act_layer: activation after the sum (paper: ReLU).
        use_identity: keep the identity-BN branch where shapes allow (paper: yes).
        deploy: build the fused single-conv form directly.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, O, H', W'), O = dim_out, H' = floor((H - 1) / stride) + 1.

    Deviations:
        - ``dilation`` is an extension (the paper uses d = 1); the fusion stays exact
          because the 1x1 and identity taps sit at the dilated kernel's centre.

    Example:
        >>> block = RepVGGBlock(16, 32, stride=2).eval()
        >>> x = torch.randn(2, 16, 9, 7)
        >>> y = block(x)
        >>> torch.allclose(block.reparameterize()(x), y, atol=1e-5)
        True
    """

    def __init__(
        self, channels: int, dim_out: int | None = None, *, kernel_size: int = 3, stride: int = 1,
        dilation: int = 1, groups: int = 1, act_layer: LayerSpec = "relu", use_identity: bool = True,
        deploy: bool = False, device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__(channels, dim_out, kernel_size=kernel_size, stride=stride, dilation=dilation,
                         groups=groups, act_layer=act_layer, deploy=deploy, device=device, dtype=dtype)
        self.use_identity = use_identity
        if deploy:
            return
        c, o, fk = self.channels, self.dim_out, self._fk
        branches: dict[str, nn.Module] = {
            "conv_kxk": ConvBN(c, o, kernel_size, stride=stride, padding=self.padding, dilation=dilation,
                               groups=groups, **fk),
        }
        if kernel_size > 1:
            branches["conv_1x1"] = ConvBN(c, o, 1, stride=stride, groups=groups, **fk)
        if use_identity and c == o and stride == 1:
            branches["identity"] = BNIdentity(c, groups, **fk)
        self.branches = nn.ModuleDict(branches)
