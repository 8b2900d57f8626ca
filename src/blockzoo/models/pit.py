r"""PiT: a Vision Transformer whose token map is pooled between stages, as a CNN's is.

Paper: Rethinking Spatial Dimensions of Vision Transformers (Heo et al., arXiv
2103.16302, 2021). Built from the conv room's ``PiTPooling`` and the attention room's
``TransformerEncoderBlock``.

Key correspondence with PyTorch Image Models' ``PoolingVisionTransformer`` state dict
(timm name -> ours; every other key, e.g. ``cls_token``, ``pos_embed``,
``patch_embed.conv.*``, ``transformers.i.pool.*`` (as ``stages.i.pool.*``),
``...norm1.*``, ``...attn.qkv.*``, ``norm.*``, ``head.*``, is the same)::

    transformers.{i}.*                      ->  stages.{i}.*
    transformers.{i}.blocks.{j}.attn.proj.* ->  stages.{i}.blocks.{j}.attn.out_proj.*
    transformers.{i}.blocks.{j}.mlp.fc{1,2}.*  ->  stages.{i}.blocks.{j}.fc{1,2}.*

Letters: B batch, C input channels (in_chans), H W spatial, p patch size, S stem stride,
D_i the width of stage i, T class tokens, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.attention.patch_embed import resize_grid_embedding
from blockzoo.attention.transformer import TransformerEncoderBlock
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.conv.pit_pooling import PiTPooling
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["PiTStage", "PoolingVisionTransformer", "pit_ti"]


class PiTStage(nn.Module):
    r"""A PiT stage: pooling (stages 2, 3), then Transformer blocks over [class tokens; map tokens].

    Heo et al., arXiv 2103.16302, Sec. 3.2 (Fig. 4)::

        x, t = Pool(x, t)                         (stages after the first)
        [t; z] = Block_n(... Block_1([t; flatten(x)]))
        x = unflatten(z)

    Args:
        dim: D_in. dim_out: D_out (= D_in without pooling). depth: n. num_heads: h.
        mlp_ratio: MLP width / D_out. pool: begin with ``PiTPooling(D_in, D_out)``.
        norm_eps: the blocks' LayerNorm epsilon (1e-6).

    Shape:
        - ``forward(x, t)``: map (B, D_in, H, W) and class tokens (B, T, D_in) ->
          (B, D_out, H', W') and (B, T, D_out); H' = ceil(H / 2) with ``pool``.
    """

    def __init__(self, dim: int, dim_out: int, depth: int, num_heads: int, *, mlp_ratio: float = 4.0,
                 pool: bool = False, norm_eps: float = 1e-6, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(pool or dim == dim_out, f"PiTStage: dim={dim} and dim_out={dim_out} differ without pool")
        fk = dict(device=device, dtype=dtype)
        self.pool = PiTPooling(dim, dim_out, **fk) if pool else None
        self.blocks = nn.Sequential(*[
            TransformerEncoderBlock(dim_out, num_heads, mlp_ratio=mlp_ratio, dropout=0.0, act_layer="gelu",
                                    norm_first=True, norm_eps=norm_eps, **fk)
            for _ in range(depth)
        ])

    def forward(self, x: torch.Tensor, cls_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool is not None:
            x, cls_tokens = self.pool(x, cls_tokens)  # (B, D_out, H', W'), (B, T, D_out)
        b, c, h, w = x.shape
        t = cls_tokens.shape[1]
        z = self.blocks(torch.cat([cls_tokens, x.flatten(2).transpose(1, 2)], 1))  # (B, T + H' W', D_out)
        return z[:, t:].transpose(1, 2).reshape(b, c, h, w), z[:, :t]


class PoolingVisionTransformer(nn.Module):
    r"""PiT: overlapping patch embedding, Transformer stages with pooling between them, class-token head.

    Heo et al., "Rethinking Spatial Dimensions of Vision Transformers", arXiv 2103.16302,
    Sec. 3.2 (PiT-Ti's architecture in its Sec. 4).

    Equation::

        x_0 = Conv_{p x p, stride S}(x) + E_pos               (a (H_0, W_0) map of D_1 channels)
        x_i, t_i = Stage_i(x_{i-1}, t_{i-1})                  t_0 = x_class; stages 2, 3 pool first
        logits = W LN(t_3) + b

    E_pos is learned for the map of ``img_size`` (27 x 27 at 224 with p = 16, S = 8);
    other sizes use it bicubically resized.

    Args:
        in_chans: C. num_classes: K.
        img_size: the size E_pos is learned for.
        patch_size: p (16). stride: S (8).
        base_dims: the per-head width of each stage (PiT-Ti: 32, 32, 32).
        depths: blocks per stage (2, 6, 4).
        num_heads: heads per stage (2, 4, 8); D_i = base_dims[i] * num_heads[i].
        mlp_ratio: the MLP width / D_i (4).
        norm_eps: the LayerNorms' epsilon (1e-6).

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= p (smaller raises ``ShapeError``).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        No dropout or stochastic depth (training-recipe choices); no distillation head
        (PiT-Ti is the plain model).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        stride: int = 8,
        base_dims: Sequence[int] = (32, 32, 32),
        depths: Sequence[int] = (2, 6, 4),
        num_heads: Sequence[int] = (2, 4, 8),
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        cfg = [tuple(base_dims), tuple(depths), tuple(num_heads)]
        require(len({len(c) for c in cfg}) == 1 and len(cfg[0]) >= 1,
                f"PoolingVisionTransformer: base_dims, depths, num_heads must be equally long, got {cfg}")
        fk = dict(device=device, dtype=dtype)
        dims = [b * h for b, h in zip(cfg[0], cfg[2], strict=True)]
        self.in_chans, self.num_classes = in_chans, num_classes
        self.patch_size, self.stride = patch_size, stride
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.grid = self.map_size(h, w)
        self.patch_embed = nn.ModuleDict({"conv": nn.Conv2d(in_chans, dims[0], patch_size, stride, **fk)})
        self.pos_embed = nn.Parameter(torch.zeros(1, dims[0], *self.grid, **fk))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims[0], **fk))
        self.stages = nn.ModuleList(
            PiTStage(dims[max(i - 1, 0)], dims[i], cfg[1][i], cfg[2][i], mlp_ratio=mlp_ratio, pool=i > 0,
                     norm_eps=norm_eps, **fk)
            for i in range(len(dims))
        )
        self.norm = nn.LayerNorm(dims[-1], eps=norm_eps, **fk)
        self.head = nn.Linear(dims[-1], num_classes, **fk)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def map_size(self, height: int, width: int) -> tuple[int, int]:
        """The embedding's (H_0, W_0) = (floor((H - p) / S) + 1, ...) for an H x W input."""
        if height < self.patch_size or width < self.patch_size:
            raise ShapeError(f"PoolingVisionTransformer: input {height}x{width} is smaller than one "
                             f"{self.patch_size}x{self.patch_size} patch; expected H, W >= {self.patch_size}")
        return (height - self.patch_size) // self.stride + 1, (width - self.patch_size) // self.stride + 1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The class tokens after the last stage (B, T, D_3), before the final LayerNorm."""
        dims = check_shape(x, "B C H W", name="PoolingVisionTransformer", C=self.in_chans)
        size = self.map_size(dims["H"], dims["W"])
        # x_0 = Conv(x) + E_pos
        z = self.patch_embed["conv"](x) + resize_grid_embedding(self.pos_embed, size)  # (B, D_1, H_0, W_0)
        # a copy, not an expand() view: a view of a parameter made under no_grad still requires grad,
        # which torch's module tracker (FLOP counting) cannot hook when the stage receives it
        t = self.cls_token.repeat(z.shape[0], 1, 1)  # (B, 1, D_1)
        for stage in self.stages:
            z, t = stage(z, t)
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W LN(t_3) + b
        return self.head(self.norm(self.forward_features(x)[:, 0]))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}, grid={self.grid}"


