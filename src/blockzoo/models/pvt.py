"""PVT v2: overlapping patch embeddings, spatial-reduction attention, convolutional feed-forward.

Paper: PVT v2: Improved Baselines with Pyramid Vision Transformer (Wang et al., arXiv
2106.13797, 2021); its attention is PVT's spatial-reduction attention (Wang et al., arXiv
2102.12122). Built from the attention room's ``SpatialReductionAttention`` (itself the
catalogue's ``MultiHeadAttention``).

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i,
R_i its reduction ratio, N tokens, K classes.

Key correspondence with PyTorch Image Models' ``PyramidVisionTransformerV2`` state dict
(timm name -> ours; every other key, e.g. ``patch_embed.*``, ``stages.i.downsample.*``,
``stages.i.blocks.j.norm1.*``, ``...attn.sr.*``, ``...attn.norm.*``, ``...mlp.fc1.*``,
``...mlp.dwconv.*``, ``...mlp.fc2.*``, ``stages.i.norm.*``, ``head.*``, is the same)::

    stages.{i}.blocks.{j}.attn.q.*  and  .attn.kv.*  ->  ...attn.attn.qkv.*  (rows: q, then kv)
    stages.{i}.blocks.{j}.attn.proj.*                ->  ...attn.attn.out_proj.*
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.attention.pvt import SpatialReductionAttention
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["ConvFeedForward", "OverlapPatchEmbed", "PVTv2Block", "PVTv2Stage", "PyramidVisionTransformerV2",
           "pvt_v2_b0"]


class OverlapPatchEmbed(nn.Module):
    r"""PVT v2's overlapping patch embedding: a strided k x k conv (k > stride), then LayerNorm.

    Wang et al., arXiv 2106.13797, Sec. 3.1 (stage 1: 7 x 7 / 4, stages 2-4: 3 x 3 / 2).

    Equation::

        y = LN(Conv_{k x k, stride S, padding k // 2}(x))     per position, over channels

    Args:
        in_chans: C_in. dim: D. kernel_size: k. stride: S. norm_layer: (LayerNorm).

    Shape:
        - Input: (B, C_in, H, W); output (B, D, H', W'), H' = floor((H - 1) / S) + 1
          (k odd, padding k // 2).
    """

    def __init__(self, in_chans: int, dim: int, kernel_size: int = 7, stride: int = 4, *,
                 norm_layer: LayerSpec = "layernorm", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.stride = stride
        self.proj = nn.Conv2d(in_chans, dim, kernel_size, stride, kernel_size // 2, **fk)
        self.norm = create_norm(norm_layer, dim, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.proj(x)  # (B, D, H', W')
        return self.norm(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, D, H', W')


class ConvFeedForward(nn.Module):
    r"""PVT v2's convolutional feed-forward: a 3 x 3 depthwise conv between the two linear layers.

    Wang et al., arXiv 2106.13797, Sec. 3.1, Fig. 1(b).

    Equation::

        y = W_2 GELU(DWConv_{3x3}(W_1 x + b_1)) + b_2

    Args:
        dim: C. hidden: the hidden width (PVT v2-B0: 8C, 8C, 4C, 4C). act_layer: (GELU).

    Shape:
        - ``forward(x, H, W)``: x (B, N, C), N = H W tokens in row-major order -> (B, N, C).
    """

    def __init__(self, dim: int, hidden: int, *, act_layer: LayerSpec = "gelu",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.fc1 = nn.Linear(dim, hidden, **fk)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, **fk)
        self.act = create_act(act_layer, **fk)
        self.fc2 = nn.Linear(hidden, dim, **fk)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        z = self.fc1(x)  # (B, N, F)
        b, _, f = z.shape
        z = self.dwconv(z.transpose(1, 2).reshape(b, f, height, width))  # (B, F, H, W)
        # W_2 GELU(DWConv(W_1 x + b_1)) + b_2
        return self.fc2(self.act(z.flatten(2).transpose(1, 2)))  # (B, N, C)


class PVTv2Block(nn.Module):
    r"""A PVT v2 encoder block: SRA and the convolutional feed-forward, each pre-norm and residual.

    Wang et al., arXiv 2106.13797 (Sec. 3) and arXiv 2102.12122 (Eq. (3)-(4))::

        z' = z + SRA(LN(z))
        z  = z' + ConvFFN(LN(z'))

    Args:
        dim: C. num_heads: h. sr_ratio: R. mlp_ratio: the feed-forward width / C.
        norm_layer: (LayerNorm). norm_eps: the two norms' epsilon (released code: 1e-6).

    Shape:
        - ``forward(z, H, W)``: z (B, N, C), N = H W -> (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, *, sr_ratio: int = 1, mlp_ratio: float = 4.0,
                 norm_layer: LayerSpec = "layernorm", norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.norm1 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio=sr_ratio, norm_layer=norm_layer, **fk)
        self.norm2 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.mlp = ConvFeedForward(dim, int(dim * mlp_ratio), **fk)

    def forward(self, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # z' = z + SRA(LN(z));  z = z' + ConvFFN(LN(z'))
        z = z + self.attn.attend_tokens(self.norm1(z), height, width)
        return z + self.mlp(self.norm2(z), height, width)


class PVTv2Stage(nn.Module):
    r"""A PVT v2 stage: overlapping patch embedding (stages 2-4), blocks, LayerNorm.

    Wang et al., arXiv 2106.13797, Sec. 3 (Fig. 1 of arXiv 2102.12122 for the pyramid)::

        z = OverlapPatchEmbed_{3x3/2}(x)   (stages 2-4; stage 1's embedding is the model's)
        z = LN(Block_n(... Block_1(z)))

    Args:
        dim: C_in. dim_out: C_out. depth: n. num_heads, sr_ratio, mlp_ratio: of its blocks.
        downsample: begin with the 3 x 3 / 2 embedding (C_in -> C_out).
        norm_layer: (LayerNorm). norm_eps: of the blocks' and the stage's norms (1e-6).

    Shape:
        - Input: (B, C_in, H, W); output (B, C_out, H', W'), H' = floor((H - 1) / 2) + 1
          with ``downsample``, else H. Channels first, so ``attach`` can follow a stage.
    """

    def __init__(self, dim: int, dim_out: int, depth: int, num_heads: int, *, sr_ratio: int = 1,
                 mlp_ratio: float = 4.0, downsample: bool = False, norm_layer: LayerSpec = "layernorm",
                 norm_eps: float = 1e-6, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        require(downsample or dim == dim_out,
                f"PVTv2Stage: dim={dim} and dim_out={dim_out} differ without downsample")
        self.downsample = (OverlapPatchEmbed(dim, dim_out, 3, 2, norm_layer=norm_layer, **fk)
                           if downsample else nn.Identity())
        self.blocks = nn.ModuleList(
            PVTv2Block(dim_out, num_heads, sr_ratio=sr_ratio, mlp_ratio=mlp_ratio, norm_layer=norm_layer,
                       norm_eps=norm_eps, **fk)
            for _ in range(depth)
        )
        self.norm = create_norm(norm_layer, dim_out, eps=norm_eps, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)  # (B, C_out, H', W')
        b, c, h, w = x.shape
        z = x.flatten(2).transpose(1, 2)  # (B, N, C_out)
        for block in self.blocks:
            z = block(z, h, w)
        return self.norm(z).transpose(1, 2).reshape(b, c, h, w)  # (B, C_out, H', W')


class PyramidVisionTransformerV2(nn.Module):
    r"""PVT v2: four stages of SRA blocks on a 1/4, 1/8, 1/16, 1/32 pyramid, average pooling, linear head.

    Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", arXiv
    2106.13797, Sec. 3 and Table 1.

    Equation::

        z_0 = OverlapPatchEmbed_{7x7/4}(x)
        z_i = Stage_i(z_{i-1})                          i = 1..4 (SRA with ratio R_i)
        logits = W mean_{h,w} z_4 + b

    Args:
        in_chans: C. num_classes: K.
        dims: D_1..D_4 (B0: 32, 64, 160, 256).
        depths: blocks per stage (B0: 2, 2, 2, 2).
        num_heads: per stage (1, 2, 5, 8).
        sr_ratios: R_i (8, 4, 2, 1).
        mlp_ratios: feed-forward width / D_i (8, 8, 4, 4).
        norm_layer: (LayerNorm).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W for which every stage's map is at
          least R_i on a side (29 x 29 and up for B0); smaller raises ``ShapeError``.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        No stochastic depth or dropout (training-recipe choices; eval outputs are the same).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        dims: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        norm_layer: LayerSpec = "layernorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        cfg = [tuple(dims), tuple(depths), tuple(num_heads), tuple(sr_ratios), tuple(mlp_ratios)]
        require(len({len(c) for c in cfg}) == 1 and len(cfg[0]) >= 1,
                f"PyramidVisionTransformerV2: dims, depths, num_heads, sr_ratios, mlp_ratios must be "
                f"equally long, got {cfg}")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.sr_ratios = cfg[3]
        dims = cfg[0]
        self.patch_embed = OverlapPatchEmbed(in_chans, dims[0], 7, 4, norm_layer=norm_layer, **fk)
        self.stages = nn.Sequential(*[
            PVTv2Stage(dims[max(i - 1, 0)], dims[i], cfg[1][i], cfg[2][i], sr_ratio=cfg[3][i],
                       mlp_ratio=cfg[4][i], downsample=i > 0, norm_layer=norm_layer, **fk)
            for i in range(len(dims))
        ])
        self.num_features = dims[-1]
        self.head = nn.Linear(dims[-1], num_classes, **fk)

    def stage_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """The (H_i, W_i) map of every stage for an H x W input."""
        sizes, h, w = [], (height - 1) // 4 + 1, (width - 1) // 4 + 1
        for i in range(len(self.stages)):
            if i > 0:
                h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            sizes.append((h, w))
        return sizes

    def _check_size(self, height: int, width: int) -> None:
        for i, ((h, w), r) in enumerate(zip(self.stage_sizes(height, width), self.sr_ratios, strict=True)):
            if h < r or w < r:
                side = next(s for s in range(1, 4096) if all(
                    min(hw) >= rr for hw, rr in zip(self.stage_sizes(s, s), self.sr_ratios, strict=True)))
                raise ShapeError(f"PyramidVisionTransformerV2: input {height}x{width} gives stage {i + 1} a "
                                 f"{h}x{w} map, smaller than its spatial-reduction ratio {r}; expected "
                                 f"H, W >= {side}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, D_4, H_4, W_4)."""
        dims = check_shape(x, "B C H W", name="PyramidVisionTransformerV2", C=self.in_chans)
        self._check_size(dims["H"], dims["W"])
        return self.stages(self.patch_embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W mean_{h,w} z_4 + b
        return self.head(self.forward_features(x).mean((2, 3)))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="pvt_v2_b0",
    family="model",
    paper="PVT v2: Improved Baselines with Pyramid Vision Transformer",
    arxiv="2106.13797",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="3.4M", macs="0.6G",
                       source="Table 2 (README too); 3.4M excludes the 257,000-parameter head"),
    example=Example(
        # The default (paper) config, so ``info`` and the catalogue show B0's counts. At
        # 64 x 64 every reduced map keeps 2 x 2 keys (with one key, the queries could not
        # matter); the other sizes are non-square and odd but at least the smallest (29).
        config=dict(in_chans=3, num_classes=1000), inputs=images("in_chans"), size=(64, 64),
        sizes=((33, 47), (72, 40)), out_shape=logits_shape,
        tiny=dict(num_classes=3, dims=(4, 8), depths=(1, 1), num_heads=(1, 2), sr_ratios=(2, 1),
                  mlp_ratios=(2, 2)),
    ),
)
def pvt_v2_b0(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> PyramidVisionTransformerV2:
    """PVT v2-B0: widths (32, 64, 160, 256), 2 blocks per stage, SR ratios (8, 4, 2, 1); 3,666,760 parameters.

    Wang et al., arXiv 2106.13797, Table 1 and Table 2 (B0: 3.4M parameters, 0.6 GFLOPs
    at 224x224). Parameter count equal to PyTorch Image Models' ``pvt_v2_b0`` (3,666,760),
    the model that loads the authors' released weights; the paper's table and the authors' README
    print 3.4M, which is this count without the 257,000-parameter classifier (3,409,760).

    Equation: see ``PyramidVisionTransformerV2`` and ``SpatialReductionAttention``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``PyramidVisionTransformerV2``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= 29.
        - Output: (B, K) logits, K = num_classes.
    """
    return PyramidVisionTransformerV2(in_chans, num_classes, **kw)
