"""VOLO: outlook attention on fine tokens, then Transformer layers and class attention on coarse ones.

Paper: VOLO: Vision Outlooker for Visual Recognition (Yuan, Hou, Jiang, Feng, Yan; arXiv
2106.13112, 2021). Built from the attention room's ``OutlookAttention``,
``TransformerEncoderBlock`` and ``ClassAttentionBlock`` (CaiT's class attention, arXiv
2103.17239), the conv room's ``ConvBnAct`` and the MLP room's ``MLP``.

Key correspondence with PyTorch Image Models' ``VOLO`` state dict (timm name -> ours; every
other key, e.g. ``cls_token``, ``patch_embed.proj.*``, ``norm.*``, ``head.*``,
``aux_head.*``, is the same; timm's ``network`` list is [stage 1, downsample, stage 2,
stage 3, stage 4])::

    patch_embed.conv.{0,3,6}.weight        ->  patch_embed.stem.{0,1,2}.conv.weight
    patch_embed.conv.{1,4,7}.*             ->  patch_embed.stem.{0,1,2}.bn.*
    pos_embed (1, g_h, g_w, D)             ->  pos_embed (1, D, g_h, g_w)      (permuted)
    network.0.{j}.attn.{v,attn,proj}.weight (Linear)  ->  stages.0.blocks.{j}.attn.*.weight (1x1 conv)
    network.0.{j}.{norm1,norm2,attn.*.bias}           ->  stages.0.blocks.{j}.*
    network.0.{j}.mlp.fc1.* / .fc2.*       ->  stages.0.blocks.{j}.mlp.layers.0.* / .layers.4.*
    network.1.proj.*                       ->  downsample.*
    network.{i+1}.{j}.attn.proj.*          ->  stages.{i}.blocks.{j}.attn.out_proj.*     (i >= 1)
    network.{i+1}.{j}.mlp.fc{1,2}.*        ->  stages.{i}.blocks.{j}.fc{1,2}.*
    network.{i+1}.{j}.{norm1,norm2,attn.qkv}.*  ->  stages.{i}.blocks.{j}.*
    post_network.{j}.attn.q.*              ->  post_blocks.{j}.attn.q_proj.*
    post_network.{j}.attn.kv.*             ->  post_blocks.{j}.attn.k_proj.* and .v_proj.* (rows: k, then v)
    post_network.{j}.attn.proj.*           ->  post_blocks.{j}.attn.out_proj.*
    post_network.{j}.mlp.fc{1,2}.*         ->  post_blocks.{j}.mlp.layers.{0,4}.*

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i, N
tokens, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.act import LayerSpec, create_norm
from blockzoo.attention.class_attention import ClassAttentionBlock
from blockzoo.attention.outlook import OutlookAttention
from blockzoo.attention.patch_embed import resize_grid_embedding
from blockzoo.attention.transformer import TransformerEncoderBlock
from blockzoo.checks import check_shape, require
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.mlp.mlp import MLP
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["VOLO", "ConvStemPatchEmbed", "Outlooker", "VOLOStage", "volo_d1"]


class ConvStemPatchEmbed(nn.Module):
    r"""VOLO's patch embedding: three conv-BN-ReLU units (the first strided by 2), then a p/2 x p/2
    projection.

    Yuan et al., arXiv 2106.13112, Sec. 3 ("a convolutional stem" as in token labeling's
    LV-ViT)::

        s = ConvBnAct_{3x3}(ConvBnAct_{3x3}(ConvBnAct_{7x7, stride 2}(x)))
        y = Conv_{p/2 x p/2, stride p/2}(s)               (a stride of p in all)

    Args:
        in_chans: C. dim: D. patch_size: p (8 in VOLO). stem_dim: the stem's width (64).

    Shape:
        - Input: (B, C, H, W); output (B, D, floor(ceil(H / 2) / (p / 2)), ...).
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int = 8, *, stem_dim: int = 64,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(patch_size in (4, 8, 16), f"ConvStemPatchEmbed: patch_size={patch_size} must be 4, 8 or 16")
        fk = dict(device=device, dtype=dtype)
        self.stem = nn.Sequential(
            ConvBnAct(in_chans, stem_dim, 7, stride=2, padding=3, **fk),
            ConvBnAct(stem_dim, stem_dim, 3, **fk),
            ConvBnAct(stem_dim, stem_dim, 3, **fk),
        )
        self.proj = nn.Conv2d(stem_dim, dim, patch_size // 2, stride=patch_size // 2, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(x))  # (B, D, H / p, W / p)


class Outlooker(nn.Module):
    r"""VOLO's Outlooker layer: outlook attention and an MLP, each pre-norm and residual.

    Yuan et al., arXiv 2106.13112, Sec. 3.1, Eq. (1)::

        X~ = OutlookAtt(LN(X)) + X
        Z  = MLP(LN(X~)) + X~                  MLP: Linear(C, rC) - GELU - Linear(rC, C)

    Args:
        dim: C. num_heads: h. kernel_size: K (3). stride: the spacing of window centres (2
        in VOLO). mlp_ratio: r (3). qkv_bias: the value projection's bias. norm_eps: (1e-5).

    Shape:
        - Input: (B, H, W, C), channels last (as ``VOLOStage`` keeps it); output the same.
    """

    def __init__(self, dim: int, num_heads: int, *, kernel_size: int = 3, stride: int = 2,
                 mlp_ratio: float = 3.0, qkv_bias: bool = False, norm_layer: LayerSpec = "layernorm",
                 norm_eps: float = 1e-5, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.norm1 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.attn = OutlookAttention(dim, num_heads=num_heads, kernel_size=kernel_size, stride=stride,
                                     qkv_bias=qkv_bias, **fk)
        self.norm2 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim, act_layer="gelu", **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # X~ = OutlookAtt(LN(X)) + X   (the attention works channels first)
        x = x + self.attn(self.norm1(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, H, W, C)
        # Z = MLP(LN(X~)) + X~
        return x + self.mlp(self.norm2(x))


class VOLOStage(nn.Module):
    r"""A VOLO stage: Outlookers (stage 1) or Transformer layers (stages 2-4) at one resolution.

    Yuan et al., arXiv 2106.13112, Sec. 3 and Table 1::

        outlook stage:      Z = Outlooker_n(... Outlooker_1(X))
        Transformer stage:  Z = Block_n(... Block_1(X))    Block: pre-norm MHSA + MLP (GELU)

    Args:
        dim: C. depth: n. num_heads: h. outlook: Outlookers (else Transformer layers).
        mlp_ratio: (3). kernel_size, stride: of the outlook attention (3, 2).
        qkv_bias: (False). norm_eps: (1e-5).

    Shape:
        - Input: (B, C, H, W), channels first (so ``attach`` can follow a stage); output
          the same. An outlook stage's H, W are any; a Transformer stage's too.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, *, outlook: bool = False, mlp_ratio: float = 3.0,
                 kernel_size: int = 3, stride: int = 2, qkv_bias: bool = False,
                 norm_layer: LayerSpec = "layernorm", norm_eps: float = 1e-5,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.dim, self.outlook = dim, outlook
        if outlook:
            blocks = [Outlooker(dim, num_heads, kernel_size=kernel_size, stride=stride, mlp_ratio=mlp_ratio,
                                qkv_bias=qkv_bias, norm_layer=norm_layer, norm_eps=norm_eps, **fk)
                      for _ in range(depth)]
        else:
            blocks = [TransformerEncoderBlock(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                              dropout=0.0, act_layer="gelu", norm_layer=norm_layer,
                                              norm_first=True, norm_eps=norm_eps, **fk)
                      for _ in range(depth)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        z = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if not self.outlook:
            z = z.reshape(b, h * w, c)  # (B, N, C)
        z = self.blocks(z)
        return z.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, outlook={self.outlook}"


class VOLO(nn.Module):
    r"""VOLO: a conv stem, Outlookers at 1/8, Transformer layers at 1/16, class attention, a token-labeling
    head.

    Yuan et al., "VOLO: Vision Outlooker for Visual Recognition", arXiv 2106.13112, Sec. 3,
    Fig. 2 and Table 1.

    Equation::

        X_0 = ConvStemPatchEmbed(x)                        (B, D_1, H/8, W/8)
        X_1 = OutlookStage(X_0)                             Outlookers (Eq. (1))
        X_2 = Conv_{2x2, stride 2}(X_1) + E_pos             (B, D_2, H/16, W/16)
        X_i = TransformerStage_i(X_{i-1})                   i = 2..S
        [c; Z] = ClassAttentionBlock^{L'}([x_class; tokens(X_S)])
        [c; Z] = LN([c; Z])
        logits = W c + b + 0.5 max_n (W_aux Z_n + b_aux)    (the class token plus token labeling's
                                                              best token prediction)

    E_pos is learned for the 1/16 grid of ``img_size``; other sizes use it bicubically
    resized to their grid.

    Args:
        in_chans: C. num_classes: K.
        img_size: the size E_pos is learned for (an int means square).
        layers: blocks per stage (D1: 4, 4, 8, 2); the first stage is the outlook stage.
        dims: D_i per stage (D1: 192, 384, 384, 384); the stages after the first share one width.
        num_heads: per stage (D1: 6, 12, 12, 12).
        patch_size: the stem's stride (8).
        stem_dim: the conv stem's width (64).
        mlp_ratio: every MLP's width / D_i (3).
        kernel_size, stride: of the outlook attention (3, 2).
        post_layers: L', the class-attention layers (2).
        aux_head: token labeling's per-token head (True in every released VOLO).
        qkv_bias: biases on the q, k, v projections (False).
        norm_eps: every LayerNorm's epsilon (released code: PyTorch's 1e-5).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (bottom/right zero-padded to a
          multiple of 2p = 16).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        Images whose sides are not multiples of 16 are zero-padded (the paper's sizes
        always are). Token labeling's training (MixToken and the dense loss on the
        auxiliary head) belongs to the training recipe: the model returns the inference
        logits above in training too. No stochastic depth or dropout.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        img_size: int | Sequence[int] = 224,
        layers: Sequence[int] = (4, 4, 8, 2),
        dims: Sequence[int] = (192, 384, 384, 384),
        num_heads: Sequence[int] = (6, 12, 12, 12),
        patch_size: int = 8,
        stem_dim: int = 64,
        mlp_ratio: float = 3.0,
        kernel_size: int = 3,
        stride: int = 2,
        post_layers: int = 2,
        aux_head: bool = True,
        qkv_bias: bool = False,
        norm_layer: LayerSpec = "layernorm",
        norm_eps: float = 1e-5,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        cfg = [tuple(layers), tuple(dims), tuple(num_heads)]
        require(len({len(c) for c in cfg}) == 1 and len(cfg[0]) >= 2,
                f"VOLO: layers, dims, num_heads must be equally long (at least 2 stages), got {cfg}")
        require(len(set(cfg[1][1:])) == 1,
                f"VOLO: the stages after the first share one width (one downsampling), got dims={cfg[1]}")
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.multiple = 2 * patch_size
        d1, d = cfg[1][0], cfg[1][-1]
        self.patch_embed = ConvStemPatchEmbed(in_chans, d1, patch_size, stem_dim=stem_dim, **fk)
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm_layer, norm_eps=norm_eps, **fk)
        self.stages = nn.ModuleList(
            VOLOStage(cfg[1][i], cfg[0][i], cfg[2][i], outlook=i == 0, kernel_size=kernel_size, stride=stride,
                      **common)
            for i in range(len(cfg[0]))
        )
        self.downsample = nn.Conv2d(d1, d, 2, stride=2, **fk)
        self.grid = (-(-h // self.multiple), -(-w // self.multiple))
        self.pos_embed = nn.Parameter(torch.zeros(1, d, *self.grid, **fk))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d, **fk))
        self.post_blocks = nn.ModuleList(
            ClassAttentionBlock(d, cfg[2][-1], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm_layer,
                                norm_eps=norm_eps, **fk)
            for _ in range(post_layers)
        )
        self.norm = create_norm(norm_layer, d, eps=norm_eps, **fk)
        self.head = nn.Linear(d, num_classes, **fk)
        self.aux_head = nn.Linear(d, num_classes, **fk) if aux_head else None
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def position_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """E_pos (1, D, gh, gw): the learned one, bicubically resized when the grid differs."""
        return resize_grid_embedding(self.pos_embed, (gh, gw))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final tokens after the last norm (B, 1 + N, D), the class token first."""
        dims = check_shape(x, "B C H W", name="VOLO", C=self.in_chans)
        m = self.multiple
        x = F.pad(x, (0, -dims["W"] % m, 0, -dims["H"] % m))  # (B, C, H', W'), multiples of 16
        x = self.stages[0](self.patch_embed(x))  # (B, D_1, H'/8, W'/8)
        x = self.downsample(x)  # (B, D, H'/16, W'/16)
        x = x + self.position_embedding(*x.shape[-2:])
        for stage in self.stages[1:]:
            x = stage(x)
        z = x.flatten(2).transpose(1, 2)  # (B, N, D)
        z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1), z], 1)  # (B, 1 + N, D)
        for block in self.post_blocks:
            z = block(z)
        return self.norm(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.forward_features(x)
        logits = self.head(z[:, 0])  # (B, K)
        if self.aux_head is not None:
            # + 0.5 max_n (W_aux Z_n + b_aux)
            logits = logits + 0.5 * self.aux_head(z[:, 1:]).amax(1)
        return logits

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}, grid={self.grid}"


@register(
    name="volo_d1",
    family="model",
    paper="VOLO: Vision Outlooker for Visual Recognition",
    arxiv="2106.13112",
    year=2021,
    input="image",
    output="logits",
    size_arg="img_size",
    paper_numbers=dict(size=(224, 224), params="27M", macs="6.8G", source="Table 3 (VOLO-D1)"),
    example=Example(
        # A small config keeps the generic tests fast; the constructor's defaults are the
        # paper's model (docs/catalogue.md measures it beside the paper's table).
        config=dict(in_chans=3, num_classes=10, layers=(1, 1), dims=(4, 8), num_heads=(1, 2), stem_dim=4,
                    post_layers=1, img_size=32),
        inputs=images("in_chans"), size=(32, 32),
        out_shape=logits_shape,
        tiny=dict(num_classes=3, layers=(1, 1), dims=(4, 8), num_heads=(1, 2), stem_dim=4, post_layers=1,
                  img_size=32),
    ),
)
def volo_d1(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> VOLO:
    """VOLO-D1: 4 Outlookers (D = 192), 14 Transformer, 2 class-attention layers (384); 26,632,040 params.

    Yuan et al., arXiv 2106.13112, Table 1 and Table 3 (D1: 27M parameters, 6.8 GFLOPs at
    224x224). Parameter count equal to PyTorch Image Models' ``volo_d1_224`` (26,632,040).

    Equation: see ``VOLO``, ``Outlooker`` (with ``OutlookAttention``) and
    ``ClassAttentionBlock``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``VOLO``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (zero-padded to multiples of 16).
        - Output: (B, K) logits, K = num_classes.
    """
    return VOLO(in_chans, num_classes, **kw)
