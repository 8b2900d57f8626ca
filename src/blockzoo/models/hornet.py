"""HorNet: a ConvNeXt-style hierarchy whose token mixer is the recursive gated convolution.

Paper: HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions
(Rao et al., arXiv 2207.14284, NeurIPS 2022). Built from the conv room's ``HorNetBlock`` and
``GnConv``. No reference implementation is installed here: the parameter count is checked
against the paper's Table 1 (tests/test_backbones_paper_only.py).

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i,
n_i its gnConv order, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_norm
from blockzoo.checks import require
from blockzoo.conv.hornet import HorNetBlock
from blockzoo.models.classic import logits_shape
from blockzoo.models.convnext import ConvNeXtV2
from blockzoo.registry import Example, images, register

__all__ = ["HorNet", "HorNetStage", "hornet_tiny"]


class HorNetStage(nn.Module):
    r"""A HorNet stage: LayerNorm and a 2 x 2 stride-2 conv (stages 2-4), then HorNet blocks.

    Rao et al., arXiv 2207.14284, Sec. 3.2 (the downsampling layers are ConvNeXt's)::

        z = Blocks(Conv_{2x2/2}(LN(x)))        (stage 1: Blocks(x))

    Args:
        dim: C_in. dim_out: C_out. depth: blocks. order: n of their gnConv.
        downsample: start with LN + 2 x 2 / 2 conv.
        **block: ``HorNetBlock``'s keyword arguments (kernel_size, scale, mlp_ratio, ...).

    Shape:
        - Input: (B, C_in, H, W); output (B, C_out, H', W'), H' = floor(H / 2) with
          ``downsample``, else H.
    """

    def __init__(self, dim: int, dim_out: int, depth: int, order: int, *, downsample: bool = False,
                 norm_layer: LayerSpec = "layernorm2d", norm_eps: float = 1e-6, device: Any = None,
                 dtype: Any = None, **block: Any) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        require(downsample or dim == dim_out,
                f"HorNetStage: dim={dim} and dim_out={dim_out} differ without downsample")
        self.downsample = nn.Sequential(
            create_norm(norm_layer, dim, eps=norm_eps, **fk), nn.Conv2d(dim, dim_out, 2, stride=2, **fk),
        ) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            HorNetBlock(dim_out, order, norm_layer=norm_layer, norm_eps=norm_eps, **block, **fk)
            for _ in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class HorNet(ConvNeXtV2):
    r"""HorNet: 4 x 4 patchify stem, four stages of gnConv blocks of rising order, GAP, LayerNorm, head.

    Rao et al., "HorNet", arXiv 2207.14284, Sec. 3.2 and Table 1 / Appendix (model configs).

    Equation::

        z_0 = LN(Conv_{4x4/4}(x))
        z_i = Blocks_i(Conv_{2x2/2}(LN(z_{i-1})))      (stage 1: Blocks_1(z_0)), gnConv of order n_i
        logits = W LN(mean_{h,w} z_4) + b

    Args:
        in_chans: C. num_classes: K.
        dims: D_1..D_4 (HorNet-T: 64, 128, 256, 512).
        depths: blocks per stage (HorNet-T: 2, 3, 18, 2).
        orders: n_i of the gnConv per stage (2, 3, 4, 5).
        kernel_size: of the gnConv's depthwise conv (7: the HorNet-7x7 models).
        scale: 1 / alpha of the gnConv (1/3).
        mlp_ratio: (4). layer_scale: initial gamma (1e-6).
        norm_layer: over channels (LayerNorm2d); norm_eps: (1e-6).

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= 32 (total stride 32; sides that are not
          multiples of the strides lose their last rows, as strided convs do in the paper's
          code); smaller raises ``ShapeError``.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        No stochastic depth (training recipe; eval outputs are the same).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 3, 18, 2),
        orders: Sequence[int] = (2, 3, 4, 5),
        kernel_size: int = 7,
        scale: float = 1.0 / 3.0,
        mlp_ratio: float = 4.0,
        layer_scale: float = 1e-6,
        norm_layer: LayerSpec = "layernorm2d",
        norm_eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        orders = tuple(orders)
        require(len(orders) == len(tuple(dims)),
                f"HorNet: dims={tuple(dims)}, depths={tuple(depths)}, orders={orders} must be equally long")
        # read by _stage while the ConvNeXt skeleton (stem, stages, norm, head, init) is built
        self._gn = dict(orders=orders, kernel_size=kernel_size, scale=scale, layer_scale=layer_scale)
        super().__init__(in_chans, num_classes, dims=dims, depths=depths, mlp_ratio=mlp_ratio,
                         norm_layer=norm_layer, norm_eps=norm_eps, device=device, dtype=dtype)

    def _stage(self, i: int, *args: Any, **kwargs: Any) -> nn.Module:
        g = self._gn
        return HorNetStage(*args[:3], g["orders"][i], kernel_size=g["kernel_size"], scale=g["scale"],
                           layer_scale=g["layer_scale"], **kwargs)


@register(
    name="hornet_tiny",
    family="model",
    paper="HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions",
    arxiv="2207.14284",
    year=2022,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="22M", macs="4.0G", source="Table 1 (HorNet-T 7x7)"),
    exempt={"grad": "a gnConv of order n multiplies n + 1 gated factors; at the authors' initialisation "
                    "(weights N(0, 0.02), layer scale 1e-6) the order-4 and order-5 blocks' gradients are "
                    "below 1e-11 of the median, which the check counts as zero; "
                    "tests/test_backbones_paper_only.py "
                    "re-initialises at unit scale and requires a non-zero gradient for every parameter"},
    example=Example(
        # Small widths and one block per stage keep the generic tests fast; the constructor's
        # defaults are the paper's HorNet-T (tests/test_backbones_paper_only.py builds it).
        config=dict(in_chans=3, num_classes=10, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1)),
        inputs=images("in_chans"), size=(32, 32), sizes=((33, 47), (64, 40)), out_shape=logits_shape,
        tiny=dict(num_classes=3, dims=(4, 8), depths=(1, 1), orders=(2, 3), kernel_size=3),
    ),
)
def hornet_tiny(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> HorNet:
    """HorNet-T (7x7): widths (64, 128, 256, 512), depths (2, 3, 18, 2), gnConv orders 2-5; 22,409,512 params.

    Rao et al., arXiv 2207.14284, Table 1 (HorNet-T 7x7: 22M parameters, 4.0G FLOPs at
    224x224, 82.8% top-1) and the model configs of Sec. 4.1 (base width C = 64, depths
    [2, 3, 18, 2], alpha = 3).

    Equation: see ``HorNet``, ``HorNetBlock`` and ``GnConv``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``HorNet``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= 32.
        - Output: (B, K) logits, K = num_classes.
    """
    return HorNet(in_chans, num_classes, **kw)
