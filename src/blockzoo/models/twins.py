"""Twins-PCPVT: PVT's pyramid of spatial-reduction attention with CPVT's position encoding generator.

Papers: Twins: Revisiting the Design of Spatial Attention in Vision Transformers (Chu et al.,
arXiv 2104.13840, 2021), Sec. 3.1 (Twins-PCPVT); its position encoding is the PEG of
Conditional Positional Encodings for Vision Transformers (Chu et al., arXiv 2102.10882,
2021), and its attention PVT's spatial-reduction attention (Wang et al., arXiv 2102.12122).
Built from the attention room's ``PatchEmbed``, ``SpatialReductionAttention`` and
``ConvPosEnc`` (CoaT's convolutional position encoding is the same operation as the PEG),
and the MLP room's ``MLP``.

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i,
R_i its reduction ratio, N tokens, K classes.

Key correspondence with PyTorch Image Models' ``Twins`` state dict (timm name -> ours;
stage i, block j)::

    patch_embeds.{i}.proj.* / .norm.*    ->  stages.{i}.patch_embed.proj.* / .norm.*
    blocks.{i}.{j}.norm1.* / .norm2.*    ->  stages.{i}.blocks.{j}.norm1.* / .norm2.*
    blocks.{i}.{j}.attn.q.* and .kv.*    ->  stages.{i}.blocks.{j}.attn.attn.qkv.*  (rows: q, then kv)
    blocks.{i}.{j}.attn.proj.*           ->  stages.{i}.blocks.{j}.attn.attn.out_proj.*
    blocks.{i}.{j}.attn.sr.* / .norm.*   ->  stages.{i}.blocks.{j}.attn.sr.* / .norm.*
    blocks.{i}.{j}.mlp.fc1.* / .fc2.*    ->  stages.{i}.blocks.{j}.mlp.layers.0.* / .layers.4.*
    pos_block.{i}.proj.0.*               ->  stages.{i}.pos_block.proj.*
    norm.*, head.*                       ->  norm.*, head.*
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_norm
from blockzoo.attention.coat import ConvPosEnc
from blockzoo.attention.patch_embed import PatchEmbed
from blockzoo.attention.pvt import SpatialReductionAttention
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.mlp.mlp import MLP
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["PCPVTBlock", "Twins", "TwinsStage", "pcpvt_small"]


class PCPVTBlock(nn.Module):
    r"""A PVT encoder block: spatial-reduction attention and an MLP, each pre-norm and residual.

    Wang et al., arXiv 2102.12122, Eq. (2) (the block Twins-PCPVT keeps, Chu et al.,
    arXiv 2104.13840, Sec. 3.1)::

        z' = z + SRA(LN(z))
        z  = z' + MLP(LN(z'))            MLP: Linear(C, rC) - GELU - Linear(rC, C)

    Args:
        dim: C. num_heads: h. sr_ratio: R. mlp_ratio: r.
        norm_layer / norm_eps: the two norms (released code: LayerNorm, eps 1e-6).

    Shape:
        - ``forward(z, H, W)``: z (B, N, C), N = H W tokens in row-major order -> (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, *, sr_ratio: int = 1, mlp_ratio: float = 4.0,
                 norm_layer: LayerSpec = "layernorm", norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.dim = dim
        self.norm1 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio=sr_ratio, norm_layer=norm_layer, **fk)
        self.norm2 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim, act_layer="gelu", **fk)

    def forward(self, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # z' = z + SRA(LN(z));  z = z' + MLP(LN(z'))
        z = z + self.attn.attend_tokens(self.norm1(z), height, width)
        return z + self.mlp(self.norm2(z))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class TwinsStage(nn.Module):
    r"""A Twins-PCPVT stage: patch embedding, blocks, and the PEG after the first block.

    Chu et al., arXiv 2104.13840, Sec. 3.1 and Fig. 1; the PEG of arXiv 2102.10882, Sec. 3.2::

        z = LN(E x_p)                             p x p patches of the input map (p: 4, then 2)
        z = Block_1(z);  z = z + DWConv_{3x3}(z)  (PEG, on the H' x W' token map)
        z = Block_n(... Block_2(z))

    Args:
        in_dim: C_in. dim: D. patch_size: p. depth: n. num_heads: h. sr_ratio: R.
        mlp_ratio: r. norm_layer / norm_eps: the blocks' norms (LayerNorm, eps 1e-6; the
            patch embedding's and SRA's LayerNorms keep eps 1e-5, as released).

    Shape:
        - Input: (B, C_in, H, W), any H, W (zero-padded to multiples of p) with
          ceil(H / p), ceil(W / p) >= R.
        - Output: (B, D, H', W'), H' = ceil(H / p). Channels first, so ``attach`` can
          follow a stage.
    """

    def __init__(self, in_dim: int, dim: int, patch_size: int, depth: int, num_heads: int, *,
                 sr_ratio: int = 1, mlp_ratio: float = 4.0, norm_layer: LayerSpec = "layernorm",
                 norm_eps: float = 1e-6, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        require(depth >= 1, f"TwinsStage: depth={depth} must be >= 1 (the PEG follows the first block)")
        self.in_dim, self.dim, self.sr_ratio = in_dim, dim, sr_ratio
        self.patch_embed = PatchEmbed(in_dim, dim, patch_size, pad=True, norm_layer=norm_layer, **fk)
        self.blocks = nn.ModuleList(
            PCPVTBlock(dim, num_heads, sr_ratio=sr_ratio, mlp_ratio=mlp_ratio, norm_layer=norm_layer,
                       norm_eps=norm_eps, **fk)
            for _ in range(depth)
        )
        self.pos_block = ConvPosEnc(dim, 3, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h, w = self.patch_embed.grid(x.shape[2], x.shape[3])
        z = self.blocks[0](self.patch_embed(x), h, w)  # (B, N, D)
        # PEG: z = z + DWConv_{3x3}(z) on the (H', W') map
        z = self.pos_block(z.transpose(1, 2).reshape(b, self.dim, h, w)).flatten(2).transpose(1, 2)
        for block in self.blocks[1:]:
            z = block(z, h, w)
        return z.transpose(1, 2).reshape(b, self.dim, h, w)  # (B, D, H', W')

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, dim={self.dim}"


class Twins(nn.Module):
    r"""Twins-PCPVT: four PVT stages (strides 4, 8, 16, 32), each with a PEG; LN, average pooling, head.

    Chu et al., "Twins: Revisiting the Design of Spatial Attention in Vision Transformers",
    arXiv 2104.13840, Sec. 3.1 and Table 1 (PVT with PVT's fixed position embeddings
    replaced by CPVT's position encoding generator, arXiv 2102.10882).

    Equation::

        x_i = Stage_i(x_{i-1})                x_0 the image; SRA with ratio R_i, PEG after block 1
        logits = W mean_n LN(z_4)_n + b       z_4 the last stage's tokens

    Args:
        in_chans: C. num_classes: K.
        dims: D_i (PCPVT-S: 64, 128, 320, 512). depths: blocks per stage (3, 4, 6, 3).
        num_heads: per stage (1, 2, 5, 8). sr_ratios: R_i (8, 4, 2, 1).
        mlp_ratios: per stage (8, 8, 4, 4). patch_size: p of the first embedding (4; the
            later ones are 2).
        norm_layer: (LayerNorm; eps 1e-6 in the blocks and the final norm, as released).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W for which every stage's map is at
          least R_i on a side (29 x 29 and up for PCPVT-S); smaller raises ``ShapeError``.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        The patch embeddings zero-pad H and W up to multiples of their patch (the released
        code's strided conv drops the last H mod p rows); on multiples of 32 the two agree.
        The final LayerNorm is the model's, after the last stage, so ``attach`` after stage
        4 sees its tokens before the norm (as timm's intermediate features). No dropout or
        stochastic depth (training-recipe choices; eval outputs are the same).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        patch_size: int = 4,
        norm_layer: LayerSpec = "layernorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        cfg = [tuple(dims), tuple(depths), tuple(num_heads), tuple(sr_ratios), tuple(mlp_ratios)]
        require(len({len(c) for c in cfg}) == 1 and len(cfg[0]) >= 1,
                f"Twins: dims, depths, num_heads, sr_ratios, mlp_ratios must be equally long, got {cfg}")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        dims = cfg[0]
        self.sr_ratios = cfg[3]
        self.patches = tuple(patch_size if i == 0 else 2 for i in range(len(dims)))
        ins = (in_chans, *dims[:-1])
        self.stages = nn.Sequential(*[
            TwinsStage(ins[i], dims[i], self.patches[i], cfg[1][i], cfg[2][i], sr_ratio=cfg[3][i],
                       mlp_ratio=cfg[4][i], norm_layer=norm_layer, **fk)
            for i in range(len(dims))
        ])
        self.num_features = dims[-1]
        self.norm = create_norm(norm_layer, dims[-1], eps=1e-6, **fk)
        self.head = nn.Linear(dims[-1], num_classes, **fk)

    def stage_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """The (H_i, W_i) map of every stage for an H x W input (each embedding rounds up)."""
        sizes = []
        for p in self.patches:
            height, width = -(-height // p), -(-width // p)
            sizes.append((height, width))
        return sizes

    def _check_size(self, height: int, width: int) -> None:
        for i, ((h, w), r) in enumerate(zip(self.stage_sizes(height, width), self.sr_ratios, strict=True)):
            if h < r or w < r:
                side = next(s for s in range(1, 1 << 16) if all(
                    min(hw) >= rr for hw, rr in zip(self.stage_sizes(s, s), self.sr_ratios, strict=True)))
                raise ShapeError(f"Twins: input {height}x{width} gives stage {i + 1} a {h}x{w} map, smaller "
                                 f"than its spatial-reduction ratio {r}; expected H, W >= {side}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, D_4, H_4, W_4), before the final norm."""
        dims = check_shape(x, "B C H W", name="Twins", C=self.in_chans)
        self._check_size(dims["H"], dims["W"])
        return self.stages(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.forward_features(x).flatten(2).transpose(1, 2)  # (B, N_4, D_4)
        # logits = W mean_n LN(z_4)_n + b
        return self.head(self.norm(z).mean(1))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="pcpvt_small",
    family="model",
    paper="Twins: Revisiting the Design of Spatial Attention in Vision Transformers",
    arxiv="2104.13840",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="24.1M", macs="3.8G", source="Table 3"),
    example=Example(
        # A small config keeps the generic tests fast; the constructor's defaults are the
        # paper's model (docs/catalogue.md measures it beside the paper's table). At 32 x 32
        # the reduced maps keep 2 x 2 keys; the other sizes are odd and non-square.
        config=dict(in_chans=3, num_classes=10, dims=(8, 16), depths=(2, 1), num_heads=(1, 2),
                    sr_ratios=(4, 1), mlp_ratios=(2, 2)),
        inputs=images("in_chans"), size=(32, 32),
        sizes=((33, 47), (50, 30)), out_shape=logits_shape,
        tiny=dict(num_classes=3, dims=(4, 8), depths=(1, 1), num_heads=(1, 2), sr_ratios=(2, 1),
                  mlp_ratios=(2, 2)),
    ),
)
def pcpvt_small(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> Twins:
    """Twins-PCPVT-S (PVT with CPVT's PEG): widths (64, 128, 320, 512), depths (3, 4, 6, 3); 24.1M parameters.

    Chu et al., arXiv 2104.13840, Table 1 and Table 3 (Twins-PCPVT-S: 24.1M parameters,
    3.8 GFLOPs at 224x224). Parameter count equal to PyTorch Image Models'
    ``twins_pcpvt_small`` (24,106,216), the model that loads the authors' released weights.

    Equation: see ``Twins``, ``TwinsStage``, ``SpatialReductionAttention`` and ``ConvPosEnc``.

    Args:
        in_chans: C. num_classes: K. **kw: ``Twins``' keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= 29.
        - Output: (B, K) logits, K = num_classes.
    """
    return Twins(in_chans, num_classes, **kw)
