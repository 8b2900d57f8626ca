"""LeViT: a convolutional stem, then attention stages joined by shrink attention, BN everywhere.

Paper: LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference (Graham et al.,
arXiv 2104.01136, 2021), Sec. 4 and Table 1 (LeViT-128S). Built from the attention room's
``LeViTAttention`` (attention with attention bias, and its shrink form) and the conv room's
``ConvBnAct``.

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i, K classes.

Key correspondence with PyTorch Image Models' ``levit_128s`` (``LevitDistilled``) state dict
(timm name -> ours; every other key, e.g. ``...attn.qkv.linear.*``, ``...attention_biases``,
``...mlp.ln1.*``, ``head.bn.*``, ``head_dist.linear.*``, is the same)::

    stem.conv{k}.linear / .bn                       ->  stem.{k-1}.conv / .bn
    stages.i.blocks.j.attn.proj.ln.*                 ->  stages.i.blocks.j.attn.proj.*
    stages.i.downsample.attn_downsample.q.ln.*       ->  stages.i.downsample.attn_downsample.q.*
    stages.i.downsample.attn_downsample.proj.ln.*    ->  stages.i.downsample.attn_downsample.proj.*
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_act
from blockzoo.attention.levit import LeViTAttention, LinearNorm
from blockzoo.checks import check_shape, require
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["LeViT", "LeViTBlock", "LeViTMlp", "LeViTShrink", "levit_128s"]


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N, C)


class LeViTMlp(nn.Module):
    """LeViT's MLP on a map: y = BN(W_2 act(BN(W_1 x))) at every position (no biases: BN shifts).

    Shape: (B, C, H, W) -> (B, C, H, W), C = dim.
    """

    def __init__(self, dim: int, hidden: int, *, act_layer: LayerSpec = "hardswish", device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.ln1 = LinearNorm(dim, hidden, **fk)
        self.act = create_act(act_layer, **fk)
        self.ln2 = LinearNorm(hidden, dim, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        y = self.ln2(self.act(self.ln1(_tokens(x))))  # (B, N, C)
        return y.transpose(1, 2).reshape(B, C, H, W)


class LeViTBlock(nn.Module):
    """x = x + Attn(x); x = x + MLP(x) (no LayerNorm: BN inside every projection).

    Shape: (B, D, H, W) -> (B, D, H, W).
    """

    def __init__(self, dim: int, *, key_dim: int, num_heads: int, attn_ratio: float, mlp_ratio: float,
                 resolution: int, act_layer: LayerSpec = "hardswish", device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.attn = LeViTAttention(dim, key_dim=key_dim, num_heads=num_heads, attn_ratio=attn_ratio,
                                   resolution=resolution, act_layer=act_layer, **fk)
        self.mlp = LeViTMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class LeViTShrink(nn.Module):
    """Between stages: shrink attention (stride 2, wider output, no residual), then x + MLP(x).

    Shape: (B, D_in, H, W) -> (B, D_out, ceil(H / 2), ceil(W / 2)).
    """

    def __init__(self, dim: int, dim_out: int, *, key_dim: int, resolution: int,
                 act_layer: LayerSpec = "hardswish", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        require(dim % key_dim == 0, f"LeViT: key_dim={key_dim} must divide the width {dim} (shrink heads)")
        # Table 1 / reference: D_in / d heads, values 4 d wide, MLP ratio 2
        self.attn_downsample = LeViTAttention(dim, dim_out, key_dim=key_dim, num_heads=dim // key_dim,
                                              attn_ratio=4.0, stride=2, resolution=resolution,
                                              act_layer=act_layer, **fk)
        self.mlp = LeViTMlp(dim_out, 2 * dim_out, act_layer=act_layer, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_downsample(x)
        return x + self.mlp(x)


class LeViTStage(nn.Module):
    """An optional downsampling module (LeViT's shrink block, EfficientFormer's strided conv-BN),
    then the stage's blocks."""

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class LeViT(nn.Module):
    r"""LeViT: four strided 3x3 conv-BN layers, three attention stages, BN + linear heads.

    Graham et al., "LeViT: a Vision Transformer in ConvNet's Clothing for Faster
    Inference", arXiv 2104.01136, Sec. 4 and Table 1.

    Equation::

        h = BN(c_4(hs(BN(c_3(hs(BN(c_2(hs(BN(c_1(x)))))))))))        c_k: 3x3 conv, stride 2
        stage i:  (i > 1) h = Shrink(h) = S + MLP(S), S = ShrinkAttn_{s=2}(h)
                  h = h + Attn(h);  h = h + MLP(h)                     D_i wide, depth_i times
            Attn: softmax(Q K^T / sqrt(d) + B_{|dx|,|dy|}) V per head (``LeViTAttention``)
            MLP(h) = BN(W_2 hs(BN(W_1 h)))                            hs = hard-swish
        z = mean over positions of h
        logits = (W_c BN(z) + b_c + W_d BN'(z) + b_d) / 2             class and distillation heads

    Args:
        in_chans: C. num_classes: K.
        dims: D_i per stage. depths: blocks per stage. num_heads: h per stage.
        key_dim: d (16 for LeViT-128S). attn_ratio: value width / d in the blocks (2).
        mlp_ratio: MLP width / D in the blocks (2).
        img_size: the training resolution; it fixes the attention-bias tables' sides
            (img_size / 16 in stage 1, halved, rounded up, per stage).
        distilled: a second (distillation) head, averaged with the class head (the
            reference's ``LevitDistilled``, the default there).
        act_layer: hard-swish.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (total stride 64, sizes rounded up).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        - The heads are always averaged: the reference returns both heads separately only
          when trained with distillation (``set_distilled_training``), which this
          catalogue does not do.
        - Sizes other than ``img_size`` clip offsets beyond the bias tables (see
          ``LeViTAttention``); the reference accepts only ``img_size``.
        - No stochastic depth or dropout (training-recipe choices; eval outputs are the same),
          and the output projections' BN scales start at 1 (the reference starts them at 0).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        dims: Sequence[int] = (128, 256, 384),
        depths: Sequence[int] = (2, 3, 4),
        num_heads: Sequence[int] = (4, 6, 8),
        key_dim: int = 16,
        attn_ratio: float = 2.0,
        mlp_ratio: float = 2.0,
        img_size: int = 224,
        distilled: bool = True,
        act_layer: LayerSpec = "hardswish",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        cfg = [tuple(dims), tuple(depths), tuple(num_heads)]
        require(len({len(c) for c in cfg}) == 1 and len(cfg[0]) >= 1,
                f"LeViT: dims, depths, num_heads must be equally long, got {cfg}")
        require(dims[0] % 8 == 0,
                f"LeViT: dims[0]={dims[0]} must be divisible by 8 (stem widths D/8, D/4, D/2)")
        require(img_size >= 16, f"LeViT: img_size={img_size} must be >= 16")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes, self.img_size = in_chans, num_classes, img_size
        d0 = dims[0]
        widths = (in_chans, d0 // 8, d0 // 4, d0 // 2, d0)
        self.stem = nn.Sequential(*[
            ConvBnAct(widths[k], widths[k + 1], 3, stride=2, act_layer=act_layer if k < 3 else None, **fk)
            for k in range(4)
        ])
        res = img_size // 16
        stages: list[nn.Module] = []
        for i, (dim, depth, heads) in enumerate(zip(*cfg, strict=True)):
            down = None
            if i > 0:
                down = LeViTShrink(dims[i - 1], dim, key_dim=key_dim, resolution=res, act_layer=act_layer,
                                   **fk)
                res = (res - 1) // 2 + 1
            blocks = [LeViTBlock(dim, key_dim=key_dim, num_heads=heads, attn_ratio=attn_ratio,
                                 mlp_ratio=mlp_ratio, resolution=res, act_layer=act_layer, **fk)
                      for _ in range(depth)]
            stages.append(LeViTStage(down, blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = dims[-1]
        self.head = _NormLinear(dims[-1], num_classes, **fk)
        self.head_dist = _NormLinear(dims[-1], num_classes, **fk) if distilled else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, D_3, H / 64, W / 64) (sizes rounded up)."""
        check_shape(x, "B C H W", name="LeViT", C=self.in_chans)
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.forward_features(x).mean((2, 3))  # (B, D)
        if self.head_dist is None:
            return self.head(z)
        # logits = (head(z) + head_dist(z)) / 2
        return (self.head(z) + self.head_dist(z)) / 2  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}, img_size={self.img_size}"


