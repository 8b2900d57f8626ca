"""Swin Transformer V2: Swin's hierarchy with res-post-norm, cosine attention and a continuous position bias.

Paper: Swin Transformer V2: Scaling Up Capacity and Resolution (Liu et al., arXiv
2111.09883, 2022). Built from the attention room's ``PatchEmbed``, ``CosineWindowAttention``
and ``PatchMerging`` (with ``norm_after``) and the MLP room's ``MLP``.

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i,
M window, K classes.

Key correspondence with PyTorch Image Models' ``SwinTransformerV2`` state dict (timm
name -> ours; every other key, e.g. ``patch_embed.*``, ``layers.i.downsample.*``,
``layers.i.blocks.j.norm1.*``, ``...attn.logit_scale``, ``...attn.q_bias``,
``...attn.v_bias``, ``...attn.cpb_mlp.*``, ``...attn.qkv.weight``, ``...attn.proj.*``,
``...norm2.*``, ``norm.*``, is the same; timm's ``relative_coords_table``,
``relative_position_index``, ``k_bias`` and ``attn_mask`` buffers are not persistent, ours
are computed per size)::

    layers.{i}.blocks.{j}.mlp.fc1.*  ->  layers.{i}.blocks.{j}.mlp.layers.0.*
    layers.{i}.blocks.{j}.mlp.fc2.*  ->  layers.{i}.blocks.{j}.mlp.layers.4.*
    head.fc.*                        ->  head.*
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_norm
from blockzoo.attention.swin import PatchMerging
from blockzoo.attention.swinv2 import CosineWindowAttention
from blockzoo.checks import require
from blockzoo.mlp.mlp import MLP
from blockzoo.models.classic import logits_shape
from blockzoo.models.swin import SwinTransformer
from blockzoo.registry import Example, images, register

__all__ = ["SwinTransformerV2", "SwinV2Block", "SwinV2Stage", "swinv2_tiny"]


class SwinV2Block(nn.Module):
    r"""One Swin V2 block: (S)W-MSA with cosine attention and an MLP, each residual with res-post-norm.

    Liu et al., arXiv 2111.09883, Sec. 3.2 and Fig. 1 (res-post-norm: the norm moves from
    the branch's input to its output)::

        z' = z + LN(SW-MSA_cos(z))
        z  = z' + LN(MLP(z'))              MLP: Linear(C, rC) - GELU - Linear(rC, C)

    Args:
        dim: C. num_heads: h. window_size: M. shift_size: 0 or M // 2.
        pretrained_window_size: as ``CosineWindowAttention``. mlp_ratio: r (paper: 4).
        norm_layer: (LayerNorm).

    Shape:
        - Input: (B, H, W, C), channels last, any H, W; output (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, *, window_size: int = 8, shift_size: int = 0,
                 pretrained_window_size: int = 0, mlp_ratio: float = 4.0, norm_layer: LayerSpec = "layernorm",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.dim = dim
        self.attn = CosineWindowAttention(dim, num_heads, window_size=window_size, shift_size=shift_size,
                                          pretrained_window_size=pretrained_window_size, **fk)
        self.norm1 = create_norm(norm_layer, dim, **fk)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim, act_layer="gelu", **fk)
        self.norm2 = create_norm(norm_layer, dim, **fk)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # z' = z + LN(SW-MSA(z));  z = z' + LN(MLP(z'))
        z = z + self.norm1(self.attn.attend_grid(z))
        return z + self.norm2(self.mlp(z))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class SwinV2Stage(nn.Module):
    r"""A Swin V2 stage: patch merging (stages 2-4, normalised after the reduction), then blocks
    alternating W-MSA and SW-MSA.

    Liu et al., arXiv 2111.09883 (the stage layout of Swin, arXiv 2103.14030, Sec. 3.1)::

        z = LN(W [x_00; x_10; x_01; x_11])   (or x in stage 1)
        z = Block_n(... Block_1(z))          shift 0 in odd blocks, M // 2 in even ones

    Args:
        dim: C_in. dim_out: C_out. depth: n. num_heads: h. window_size: M.
        downsample: patch merging first. pretrained_window_size, mlp_ratio, norm_layer: as
            ``SwinV2Block``.

    Shape:
        - Input: (B, C_in, H, W), channels first (so ``attach`` can follow a stage).
        - Output: (B, C_out, H', W'), H' = ceil(H / 2) with ``downsample`` else H.
    """

    def __init__(self, dim: int, dim_out: int, depth: int, num_heads: int, *, window_size: int = 8,
                 downsample: bool = False, pretrained_window_size: int = 0, mlp_ratio: float = 4.0,
                 norm_layer: LayerSpec = "layernorm", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        require(downsample or dim == dim_out,
                f"SwinV2Stage: dim={dim} and dim_out={dim_out} differ without downsample")
        self.dim, self.dim_out = dim, dim_out
        self.downsample = (PatchMerging(dim, dim_out, norm_layer=norm_layer, norm_after=True, **fk)
                           if downsample else nn.Identity())
        self.blocks = nn.Sequential(*[
            SwinV2Block(dim_out, num_heads, window_size=window_size,
                        shift_size=0 if j % 2 == 0 else window_size // 2,
                        pretrained_window_size=pretrained_window_size, mlp_ratio=mlp_ratio,
                        norm_layer=norm_layer, **fk)
            for j in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.blocks(self.downsample(x.permute(0, 2, 3, 1)))  # (B, H', W', C_out)
        return z.permute(0, 3, 1, 2)  # (B, C_out, H', W')

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dim_out={self.dim_out}"


class SwinTransformerV2(SwinTransformer):
    r"""Swin Transformer V2: 4 x 4 patch embedding, four res-post-norm stages, LayerNorm, pooling, head.

    Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution", arXiv
    2111.09883, Sec. 3 and 4.1.

    Equation::

        z_0 = LN(E x_p)                                  4 x 4 patches -> D_1 channels
        z_i = Stage_i(z_{i-1})                            i = 1..4, D_i = 2^(i-1) D_1
        logits = W mean_{h,w} LN(z_4) + b

    Args:
        in_chans: C. num_classes: K.
        dim: D_1 (Swin V2-T: 96). depths: blocks per stage (2, 2, 6, 2).
        num_heads: per stage (3, 6, 12, 24). patch_size: (4). window_size: M (8 at 256).
        pretrained_window_sizes: one per stage (0: the window in use; see
            ``CosineWindowAttention``). mlp_ratio: (4). norm_layer: (LayerNorm).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (padded where a patch, a merge or a
          window needs it, the padding masked in attention).
        - Output: (B, K) logits.

    Deviations:
        The res-post-norm LayerNorms start at the norm's default (weight 1, bias 0), where
        the released code starts them at 0 (every block the identity); no stochastic depth
        or dropout. Both are training choices: loaded weights give the same outputs.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        patch_size: int = 4,
        window_size: int = 8,
        pretrained_window_sizes: Sequence[int] = (0, 0, 0, 0),
        mlp_ratio: float = 4.0,
        norm_layer: LayerSpec = "layernorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        pretrained = tuple(pretrained_window_sizes)
        require(len(pretrained) >= len(tuple(depths)),
                f"SwinTransformerV2: pretrained_window_sizes={pretrained} needs one per stage "
                f"({len(tuple(depths))})")
        self._pretrained = pretrained  # read by _stage while the base class builds the stages
        super().__init__(in_chans, num_classes, dim=dim, depths=depths, num_heads=num_heads,
                         patch_size=patch_size, window_size=window_size, mlp_ratio=mlp_ratio,
                         norm_layer=norm_layer, device=device, dtype=dtype)

    def _stage(self, i: int, *args: Any, **kwargs: Any) -> nn.Module:
        return SwinV2Stage(*args, pretrained_window_size=self._pretrained[i], **kwargs)


@register(
    name="swinv2_tiny",
    family="model",
    paper="Swin Transformer V2: Scaling Up Capacity and Resolution",
    arxiv="2111.09883",
    year=2022,
    input="image",
    output="logits",
    # The paper's tables list the larger models; SwinV2-T's numbers are the authors' model zoo's.
    paper_numbers=dict(size=(256, 256), params="28M", macs="5.9G",
                       source="authors' model zoo (MODELHUB.md, window 8)"),
    example=Example(
        # A small config keeps the generic tests fast; the constructor's defaults are the
        # paper's model (docs/catalogue.md measures it beside the paper's table).
        config=dict(in_chans=3, num_classes=10, dim=4, depths=(1, 2), num_heads=(1, 2), window_size=2,
                    pretrained_window_sizes=(0, 0)),
        inputs=images("in_chans"), size=(64, 64),
        out_shape=logits_shape,
        tiny=dict(num_classes=3, dim=4, depths=(1, 2), num_heads=(1, 2), window_size=2,
                  pretrained_window_sizes=(0, 0)),
    ),
)
def swinv2_tiny(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> SwinTransformerV2:
    """Swin V2-T (window 8, 256 x 256): D_1 = 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24); 28.3M parameters.

    Liu et al., arXiv 2111.09883 (SwinV2-T, trained at 256 x 256 with 8 x 8 windows: 28M
    parameters, 5.9 GFLOPs in the authors' model zoo). Parameter count equal to PyTorch
    Image Models' ``swinv2_tiny_window8_256`` (28,347,154).

    Equation: see ``SwinTransformerV2``, ``SwinV2Block`` and ``CosineWindowAttention``.

    Args:
        in_chans: C. num_classes: K. **kw: ``SwinTransformerV2``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (the paper's size: 256 x 256).
        - Output: (B, K) logits, K = num_classes.
    """
    return SwinTransformerV2(in_chans, num_classes, **kw)
