r"""ConViT: a ViT whose first blocks use gated positional self-attention.

Paper: ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases
(d'Ascoli et al., arXiv 2103.10697, 2021). Built from the attention room's ``PatchEmbed``,
``GatedPositionalSelfAttention`` and ``TransformerEncoderBlock``.

Key correspondence with PyTorch Image Models' ``ConVit`` state dict (timm name -> ours;
every other key, e.g. ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.i.norm1.*``, ``blocks.i.attn.qkv.*`` (SA blocks), ``blocks.i.attn.pos_proj.*`` and
``blocks.i.attn.gating_param`` (GPSA blocks), ``norm.*``, ``head.*``, is the same)::

    blocks.{i}.attn.qk.* and .attn.v.*  ->  blocks.{i}.attn.qkv.*   (GPSA: rows q, k, then v)
    blocks.{i}.attn.proj.*              ->  blocks.{i}.attn.out_proj.*
    blocks.{i}.mlp.fc{1,2}.*            ->  blocks.{i}.fc{1,2}.*

Letters: B batch, C input channels (in_chans), H W spatial, p patch size, D width,
N = g_h g_w patch tokens, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.attention.gpsa import GatedPositionalSelfAttention, relative_offsets
from blockzoo.attention.patch_embed import PatchEmbed, resize_grid_embedding
from blockzoo.attention.transformer import TransformerEncoderBlock
from blockzoo.checks import check_shape, require
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["ConViT", "GPSABlock", "convit_tiny"]


class GPSABlock(nn.Module):
    r"""ConViT's local block: pre-norm gated positional self-attention and MLP, each residual.

    d'Ascoli et al., arXiv 2103.10697, Sec. 3 (Fig. 1)::

        z' = z + GPSA(LN(z));   z = z' + W_2 GELU(W_1 LN(z') + b_1) + b_2

    Args:
        dim: D. num_heads: h. mlp_ratio: MLP width / D. qkv_bias: of the q, k, v
        projections. locality_strength: GPSA's alpha. norm_eps: of the two LayerNorms.

    Shape:
        - ``forward(z, H, W)``: z (B, N, D) patch tokens of an H x W grid -> (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 locality_strength: float = 1.0, norm_eps: float = 1e-6, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.attn = GatedPositionalSelfAttention(dim, num_heads, qkv_bias=qkv_bias,
                                                 locality_strength=locality_strength, **fk)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio), **fk)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim, **fk)

    def forward(self, z: torch.Tensor, height: int, width: int,
                offsets: torch.Tensor | None = None) -> torch.Tensor:
        # z' = z + GPSA(LN(z));  z = z' + MLP(LN(z'))
        z = z + self.attn.attend_tokens(self.norm1(z), height, width, offsets)
        return z + self.fc2(self.act(self.fc1(self.norm2(z))))


