"""The ResNeXt block: a bottleneck whose 3x3 conv is split into many groups.

Paper: Aggregated Residual Transformations for Deep Neural Networks (Xie, Girshick,
Dollar, Tu, He, arXiv 1611.05431, 2016).

Letters: B batch, C input channels, O output channels, H W spatial, s stride.
"""

from __future__ import annotations

from typing import Any

from blockzoo.act import LayerSpec
from blockzoo.checks import require
from blockzoo.conv.resnet import Bottleneck
from blockzoo.registry import Example, images, register

__all__ = ["ResNeXtBlock"]


@register(
    name="resnext_block",
    family="conv",
    paper="Aggregated Residual Transformations for Deep Neural Networks",
    arxiv="1611.05431",
    year=2016,
    input="image",
    example=Example(
        config=dict(channels=16, dim_out=32, cardinality=4, base_width=8, stride=2),
        inputs=images(),
        size=(8, 8),
        out_shape=lambda s, c: (s[0], c["dim_out"], -(-s[2] // c["stride"]), -(-s[3] // c["stride"])),
        tiny=dict(channels=4, dim_out=8, cardinality=2, base_width=32),
    ),
)
class ResNeXtBlock(Bottleneck):
    r"""ResNeXt block: the sum of ``cardinality`` parallel bottleneck paths, as one grouped conv.

    Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", arXiv 1611.05431.

    Equation (form (c) of the paper's Fig. 3, which it shows equivalent to the
    sum of g = cardinality identical-topology paths T_i)::

        F(x) = sum_{i=1..g} T_i(x) = BN(conv1x1(act(BN(gconv3x3_g(act(BN(conv1x1(x))))))))
        y    = act(A(F(x)) + S(x))

    with bottleneck width Wd = floor(O / 4 * base_width / 64) * g (O = dim_out):
    ResNeXt-50 (32x4d) has g = 32, base_width = 4, Wd = 128 in its first stage.

    Args:
        channels: C, the input channels.
        dim_out: O, the output channels.
        cardinality: g, the number of paths (groups of the 3x3 conv).
        base_width: d, the width of each path per 64 output channels / 4.
        stride: s, on the grouped 3x3 conv and the shortcut.
        norm_layer, act_layer, attention, attention_kwargs, zero_init_last: as in
            ``Bottleneck``.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, O, ceil(H / s), ceil(W / s)), O = dim_out, s = stride.

    Deviations:
        Stride on the grouped 3x3 conv, as in the paper's released models.

    Example:
        >>> block = ResNeXtBlock(256, 256, cardinality=32, base_width=4)
        >>> block.width, block(torch.randn(1, 256, 7, 7)).shape
        (128, torch.Size([1, 256, 7, 7]))
    """

    def __init__(
        self,
        channels: int,
        dim_out: int,
        *,
        cardinality: int = 32,
        base_width: int = 4,
        stride: int = 1,
        norm_layer: LayerSpec = "batchnorm",
        act_layer: LayerSpec = "relu",
        attention: LayerSpec = None,
        attention_kwargs: dict[str, Any] | None = None,
        zero_init_last: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        width = int(dim_out / 4 * base_width / 64) * cardinality
        require(width >= cardinality,
                f"ResNeXtBlock: dim_out={dim_out}, base_width={base_width} give a path width below 1")
        super().__init__(
            channels, width, dim_out=dim_out, stride=stride, groups=cardinality,
            norm_layer=norm_layer, act_layer=act_layer, attention=attention,
            attention_kwargs=attention_kwargs, zero_init_last=zero_init_last,
            device=device, dtype=dtype,
        )
        self.cardinality, self.base_width = cardinality, base_width