@register(
    name="pit_ti",
    family="model",
    paper="Rethinking Spatial Dimensions of Vision Transformers",
    arxiv="2103.16302",
    year=2021,
    input="image",
    output="logits",
    size_arg="img_size",
    paper_numbers=dict(size=(224, 224), params="4.9M", macs="0.71G",
                       source="authors' README model table (PiT-Ti)"),
    example=Example(
        config=dict(in_chans=3, num_classes=10, base_dims=(4, 4), depths=(1, 1), num_heads=(1, 2),
                    patch_size=8, stride=4),
        inputs=images("in_chans"), size=(32, 32),
        sizes=((24, 40), (16, 16)), out_shape=logits_shape,
        tiny=dict(num_classes=3, base_dims=(4, 4), depths=(1, 1), num_heads=(1, 2),
                  patch_size=8, stride=4)),
)
def pit_ti(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> PoolingVisionTransformer:
    """PiT-Ti: widths 64, 128, 256 (heads 2, 4, 8 of 32), blocks 2, 6, 4; 4,847,272 parameters.

    Heo et al., arXiv 2103.16302, Sec. 4 (PiT-Ti: 4.9M parameters, 0.71 GFLOPs at 224x224 in
    the authors' README table). Parameter count equal to PyTorch Image Models' ``pit_ti_224``
    (4,847,272).

    Equation: see ``PoolingVisionTransformer`` and ``PiTPooling``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``PoolingVisionTransformer``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= 16.
        - Output: (B, K) logits, K = num_classes.
    """
    return PoolingVisionTransformer(in_chans, num_classes, **kw)
