"""Vision Transformer: image patches as tokens, a Transformer encoder, a linear head.

Papers: An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale
(Dosovitskiy et al., arXiv 2010.11929, 2020); Training data-efficient image transformers
& distillation through attention (DeiT, Touvron et al., arXiv 2012.12877, 2020): the
same network, and a distillation token with its own head. Built from the attention
room's ``PatchEmbed`` and ``TransformerEncoderBlock`` (pre-norm, GELU, as in the paper).

Key correspondence with PyTorch Image Models' ``VisionTransformer`` /
``VisionTransformerDistilled`` state dicts (timm name -> ours; every other key, e.g.
``cls_token``, ``dist_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.i.norm1.*``,
``blocks.i.attn.qkv.*``, ``norm.*``, ``head.*``, ``head_dist.*``, is the same)::

    blocks.{i}.attn.proj.*   ->  blocks.{i}.attn.out_proj.*
    blocks.{i}.mlp.fc1.*     ->  blocks.{i}.fc1.*
    blocks.{i}.mlp.fc2.*     ->  blocks.{i}.fc2.*

Letters: B batch, C input channels (in_chans), H W spatial, p patch size, D width
(dim), N tokens, g_h g_w the token grid, K classes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_norm
from blockzoo.attention.patch_embed import PatchEmbed, resize_token_embedding
from blockzoo.attention.transformer import TransformerEncoderBlock
from blockzoo.checks import check_shape, require
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["VisionTransformer", "deit_tiny", "deit_tiny_distilled", "vit_base", "vit_small", "vit_tiny"]


class VisionTransformer(nn.Module):
    r"""ViT: patch embedding, position embedding, Transformer encoder blocks, pooled token, linear head.

    Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv 2010.11929, Eq. (1)-(4).

    Equation::

        z_0 = [x_class; E x_p^1; ...; E x_p^N] + E_pos          (x_class only with pool="cls")
        z_l = TransformerEncoderBlock(z_{l-1})                   l = 1..L  (pre-norm MSA and MLP)
        y   = LN(z_L^0)        pool="cls": the class token
        y   = LN(mean_n z_L^n) pool="mean": the mean of the patch tokens
        logits = W y + b

    With ``distilled=True`` (DeiT, arXiv 2012.12877, Sec. 4) a distillation token joins
    the class token, z_0 = [x_class; x_distill; E x_p^1; ...] + E_pos, and has its own
    head; the prediction is the mean of the two heads' logits (the paper's inference,
    "we add the softmax output by the two classifiers" uses logits in its released
    code)::

        logits = (W LN(z_L^0) + b + W_d LN(z_L^1) + b_d) / 2

    E_pos is learned for the grid of ``img_size``; other sizes use it bicubically
    resized to their grid (as the paper does when fine-tuning at a new resolution).

    Args:
        in_chans: C, the image channels.
        num_classes: K.
        img_size: the size E_pos is learned for (an int means square).
        patch_size: p (the paper's 16 at 224x224; 2-4 for 28x28 / 32x32 images).
        dim: D, the token width.
        depth: L, the number of encoder blocks.
        num_heads: heads of each block's attention.
        mlp_ratio: the MLP width as a multiple of D (paper: 4).
        pool: ``"cls"`` (the paper's class token) or ``"mean"`` (global average pooling).
        dropout: dropout after the position embedding and in every block.
        attn_dropout: dropout on the attention weights.
        norm_layer: the norm (LayerNorm).
        norm_eps: the norms' epsilon (1e-6: the paper's released JAX code, Flax's LayerNorm
            default, timm's ViT and DeiT's released code).
        distilled: add DeiT's distillation token and head (needs ``pool="cls"``).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (bottom/right zero-padded to a
          multiple of p).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        Images whose sides are not multiples of p are zero-padded (the paper's sizes
        always are); the head is one linear layer (the paper's fine-tuning head; its
        pre-training head has a hidden layer).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        pool: str = "cls",
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        norm_layer: LayerSpec = "layernorm",
        norm_eps: float = 1e-6,
        distilled: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(pool in ("cls", "mean"), f"VisionTransformer: pool={pool!r} must be 'cls' or 'mean'")
        require(depth >= 1, f"VisionTransformer: depth={depth} must be >= 1")
        require(not distilled or pool == "cls",
                f"VisionTransformer: distilled=True needs pool='cls', got pool={pool!r}")
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.in_chans, self.num_classes, self.pool, self.distilled = in_chans, num_classes, pool, distilled
        fk = dict(device=device, dtype=dtype)
        norm_layer = functools.partial(create_norm, norm_layer, eps=norm_eps) if norm_layer else None
        self.patch_embed = PatchEmbed(in_chans, dim, patch_size, pad=True, **fk)
        self.grid = self.patch_embed.grid(h, w)
        n_extra = self.n_extra = (1 if pool == "cls" else 0) + (1 if distilled else 0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **fk)) if pool == "cls" else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim, **fk)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, n_extra + self.grid[0] * self.grid[1], dim, **fk))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[
            TransformerEncoderBlock(dim, num_heads, mlp_ratio=mlp_ratio, dropout=dropout,
                                    attn_dropout=attn_dropout, act_layer="gelu", norm_layer=norm_layer,
                                    norm_first=True, **fk)
            for _ in range(depth)
        ])
        self.norm = create_norm(norm_layer, dim, **fk)
        self.head = nn.Linear(dim, num_classes, **fk)
        self.head_dist = nn.Linear(dim, num_classes, **fk) if distilled else None
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.dist_token):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)

    def position_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """E_pos for a (gh, gw) token grid: the learned one, resized when the grid differs."""
        n_extra = self.n_extra
        extra, grid = self.pos_embed[:, :n_extra], self.pos_embed[:, n_extra:]
        if (gh, gw) == self.grid:
            return self.pos_embed
        return torch.cat([extra, resize_token_embedding(grid, self.grid, (gh, gw))], 1)  # (1, n_extra + N, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output tokens (B, n_extra + N, D), n_extra = class + distillation tokens."""
        dims = check_shape(x, "B C H W", name="VisionTransformer", C=self.in_chans)
        z = self.patch_embed(x)  # (B, N, D)
        gh, gw = self.patch_embed.grid(dims["H"], dims["W"])
        extra = [t.expand(z.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        if extra:
            z = torch.cat([*extra, z], 1)  # (B, n_extra + N, D)
        # z_0 = [x_class; E x_p] + E_pos
        z = self.pos_drop(z + self.position_embedding(gh, gw))
        return self.blocks(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.forward_features(x)
        if self.head_dist is not None:
            # logits = (W LN(z_L^0) + b + W_d LN(z_L^1) + b_d) / 2
            y = self.norm(z[:, :2])  # (B, 2, D)
            return (self.head(y[:, 0]) + self.head_dist(y[:, 1])) / 2  # (B, K)
        # y = LN(z_L^0) (class token) or LN(mean over patch tokens)
        y = self.norm(z[:, 0] if self.pool == "cls" else z.mean(1))  # (B, D)
        return self.head(y)  # (B, K)

    def extra_repr(self) -> str:
        return (f"in_chans={self.in_chans}, num_classes={self.num_classes}, grid={self.grid}, "
                f"pool={self.pool!r}, distilled={self.distilled}")


_VIT = dict(family="model", size_arg="img_size",
            paper="An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
            arxiv="2010.11929", year=2020, input="image", output="logits")


def _example(**tiny: Any) -> Example:
    # Only arguments equal to the defaults: create_model() fills in the example config.
    # At 16x16 with p = 16 the model sees one patch (+ the class token): cheap checks of
    # the whole path, position-embedding resize included.
    return Example(config=dict(in_chans=3, num_classes=1000), inputs=images("in_chans"), size=(16, 16),
                   out_shape=logits_shape, tiny=dict(num_classes=3, **tiny))


@register(name="vit_tiny", example=_example(depth=1), **_VIT)
def vit_tiny(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> VisionTransformer:
    """ViT-Ti/16: D = 192, 12 blocks, 3 heads; 5.7M parameters at 224x224 and 1000 classes.

    Dosovitskiy et al., arXiv 2010.11929 (Ti: from DeiT, Touvron et al., arXiv 2012.12877).

    Equation: see ``VisionTransformer``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``VisionTransformer``'s keyword arguments (``img_size``, ``patch_size``,
            ``pool``, ...).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return VisionTransformer(in_chans, num_classes, **{"dim": 192, "depth": 12, "num_heads": 3, **kw})


@register(name="vit_small", example=_example(depth=1), **_VIT)
def vit_small(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> VisionTransformer:
    """ViT-S/16: D = 384, 12 blocks, 6 heads; 22.1M parameters at 224x224 and 1000 classes.

    Dosovitskiy et al., arXiv 2010.11929 (S: from DeiT, Touvron et al., arXiv 2012.12877).

    Equation: see ``VisionTransformer``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``VisionTransformer``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return VisionTransformer(in_chans, num_classes, **{"dim": 384, "depth": 12, "num_heads": 6, **kw})


@register(name="vit_base", example=_example(depth=1, dim=48, num_heads=4), **_VIT)
def vit_base(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> VisionTransformer:
    """ViT-B/16: D = 768, 12 blocks, 12 heads; 86.6M parameters at 224x224 and 1000 classes.

    Dosovitskiy et al., arXiv 2010.11929, Table 1.

    Equation: see ``VisionTransformer``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``VisionTransformer``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return VisionTransformer(in_chans, num_classes, **{"dim": 768, "depth": 12, "num_heads": 12, **kw})


_DEIT = dict(family="model", size_arg="img_size",
             paper="Training data-efficient image transformers & distillation through attention",
             arxiv="2012.12877", year=2020, input="image", output="logits")


@register(name="deit_tiny", example=_example(depth=1), **_DEIT,
          paper_numbers=dict(size=(224, 224), params="5M", macs=None, source="Table 1"))
def deit_tiny(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> VisionTransformer:
    """DeiT-Ti: ViT-Ti/16 (D = 192, 12 blocks, 3 heads) as DeiT trains it; 5,717,416 parameters.

    Touvron et al., "Training data-efficient image transformers & distillation through
    attention", arXiv 2012.12877, Table 1 (DeiT-Ti: 5M parameters; the paper gives
    throughput, not FLOPs).
    The network is ViT's; the LayerNorm epsilon is the released code's 1e-6. Parameter
    count equal to PyTorch Image Models' ``deit_tiny_patch16_224`` (5,717,416).

    Equation: see ``VisionTransformer``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``VisionTransformer``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (zero-padded to multiples of 16).
        - Output: (B, K) logits, K = num_classes.
    """
    return VisionTransformer(in_chans, num_classes,
                             **{"dim": 192, "depth": 12, "num_heads": 3, "norm_eps": 1e-6, **kw})


@register(name="deit_tiny_distilled", example=_example(depth=1), **_DEIT,
          paper_numbers=dict(size=(224, 224), params="6M", macs=None, source="Table 5 (DeiT-Ti⚗)"))
def deit_tiny_distilled(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> VisionTransformer:
    """DeiT-Ti with the distillation token: class and distillation heads averaged; 5,910,800 parameters.

    Touvron et al., arXiv 2012.12877, Sec. 4 and Table 5 ("DeiT-Ti⚗": 6M parameters).
    Parameter count equal to PyTorch Image Models'
    ``deit_tiny_distilled_patch16_224`` (5,910,800).

    Equation: see ``VisionTransformer`` (``distilled=True``)::

        logits = (W LN(z_L^cls) + b + W_d LN(z_L^dist) + b_d) / 2

    Args:
        in_chans: C. num_classes: K.
        **kw: ``VisionTransformer``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (zero-padded to multiples of 16).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        Training against a teacher (the hard-distillation loss on the distillation head)
        is the training recipe's; the model always returns the averaged logits.
    """
    return VisionTransformer(in_chans, num_classes, **{"dim": 192, "depth": 12, "num_heads": 3,
                                                      "norm_eps": 1e-6, "distilled": True, **kw})
