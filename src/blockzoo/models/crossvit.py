"""CrossViT: two ViT branches at two patch sizes, fused through their class tokens.

Paper: CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification
(Chen et al., arXiv 2103.14899, 2021). Built from the attention room's ``PatchEmbed``,
``TransformerEncoderBlock`` and ``ClassCrossAttention``.

Letters: B batch, C input channels (in_chans), H W spatial, b a branch (0: small patches,
1: large), p_b its patch size, D_b its width, N_b its patch tokens, K classes.

Key correspondence with PyTorch Image Models' ``CrossVit`` state dict (timm name -> ours;
every other key, e.g. ``patch_embed.{b}.proj.*``, ``blocks.{k}.blocks.{b}.{j}.norm1.*``,
``...attn.qkv.*``, ``...norm2.*``, ``blocks.{k}.projs.*``, ``blocks.{k}.revert_projs.*``,
``blocks.{k}.fusion.{b}.norm1.*``, ``norm.{b}.*``, ``head.{b}.*``, is the same)::

    cls_token_{b} / pos_embed_{b}                 ->  cls_tokens.{b} / pos_embeds.{b}
    blocks.{k}.blocks.{b}.{j}.attn.proj.*         ->  ....attn.out_proj.*
    blocks.{k}.blocks.{b}.{j}.mlp.fc1.* / .fc2.*  ->  blocks.{k}.blocks.{b}.{j}.fc1.* / .fc2.*
    blocks.{k}.fusion.{b}.attn.wq.* / wk / wv     ->  blocks.{k}.fusion.{b}.attn.q_proj.* / k_proj / v_proj
    blocks.{k}.fusion.{b}.attn.proj.*             ->  blocks.{k}.fusion.{b}.attn.out_proj.*
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.act import create_norm
from blockzoo.attention.crossvit import ClassCrossAttention
from blockzoo.attention.patch_embed import PatchEmbed
from blockzoo.attention.transformer import TransformerEncoderBlock
from blockzoo.checks import check_shape, require
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["CrossViT", "MultiScaleBlock", "crossvit_tiny"]


def _ln_gelu_linear(d_in: int, d_out: int, eps: float, fk: dict) -> nn.Sequential:
    # f(x) = W GELU(LN(x)) + b: CrossViT's projection between branch widths
    return nn.Sequential(create_norm("layernorm", d_in, eps=eps, **fk), nn.GELU(),
                         nn.Linear(d_in, d_out, **fk))


class MultiScaleBlock(nn.Module):
    r"""One CrossViT multi-scale encoder: each branch's transformer blocks, then cross-attention fusion.

    Chen et al., arXiv 2103.14899, Sec. 3.3 and Fig. 2-3, Eq. (5)-(8), for branch b and
    the other branch o::

        x_b = Block_{b, n_b}(... Block_{b, 1}(x_b))             (pre-norm ViT blocks)
        x'  = [f_b(x_b^cls); x_o^patch]                          f_b: LN - GELU - Linear(D_b, D_o)
        y   = x'^cls + CA(LN(x'))                                (ClassCrossAttention, D_o wide)
        x_b = [g_b(y); x_b^patch]                                g_b: LN - GELU - Linear(D_o, D_b)

    Args:
        dims: (D_0, D_1). depths: transformer blocks per branch (each >= 1).
        num_heads: per branch (the fusion into branch o uses o's). mlp_ratios: per branch.
        norm_eps: every LayerNorm's (the released code: 1e-6).

    Shape:
        - ``forward([x_0, x_1])``: (B, 1 + N_b, D_b) per branch -> the same shapes.
    """

    def __init__(self, dims: Sequence[int], depths: Sequence[int], num_heads: Sequence[int],
                 mlp_ratios: Sequence[float], *, norm_eps: float = 1e-6, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        n = len(dims)
        require(n >= 2 and len(depths) == len(num_heads) == len(mlp_ratios) == n and min(depths) >= 1,
                f"MultiScaleBlock: dims={tuple(dims)}, depths={tuple(depths)}, num_heads={tuple(num_heads)}, "
                f"mlp_ratios={tuple(mlp_ratios)} must be equally long (>= 2 branches), depths >= 1")
        self.blocks = nn.ModuleList([
            nn.Sequential(*[
                TransformerEncoderBlock(dims[b], num_heads[b], mlp_ratio=mlp_ratios[b], dropout=0.0,
                                        act_layer="gelu", norm_first=True, norm_eps=norm_eps, **fk)
                for _ in range(depths[b])
            ])
            for b in range(n)
        ])
        other = [(b + 1) % n for b in range(n)]
        self.projs = nn.ModuleList([_ln_gelu_linear(dims[b], dims[other[b]], norm_eps, fk) for b in range(n)])
        self.fusion = nn.ModuleList([
            ClassCrossAttention(dims[other[b]], num_heads[other[b]], norm_eps=norm_eps, **fk)
            for b in range(n)
        ])
        self.revert_projs = nn.ModuleList([_ln_gelu_linear(dims[other[b]], dims[b], norm_eps, fk)
                                           for b in range(n)])

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(self.blocks)
        xs = [blocks(x) for blocks, x in zip(self.blocks, xs, strict=True)]
        out = []
        for b in range(n):
            o = xs[(b + 1) % n]
            # x' = [f_b(x_b^cls); x_o^patch];  y = x'^cls + CA(LN(x'));  x_b = [g_b(y); x_b^patch]
            x = torch.cat([self.projs[b](xs[b][:, :1]), o[:, 1:]], 1)  # (B, 1 + N_o, D_o)
            y = self.fusion[b].forward_cls(x)  # (B, 1, D_o)
            out.append(torch.cat([self.revert_projs[b](y), xs[b][:, 1:]], 1))  # (B, 1 + N_b, D_b)
        return out


class CrossViT(nn.Module):
    r"""CrossViT: small- and large-patch ViT branches, multi-scale encoders, averaged class-token heads.

    Chen et al., "CrossViT", arXiv 2103.14899, Sec. 3 and Table 1.

    Equation::

        x_b = [x_b^cls; E_b P_{p_b}(resize_b(x))] + E_pos,b      b = 0, 1
        [x_0, x_1] = MultiScaleBlock_K(... MultiScaleBlock_1([x_0, x_1]))
        logits = mean_b (W_b LN_b(x_b)^cls + c_b)

    resize_b scales the image by s_b (the released models: 1 for branch 0, 224/240 for
    branch 1), bicubic.

    Args:
        in_chans: C. num_classes: K.
        img_size: the size the position embeddings are made for (240).
        img_scale: s_b per branch ((1, 224/240)).
        patch_sizes: p_b ((12, 16)). dims: D_b ((96, 192)).
        depths: per multi-scale encoder, the blocks per branch (((1, 4),) * 3).
        num_heads: per branch ((3, 3)). mlp_ratios: per branch ((4, 4)).
        norm_eps: the LayerNorms' epsilon (1e-6).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W: branch b sees the image resized to
          (floor(s_b H), floor(s_b W)), padded to multiples of p_b; the position embeddings
          are resized (bicubic) when its grid differs from the one at ``img_size``.
        - Output: (B, K) logits.

    Deviations:
        Any input size (the released model takes its one size). One cross-attention per
        branch and encoder (the released configs' fusion depth 0 / 1); no dropout.
        The token maps are not images, so ``attach`` goes after the patch projections.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        img_size: int | Sequence[int] = 240,
        img_scale: Sequence[float] = (1.0, 224 / 240),
        patch_sizes: Sequence[int] = (12, 16),
        dims: Sequence[int] = (96, 192),
        depths: Sequence[Sequence[int]] = ((1, 4), (1, 4), (1, 4)),
        num_heads: Sequence[int] = (3, 3),
        mlp_ratios: Sequence[float] = (4.0, 4.0),
        norm_eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        n = len(dims)
        require(len(img_scale) == len(patch_sizes) == n and all(s > 0 for s in img_scale),
                f"CrossViT: img_scale={tuple(img_scale)}, patch_sizes={tuple(patch_sizes)} and "
                f"dims={tuple(dims)} must be equally long, scales > 0")
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.img_scale = tuple(float(s) for s in img_scale)
        self.patch_embed = nn.ModuleList([PatchEmbed(in_chans, d, p, pad=True, **fk)
                                          for d, p in zip(dims, patch_sizes, strict=True)])
        self.grids = [pe.grid(*self._scaled(h, w, b)) for b, pe in enumerate(self.patch_embed)]
        self.cls_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, 1, d, **fk)) for d in dims])
        self.pos_embeds = nn.ParameterList([nn.Parameter(torch.zeros(1, 1 + gh * gw, d, **fk))
                                            for d, (gh, gw) in zip(dims, self.grids, strict=True)])
        self.blocks = nn.ModuleList([
            MultiScaleBlock(dims, tuple(dk), num_heads, mlp_ratios, norm_eps=norm_eps, **fk) for dk in depths
        ])
        self.norm = nn.ModuleList([create_norm("layernorm", d, eps=norm_eps, **fk) for d in dims])
        self.head = nn.ModuleList([nn.Linear(d, num_classes, **fk) for d in dims])
        for p in (*self.cls_tokens, *self.pos_embeds):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _scaled(self, h: int, w: int, b: int) -> tuple[int, int]:
        s = self.img_scale[b]
        return max(int(s * h), 1), max(int(s * w), 1)

    def _embed(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """Branch b's tokens [x^cls; E P(resize_b(x))] + E_pos: (B, 1 + N_b, D_b)."""
        h, w = x.shape[2:]
        size = self._scaled(h, w, b)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        grid = self.patch_embed[b].grid(*size)
        z = self.patch_embed[b](x)  # (B, N_b, D_b)
        z = torch.cat([self.cls_tokens[b].expand(z.shape[0], -1, -1), z], 1)
        pos = self.pos_embeds[b]
        if grid != self.grids[b]:
            d = pos.shape[-1]
            g = pos[:, 1:].reshape(1, *self.grids[b], d).permute(0, 3, 1, 2)  # (1, D, g_h, g_w)
            g = F.interpolate(g, size=grid, mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:, :1], g.flatten(2).transpose(1, 2)], 1)  # (1, 1 + N_b, D_b)
        return z + pos

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each branch's normalised tokens (B, 1 + N_b, D_b), class token first."""
        check_shape(x, "B C H W", name="CrossViT", C=self.in_chans)
        xs = [self._embed(x, b) for b in range(len(self.patch_embed))]
        for block in self.blocks:
            xs = block(xs)
        return [norm(z) for norm, z in zip(self.norm, xs, strict=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.forward_features(x)
        # logits = mean_b (W_b LN_b(x_b)^cls + c_b)
        return torch.stack([head(z[:, 0]) for head, z in zip(self.head, xs, strict=True)]).mean(0)  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="crossvit_tiny",
    family="model",
    paper="CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification",
    arxiv="2103.14899",
    year=2021,
    input="image",
    output="logits",
    # Softmax is invariant to a key bias: q (k_j + b_k) moves all of one query's logits by q b_k.
    exempt={"grad": "the key projection's bias gets a zero gradient: q (k_j + b_k) = q k_j + q b_k shifts "
                    "every logit of a query alike, which softmax cancels; it is kept because the released "
                    "checkpoints have it"},
    paper_numbers=dict(size=(240, 240), params="7.0M", macs="1.6G", source="Table 2 (CrossViT-Ti)"),
    example=Example(
        # A small config keeps the generic tests fast; the constructor's defaults are the
        # paper's model (docs/catalogue.md measures it beside the paper's table).
        config=dict(in_chans=3, num_classes=10, img_size=16, patch_sizes=(4, 8), dims=(4, 8),
                    depths=((1, 1),), num_heads=(2, 2), mlp_ratios=(2, 2)),
        inputs=images("in_chans"), size=(64, 64),
        out_shape=logits_shape,
        tiny=dict(num_classes=3, img_size=16, patch_sizes=(4, 8), dims=(4, 8), depths=((1, 1),),
                  num_heads=(2, 2), mlp_ratios=(2, 2)),
    ),
)
def crossvit_tiny(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> CrossViT:
    """CrossViT-Ti (240 x 240): 12 x 12 patches of width 96 and 16 x 16 patches (at 224) of width 192.

    Chen et al., arXiv 2103.14899, Table 1 and Table 2 (CrossViT-Ti: 7.0M parameters,
    1.6 GFLOPs at 240 x 240). Parameter count equal to PyTorch Image Models'
    ``crossvit_tiny_240`` (7,014,800).

    Equation: see ``CrossViT``, ``MultiScaleBlock`` and ``ClassCrossAttention``.

    Args:
        in_chans: C. num_classes: K. **kw: ``CrossViT``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (the paper's size: 240 x 240).
        - Output: (B, K) logits, K = num_classes.
    """
    return CrossViT(in_chans, num_classes, **kw)
