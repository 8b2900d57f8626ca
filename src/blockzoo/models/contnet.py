r"""ConTNet: convolutions and patch-wise transformer encoders stacked alternately, ResNet-style.

Paper: ConTNet: Why not use convolution and transformer at the same time? (Yan et al.,
arXiv 2104.13497, 2021). Built from the attention room's ``PatchwiseTransformer`` and the
conv room's ``ConvBnAct``. No reference implementation is installed here: the parameter
count is that of the authors' released ConT-M (yan-hao-tian/ConTNet, ``ConTNet.py``),
checked in tests/test_backbones_contnet.py.

Letters: B batch, C input channels (in_chans), H W spatial, D_i the input width of stage i
(D_0 = stem_dim, doubling), P patch side, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.attention.contnet import PatchwiseTransformer
from blockzoo.checks import check_shape, require
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["ConTBlock", "ConTNet", "contnet_m"]


def _conv(dim: int, dim_out: int, kernel_size: int, stride: int, fk: dict[str, Any]) -> ConvBnAct:
    """A bare convolution (no bias, norm or activation), as every conv of ConTNet is."""
    return ConvBnAct(dim, dim_out, kernel_size, stride=stride, bias=False, norm_layer=None, act_layer=None,
                     **fk)


class ConTBlock(nn.Module):
    r"""A ConT block: BN-ReLU, two patch-wise transformers (patch sizes P_1, P_2), a convolution; residual.

    Yan et al., arXiv 2104.13497, Sec. 3 (the ConT block, with the authors' released code)::

        a = ReLU(BN(x))
        y = Conv(STE_{P_2}(STE_{P_1}(a))) + s,     s = x, or Conv_{1x1/stride}(a) when the
                                                   width or the resolution changes

    Conv is 3 x 3 (at the block's stride), except 1 x 1 in a block that widens without
    downsampling (the last block of ConTNet's last stage), as released.

    Args:
        dim: D, the input width (even, divisible by num_heads).
        dim_out: the output width (default D).
        num_heads: h of both transformers.
        patch_sizes: (P_1, P_2).
        mlp_ratio: the transformers' MLP width over D.
        stride: 1, or 2 to halve H and W (in the last conv and the shortcut).
        dropout: inside the transformers.
        qkv_bias, norm_first: of the transformers (released: True, post-norm).

    Shape:
        - Input: (B, D, H, W), D = dim, any H, W.
        - Output: (B, D_out, H', W'), D_out = dim_out, H' = ceil(H / stride), likewise W'.
    """

    def __init__(self, dim: int, dim_out: int | None = None, num_heads: int = 1, *,
                 patch_sizes: Sequence[int] = (7, 14), mlp_ratio: float = 4.0, stride: int = 1,
                 dropout: float = 0.0, qkv_bias: bool = True, norm_first: bool = False,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(len(patch_sizes) == 2, f"ConTBlock: patch_sizes={tuple(patch_sizes)} must be two sizes")
        require(stride in (1, 2), f"ConTBlock: stride={stride} must be 1 or 2")
        fk = dict(device=device, dtype=dtype)
        dim_out = dim_out or dim
        self.dim, self.dim_out, self.stride = dim, dim_out, stride
        self.norm = nn.BatchNorm2d(dim, **fk)
        self.act = nn.ReLU()
        kw = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, dropout=dropout, norm_first=norm_first, **fk)
        self.ste1 = PatchwiseTransformer(dim, num_heads, patch_size=patch_sizes[0], **kw)
        self.ste2 = PatchwiseTransformer(dim, num_heads, patch_size=patch_sizes[1], **kw)
        project = dim_out != dim or stride != 1
        self.conv = _conv(dim, dim_out, 1 if project and stride == 1 else 3, stride, fk)
        self.shortcut = _conv(dim, dim_out, 1, stride, fk) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="ConTBlock", C=self.dim)
        a = self.act(self.norm(x))  # pre-activation
        s = x if self.shortcut is None else self.shortcut(a)  # (B, D_out, H', W')
        # Conv(STE_{P_2}(STE_{P_1}(a))) + s
        return self.conv(self.ste2(self.ste1(a))) + s

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dim_out={self.dim_out}, stride={self.stride}"


class ConTNet(nn.Module):
    r"""ConTNet: a 7 x 7 conv stem and max-pool, four stages of ConT blocks, global average pool, linear.

    Yan et al., "ConTNet: Why not use convolution and transformer at the same time?", arXiv
    2104.13497, Sec. 3 (the architecture, with the authors' released code).

    Equation::

        z_0 = MaxPool_{3x3/2}(Conv_{7x7/2}(x))                      width D_0, H/4 x W/4
        z_i = Stage_i(z_{i-1})      depth_i ConT blocks of width D_i = D_0 2^i; the last one
                                    doubles the width and, except in the last stage, halves H, W
        logits = W mean_{h,w} z_n + b                               (no norm after the last block)

    Args:
        in_chans: C. num_classes: K.
        stem_dim: D_0 (ConT-M: 64).
        depths: ConT blocks per stage (ConT-M: 2, 2, 2, 2).
        num_heads: per stage (1, 2, 4, 8).
        mlp_ratios: per stage (4, 4, 4, 2: MLP widths 256, 512, 1024, 1024).
        patch_sizes: (P_1, P_2) per stage ((7, 14) and (7, 7) in the last, whose map is 7 x 7
            at 224 x 224).
        dropout: inside the transformers (ConT-M: 0).
        head_dropout: on the last block's output (the released ``last_dropout``; ConT-M: 0).
        qkv_bias, norm_first: of the transformers (released defaults: True, post-norm).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (patches are padded and masked where
          a map does not divide into them; see ``PatchwiseTransformer``).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        Any input size (the released code needs 224-like sizes whose maps divide into the
        patches). Initialisation follows the released code (Kaiming fan-out convs, truncated
        normal 0.02 linears, zero position embeddings).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        stem_dim: int = 64,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        mlp_ratios: Sequence[float] = (4.0, 4.0, 4.0, 2.0),
        patch_sizes: Sequence[Sequence[int]] = ((7, 14), (7, 14), (7, 14), (7, 7)),
        dropout: float = 0.0,
        head_dropout: float = 0.0,
        qkv_bias: bool = True,
        norm_first: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        cfg = [tuple(depths), tuple(num_heads), tuple(mlp_ratios), tuple(patch_sizes)]
        require(len({len(c) for c in cfg}) == 1 and len(cfg[0]) >= 1,
                f"ConTNet: depths, num_heads, mlp_ratios, patch_sizes must be equally long, got {cfg}")
        require(all(d >= 1 for d in depths), f"ConTNet: depths={tuple(depths)} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.stem = nn.Sequential(_conv(in_chans, stem_dim, 7, 2, fk), nn.MaxPool2d(3, stride=2, padding=1))
        n = len(depths)
        stages = []
        for i in range(n):
            dim = stem_dim * 2 ** i
            kw = dict(num_heads=num_heads[i], patch_sizes=patch_sizes[i], mlp_ratio=mlp_ratios[i],
                      dropout=dropout, qkv_bias=qkv_bias, norm_first=norm_first, **fk)
            blocks = [ConTBlock(dim, dim, **kw) for _ in range(depths[i] - 1)]
            blocks.append(ConTBlock(dim, 2 * dim, stride=1 if i == n - 1 else 2, **kw))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = 2 * stem_dim * 2 ** (n - 1)
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(self.num_features, num_classes, **fk)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, 2 D_{n-1}, H_n, W_n)."""
        check_shape(x, "B C H W", name="ConTNet", C=self.in_chans)
        return self.head_drop(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W mean_{h,w} z_n + b
        return self.head(self.forward_features(x).mean((2, 3)))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="contnet_m",
    family="model",
    paper="ConTNet: Why not use convolution and transformer at the same time?",
    arxiv="2104.13497",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="19.2M", macs="3.1G",
                       source="ImageNet table (ConT-M); the released ConT-M has 19,536,936; ours without "
                       "the attention products: 3.09G", checked="authors' code"),
    example=Example(
        # Small widths, one block per stage and small patches keep the generic tests fast; the
        # constructor's defaults are the released ConT-M (tests/test_backbones_contnet.py builds it).
        config=dict(in_chans=3, num_classes=10, stem_dim=8, depths=(1, 1, 1, 1),
                    num_heads=(1, 2, 2, 4), patch_sizes=((4, 8), (4, 8), (2, 4), (2, 2))),
        inputs=images("in_chans"), size=(64, 64), sizes=((33, 47), (64, 40)), out_shape=logits_shape,
        tiny=dict(num_classes=3, stem_dim=4, depths=(1, 1), num_heads=(1, 2), mlp_ratios=(2.0, 2.0),
                  patch_sizes=((2, 4), (2, 2))),
    ),
)
def contnet_m(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> ConTNet:
    """ConT-M: stem width 64, depths (2, 2, 2, 2), MLP widths (256, 512, 1024, 1024); 19,536,936 params.

    Yan et al., arXiv 2104.13497, its ImageNet results (ConT-M: 19.2M parameters, 3.1G FLOPs at 224x224,
    77.6% top-1, 80.2% with strong augmentation) and the authors' ``create_ConTNet_M``.

    Equation: see ``ConTNet``, ``ConTBlock`` and ``PatchwiseTransformer``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``ConTNet``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        The released ConT-M has 19,536,936 parameters, not the table's 19.2M (the released
        ConT-S, 10,103,400, matches its 10.1M); this is the released model. The table's
        3.1G FLOPs are multiply-adds without the attention matrix products: at 224 x 224 we
        count 3.44G MACs, of which Q K^T and A V are 0.35G (tests/test_backbones_contnet.py).
    """
    return ConTNet(in_chans, num_classes, **kw)
