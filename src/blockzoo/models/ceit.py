"""CeiT: a ViT with a convolutional image-to-tokens stem, LeFF feed-forwards and layer-wise
class-token attention.

Paper: Incorporating Convolution Designs into Visual Transformers (Yuan et al., arXiv
2103.11816, ICCV 2021). Built from the catalogue's ``MultiHeadAttention``, ``PatchEmbed``,
``MLP`` and the mlp room's ``LocallyEnhancedFeedForward``. No reference implementation is
installed here: the parameter count is checked against the paper's Table 2
(tests/test_backbones_paper_only.py).

Letters: B batch, C input channels (in_chans), H W spatial, D token width, N patch tokens,
L encoder layers, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.attention.dot_product import MultiHeadAttention
from blockzoo.attention.patch_embed import PatchEmbed, resize_token_embedding
from blockzoo.checks import check_shape, require
from blockzoo.mlp.leff import LocallyEnhancedFeedForward
from blockzoo.mlp.mlp import MLP
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["CeiT", "CeiTBlock", "Image2Tokens", "LayerClassAttention", "ceit_t"]


class Image2Tokens(nn.Module):
    r"""CeiT's image-to-tokens stem: a 7 x 7 / 2 conv, BatchNorm and a 3 x 3 / 2 max-pool, then patches.

    Yuan et al., arXiv 2103.11816, Sec. 3.1, Eq. (1)::

        x' = MaxPool_{3x3/2}(BN(Conv_{7x7/2}(x)))        (B, C', H / 4, W / 4)
        z  = PatchEmbed_{p}(x')                          p x p patches of the feature map, p = 4

    Args:
        in_chans: C. dim: D. channels: C' (64, the authors' code). patch_size: p (4).

    Shape:
        - Input: (B, C, H, W), any H, W; output (B, N, D), N = g_h g_w with
          ``grid(H, W)`` = (ceil(ceil(ceil(H / 2) / 2) / p), ...) (the feature map is
          zero-padded to multiples of p, as the catalogue's ViT does).
    """

    def __init__(self, in_chans: int, dim: int, *, channels: int = 64, patch_size: int = 4,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(in_chans, channels, 7, stride=2, padding=3, bias=False, **fk)
        self.bn = nn.BatchNorm2d(channels, **fk)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.patch_embed = PatchEmbed(channels, dim, patch_size, pad=True, **fk)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid for an H x W image."""
        h, w = (height + 1) // 2, (width + 1) // 2  # 7 x 7 / 2, padding 3
        h, w = (h + 1) // 2, (w + 1) // 2  # 3 x 3 / 2 max-pool, padding 1
        return self.patch_embed.grid(h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(self.pool(self.bn(self.conv(x))))  # (B, N, D)


class CeiTBlock(nn.Module):
    r"""A CeiT encoder layer: multi-head self-attention and LeFF, each pre-norm and residual.

    Yuan et al., arXiv 2103.11816, Sec. 3.3::

        z' = z + MSA(LN(z))
        y  = z' + LeFF(LN(z'))          (LeFF on the patch tokens; see ``LocallyEnhancedFeedForward``)

    Args:
        dim: D. num_heads: h. mlp_ratio: e (4). qkv_bias: (True). kernel_size: of LeFF (3).
        norm_eps: of the LayerNorms (1e-6).

    Shape:
        - ``forward(z, H, W)``: z (B, 1 + H W, D) -> (B, 1 + H W, D).
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 kernel_size: int = 3, norm_eps: float = 1e-6, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias=qkv_bias, **fk)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.leff = LocallyEnhancedFeedForward(dim, int(dim * mlp_ratio), kernel_size=kernel_size, **fk)

    def forward(self, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
        z = z + self.attn(self.norm1(z))
        return z + self.leff.forward_tokens(self.norm2(z), height, width)


class LayerClassAttention(nn.Module):
    r"""Layer-wise class-token attention (LCA): the last class token attends to every layer's class token.

    Yuan et al., arXiv 2103.11816, Sec. 3.4, Fig. 4::

        X = [x_c^1; ...; x_c^L] + E_layer            the class tokens of the L layers
        x' = x_c^L + MSA_q(LN(X))                    only x_c^L is a query; keys/values: all of X
        y  = x' + FFN(LN(x'))

    Args:
        dim: D. num_heads: h. depth: L (the learned layer embedding E_layer is L x D).
        mlp_ratio: of the FFN (4). qkv_bias: (True). norm_eps: (1e-6).

    Shape:
        - Input: (B, L, D); output (B, D).
    """

    def __init__(self, dim: int, num_heads: int, depth: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-6, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.depth = depth
        self.layer_embed = nn.Parameter(torch.zeros(1, depth, dim, **fk))
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias=qkv_bias, **fk)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.mlp = MLP(dim, int(dim * mlp_ratio), act_layer="gelu", **fk)
        nn.init.trunc_normal_(self.layer_embed, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_shape(tokens, "B L D", name="LayerClassAttention", L=self.depth)
        x = tokens + self.layer_embed  # X: (B, L, D)
        u = self.norm1(x)
        # x' = x_c^L + MSA_q(LN(X)): one query, L keys
        z = x[:, -1:] + self.attn(u[:, -1:], u, u)  # (B, 1, D)
        return (z + self.mlp(self.norm2(z)))[:, 0]  # (B, D)


class CeiT(nn.Module):
    r"""CeiT: image-to-tokens stem, a class token, L encoder layers with LeFF, LCA over their class tokens.

    Yuan et al., "Incorporating Convolution Designs into Visual Transformers", arXiv
    2103.11816, Sec. 3 and Table 2.

    Equation::

        z_0 = [x_class; I2T(x)] + E_pos
        z_l = CeiTBlock(z_{l-1})                    l = 1..L
        y   = LN(LCA([z_1^0; ...; z_L^0]))          the class tokens of every layer
        logits = W y + b

    Args:
        in_chans: C. num_classes: K.
        img_size: the size the position embedding is learned at (224); other sizes resize
            it (bicubic), as the catalogue's ViT does.
        dim: D (CeiT-T: 192). depth: L (12). num_heads: (3). mlp_ratio: e (4).
        i2t_channels: C' of the stem (64). patch_size: p on the stem's map (4).
        qkv_bias: (True). kernel_size: of LeFF's depthwise conv (3). norm_eps: (1e-6).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        No stochastic depth or dropout (training recipe). The stem's map is zero-padded to
        a multiple of p (the paper's sizes always divide). LeFF adds LN(x_c) back to the
        class token's residual (the authors' code concatenates the normalised class token,
        unchanged by the LeFF layers, in front of the LeFF output).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        img_size: int | Sequence[int] = 224,
        dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        i2t_channels: int = 64,
        patch_size: int = 4,
        qkv_bias: bool = True,
        kernel_size: int = 3,
        norm_eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(depth >= 1, f"CeiT: depth={depth} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.i2t = Image2Tokens(in_chans, dim, channels=i2t_channels, patch_size=patch_size, **fk)
        self.grid = self.i2t.grid(h, w)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **fk))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim, **fk))
        self.blocks = nn.ModuleList(
            CeiTBlock(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, kernel_size=kernel_size,
                      norm_eps=norm_eps, **fk) for _ in range(depth))
        self.lca = LayerClassAttention(dim, num_heads, depth, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                       norm_eps=norm_eps, **fk)
        self.num_features = dim
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.head = nn.Linear(dim, num_classes, **fk)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def position_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """E_pos for a (gh, gw) token grid: the learned one, resized (bicubic) when the grid differs."""
        if (gh, gw) == self.grid:
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        return torch.cat([cls, resize_token_embedding(grid, self.grid, (gh, gw))], 1)  # (1, 1 + gh gw, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The LCA output after the final LayerNorm, (B, D)."""
        dims = check_shape(x, "B C H W", name="CeiT", C=self.in_chans)
        gh, gw = self.i2t.grid(dims["H"], dims["W"])
        z = self.i2t(x)  # (B, N, D)
        # z_0 = [x_class; I2T(x)] + E_pos
        z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1), z], 1) + self.position_embedding(gh, gw)
        classes = []
        for block in self.blocks:
            z = block(z, gh, gw)  # (B, 1 + N, D)
            classes.append(z[:, 0])
        # y = LN(LCA([z_1^0; ...; z_L^0]))
        return self.norm(self.lca(torch.stack(classes, 1)))  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="ceit_t",
    family="model",
    size_arg="img_size",
    paper="Incorporating Convolution Designs into Visual Transformers",
    arxiv="2103.11816",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="6.4M", macs="1.2G", source="Table 2 (CeiT-T)"),
    exempt={"grad": "in training mode LeFF's conv biases sit just before batch-statistics BatchNorms, which "
                    "remove them exactly, and the last layer's LeFF only changes patch tokens, which nothing "
                    "reads (LCA takes the class tokens): their gradients are 0, as in the paper's network "
                    "(tests/test_backbones_paper_only.py checks the list)"},
    example=Example(
        # Small width and two layers keep the generic tests fast; the constructor's defaults
        # are the paper's CeiT-T (tests/test_backbones_paper_only.py builds it).
        config=dict(in_chans=3, num_classes=10, img_size=32, dim=16, depth=2, num_heads=2, i2t_channels=8),
        inputs=images("in_chans"), size=(32, 32), sizes=((33, 47), (20, 12)), out_shape=logits_shape,
        tiny=dict(num_classes=3, img_size=16, dim=4, depth=1, num_heads=1, i2t_channels=2, patch_size=2),
    ),
)
def ceit_t(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> CeiT:
    """CeiT-T: D = 192, 12 layers, 3 heads, LeFF with e = 4, a 64-channel I2T stem; 6,356,904 parameters.

    Yuan et al., arXiv 2103.11816, Table 2 (CeiT-T: 6.4M parameters, 1.2G FLOPs at 224x224,
    76.4% top-1).

    Equation: see ``CeiT``, ``CeiTBlock``, ``LayerClassAttention`` and ``LocallyEnhancedFeedForward``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``CeiT``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return CeiT(in_chans, num_classes, **kw)
