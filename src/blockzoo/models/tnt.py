r"""TNT: Transformer in Transformer — an inner Transformer over the pixels of each patch feeds the outer one.

Paper: Transformer in Transformer (Han et al., arXiv 2103.00112, 2021). Both the inner
(pixel-level) and the outer (patch-level) blocks are the attention room's
``TransformerEncoderBlock`` (pre-norm, GELU).

Key correspondence with PyTorch Image Models' ``TNT`` state dict (timm name -> ours;
every other key, e.g. ``cls_token``, ``patch_pos``, ``pixel_pos``, ``pixel_embed.proj.*``,
``norm1_proj.*``, ``proj.*``, ``norm2_proj.*``, ``blocks.i.norm1_proj.*``,
``blocks.i.proj.*``, ``blocks.i.norm2_proj.*``, ``norm.*``, ``head.*``, is the same)::

    blocks.{i}.attn_in.qk.* and .attn_in.v.*   ->  blocks.{i}.inner.attn.qkv.*  (rows q, k, then v)
    blocks.{i}.attn_in.proj.*                  ->  blocks.{i}.inner.attn.out_proj.*
    blocks.{i}.norm_in.* / .norm_mlp_in.*      ->  blocks.{i}.inner.norm1.* / .norm2.*
    blocks.{i}.mlp_in.fc{1,2}.*                ->  blocks.{i}.inner.fc{1,2}.*
    blocks.{i}.attn_out.* / norm_out / norm_mlp / mlp   ->  blocks.{i}.outer.* (likewise)

Letters: B batch, C input channels (in_chans), H W spatial, p patch size, s the pixel
stride, m = ceil(p / s) pixels per patch side, M = m^2 pixels per patch, c the pixel
width (inner_dim), D the patch width (dim), N = g_h g_w patches, K classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.attention.patch_embed import resize_grid_embedding
from blockzoo.attention.transformer import TransformerEncoderBlock
from blockzoo.checks import check_divisible, check_shape, require
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["PixelEmbed", "TNTBlock", "TransformerInTransformer", "tnt_s"]


class PixelEmbed(nn.Module):
    r"""TNT's pixel embedding: each p x p patch becomes m x m "pixel" tokens of width c.

    Han et al., arXiv 2103.00112, Sec. 3.1; as in the released code, every patch passes
    on its own (zero-padded at the patch border) through a 7 x 7 convolution of stride s.

    Equation::

        Y^n = Conv_{7x7, stride s, padding 3}(X^n) + E_pixel      X^n: patch n (C, p, p) -> (c, m, m)

    Args:
        in_chans: C. inner_dim: c. patch_size: p. stride: s (4).

    Shape:
        - Input: (B, C, H, W), H, W multiples of p (else ``ShapeError``; the model pads).
          Output: (B N, M, c),
          patches in row-major order, pixels row-major in each patch.
    """

    def __init__(self, in_chans: int, inner_dim: int, patch_size: int = 16, stride: int = 4, *,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.patch_size, self.pixels = patch_size, math.ceil(patch_size / stride)
        self.proj = nn.Conv2d(in_chans, inner_dim, 7, stride, 3, **fk)

    def forward(self, x: torch.Tensor, pixel_pos: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch_size
        check_divisible(h, p, name="PixelEmbed", what="input height H")
        check_divisible(w, p, name="PixelEmbed", what="input width W")
        patches = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, g_h, g_w, C, p, p)
        y = self.proj(patches.reshape(-1, c, p, p)) + pixel_pos  # (B N, c, m, m)
        return y.flatten(2).transpose(1, 2)  # (B N, M, c)


class TNTBlock(nn.Module):
    r"""A TNT block: an inner Transformer on each patch's pixels, added into its patch token; an outer one.

    Han et al., "Transformer in Transformer", arXiv 2103.00112, Eq. (2)-(5)::

        Y'_l = Y_{l-1} + MSA(LN(Y_{l-1}));  Y_l = Y'_l + MLP(LN(Y'_l))        inner, per patch
        Z_{l-1}^n += LN(W Vec(LN(Y_l^n)))                                     n = 1..N (not the class token)
        Z'_l = Z_{l-1} + MSA(LN(Z_{l-1}));  Z_l = Z'_l + MLP(LN(Z'_l))        outer

    Args:
        inner_dim: c. dim: D. pixels: M. num_heads_inner, num_heads: the two attentions' heads.
        mlp_ratio: the outer MLP width / D (the inner one is 4c). qkv_bias: (False).
        norm_eps: all LayerNorms' epsilon (1e-5, the released code's).

    Shape:
        - ``forward(y, z)``: pixels (B N, M, c) and patches (B, 1 + N, D) -> the same shapes.

    Deviations:
        The two LayerNorms around W (and W without bias) follow the released code; the
        paper writes only the linear map.
    """

    def __init__(self, inner_dim: int, dim: int, pixels: int, *, num_heads_inner: int = 4, num_heads: int = 6,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, norm_eps: float = 1e-5,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        common = dict(qkv_bias=qkv_bias, dropout=0.0, act_layer="gelu", norm_first=True, norm_eps=norm_eps,
                      **fk)
        self.inner = TransformerEncoderBlock(inner_dim, num_heads_inner, mlp_ratio=4.0, **common)
        self.norm1_proj = nn.LayerNorm(pixels * inner_dim, eps=norm_eps, **fk)
        self.proj = nn.Linear(pixels * inner_dim, dim, bias=False, **fk)
        self.norm2_proj = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.outer = TransformerEncoderBlock(dim, num_heads, mlp_ratio=mlp_ratio, **common)

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.inner(y)  # (B N, M, c)
        b, n1, _ = z.shape
        # Z^n += LN(W Vec(LN(Y^n)))
        add = self.norm2_proj(self.proj(self.norm1_proj(y.reshape(b, n1 - 1, -1))))  # (B, N, D)
        z = torch.cat([z[:, :1], z[:, 1:] + add], 1)  # (B, 1 + N, D)
        return y, self.outer(z)


class TransformerInTransformer(nn.Module):
    r"""TNT: pixel and patch embeddings, TNT blocks, class-token head.

    Han et al., "Transformer in Transformer", arXiv 2103.00112, Sec. 3 and Table 1.

    Equation::

        Y_0 = PixelEmbed(x) + E_pixel                                  (B N, M, c)
        Z_0 = [x_class; LN(W_0 Vec(LN(Y_0^n))) + b_0 ...] + E_patch    (B, 1 + N, D)
        (Y_l, Z_l) = TNTBlock(Y_{l-1}, Z_{l-1})                        l = 1..L
        logits = W LN(Z_L^0) + b

    E_patch is learned for the grid of ``img_size``; other grids use it bicubically resized.

    Args:
        in_chans: C. num_classes: K.
        img_size: the size E_patch is learned for.
        patch_size: p (16). pixel_stride: s (4).
        dim: D (TNT-S: 384). inner_dim: c (24).
        depth: L (12). num_heads: outer heads (6). num_heads_inner: inner heads (4).
        mlp_ratio: the outer MLP width / D (4). qkv_bias: (False).
        norm_eps: the LayerNorms' epsilon (1e-5).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (bottom/right zero-padded to
          multiples of p).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        The pixel embedding is the released code's per-patch 7 x 7 stride-s convolution
        (the paper describes a linear map of 4 x 4 sub-patches); sides that are not
        multiples of p are zero-padded; no dropout or stochastic depth.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        pixel_stride: int = 4,
        dim: int = 384,
        inner_dim: int = 24,
        depth: int = 12,
        num_heads: int = 6,
        num_heads_inner: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        norm_eps: float = 1e-5,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(patch_size > 0 and pixel_stride > 0,
                f"TransformerInTransformer: patch_size={patch_size}, pixel_stride={pixel_stride} must be "
                "positive")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes, self.patch_size = in_chans, num_classes, patch_size
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.grid = -(-h // patch_size), -(-w // patch_size)
        self.pixel_embed = PixelEmbed(in_chans, inner_dim, patch_size, pixel_stride, **fk)
        m = self.pixel_embed.pixels
        self.norm1_proj = nn.LayerNorm(m * m * inner_dim, eps=norm_eps, **fk)
        self.proj = nn.Linear(m * m * inner_dim, dim, **fk)
        self.norm2_proj = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **fk))
        self.patch_pos = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim, **fk))
        self.pixel_pos = nn.Parameter(torch.zeros(1, inner_dim, m, m, **fk))
        self.blocks = nn.ModuleList(
            TNTBlock(inner_dim, dim, m * m, num_heads_inner=num_heads_inner, num_heads=num_heads,
                     mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_eps=norm_eps, **fk)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.head = nn.Linear(dim, num_classes, **fk)
        for t in (self.cls_token, self.patch_pos, self.pixel_pos):
            nn.init.trunc_normal_(t, std=0.02)

    def position_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """E_patch (1, 1 + N, D) for a (gh, gw) grid: the learned one, resized when the grid differs."""
        if (gh, gw) == self.grid:
            return self.patch_pos
        d = self.patch_pos.shape[-1]
        grid = self.patch_pos[:, 1:].reshape(1, *self.grid, d).permute(0, 3, 1, 2)  # (1, D, g_h, g_w)
        grid = resize_grid_embedding(grid, (gh, gw)).flatten(2).transpose(1, 2)  # (1, gh gw, D)
        return torch.cat([self.patch_pos[:, :1], grid], 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The patch-level tokens (B, 1 + N, D), class token first, before the last LayerNorm."""
        dims = check_shape(x, "B C H W", name="TransformerInTransformer", C=self.in_chans)
        p = self.patch_size
        x = F.pad(x, (0, -dims["W"] % p, 0, -dims["H"] % p))  # (B, C, H', W')
        gh, gw = x.shape[2] // p, x.shape[3] // p
        b = dims["B"]
        y = self.pixel_embed(x, self.pixel_pos)  # (B N, M, c)
        # Z_0 = [x_class; LN(W_0 Vec(LN(Y_0)) + b_0)] + E_patch
        z = self.norm2_proj(self.proj(self.norm1_proj(y.reshape(b, gh * gw, -1))))  # (B, N, D)
        z = torch.cat([self.cls_token.expand(b, -1, -1), z], 1) + self.position_embedding(gh, gw)
        for block in self.blocks:
            y, z = block(y, z)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W LN(Z_L^0) + b
        return self.head(self.norm(self.forward_features(x)[:, 0]))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}, grid={self.grid}"


@register(
    name="tnt_s",
    family="model",
    paper="Transformer in Transformer",
    arxiv="2103.00112",
    year=2021,
    input="image",
    output="logits",
    size_arg="img_size",
    paper_numbers=dict(size=(224, 224), params="23.8M", macs="5.2G", source="Table 1 (TNT-S)"),
    example=Example(
        config=dict(in_chans=3, num_classes=10, dim=8, inner_dim=4, depth=1, num_heads=2,
                    num_heads_inner=1, patch_size=8),
        inputs=images("in_chans"), size=(16, 16),
        out_shape=logits_shape,
        tiny=dict(num_classes=3, dim=8, inner_dim=4, depth=1, num_heads=2, num_heads_inner=1,
                  patch_size=8)),
)
def tnt_s(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> TransformerInTransformer:
    """TNT-S: D = 384 (6 heads), c = 24 (4 heads), 4 x 4 pixels per 16 x 16 patch, 12 blocks; 23.8M params.

    Han et al., arXiv 2103.00112, Table 1 (TNT-S: 23.8M parameters, 5.2 GFLOPs
    at 224x224). Parameter count equal to PyTorch Image Models' ``tnt_s_patch16_224``
    (23,768,584).

    Equation: see ``TransformerInTransformer`` and ``TNTBlock``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``TransformerInTransformer``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (zero-padded to multiples of 16).
        - Output: (B, K) logits, K = num_classes.
    """
    return TransformerInTransformer(in_chans, num_classes, **kw)