class _NormLinear(nn.Module):
    """BN over the pooled features, then a linear classifier."""

    def __init__(self, dim: int, num_classes: int, **fk: Any) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, **fk)
        self.linear = nn.Linear(dim, num_classes, **fk)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(z))


@register(
    name="levit_128s",
    family="model",
    paper="LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference",
    arxiv="2104.01136",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="7.8M", macs="305M", source="Table 3"),
    exempt={"grad": "in training mode a per-channel shift of the residual stream (the BN biases of the "
                    "stem's last conv and of every output projection) reaches the output only through a "
                    "batch-statistics BN (the next projection's, the head's), which removes it exactly, "
                    "so their gradient is 0; they act in eval through the running statistics, as in the "
                    "reference"},
    example=Example(
        # A small config keeps the generic tests fast; the constructor's defaults are the
        # paper's model (docs/catalogue.md measures it beside the paper's table).
        config=dict(in_chans=3, num_classes=10, dims=(8, 16), depths=(1, 1), num_heads=(1, 2), key_dim=4,
                    img_size=32),
        inputs=images("in_chans"), size=(64, 64),
        sizes=((40, 72), (33, 47)), out_shape=logits_shape,
        tiny=dict(num_classes=3, dims=(8, 16), depths=(1, 1), num_heads=(1, 2), key_dim=4, img_size=32),
    ),
)
def levit_128s(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> LeViT:
    """LeViT-128S: widths (128, 256, 384), depths (2, 3, 4), heads (4, 6, 8), d = 16; 7,777,058 parameters.

    Graham et al., arXiv 2104.01136, Tables 1 and 3 (LeViT-128S: 7.8M parameters, 305M FLOPs
    at 224 x 224). Parameter count equal to PyTorch Image Models' ``levit_128s`` (7,777,058),
    which like the released weights has the distillation head.

    Equation: see ``LeViT`` and ``LeViTAttention``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``LeViT``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return LeViT(in_chans, num_classes, **kw)
