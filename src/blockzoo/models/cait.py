"""CaiT: a deep ViT made trainable by LayerScale, with talking heads and a class-attention stage.

Paper: Going deeper with Image Transformers (Touvron, Cord, Sablayrolles, Synnaeve, Jegou;
arXiv 2103.17239, 2021). Built from the attention room's ``PatchEmbed``,
``TalkingHeadsAttention`` and ``ClassAttentionBlock`` and the MLP room's ``MLP``.

Key correspondence with PyTorch Image Models' ``Cait`` state dict (timm name -> ours; every
other key, e.g. ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.i.norm1.*``,
``blocks.i.attn.qkv.*``, ``blocks.i.attn.proj_l.*``, ``blocks.i.attn.proj_w.*``, ``norm.*``,
``head.*``, is the same)::

    blocks.{i}.attn.proj.*                 ->  blocks.{i}.attn.out_proj.*
    blocks.{i}.gamma_{1,2}                 ->  blocks.{i}.scale{1,2}
    blocks.{i}.mlp.fc1.* / .fc2.*          ->  blocks.{i}.mlp.layers.0.* / .layers.4.*
    blocks_token_only.{i}.*                ->  cls_blocks.{i}.* with
        attn.q.* / .k.* / .v.* / .proj.*   ->  attn.q_proj.* / .k_proj.* / .v_proj.* / .out_proj.*
        gamma_{1,2}, mlp.fc1, mlp.fc2      ->  scale{1,2}, mlp.layers.0, mlp.layers.4

Letters: B batch, C input channels (in_chans), H W spatial, p patch size, D width (dim),
N patch tokens, g_h g_w the token grid, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_norm
from blockzoo.attention.class_attention import ClassAttentionBlock
from blockzoo.attention.patch_embed import PatchEmbed, resize_token_embedding
from blockzoo.attention.talking_heads import TalkingHeadsAttention
from blockzoo.checks import check_shape, require
from blockzoo.mlp.mlp import MLP
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["CaiT", "LayerScaleBlock", "cait_xxs24"]


class LayerScaleBlock(nn.Module):
    r"""CaiT's self-attention layer: talking-heads attention and an MLP, each with LayerScale.

    Touvron et al., arXiv 2103.17239, Sec. 2, Eq. (3) (LayerScale) and Sec. 3::

        x' = x + diag(s_1) TalkingHeadsAttention(LN_1(x))
        y  = x' + diag(s_2) MLP(LN_2(x'))             MLP: Linear(D, rD) - GELU - Linear(rD, D)

    s_1, s_2 are learned per-channel factors initialised to a small epsilon
    (``layer_scale``: 1e-5 for CaiT-XXS and -XS, 1e-6 for the deeper models).

    Args:
        dim: D. num_heads: h. mlp_ratio: r (4). qkv_bias: (True).
        layer_scale: the initial value of s_1 and s_2. norm_eps: the norms' epsilon (1e-6).

    Shape:
        - Input: (B, N, D), any N; output (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 layer_scale: float = 1e-5, norm_layer: LayerSpec = "layernorm", norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.dim = dim
        self.norm1 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        # b_l (no effect: it cancels in the softmax) is kept to hold CaiT's checkpoints
        self.attn = TalkingHeadsAttention(dim, num_heads, qkv_bias=qkv_bias, logit_bias=True, **fk)
        self.scale1 = nn.Parameter(torch.full((dim,), float(layer_scale), **fk))
        self.norm2 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim, act_layer="gelu", **fk)
        self.scale2 = nn.Parameter(torch.full((dim,), float(layer_scale), **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x' = x + diag(s_1) SA_talking(LN_1(x));  y = x' + diag(s_2) MLP(LN_2(x'))
        x = x + self.scale1 * self.attn(self.norm1(x))
        return x + self.scale2 * self.mlp(self.norm2(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class CaiT(nn.Module):
    r"""CaiT: patch tokens through LayerScale self-attention layers, then a class token through class
    attention.

    Touvron et al., "Going deeper with Image Transformers", arXiv 2103.17239, Sec. 2-3,
    Fig. 2 (right).

    Equation::

        z_0 = [E x_p^1; ...; E x_p^N] + E_pos                 (no class token yet)
        z_l = LayerScaleBlock(z_{l-1})                        l = 1..L   (self-attention stage)
        c_0 = x_class                                          (a learned token)
        [c_j; z_L] = ClassAttentionBlock([c_{j-1}; z_L])      j = 1..L'  (class-attention stage)
        logits = W LN(c_{L'}) + b

    The class token joins only after the patch tokens are processed: self-attention
    layers need not serve the class embedding, and the class-attention layers, which
    update the class token alone, summarise the frozen patch tokens.

    E_pos is learned for the grid of ``img_size``; other sizes use it bicubically
    resized to their grid.

    Args:
        in_chans: C. num_classes: K.
        img_size: the size E_pos is learned for (an int means square).
        patch_size: p (16).
        dim: D (XXS: 192).
        depth: L, the self-attention layers (XXS24: 24).
        num_heads: h of both stages (XXS: 4).
        mlp_ratio: the MLP width / D of the self-attention layers (4).
        depth_token_only: L', the class-attention layers (2).
        mlp_ratio_token_only: the MLP width / D of the class-attention layers (4).
        layer_scale: LayerScale's initial epsilon (XXS24: 1e-5).
        qkv_bias: biases on the q, k, v projections (True in the released code).
        norm_eps: every LayerNorm's epsilon (released code: 1e-6).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (bottom/right zero-padded to a
          multiple of p).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        Images whose sides are not multiples of p are zero-padded (the paper's sizes
        always are). Two biases of the released code that cancel in a softmax are kept
        (the talking heads' b_l, the class attention's key bias) so that checkpoints and
        the parameter count are the reference's; they never change the output. No
        stochastic depth or dropout (training-recipe choices; the outputs in eval are
        the same). Distillation (the paper's "⚗" models) is the
        training recipe's, not the network's: the released networks have one head.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        dim: int = 192,
        depth: int = 24,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        depth_token_only: int = 2,
        mlp_ratio_token_only: float = 4.0,
        layer_scale: float = 1e-5,
        qkv_bias: bool = True,
        norm_layer: LayerSpec = "layernorm",
        norm_eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(depth >= 1 and depth_token_only >= 1,
                f"CaiT: depth={depth} and depth_token_only={depth_token_only} must be >= 1")
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.patch_embed = PatchEmbed(in_chans, dim, patch_size, pad=True, **fk)
        self.grid = self.patch_embed.grid(h, w)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim, **fk))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **fk))
        block = dict(qkv_bias=qkv_bias, layer_scale=layer_scale, norm_layer=norm_layer, norm_eps=norm_eps,
                     **fk)
        self.blocks = nn.Sequential(*[LayerScaleBlock(dim, num_heads, mlp_ratio=mlp_ratio, **block)
                                      for _ in range(depth)])
        self.cls_blocks = nn.ModuleList(
            ClassAttentionBlock(dim, num_heads, mlp_ratio=mlp_ratio_token_only, key_bias=qkv_bias, **block)
            for _ in range(depth_token_only)
        )
        self.norm = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.head = nn.Linear(dim, num_classes, **fk)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final tokens after the last norm (B, 1 + N, D), the class token first."""
        dims = check_shape(x, "B C H W", name="CaiT", C=self.in_chans)
        z = self.patch_embed(x)  # (B, N, D)
        # z_0 = [E x_p] + E_pos
        z = z + resize_token_embedding(self.pos_embed, self.grid, self.patch_embed.grid(dims["H"], dims["W"]))
        z = self.blocks(z)  # (B, N, D)
        # [c_j; z_L] = ClassAttentionBlock([c_{j-1}; z_L])
        z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1), z], 1)  # (B, 1 + N, D)
        for block in self.cls_blocks:
            z = block(z)
        return self.norm(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W LN(c_L') + b
        return self.head(self.forward_features(x)[:, 0])  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}, grid={self.grid}"


@register(
    name="cait_xxs24",
    family="model",
    paper="Going deeper with Image Transformers",
    arxiv="2103.17239",
    year=2021,
    input="image",
    output="logits",
    size_arg="img_size",
    exempt={"grad": "the talking heads' bias before the softmax (attn.proj_l.bias) and the class "
                    "attention's key bias (attn.k_proj.bias) are added to all logits of a head alike and "
                    "cancel in the softmax, so their gradients are 0; the released network (and timm's, "
                    "whose parameter count and checkpoints this model equals) has them"},
    paper_numbers=dict(size=(224, 224), params="12.0M", macs="2.5G", source="Table 3 (XXS-24)"),
    example=Example(
        # A small config keeps the generic tests fast; the constructor's defaults are the
        # paper's model (docs/catalogue.md measures it beside the paper's table).
        config=dict(in_chans=3, num_classes=10, dim=8, depth=1, num_heads=2, depth_token_only=1,
                    patch_size=8, img_size=16),
        inputs=images("in_chans"), size=(32, 32),
        out_shape=logits_shape,
        tiny=dict(num_classes=3, dim=8, depth=1, num_heads=2, depth_token_only=1, patch_size=8, img_size=16),
    ),
)
def cait_xxs24(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> CaiT:
    """CaiT-XXS-24: D = 192, 24 self-attention + 2 class-attention layers, 4 heads; 11,956,264 parameters.

    Touvron et al., arXiv 2103.17239, Table 3 (XXS-24: 12.0M parameters, 2.5 GFLOPs at
    224x224). Parameter count equal to PyTorch Image Models' ``cait_xxs24_224``
    (11,956,264).

    Equation: see ``CaiT``, ``TalkingHeadsAttention`` and ``ClassAttentionBlock``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``CaiT``'s keyword arguments (``img_size``, ``depth``, ...).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (zero-padded to multiples of 16).
        - Output: (B, K) logits, K = num_classes.
    """
    return CaiT(in_chans, num_classes, **{"dim": 192, "depth": 24, "num_heads": 4, "layer_scale": 1e-5, **kw})
