"""Twins-PCPVT and Twins-SVT: a pyramid of transformer stages with CPVT's position encoding generator.

Papers: Twins: Revisiting the Design of Spatial Attention in Vision Transformers (Chu et al.,
arXiv 2104.13840, 2021): Sec. 3.1 (Twins-PCPVT: PVT with the PEG) and Sec. 3.2 (Twins-SVT:
locally-grouped and global sub-sampled attention alternating). The position encoding is the
PEG of Conditional Positional Encodings for Vision Transformers (Chu et al., arXiv
2102.10882, 2021); the global attention is PVT's spatial-reduction attention (Wang et al.,
arXiv 2102.12122). Built from the attention room's ``PatchEmbed``,
``SpatialReductionAttention``, ``LocallyGroupedAttention`` and ``ConvPosEnc`` (CoaT's
convolutional position encoding is the same operation as the PEG), and the MLP room's ``MLP``.

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i,
R_i its reduction ratio, N tokens, K classes.

Key correspondence with PyTorch Image Models' ``Twins`` state dict (timm name -> ours;
stage i, block j)::

    patch_embeds.{i}.proj.* / .norm.*    ->  stages.{i}.patch_embed.proj.* / .norm.*
    blocks.{i}.{j}.norm1.* / .norm2.*    ->  stages.{i}.blocks.{j}.norm1.* / .norm2.*
    blocks.{i}.{j}.attn.q.* and .kv.*    ->  stages.{i}.blocks.{j}.attn.attn.qkv.*  (rows: q, then kv)
    blocks.{i}.{j}.attn.qkv.*            ->  stages.{i}.blocks.{j}.attn.attn.qkv.*  (SVT's LSA blocks)
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
from blockzoo.attention.twins import LocallyGroupedAttention
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.mlp.mlp import MLP
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["Twins", "TwinsBlock", "TwinsStage", "pcpvt_small", "twins_svt_small"]


class TwinsBlock(nn.Module):
    r"""A Twins encoder block: global (SRA / GSA) or locally-grouped attention and an MLP, pre-norm, residual.

    Wang et al., arXiv 2102.12122, Eq. (2) (PVT's block, which Twins-PCPVT keeps) and Chu et
    al., arXiv 2104.13840, Eq. (1) (Twins-SVT's blocks, LSA or GSA)::

        z' = z + Attn(LN(z))             Attn: SRA = GSA (ratio R), or LSA (k x k groups)
        z  = z' + MLP(LN(z'))            MLP: Linear(C, rC) - GELU - Linear(rC, C)

    Args:
        dim: C. num_heads: h. sr_ratio: R of the global attention.
        window_size: k; given, the attention is LSA instead of SRA (then R must be 1).
        mlp_ratio: r. norm_layer / norm_eps: the two norms (released code: LayerNorm, eps 1e-6).

    Shape:
        - ``forward(z, H, W)``: z (B, N, C), N = H W tokens in row-major order -> (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, *, sr_ratio: int = 1, window_size: int | None = None,
                 mlp_ratio: float = 4.0, norm_layer: LayerSpec = "layernorm", norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        require(window_size is None or sr_ratio == 1,
                f"TwinsBlock: window_size={window_size} (LSA) takes no sr_ratio, got sr_ratio={sr_ratio}")
        self.dim = dim
        self.norm1 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.attn: SpatialReductionAttention | LocallyGroupedAttention
        if window_size is None:
            self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio=sr_ratio, norm_layer=norm_layer,
                                                  **fk)
        else:
            self.attn = LocallyGroupedAttention(dim, num_heads, window_size=window_size, **fk)
        self.norm2 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim, act_layer="gelu", **fk)

    def forward(self, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # z' = z + Attn(LN(z));  z = z' + MLP(LN(z'))
        z = z + self.attn.attend_tokens(self.norm1(z), height, width)
        return z + self.mlp(self.norm2(z))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class TwinsStage(nn.Module):
    r"""A Twins stage: patch embedding, blocks, and the PEG after the first block.

    Chu et al., arXiv 2104.13840, Sec. 3.1-3.2 and Fig. 1-2; the PEG of arXiv 2102.10882, Sec. 3.2::

        z = LN(E x_p)                             p x p patches of the input map (p: 4, then 2)
        z = Block_1(z);  z = z + DWConv_{3x3}(z)  (PEG, on the H' x W' token map)
        z = Block_n(... Block_2(z))

    PCPVT (``window_size=None``): every block's attention is SRA with ratio R. SVT: blocks
    1, 3, 5, ... use LSA in k x k groups, blocks 2, 4, ... GSA (SRA) with ratio R.

    Args:
        in_dim: C_in. dim: D. patch_size: p. depth: n. num_heads: h. sr_ratio: R.
        window_size: k (SVT: 7), or None (PCPVT).
        mlp_ratio: r. norm_layer / norm_eps: the blocks' norms (LayerNorm, eps 1e-6; the
            patch embedding's and SRA's LayerNorms keep eps 1e-5, as released).

    Shape:
        - Input: (B, C_in, H, W), any H, W (zero-padded to multiples of p) with
          ceil(H / p), ceil(W / p) >= R where a block has SRA.
        - Output: (B, D, H', W'), H' = ceil(H / p). Channels first, so ``attach`` can
          follow a stage.
    """

    def __init__(self, in_dim: int, dim: int, patch_size: int, depth: int, num_heads: int, *,
                 sr_ratio: int = 1, window_size: int | None = None, mlp_ratio: float = 4.0,
                 norm_layer: LayerSpec = "layernorm", norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        require(depth >= 1, f"TwinsStage: depth={depth} must be >= 1 (the PEG follows the first block)")
        self.in_dim, self.dim = in_dim, dim
        self.patch_embed = PatchEmbed(in_dim, dim, patch_size, pad=True, norm_layer=norm_layer, **fk)
        local = [window_size is not None and j % 2 == 0 for j in range(depth)]
        self.blocks = nn.ModuleList(
            TwinsBlock(dim, num_heads, sr_ratio=1 if local[j] else sr_ratio,
                       window_size=window_size if local[j] else None, mlp_ratio=mlp_ratio,
                       norm_layer=norm_layer, norm_eps=norm_eps, **fk)
            for j in range(depth)
        )
        self.sr_ratio = sr_ratio if not all(local) else 1  # what the input size must allow
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
    r"""Twins: four stages (strides 4, 8, 16, 32), each with a PEG; LN, average pooling, head.

    Chu et al., "Twins: Revisiting the Design of Spatial Attention in Vision Transformers",
    arXiv 2104.13840: Sec. 3.1 and Table 1 (Twins-PCPVT: PVT with its fixed position
    embeddings replaced by CPVT's position encoding generator, arXiv 2102.10882) and
    Sec. 3.2 and Table 2 (Twins-SVT: LSA and GSA blocks alternating, ``window_sizes``).

    Equation::

        x_i = Stage_i(x_{i-1})                x_0 the image; SRA / LSA + GSA, PEG after block 1
        logits = W mean_n LN(z_4)_n + b       z_4 the last stage's tokens

    Args:
        in_chans: C. num_classes: K.
        dims: D_i (PCPVT-S: 64, 128, 320, 512). depths: blocks per stage (3, 4, 6, 3).
        num_heads: per stage (1, 2, 5, 8). sr_ratios: R_i (8, 4, 2, 1).
        mlp_ratios: per stage (8, 8, 4, 4). patch_size: p of the first embedding (4; the
            later ones are 2). window_sizes: the LSA group side k per stage (SVT-S: 7, 7,
            7, 7), or None for PCPVT (every block SRA).
        norm_layer: (LayerNorm; eps 1e-6 in the blocks and the final norm, as released).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W for which every stage's map is at
          least R_i on a side where it has SRA (29 x 29 and up for PCPVT-S and SVT-S);
          smaller raises ``ShapeError``.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        The patch embeddings zero-pad H and W up to multiples of their patch (the released
        code's strided conv drops the last H mod p rows); on multiples of 32 the two agree.
        SVT's LSA zero-pads its maps to whole groups exactly as the released code does
        (``LocallyGroupedAttention``). The final LayerNorm is the model's, after the last
        stage, so ``attach`` after stage 4 sees its tokens before the norm (as timm's
        intermediate features). No dropout or stochastic depth (training-recipe choices;
        eval outputs are the same).
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
        window_sizes: Sequence[int] | None = None,
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
        wss = (None,) * len(dims) if window_sizes is None else tuple(window_sizes)
        require(len(wss) == len(dims),
                f"Twins: window_sizes={window_sizes} needs one size per stage ({len(dims)})")
        self.patches = tuple(patch_size if i == 0 else 2 for i in range(len(dims)))
        ins = (in_chans, *dims[:-1])
        self.stages = nn.Sequential(*[
            TwinsStage(ins[i], dims[i], self.patches[i], cfg[1][i], cfg[2][i], sr_ratio=cfg[3][i],
                       window_size=wss[i], mlp_ratio=cfg[4][i], norm_layer=norm_layer, **fk)
            for i in range(len(dims))
        ])
        self.sr_ratios = tuple(stage.sr_ratio for stage in self.stages)
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


@register(
    name="twins_svt_small",
    family="model",
    paper="Twins: Revisiting the Design of Spatial Attention in Vision Transformers",
    arxiv="2104.13840",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="24M", macs="2.9G", source="Table 3"),
    example=Example(
        # small, as pcpvt_small's; 3 x 3 groups so that 32 x 32 (an 8 x 8 map) has whole and
        # padded groups at the other sizes
        config=dict(in_chans=3, num_classes=10, dims=(8, 16), depths=(2, 2), num_heads=(1, 2),
                    sr_ratios=(4, 1), mlp_ratios=(2, 2), window_sizes=(3, 3)),
        inputs=images("in_chans"), size=(32, 32),
        sizes=((33, 47), (50, 30)), out_shape=logits_shape,
        tiny=dict(num_classes=3, dims=(4, 8), depths=(2, 1), num_heads=(1, 2), sr_ratios=(2, 1),
                  mlp_ratios=(2, 2), window_sizes=(2, 2)),
    ),
)
def twins_svt_small(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> Twins:
    """Twins-SVT-S: LSA (7 x 7 groups) and GSA blocks alternating, widths (64, ..., 512); 24.06M parameters.

    Chu et al., arXiv 2104.13840, Table 2 and Table 3 (Twins-SVT-S: 24M parameters,
    2.9 GFLOPs at 224x224). Parameter count equal to PyTorch Image Models'
    ``twins_svt_small`` (24,060,776), the model that loads the authors' released weights.

    Equation: see ``Twins``, ``TwinsStage``, ``LocallyGroupedAttention`` and
    ``SpatialReductionAttention`` (GSA).

    Args:
        in_chans: C. num_classes: K.
        **kw: ``Twins``' keyword arguments; the defaults here are SVT-S's: dims (64, 128,
            256, 512), depths (2, 2, 10, 4), num_heads (2, 4, 8, 16), mlp_ratios 4,
            sr_ratios (8, 4, 2, 1), window_sizes (7, 7, 7, 7).

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= 29.
        - Output: (B, K) logits, K = num_classes.
    """
    cfg: dict[str, Any] = dict(dims=(64, 128, 256, 512), depths=(2, 2, 10, 4), num_heads=(2, 4, 8, 16),
                               mlp_ratios=(4, 4, 4, 4), sr_ratios=(8, 4, 2, 1), window_sizes=(7, 7, 7, 7))
    return Twins(in_chans, num_classes, **(cfg | kw))
