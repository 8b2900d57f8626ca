"""Swin Transformer: a hierarchy of (shifted) window-attention stages joined by patch merging.

Paper: Swin Transformer: Hierarchical Vision Transformer using Shifted Windows (Liu et
al., arXiv 2103.14030, 2021). Built from the attention room's ``PatchEmbed``,
``ShiftedWindowAttention`` and ``PatchMerging`` and the MLP room's ``MLP``.

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i,
M window, K classes.

Key correspondence with PyTorch Image Models' ``SwinTransformer`` state dict (timm name
-> ours; every other key, e.g. ``patch_embed.proj.*``, ``patch_embed.norm.*``,
``layers.i.downsample.norm.*``, ``layers.i.downsample.reduction.weight``,
``layers.i.blocks.j.norm1.*``, ``...attn.qkv.*``, ``...attn.proj.*``,
``...attn.relative_position_bias_table``, ``...norm2.*``, ``norm.*``, is the same; timm's
``relative_position_index`` and ``attn_mask`` buffers are not persistent, ours are
computed per size)::

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
from blockzoo.attention.patch_embed import PatchEmbed
from blockzoo.attention.swin import PatchMerging, ShiftedWindowAttention
from blockzoo.checks import check_shape, require
from blockzoo.mlp.mlp import MLP
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["SwinBlock", "SwinStage", "SwinTransformer", "swin_tiny"]


class SwinBlock(nn.Module):
    r"""One Swin Transformer block: (S)W-MSA and an MLP, each pre-norm and residual.

    Liu et al., arXiv 2103.14030, Eq. (3)::

        z' = (S)W-MSA(LN(z)) + z
        z  = MLP(LN(z')) + z'              MLP: Linear(C, rC) - GELU - Linear(rC, C)

    Args:
        dim: C. num_heads: h. window_size: M. shift_size: 0 (W-MSA) or M // 2 (SW-MSA).
        mlp_ratio: r (paper: 4). norm_layer: (LayerNorm).

    Shape:
        - Input: (B, H, W, C), channels last (as the stage keeps it), any H, W.
        - Output: (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, *, window_size: int = 7, shift_size: int = 0,
                 mlp_ratio: float = 4.0, norm_layer: LayerSpec = "layernorm",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.dim = dim
        self.norm1 = create_norm(norm_layer, dim, **fk)
        self.attn = ShiftedWindowAttention(dim, num_heads, window_size=window_size, shift_size=shift_size,
                                           **fk)
        self.norm2 = create_norm(norm_layer, dim, **fk)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim, act_layer="gelu", **fk)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # z' = (S)W-MSA(LN(z)) + z;  z = MLP(LN(z')) + z'
        z = z + self.attn.attend_grid(self.norm1(z))
        return z + self.mlp(self.norm2(z))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class SwinStage(nn.Module):
    r"""A Swin stage: patch merging (stages 2-4), then blocks alternating W-MSA and SW-MSA.

    Liu et al., arXiv 2103.14030, Sec. 3.1 and Fig. 3.

    Equation::

        z = PatchMerging(x)   (or x in stage 1)
        z = Block_{n}(... Block_2(Block_1(z)))     shift 0 in odd blocks, M // 2 in even ones

    Args:
        dim: C_in. dim_out: C_out. depth: n blocks. num_heads: h. window_size: M.
        downsample: patch merging first (C_in -> C_out, H / 2, W / 2); without it
            C_in = C_out. mlp_ratio, norm_layer: as ``SwinBlock``.

    Shape:
        - Input: (B, C_in, H, W), channels first (so ``attach`` can follow a stage).
        - Output: (B, C_out, H', W'), H' = ceil(H / 2) with ``downsample`` else H.
    """

    def __init__(self, dim: int, dim_out: int, depth: int, num_heads: int, *, window_size: int = 7,
                 downsample: bool = False, mlp_ratio: float = 4.0, norm_layer: LayerSpec = "layernorm",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        require(downsample or dim == dim_out,
                f"SwinStage: dim={dim} and dim_out={dim_out} differ without downsample")
        self.dim, self.dim_out = dim, dim_out
        self.downsample = (PatchMerging(dim, dim_out, norm_layer=norm_layer, **fk) if downsample
                           else nn.Identity())
        self.blocks = nn.Sequential(*[
            SwinBlock(dim_out, num_heads, window_size=window_size,
                      shift_size=0 if j % 2 == 0 else window_size // 2, mlp_ratio=mlp_ratio,
                      norm_layer=norm_layer, **fk)
            for j in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.blocks(self.downsample(x.permute(0, 2, 3, 1)))  # (B, H', W', C_out)
        return z.permute(0, 3, 1, 2)  # (B, C_out, H', W')

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dim_out={self.dim_out}"


class SwinTransformer(nn.Module):
    r"""Swin Transformer: 4 x 4 patch embedding, four stages, LayerNorm, average pooling, linear head.

    Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    arXiv 2103.14030, Sec. 3.1 and 3.3.

    Equation::

        z_0 = LN(E x_p)                                  4 x 4 patches -> D_1 channels
        z_i = Stage_i(z_{i-1})                            i = 1..4, D_i = 2^(i-1) D_1
        logits = W mean_{h,w} LN(z_4) + b

    Args:
        in_chans: C. num_classes: K.
        dim: D_1, the first stage's width (Swin-T: 96).
        depths: blocks per stage (Swin-T: 2, 2, 6, 2).
        num_heads: heads per stage (Swin-T: 3, 6, 12, 24).
        patch_size: p of the patch embedding (paper: 4).
        window_size: M (paper: 7).
        mlp_ratio: (paper: 4). norm_layer: (LayerNorm).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W: the patch embedding pads to a
          multiple of p, patch merging pads odd sides, window attention pads to a
          multiple of M and masks the padding (see ``ShiftedWindowAttention``).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        No stochastic depth or dropout (training-recipe choices, not part of the network;
        eval outputs are the same).
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
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        norm_layer: LayerSpec = "layernorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
        name = type(self).__name__
        require(len(depths) == len(num_heads) and len(depths) >= 1 and all(d >= 1 for d in depths),
                f"{name}: depths={depths} and num_heads={num_heads} must be equally long, depths >= 1")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.patch_embed = PatchEmbed(in_chans, dim, patch_size, pad=True, norm_layer=norm_layer, **fk)
        widths = [dim * 2**i for i in range(len(depths))]
        self.layers = nn.Sequential(*[
            self._stage(i, widths[max(i - 1, 0)], widths[i], depths[i], num_heads[i], window_size=window_size,
                        downsample=i > 0, mlp_ratio=mlp_ratio, norm_layer=norm_layer, **fk)
            for i in range(len(depths))
        ])
        self.num_features = widths[-1]
        self.norm = create_norm(norm_layer, widths[-1], **fk)
        self.head = nn.Linear(widths[-1], num_classes, **fk)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _stage(self, i: int, *args: Any, **kwargs: Any) -> nn.Module:
        """Stage ``i`` (Swin V2 builds its own kind here)."""
        return SwinStage(*args, **kwargs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, D_4, H / 32, W / 32) (sizes rounded up)."""
        dims = check_shape(x, "B C H W", name=type(self).__name__, C=self.in_chans)
        gh, gw = self.patch_embed.grid(dims["H"], dims["W"])
        z = self.patch_embed(x)  # (B, gh gw, D_1), normalised
        z = z.transpose(1, 2).reshape(z.shape[0], -1, gh, gw)  # (B, D_1, gh, gw)
        return self.layers(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.forward_features(x)
        # logits = W mean_{h,w} LN(z_4) + b
        return self.head(self.norm(z.permute(0, 2, 3, 1)).mean((1, 2)))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="swin_tiny",
    family="model",
    paper="Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    arxiv="2103.14030",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="28M", macs="4.5G", source="Table 1(a)"),
    example=Example(
        # The default (paper) config, so ``info`` and the catalogue show Swin-T's counts;
        # 64 x 64 images give every stage a map (16, 8, 4, 2) at little cost; the last
        # stage needs two tokens a side for its position biases to matter.
        config=dict(in_chans=3, num_classes=1000), inputs=images("in_chans"), size=(64, 64),
        out_shape=logits_shape,
        tiny=dict(num_classes=3, dim=4, depths=(1, 2), num_heads=(1, 2), window_size=2),
    ),
)
def swin_tiny(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> SwinTransformer:
    """Swin-T: D_1 = 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window 7; 28,288,354 parameters.

    Liu et al., arXiv 2103.14030, Sec. 3.3 and Table 1(a) (Swin-T: 28M parameters,
    4.5 GFLOPs at 224x224). Parameter count equal to PyTorch Image Models'
    ``swin_tiny_patch4_window7_224`` (28,288,354).

    Equation: see ``SwinTransformer`` and ``ShiftedWindowAttention``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``SwinTransformer``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return SwinTransformer(in_chans, num_classes, **kw)
