"""ConvNeXt V2: a patchify stem, four stages of ConvNeXt V2 blocks (with GRN), a LayerNorm head.

Paper: ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders (Woo et al.,
arXiv 2301.00808, 2023). Built from the conv room's ``ConvNeXtV2Block`` and
``GlobalResponseNorm``.

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i, K classes.

Key correspondence with PyTorch Image Models' ``ConvNeXt`` state dict for the V2 models
(timm name -> ours; every other key, e.g. ``stem.0.*``, ``stem.1.*``,
``stages.i.downsample.0.*``, ``stages.i.downsample.1.*``, ``stages.i.blocks.j.conv_dw.*``,
``...norm.*``, ``...mlp.fc1.*``, ``...mlp.grn.weight`` / ``.bias``, ``...mlp.fc2.*``, is the
same)::

    head.norm.*  ->  norm.*
    head.fc.*    ->  head.*
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_norm
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.conv.convnext import ConvNeXtV2Block
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["ConvNeXtV2", "ConvNeXtV2Stage", "convnextv2_atto"]


class ConvNeXtV2Stage(nn.Module):
    r"""A ConvNeXt stage: LayerNorm and a 2 x 2 stride-2 conv (stages 2-4), then blocks.

    Liu et al., arXiv 2201.03545, Sec. 2.6 ("separate downsampling layers")::

        z = Blocks(Conv_{2x2/2}(LN(x)))        (stage 1: Blocks(x))

    Args:
        dim: C_in. dim_out: C_out. depth: blocks. downsample: start with LN + 2 x 2 / 2 conv.
        mlp_ratio, norm_layer, norm_eps: of the blocks (and the downsampling norm).

    Shape:
        - Input: (B, C_in, H, W); output (B, C_out, H', W'), H' = floor(H / 2) with
          ``downsample``, else H.
    """

    def __init__(self, dim: int, dim_out: int, depth: int, *, downsample: bool = False,
                 mlp_ratio: float = 4.0, norm_layer: LayerSpec = "layernorm2d", norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        require(downsample or dim == dim_out,
                f"ConvNeXtV2Stage: dim={dim} and dim_out={dim_out} differ without downsample")
        self.downsample = nn.Sequential(
            create_norm(norm_layer, dim, eps=norm_eps, **fk), nn.Conv2d(dim, dim_out, 2, stride=2, **fk),
        ) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            ConvNeXtV2Block(dim_out, mlp_ratio=mlp_ratio, norm_layer=norm_layer, norm_eps=norm_eps, **fk)
            for _ in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtV2(nn.Module):
    r"""ConvNeXt V2: 4 x 4 patchify stem, stages joined by 2 x 2 strided convs, GAP, LayerNorm, linear head.

    Woo et al., "ConvNeXt V2", arXiv 2301.00808, Sec. 3.2 and Appendix (model sizes); the
    macro design is ConvNeXt's (Liu et al., arXiv 2201.03545, Sec. 2).

    Equation::

        z_0 = LN(Conv_{4x4/4}(x))
        z_i = Blocks_i(Conv_{2x2/2}(LN(z_{i-1})))      (stage 1: Blocks_1(z_0))
        logits = W LN(mean_{h,w} z_4) + b

    Args:
        in_chans: C. num_classes: K.
        dims: D_1..D_4 (Atto: 40, 80, 160, 320).
        depths: blocks per stage (Atto: 2, 2, 6, 2).
        mlp_ratio: of every block (4).
        norm_layer: over channels (LayerNorm2d); norm_eps: its epsilon (1e-6).

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= 32 (stride 32 in all; sides that are
          not multiples of the strides lose their last rows, as strided convs do in the
          paper's code); smaller raises ``ShapeError``.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        No stochastic depth (a training-recipe choice; eval outputs are the same).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        dims: Sequence[int] = (40, 80, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        mlp_ratio: float = 4.0,
        norm_layer: LayerSpec = "layernorm2d",
        norm_eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dims, depths = tuple(dims), tuple(depths)
        self._name = type(self).__name__
        require(len(dims) == len(depths) >= 1 and all(d >= 1 for d in depths),
                f"{self._name}: dims={dims} and depths={depths} must be equally long, depths >= 1")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.min_size = 4 * 2 ** (len(dims) - 1)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4, **fk),
                                  create_norm(norm_layer, dims[0], eps=norm_eps, **fk))
        self.stages = nn.Sequential(*[
            self._stage(i, dims[max(i - 1, 0)], dims[i], depths[i], downsample=i > 0, mlp_ratio=mlp_ratio,
                        norm_layer=norm_layer, norm_eps=norm_eps, **fk)
            for i in range(len(dims))
        ])
        self.num_features = dims[-1]
        self.norm = nn.LayerNorm(dims[-1], eps=norm_eps, **fk)
        self.head = nn.Linear(dims[-1], num_classes, **fk)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _stage(self, i: int, *args: Any, **kwargs: Any) -> nn.Module:
        """Stage ``i`` (HorNet builds its own kind here)."""
        return ConvNeXtV2Stage(*args, **kwargs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, D_4, H / 32, W / 32) (rounded down)."""
        dims = check_shape(x, "B C H W", name=self._name, C=self.in_chans)
        if dims["H"] < self.min_size or dims["W"] < self.min_size:
            raise ShapeError(f"{self._name}: expected H, W >= {self.min_size} (total stride), "
                             f"got {dims['H']}x{dims['W']}")
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W LN(mean_{h,w} z_4) + b
        return self.head(self.norm(self.forward_features(x).mean((2, 3))))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="convnextv2_atto",
    family="model",
    paper="ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders",
    arxiv="2301.00808",
    year=2023,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="3.7M", macs="0.55G",
                       source="abstract; release's model table"),
    example=Example(
        # The default (paper) config, so ``info`` and the catalogue show Atto's counts; the
        # smallest input (32) and non-square sizes at and above it.
        config=dict(in_chans=3, num_classes=1000), inputs=images("in_chans"), size=(32, 32),
        sizes=((33, 47), (64, 40)), out_shape=logits_shape,
        tiny=dict(num_classes=3, dims=(4, 8), depths=(1, 1)),
    ),
)
def convnextv2_atto(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> ConvNeXtV2:
    """ConvNeXt V2-Atto: widths (40, 80, 160, 320), depths (2, 2, 6, 2); 3,708,400 parameters.

    Woo et al., arXiv 2301.00808 (abstract: Atto has 3.7M parameters; the authors' released
    model table: 0.55 GFLOPs at 224x224). Parameter count equal to PyTorch Image Models' ``convnextv2_atto``
    (3,708,400).

    Equation: see ``ConvNeXtV2``, ``ConvNeXtV2Block`` and ``GlobalResponseNorm``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``ConvNeXtV2``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= 32.
        - Output: (B, K) logits, K = num_classes.
    """
    return ConvNeXtV2(in_chans, num_classes, **kw)
