"""MobileViT: MobileNetV2 inverted residuals with MobileViT blocks in the last three stages.

Paper: MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer
(Mehta, Rastegari; arXiv 2110.02178, 2021), Table 4 (XXS). Built from the conv room's
``MBConv`` (no SE: MobileNetV2's inverted residual) and ``ConvBnAct`` and the attention room's
``MobileViTBlock``.

Letters: B batch, C input channels (in_chans), H W spatial, K classes.

Key correspondence with PyTorch Image Models' ``mobilevit_xxs`` (ByobNet) state dict
(timm name -> ours; BN keys include the running statistics)::

    stem.conv / stem.bn                         ->  stem.conv / stem.bn
    stages.i.j.conv1_1x1 / conv2_kxk / conv3_1x1 ->  stages.i.j.expand / dw / project  (.conv, .bn)
    stages.i.1.conv_kxk.conv / .bn              ->  stages.i.1.local.0.0 / .local.0.1
    stages.i.1.conv_1x1                         ->  stages.i.1.local.1
    stages.i.1.transformer.l.norm1 / norm2      ->  stages.i.1.layers.l.norm1 / norm2
    stages.i.1.transformer.l.attn.qkv / .proj   ->  stages.i.1.layers.l.qkv / .proj
    stages.i.1.transformer.l.mlp.fc1 / fc2      ->  stages.i.1.layers.l.mlp.0 / mlp.2
    stages.i.1.norm                             ->  stages.i.1.norm
    stages.i.1.conv_proj / conv_fusion          ->  stages.i.1.proj / .fuse  (.conv -> .0, .bn -> .1)
    final_conv.conv / .bn, head.fc              ->  final_conv.conv / .bn, head
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.attention.mobilevit import MobileViTBlock
from blockzoo.checks import check_shape, require
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.conv.mbconv import MBConv
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["XXS", "MobileViT", "mobilevit_xxs"]

# One row per stage: (output channels, inverted residuals, stride of the first,
# transformer width D or 0 for none, transformer depth L). Table 4 of arXiv 2110.02178 (XXS).
Stage = tuple[int, int, int, int, int]
XXS: tuple[Stage, ...] = (
    (16, 1, 1, 0, 0),
    (24, 3, 2, 0, 0),
    (48, 1, 2, 64, 2),
    (64, 1, 2, 80, 4),
    (80, 1, 2, 96, 3),
)


class MobileViT(nn.Module):
    r"""MobileViT: a strided 3x3 stem, five stages of inverted residuals (MV2), the last three
    ending in a MobileViT block, a 1x1 conv, pooling and a linear classifier.

    Mehta & Rastegari, "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision
    Transformer", arXiv 2110.02178, Fig. 1(b) and Table 4.

    Equation::

        h = silu(BN(conv_{3x3/2}(x)))                                           stem
        stage i: h = MV2_{s_i}(h), ..., then (i >= 3) h = MobileViT(h)         Table 4
            MV2(h) = [h +] BN(W_p silu(BN(dw_3(silu(BN(W_e h))))))             expansion 2 (XXS)
            MobileViT(h): local conv, transformer over unfolded 2x2 patches, fold, fuse
        logits = W_c GAP(silu(BN(conv_{1x1}(h)))) + b_c

    Args:
        in_chans: C. num_classes: K.
        arch: the stages, rows (channels, MV2 blocks, stride, transformer width D or 0,
            transformer depth L) (``XXS``).
        stem_dim: the stem's width (16). last_dim: the 1x1 conv before pooling (320 for XXS).
        expand_ratio: MV2 expansion (XXS: 2; XS and S: 4).
        num_heads: heads of every transformer (4). patch_size: p (2). mlp_ratio: (2).
        dropout: before the classifier (training only).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (total stride 32; the MobileViT
          blocks pad maps that p does not divide and mask the padding).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        For maps that p does not divide the MobileViT block pads and masks (see
        ``MobileViTBlock``) where the reference resizes bilinearly; at sizes p divides at
        every stage (multiples of 64) the outputs are the reference's.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        arch: Sequence[Sequence[int]] = XXS,
        stem_dim: int = 16,
        last_dim: int = 320,
        expand_ratio: float = 2.0,
        num_heads: int = 4,
        patch_size: int = 2,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(len(arch) >= 1 and all(len(r) == 5 and r[1] >= 1 for r in arch),
                f"MobileViT: arch must be rows (channels, blocks >= 1, stride, dim, depth), got {arch!r}")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.stem = ConvBnAct(in_chans, stem_dim, 3, stride=2, act_layer="silu", **fk)
        c = stem_dim
        stages: list[nn.Module] = []
        for out, n, stride, dim, depth in arch:
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(MBConv(c, out, expand_ratio=expand_ratio, stride=stride if j == 0 else 1,
                                     se_ratio=0.0, act_layer="silu", **fk))
                c = out
            if dim:
                blocks.append(MobileViTBlock(c, dim=dim, depth=depth, num_heads=num_heads,
                                             patch_size=patch_size, mlp_ratio=mlp_ratio, final_norm_bias=True,
                                             **fk))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.final_conv = ConvBnAct(c, last_dim, 1, act_layer="silu", **fk)
        self.num_features = last_dim
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(last_dim, num_classes, **fk)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The map before pooling (B, last_dim, H / 32, W / 32) (sizes rounded up)."""
        check_shape(x, "B C H W", name="MobileViT", C=self.in_chans)
        return self.final_conv(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W_c GAP(h) + b_c
        return self.head(self.drop(self.forward_features(x).mean((2, 3))))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="mobilevit_xxs",
    family="model",
    paper="MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer",
    arxiv="2110.02178",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(256, 256), params="1.3M", macs=None, source="Fig. 6"),
    exempt={"grad": "in training mode each MV2 block's projection-BN bias is a per-channel shift that the "
                    "next 1x1 conv's batch-statistics BN removes exactly, so its gradient is 0 (likewise the "
                    "MobileViT block's final LN shift, kept for the reference's weights); they act in eval "
                    "through the running statistics, and the reference has them"},
    example=Example(
        # A small config keeps the generic tests fast; the constructor's defaults are the
        # paper's model (docs/catalogue.md measures it beside the paper's table).
        config=dict(in_chans=3, num_classes=10, arch=((4, 1, 2, 0, 0), (8, 1, 2, 4, 1)), stem_dim=4,
                    last_dim=8, num_heads=1),
        inputs=images("in_chans"), size=(64, 64),
        sizes=((40, 72), (33, 47)), out_shape=logits_shape,
        tiny=dict(num_classes=3, arch=((4, 1, 2, 0, 0), (8, 1, 2, 4, 1)), stem_dim=4, last_dim=8,
                  num_heads=1),
    ),
)
def mobilevit_xxs(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> MobileViT:
    """MobileViT-XXS: widths 16-24-48-64-80, transformers of width 64 / 80 / 96 and depth 2 / 4 / 3.

    Mehta & Rastegari, arXiv 2110.02178, Table 4 (architecture) and Fig. 6 (XXS: 1.3M
    parameters, trained at 256 x 256). Parameter count equal to PyTorch Image Models' ``mobilevit_xxs``
    (1,272,024).

    Equation: see ``MobileViT`` and ``MobileViTBlock``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``MobileViT``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return MobileViT(in_chans, num_classes, **{"arch": XXS, "last_dim": 320, "expand_ratio": 2.0, **kw})
