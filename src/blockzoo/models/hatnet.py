"""HAT-Net: a conv stem and four stages of H-MHSA blocks with inverted-residual conv FFNs.

Paper: Vision Transformers with Hierarchical Attention (Liu et al., arXiv 2106.03180).
Built from the attention room's ``HierarchicalMHSA`` and the conv room's ``ConvBnAct``.
No reference implementation is installed here: the parameter count is checked against
the authors' released model (yun-liu/HAT-Net ``HAT_Net.py``, README table: 12.7M) in
tests/test_backbones_hatnet.py.

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i,
G_i its grid, r_i its pooling ratio, e_i its FFN expansion, K classes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec
from blockzoo.attention.hat import HierarchicalMHSA
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["HATBlock", "HATInvertedResidual", "HATNet", "HATStage", "hatnet_tiny"]


def _gn(eps: float) -> Any:
    """A one-group GroupNorm factory with ``eps`` (the norm of every HAT-Net layer)."""
    return functools.partial(nn.GroupNorm, 1, eps=eps)


class HATInvertedResidual(nn.Module):
    r"""HAT-Net's feed-forward: a normalised inverted residual of 1 x 1, depthwise k x k and 1 x 1 convs.

    Liu et al., arXiv 2106.03180, Sec. 3 (as the authors' code builds it)::

        IRB(x) = GN(W_3 act(DWConv_{k x k}(act(W_1 GN(x)))))      W_1: C -> eC, W_3: eC -> C

    No biases on the convs; GN is a one-group GroupNorm.

    Args:
        dim: C. expansion: e (HAT-Net-Tiny: 8, 8, 4, 4). kernel_size: k (3).
        act_layer: (SiLU). norm_eps: of the GroupNorms (1e-6).

    Shape:
        - Input: (B, C, H, W), any H, W; output (B, C, H, W).
    """

    def __init__(self, dim: int, expansion: int = 4, *, kernel_size: int = 3, act_layer: LayerSpec = "silu",
                 norm_eps: float = 1e-6, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        hidden = dim * expansion
        self.norm = nn.GroupNorm(1, dim, eps=norm_eps, **fk)
        self.expand = ConvBnAct(dim, hidden, 1, bias=False, norm_layer=None, act_layer=act_layer, **fk)
        self.dw = ConvBnAct(hidden, hidden, kernel_size, groups=hidden, bias=False, norm_layer=None,
                            act_layer=act_layer, **fk)
        self.project = ConvBnAct(hidden, dim, 1, norm_layer=_gn(norm_eps), act_layer=None, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.dw(self.expand(self.norm(x))))


class HATBlock(nn.Module):
    r"""A HAT-Net block: H-MHSA and the inverted-residual FFN, each residual.

    Liu et al., arXiv 2106.03180, Sec. 3::

        x' = x + H-MHSA(x)          (H-MHSA normalises its own input)
        y  = x' + IRB(x')

    Args:
        dim: C. num_heads: h. grid_size: G. ds_ratio: r. expansion: e. kernel_size: k.
        act_layer: (SiLU). norm_eps: (1e-6).

    Shape:
        - Input: (B, C, H, W); output (B, C, H, W).
    """

    def __init__(self, dim: int, num_heads: int, *, grid_size: int = 1, ds_ratio: int = 1, expansion: int = 4,
                 kernel_size: int = 3, act_layer: LayerSpec = "silu", norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.attn = HierarchicalMHSA(dim, num_heads, grid_size=grid_size, ds_ratio=ds_ratio,
                                     norm_eps=norm_eps, **fk)
        self.ffn = HATInvertedResidual(dim, expansion, kernel_size=kernel_size, act_layer=act_layer,
                                       norm_eps=norm_eps, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ffn(x)


class HATStage(nn.Module):
    r"""A HAT-Net stage: a 3 x 3 stride-2 conv with GroupNorm (stages 2-4), then HAT blocks.

    Liu et al., arXiv 2106.03180, Sec. 3::

        z = Blocks(GN(Conv_{3x3/2}(x)))        (stage 1: Blocks(x))

    Args:
        dim: C_in. dim_out: C_out. depth: blocks. downsample: start with the strided conv.
        **block: ``HATBlock``'s keyword arguments (num_heads, grid_size, ds_ratio, ...).

    Shape:
        - Input: (B, C_in, H, W); output (B, C_out, H', W'), H' = ceil(H / 2) with
          ``downsample``, else H.
    """

    def __init__(self, dim: int, dim_out: int, depth: int, *, downsample: bool = False,
                 norm_eps: float = 1e-6, device: Any = None, dtype: Any = None, **block: Any) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        require(downsample or dim == dim_out,
                f"HATStage: dim={dim} and dim_out={dim_out} differ without downsample")
        self.downsample = ConvBnAct(dim, dim_out, 3, stride=2, bias=True, norm_layer=_gn(norm_eps),
                                    act_layer=None, **fk) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[HATBlock(dim_out, norm_eps=norm_eps, **block, **fk)
                                      for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class HATNet(nn.Module):
    r"""HAT-Net: a two-conv stem at stride 4, four stages of H-MHSA blocks (1/4 .. 1/32), GAP, linear.

    Liu et al., "Vision Transformers with Hierarchical Attention", arXiv 2106.03180, Sec. 3
    and the authors' model configs (yun-liu/HAT-Net).

    Equation::

        z_0 = Conv_{3x3/2}(act(GN(Conv_{3x3/2}(x))))          stem, 16 channels in between
        z_i = Stage_i(z_{i-1})                                  i = 1..4 (stages 2-4 downsample)
        logits = W mean_{h,w} z_4 + b

    Args:
        in_chans: C. num_classes: K.
        dims: D_1..D_4 (HAT-Net-Tiny: 48, 96, 240, 384).
        depths: blocks per stage (2, 2, 6, 3).
        head_dim: width of every attention head (48); h_i = D_i / head_dim.
        expansions: e_i of the FFNs (8, 8, 4, 4).
        grid_sizes: G_i of the H-MHSA (8, 7, 7, 1; 1 is plain global attention).
        ds_ratios: r_i of the H-MHSA (8, 4, 2, 1).
        kernel_sizes: of the FFNs' depthwise convs (3, 3, 3, 3).
        stem_dim: channels between the two stem convs (16).
        act_layer: (SiLU). norm_eps: of the GroupNorms (1e-6).
        dropout: before the classifier (0.2; training only).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (maps that are not multiples of a
          stage's grid are padded inside its attention; see ``HierarchicalMHSA``).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        No stochastic depth (training recipe). The released attention's unused
        ``proj_norm`` GroupNorms (2 D_i parameters per block, 5,760 in HAT-Net-Tiny) are
        left out: 12,650,152 parameters against the released model's 12,655,912 (both
        "12.7M"). Sizes that are not multiples of the grids or pooling ratios are padded
        and masked (the released code needs multiples).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        dims: Sequence[int] = (48, 96, 240, 384),
        depths: Sequence[int] = (2, 2, 6, 3),
        head_dim: int = 48,
        expansions: Sequence[int] = (8, 8, 4, 4),
        grid_sizes: Sequence[int] = (8, 7, 7, 1),
        ds_ratios: Sequence[int] = (8, 4, 2, 1),
        kernel_sizes: Sequence[int] = (3, 3, 3, 3),
        stem_dim: int = 16,
        act_layer: LayerSpec = "silu",
        norm_eps: float = 1e-6,
        dropout: float = 0.2,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        cfg = [tuple(dims), tuple(depths), tuple(expansions), tuple(grid_sizes), tuple(ds_ratios),
               tuple(kernel_sizes)]
        require(len({len(c) for c in cfg}) == 1 and len(cfg[0]) >= 1,
                f"HATNet: dims, depths, expansions, grid_sizes, ds_ratios, kernel_sizes must be equally "
                f"long, got {cfg}")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.stem = nn.Sequential(
            ConvBnAct(in_chans, stem_dim, 3, stride=2, bias=True, norm_layer=_gn(norm_eps),
                      act_layer=act_layer, **fk),
            nn.Conv2d(stem_dim, dims[0], 3, stride=2, padding=1, **fk),
        )
        self.stages = nn.Sequential(*[
            HATStage(dims[0] if i == 0 else dims[i - 1], dims[i], depths[i], downsample=i > 0,
                     num_heads=require_divides("HATNet", "head_dim", head_dim, f"dims[{i}]", dims[i]),
                     grid_size=grid_sizes[i], ds_ratio=ds_ratios[i], expansion=expansions[i],
                     kernel_size=kernel_sizes[i], act_layer=act_layer, norm_eps=norm_eps, **fk)
            for i in range(len(dims))
        ])
        self.num_features = dims[-1]
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dims[-1], num_classes, **fk)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, D_4, H_4, W_4), H_4 = ceil(H / 32) (each stride-2 conv rounds up)."""
        check_shape(x, "B C H W", name="HATNet", C=self.in_chans)
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W mean_{h,w} z_4 + b
        return self.head(self.drop(self.forward_features(x).mean((2, 3))))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="hatnet_tiny",
    family="model",
    paper="Vision Transformers with Hierarchical Attention",
    arxiv="2106.03180",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="12.7M", macs="2.0G",
                       source="yun-liu/HAT-Net README table (HAT-Net-Tiny); the released code has 5,760 "
                       "more, in norms it never calls", checked="authors' code"),
    example=Example(
        # Small widths, one block per stage and small grids keep the generic tests fast; the
        # constructor's defaults are HAT-Net-Tiny (tests/test_backbones_hatnet.py builds it).
        config=dict(in_chans=3, num_classes=10, dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), head_dim=8,
                    expansions=(2, 2, 2, 2), grid_sizes=(4, 2, 2, 1), ds_ratios=(4, 2, 2, 1), stem_dim=8),
        inputs=images("in_chans"), size=(64, 64), sizes=((33, 47), (64, 40)), out_shape=logits_shape,
        tiny=dict(num_classes=3, dims=(4, 8), depths=(1, 1), head_dim=4, expansions=(2, 2), grid_sizes=(2, 1),
                  ds_ratios=(2, 1), kernel_sizes=(3, 3), stem_dim=4),
    ),
)
def hatnet_tiny(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> HATNet:
    """HAT-Net-Tiny: widths (48, 96, 240, 384), depths (2, 2, 6, 3), grids (8, 7, 7, 1); 12,650,152 params.

    Liu et al., arXiv 2106.03180; the released model ``HAT_Net_tiny`` (yun-liu/HAT-Net, README:
    12.7M parameters, 2.0G FLOPs at 224x224, 79.8% top-1).

    Equation: see ``HATNet``, ``HATBlock``, ``HierarchicalMHSA`` and ``HATInvertedResidual``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``HATNet``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return HATNet(in_chans, num_classes, **kw)
