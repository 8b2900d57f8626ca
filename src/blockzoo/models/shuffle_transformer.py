"""Shuffle Transformer: a Swin-like hierarchy whose blocks alternate window and shuffled-window attention.

Paper: Shuffle Transformer: Rethinking Spatial Shuffle for Vision Transformer (Huang et al.,
arXiv 2106.03650, 2021). Built from the attention room's ``ShuffleWindowAttention`` (itself
Swin's ``ShiftedWindowAttention``) and the conv room's ``ConvBnAct``. No reference
implementation is installed here: the parameter count equals the authors' released model
(mulinmeng/Shuffle-Transformer, ``models/shuffle_transformer.py``, whose Shuffle-T training
log prints 28,532,482), checked in tests/test_backbones_shuffle.py.

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i,
M window, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.attention.shuffle_window import ShuffleWindowAttention
from blockzoo.checks import check_shape, require
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["ShuffleBlock", "ShuffleStage", "ShuffleTransformer", "shuffle_transformer_t"]


class ShuffleBlock(nn.Module):
    r"""A Shuffle Transformer block: (shuffled) window attention, a neighbour-window connection, an MLP.

    Huang et al., arXiv 2106.03650, the Shuffle Transformer block's equations, as the
    released code computes them (BatchNorm, ReLU6, a BatchNorm before the NWC)::

        x' = x + WMSA(BN(x))                    (Shuffle-WMSA in every second block)
        x" = x' + NWC(BN(x'))                    NWC: depthwise M x M conv, "same" padding, with bias
        y  = x" + W_2 ReLU6(W_1 BN(x") + b_1) + b_2        W_1: C -> rC, W_2: rC -> C (1 x 1 convs)

    The neighbour-window connection (NWC) mixes each token with its M x M neighbourhood,
    which crosses the window borders that the attention keeps apart.

    Args:
        dim: C. num_heads: h. window_size: M. shuffle: the shuffled windows (True) or the
        regular ones. mlp_ratio: r (paper: 4). qkv_bias: on the q, k, v projection (the
        released code: none). conv_bias: on the NWC conv (the released code: yes).
        act_layer: (ReLU6). norm_layer: (BatchNorm2d).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W; output (B, C, H, W).

    Deviations:
        The paper's equations write y = NWC(x) + x with no norm; the released code (whose
        parameter count and results the paper reports) normalises first, and so do we.
    """

    def __init__(self, dim: int, num_heads: int, *, window_size: int = 7, shuffle: bool = False,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, conv_bias: bool = True,
                 act_layer: LayerSpec = "relu6", norm_layer: LayerSpec = "batchnorm2d",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        hidden = int(dim * mlp_ratio)
        self.dim = dim
        self.norm1 = create_norm(norm_layer, dim, **fk)
        self.attn = ShuffleWindowAttention(dim, num_heads, window_size=window_size, shuffle=shuffle,
                                           qkv_bias=qkv_bias, **fk)
        self.norm2 = create_norm(norm_layer, dim, **fk)
        # "same" padding: M // 2 on each side for the paper's odd M (an even M: one less at the top / left)
        self.local = nn.Conv2d(dim, dim, window_size, padding="same", groups=dim, bias=conv_bias, **fk)
        self.norm3 = create_norm(norm_layer, dim, **fk)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Conv2d(dim, hidden, 1, **fk))
        self.mlp.add_module("act", create_act(act_layer, **fk))
        self.mlp.add_module("fc2", nn.Conv2d(hidden, dim, 1, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x' = x + (Shuffle-)WMSA(BN(x))
        x = x + self.attn.attend_grid(self.norm1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        # x" = x' + NWC(BN(x'))
        x = x + self.local(self.norm2(x))
        return x + self.mlp(self.norm3(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, shuffle={self.attn.shuffle}"


class ShuffleStage(nn.Module):
    r"""A Shuffle Transformer stage: patch merging (stages 2-4), then blocks alternating (Shuffle-)WMSA.

    Huang et al., arXiv 2106.03650 (the released code's stages and patch merging)::

        z = W * pad(BN(x))       (or x in stage 1)    W: 2 x 2 conv, stride 2, C_in -> C_out, no bias
        z = Block_n(... Block_2(Block_1(z)))       shuffled windows in the even-numbered blocks

    Args:
        dim: C_in. dim_out: C_out. depth: n blocks. num_heads: h. window_size: M.
        downsample: patch merging first (C_in -> C_out, H / 2, W / 2); without it
            C_in = C_out. Other keywords: as ``ShuffleBlock``.

    Shape:
        - Input: (B, C_in, H, W), any H, W (an odd side is zero-padded by one before merging).
        - Output: (B, C_out, H', W'), H' = ceil(H / 2) with ``downsample`` else H.
    """

    def __init__(self, dim: int, dim_out: int, depth: int, num_heads: int, *, window_size: int = 7,
                 downsample: bool = False, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 conv_bias: bool = True, act_layer: LayerSpec = "relu6",
                 norm_layer: LayerSpec = "batchnorm2d", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        require(downsample or dim == dim_out,
                f"ShuffleStage: dim={dim} and dim_out={dim_out} differ without downsample")
        self.dim, self.dim_out = dim, dim_out
        self.norm = create_norm(norm_layer, dim, **fk) if downsample else None
        self.reduction = nn.Conv2d(dim, dim_out, 2, stride=2, bias=False, **fk) if downsample else None
        self.blocks = nn.Sequential(*[
            ShuffleBlock(dim_out, num_heads, window_size=window_size, shuffle=j % 2 == 1, mlp_ratio=mlp_ratio,
                         qkv_bias=qkv_bias, conv_bias=conv_bias, act_layer=act_layer, norm_layer=norm_layer,
                         **fk)
            for j in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduction is not None and self.norm is not None:
            x = self.norm(x)
            x = self.reduction(F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2)))  # (B, C_out, H', W')
        return self.blocks(x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dim_out={self.dim_out}"


class ShuffleTransformer(nn.Module):
    r"""Shuffle Transformer: a convolutional stem, four stages, average pooling, a linear head.

    Huang et al., "Shuffle Transformer: Rethinking Spatial Shuffle for Vision Transformer",
    arXiv 2106.03650 (architecture variants; the released code's stem and widths).

    Equation::

        z_0 = W_3 ReLU6(BN(W_2 * ReLU6(BN(W_1 * x))))    3 x 3 stride-2 convs C -> S -> D_1, a 1 x 1 conv
        z_i = Stage_i(z_{i-1})                             i = 1..4, blocks alternate WMSA and Shuffle-WMSA
        logits = W mean_{h,w} z_4 + b

    Args:
        in_chans: C. num_classes: K.
        dims: D_i, the stages' widths (Shuffle-T: 96, 192, 384, 768: 32 per head).
        depths: blocks per stage (Shuffle-T: 2, 2, 6, 2).
        num_heads: heads per stage (Shuffle-T: 3, 6, 12, 24).
        stem_dim: S, the first stem conv's width (32).
        window_size: M (paper: 7). mlp_ratio: (paper: 4).
        qkv_bias: on the attention's q, k, v projection (the released code: none).
        conv_bias: on the neighbour-window convs (the released code: yes).
        act_layer: (ReLU6). norm_layer: (BatchNorm2d).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W: the windows pad and mask (see
          ``ShuffleWindowAttention``), patch merging pads odd sides.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        No stochastic depth or dropout (training-recipe choices; eval outputs are the
        same). The released code needs H, W that the windows divide at every stage (224);
        here other sizes are padded (windows: masked; merging: an odd side gets one zero
        row or column). The q, k, v and output projections are ``nn.Linear`` maps where
        the released code has the same maps as 1 x 1 convolutions.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        stem_dim: int = 32,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        conv_bias: bool = True,
        act_layer: LayerSpec = "relu6",
        norm_layer: LayerSpec = "batchnorm2d",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dims, depths, num_heads = tuple(dims), tuple(depths), tuple(num_heads)
        name = type(self).__name__
        require(len(dims) == len(depths) == len(num_heads) >= 1 and all(d >= 1 for d in depths),
                f"{name}: dims={dims}, depths={depths} and num_heads={num_heads} must be equally long, "
                "depths >= 1")
        require(window_size >= 1, f"{name}: window_size={window_size} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        # The released stem: its convs keep their biases before the BatchNorms.
        self.stem = nn.Sequential(
            ConvBnAct(in_chans, stem_dim, 3, stride=2, bias=True, act_layer=act_layer, **fk),
            ConvBnAct(stem_dim, dims[0], 3, stride=2, bias=True, act_layer=act_layer, **fk),
            nn.Conv2d(dims[0], dims[0], 1, **fk),
        )
        self.stages = nn.Sequential(*[
            ShuffleStage(dims[max(i - 1, 0)], dims[i], depths[i], num_heads[i], window_size=window_size,
                         downsample=i > 0, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, conv_bias=conv_bias,
                         act_layer=act_layer, norm_layer=norm_layer, **fk)
            for i in range(len(dims))
        ])
        self.num_features = dims[-1]
        self.head = nn.Linear(dims[-1], num_classes, **fk)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The released initialisation: weights N(0, 0.02) truncated, biases 0, norms 1 / 0."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, D_4, H / 32, W / 32) (sizes rounded up)."""
        check_shape(x, "B C H W", name=type(self).__name__, C=self.in_chans)
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W mean_{h,w} z_4 + b
        return self.head(self.forward_features(x).mean((2, 3)))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="shuffle_transformer_t",
    family="model",
    paper="Shuffle Transformer: Rethinking Spatial Shuffle for Vision Transformer",
    arxiv="2106.03650",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="29M", macs="4.6G", source="ImageNet-1K results (Shuffle-T)",
                       checked="authors' code (training log: 28,532,482)"),
    exempt={"grad": "in training mode some biases are per-channel shifts that a BatchNorm's batch "
                    "statistics remove exactly, so their gradient is 0: the stem's two 3 x 3 convs' (a "
                    "BatchNorm follows), and in every stage but the last the biases added to the "
                    "residual stream (the stem's 1 x 1 conv's, each block's attention output, NWC conv "
                    "and second MLP conv), whose every reader is a BatchNorm (the blocks' norms, the next "
                    "stage's merging norm); they act in eval through the running statistics, and the "
                    "authors' network has them (tests/test_backbones_shuffle.py checks that exactly these "
                    "are zero)"},
    example=Example(
        # Small widths and two blocks a stage (a WMSA and a Shuffle-WMSA) keep the generic tests
        # fast; 48 x 48 gives 12 x 12 and 6 x 6 maps, which the 3 x 3 windows divide (shuffle
        # strides 4 and 2). The constructor's defaults are the paper's Shuffle-T.
        config=dict(in_chans=3, num_classes=10, dims=(8, 16), depths=(2, 2), num_heads=(1, 2), stem_dim=8,
                    window_size=3),
        inputs=images("in_chans"), size=(48, 48), sizes=((33, 47), (72, 40)), out_shape=logits_shape,
        tiny=dict(num_classes=3, dims=(4, 8), depths=(2, 1), num_heads=(1, 2), stem_dim=4, window_size=5),
    ),
)
def shuffle_transformer_t(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> ShuffleTransformer:
    """Shuffle-T: widths (96, 192, 384, 768), depths (2, 2, 6, 2), window 7; 28,532,482 parameters.

    Huang et al., arXiv 2106.03650, ImageNet-1K results (Shuffle-T: 29M parameters,
    4.6 GFLOPs at 224x224, 82.4% top-1). Parameter count equal to the authors' released model
    (mulinmeng/Shuffle-Transformer, config ``shuffle_vit_tiny_patch4_window7_224``:
    28,532,482 in its training log).

    Equation: see ``ShuffleTransformer``, ``ShuffleBlock`` and ``ShuffleWindowAttention``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``ShuffleTransformer``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return ShuffleTransformer(in_chans, num_classes, **kw)