class ConViT(nn.Module):
    r"""ConViT: patch embedding, GPSA blocks on the patch tokens, then a class token and SA blocks.

    d'Ascoli et al., "ConViT", arXiv 2103.10697, Sec. 3 and Fig. 1.

    Equation::

        z_0 = [E x_p^1; ...; E x_p^N] + E_pos                (no class token yet)
        z_l = GPSABlock(z_{l-1})                    l = 1..L_loc  (local layers)
        z_{L_loc} = [x_class; z_{L_loc}]            the class token joins after them
        z_l = TransformerEncoderBlock(z_{l-1})      l = L_loc+1..L  (pre-norm MHSA, GELU MLP)
        logits = W LN(z_L^0) + b

    E_pos is learned for the grid of ``img_size``; other grids use it bicubically resized.

    Args:
        in_chans: C. num_classes: K.
        img_size: the size E_pos is learned for.
        patch_size: p (16).
        dim: D (ConViT-Ti: 48 per head x 4 heads = 192).
        depth: L (12).
        num_heads: h (ConViT-Ti: 4).
        local_layers: L_loc, the number of GPSA blocks (10), 0 <= L_loc < L.
        mlp_ratio: the MLP width / D (4).
        qkv_bias: biases on the q, k, v projections (False).
        locality_strength: GPSA's locality initialisation alpha (1).
        norm_eps: the LayerNorms' epsilon (1e-6, the released code's).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (bottom/right zero-padded to
          multiples of p).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        Sides that are not multiples of p are zero-padded, and non-square grids get
        GPSA's offsets of their own H x W grid (the reference takes square inputs of
        ``img_size`` only). No dropout or stochastic depth (training-recipe choices).
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
        num_heads: int = 4,
        local_layers: int = 10,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        locality_strength: float = 1.0,
        norm_eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(0 <= local_layers < depth,
                f"ConViT: local_layers={local_layers} must be in [0, depth={depth}) (the class token joins "
                "after the local layers, before an SA block)")
        fk = dict(device=device, dtype=dtype)
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.in_chans, self.num_classes, self.local_layers = in_chans, num_classes, local_layers
        self.patch_embed = PatchEmbed(in_chans, dim, patch_size, pad=True, **fk)
        self.grid = self.patch_embed.grid(h, w)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **fk))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim, **fk))
        blocks: list[nn.Module] = [
            GPSABlock(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                      locality_strength=locality_strength, norm_eps=norm_eps, **fk)
            for _ in range(local_layers)
        ]
        blocks += [
            TransformerEncoderBlock(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, dropout=0.0,
                                    act_layer="gelu", norm_first=True, norm_eps=norm_eps, **fk)
            for _ in range(depth - local_layers)
        ]
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.head = nn.Linear(dim, num_classes, **fk)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def position_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """E_pos (1, N, D) for a (gh, gw) grid: the learned one, resized when the grid differs."""
        if (gh, gw) == self.grid:
            return self.pos_embed
        d = self.pos_embed.shape[-1]
        pos = self.pos_embed.reshape(1, *self.grid, d).permute(0, 3, 1, 2)  # (1, D, g_h, g_w)
        return resize_grid_embedding(pos, (gh, gw)).flatten(2).transpose(1, 2)  # (1, gh gw, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final tokens (B, 1 + N, D), class token first, before the last LayerNorm."""
        dims = check_shape(x, "B C H W", name="ConViT", C=self.in_chans)
        gh, gw = self.patch_embed.grid(dims["H"], dims["W"])
        # z_0 = E x_p + E_pos
        z = self.patch_embed(x) + self.position_embedding(gh, gw)  # (B, N, D)
        r = relative_offsets(gh, gw, device=z.device, dtype=z.dtype)  # (N, N, 3), shared by the GPSA layers
        for block in self.blocks[:self.local_layers]:
            z = block(z, gh, gw, r)
        z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1), z], 1)  # (B, 1 + N, D)
        for block in self.blocks[self.local_layers:]:
            z = block(z)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W LN(z_L^0) + b
        return self.head(self.norm(self.forward_features(x)[:, 0]))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}, grid={self.grid}, " \
               f"local_layers={self.local_layers}"


@register(
    name="convit_tiny",
    family="model",
    paper="ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases",
    arxiv="2103.10697",
    year=2021,
    input="image",
    output="logits",
    size_arg="img_size",
    paper_numbers=dict(size=(224, 224), params="6M", macs="1G", source="Table 1 (ConViT-Ti)"),
    example=Example(
        config=dict(in_chans=3, num_classes=10, dim=8, depth=2, num_heads=4, local_layers=1, patch_size=8),
        inputs=images("in_chans"), size=(32, 32),
        out_shape=logits_shape,
        tiny=dict(num_classes=3, dim=8, depth=2, num_heads=4, local_layers=1, patch_size=8)),
    exempt={"grad": "each GPSA's pos_proj.bias (kept for the released checkpoints) is constant over the keys "
                    "of a softmax: it never changes the output, so its gradient is exactly 0"},
)
def convit_tiny(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> ConViT:
    """ConViT-Ti: D = 192 (4 heads of 48), 12 blocks of which 10 GPSA; 5,710,512 parameters.

    d'Ascoli et al., arXiv 2103.10697, Table 1 (ConViT-Ti: 6M parameters, 1 GFLOPs at
    224x224). Parameter count equal to PyTorch Image Models' ``convit_tiny`` (5,710,512).

    Equation: see ``ConViT`` and ``GatedPositionalSelfAttention``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``ConViT``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (zero-padded to multiples of 16).
        - Output: (B, K) logits, K = num_classes.
    """
    return ConViT(in_chans, num_classes, **kw)
