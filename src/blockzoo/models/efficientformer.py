"""EfficientFormer: a conv stem, Meta4D (pooling) stages, and Meta3D (attention) blocks at the end.

Paper: EfficientFormer: Vision Transformers at MobileNet Speed (Li et al., arXiv 2206.01191,
2022), Sec. 3 and Table 1 (L1). Built from the conv room's ``EfficientFormerMeta4D`` and
``ConvBnAct``, the attention room's ``LeViTAttention`` (its Meta3D attention is LeViT's, with
biased projections) and the MLP room's ``MLP``.

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i, K classes.

Key correspondence with PyTorch Image Models' ``efficientformer_l1`` state dict (timm name ->
ours; ``norm.*``, ``head.*``, ``head_dist.*`` and the Meta3D norms and ``attention_biases``
are the same)::

    stem.conv{k} / stem.norm{k}                ->  stem.{k-1}.conv / .bn
    stages.i.downsample.conv / .norm           ->  stages.i.downsample.conv / .bn
    stages.i.blocks.j.ls{k}.gamma              ->  stages.i.blocks.j.scale{k}
    Meta4D  ...mlp.fc1 / norm1 / fc2 / norm2   ->  ...mlp.0.conv / 0.bn / 1.conv / 1.bn
    Meta3D  ...token_mixer.qkv / .proj         ->  ...token_mixer.qkv.linear / .proj.linear
            ...mlp.fc1 / fc2                   ->  ...mlp.layers.0 / .layers.4
    the reference's last stage counts its parameter-free ``Flat`` as a block: its Meta3D
    blocks are one index higher there; its ``attention_bias_idxs`` buffer is recomputed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_norm
from blockzoo.attention.levit import LeViTAttention
from blockzoo.checks import check_shape, require
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.conv.efficientformer import EfficientFormerMeta4D
from blockzoo.mlp.mlp import MLP
from blockzoo.models.classic import logits_shape
from blockzoo.models.levit import LeViTStage
from blockzoo.registry import Example, images, register

__all__ = ["EfficientFormer", "EfficientFormerMeta3D", "efficientformer_l1"]


class EfficientFormerMeta3D(nn.Module):
    r"""Meta3D: a pre-norm transformer block with LeViT-style attention (attention bias), layer-scaled.

    Li et al., arXiv 2206.01191, Eq. (5)-(6)::

        I = X + s_1 * Proj(softmax(Q K^T / sqrt(d) + B) V),  Q, K, V = W LN(X) + b
        Y = I + s_2 * W_2 GELU(W_1 LN(I) + b_1) + b_2

    Args:
        dim: D. key_dim: d (32). num_heads: h (8). attn_ratio: value width / d (4).
        mlp_ratio: (4). resolution: the bias table's side (7 at 224 x 224). layer_scale: (1e-5).

    Shape: (B, D, H, W) -> (B, D, H, W): the tokens are the H W positions.
    """

    def __init__(self, dim: int, *, key_dim: int = 32, num_heads: int = 8, attn_ratio: float = 4.0,
                 mlp_ratio: float = 4.0, resolution: int = 7, layer_scale: float = 1e-5,
                 norm_layer: LayerSpec = "layernorm2d", device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.norm1 = create_norm(norm_layer, dim, **fk)
        self.token_mixer = LeViTAttention(dim, key_dim=key_dim, num_heads=num_heads, attn_ratio=attn_ratio,
                                          resolution=resolution, act_layer=None, norm=False, **fk)
        self.scale1 = nn.Parameter(torch.full((dim,), float(layer_scale), **fk))
        self.norm2 = create_norm(norm_layer, dim, **fk)
        self.mlp = MLP(dim, int(dim * mlp_ratio), act_layer="gelu", **fk)
        self.scale2 = nn.Parameter(torch.full((dim,), float(layer_scale), **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.scale1[:, None, None] * self.token_mixer(self.norm1(x))
        y = self.mlp(self.norm2(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, D, H, W)
        return x + self.scale2[:, None, None] * y


class EfficientFormer(nn.Module):
    r"""EfficientFormer: stem, four stages of Meta4D blocks (the last ``num_vit`` of the last
    stage Meta3D), LayerNorm, average pooling, class and distillation heads.

    Li et al., "EfficientFormer: Vision Transformers at MobileNet Speed", arXiv 2206.01191,
    Sec. 3 and Fig. 3.

    Equation::

        h = relu(BN(conv_{3x3/2}(relu(BN(conv_{3x3/2}(x))))))           stem, stride 4
        stage i: (i > 1) h = BN(conv_{3x3/2}(h));  h = Meta4D(h) ... Meta3D(h)
            Meta4D(X) = I + s_2 ConvMLP(I),  I = X + s_1 (Pool(X) - X)   (``EfficientFormerMeta4D``)
            Meta3D(X): attention with bias + MLP over the H W tokens    (``EfficientFormerMeta3D``)
        z = mean over positions of LN(h)
        logits = (W_c z + b_c + W_d z + b_d) / 2                         class and distillation heads

    Args:
        in_chans: C. num_classes: K.
        dims: D_i. depths: blocks per stage (Meta3D ones included). num_vit: Meta3D blocks at
            the end of the last stage.
        key_dim: d of the Meta3D attention (32). num_heads: its heads (8).
        mlp_ratio: (4). pool_size: (3). layer_scale: initial s (1e-5).
        img_size: the training resolution; the Meta3D bias table's side is img_size / 32.
        distilled: a distillation head averaged with the class head (the reference's).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (total stride 32, sizes rounded up).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        - The heads are always averaged (the reference returns both only when trained with
          distillation). No stochastic depth or dropout.
        - Sizes other than ``img_size`` clip offsets beyond the bias table (see
          ``LeViTAttention``); the reference accepts only maps up to the table.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        dims: Sequence[int] = (48, 96, 224, 448),
        depths: Sequence[int] = (3, 2, 6, 4),
        num_vit: int = 1,
        key_dim: int = 32,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        pool_size: int = 3,
        layer_scale: float = 1e-5,
        img_size: int = 224,
        distilled: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(len(dims) == len(depths) >= 1, f"EfficientFormer: dims {tuple(dims)} and depths "
                                               f"{tuple(depths)} must be equally long")
        require(0 <= num_vit <= depths[-1],
                f"EfficientFormer: num_vit={num_vit} must be in [0, {depths[-1]}]")
        require(dims[0] % 2 == 0, f"EfficientFormer: dims[0]={dims[0]} must be even (stem width D/2)")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes, self.img_size = in_chans, num_classes, img_size
        self.stem = nn.Sequential(
            ConvBnAct(in_chans, dims[0] // 2, 3, stride=2, bias=True, act_layer="relu", **fk),
            ConvBnAct(dims[0] // 2, dims[0], 3, stride=2, bias=True, act_layer="relu", **fk),
        )
        resolution = max(1, img_size // 32)
        stages: list[nn.Module] = []
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            down = (ConvBnAct(dims[i - 1], dim, 3, stride=2, bias=True, act_layer=None, **fk)
                    if i > 0 else None)
            n3d = num_vit if i == len(dims) - 1 else 0
            blocks: list[nn.Module] = [
                EfficientFormerMeta4D(dim, pool_size=pool_size, mlp_ratio=mlp_ratio, layer_scale=layer_scale,
                                      **fk)
                for _ in range(depth - n3d)
            ]
            blocks += [EfficientFormerMeta3D(dim, key_dim=key_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                             resolution=resolution,
                                             layer_scale=layer_scale, **fk) for _ in range(n3d)]
            stages.append(LeViTStage(down, blocks))  # downsample, then blocks
        self.stages = nn.Sequential(*stages)
        self.num_features = dims[-1]
        self.norm = create_norm("layernorm2d", dims[-1], **fk)
        self.head = nn.Linear(dims[-1], num_classes, **fk)
        self.head_dist = nn.Linear(dims[-1], num_classes, **fk) if distilled else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's normalised map (B, D_4, H / 32, W / 32) (sizes rounded up)."""
        check_shape(x, "B C H W", name="EfficientFormer", C=self.in_chans)
        return self.norm(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.forward_features(x).mean((2, 3))  # (B, D)
        if self.head_dist is None:
            return self.head(z)
        # logits = (head(z) + head_dist(z)) / 2
        return (self.head(z) + self.head_dist(z)) / 2  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}, img_size={self.img_size}"


@register(
    name="efficientformer_l1",
    family="model",
    paper="EfficientFormer: Vision Transformers at MobileNet Speed",
    arxiv="2206.01191",
    year=2022,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="12.3M", macs="1.3G", source="Table 1"),
    exempt={"grad": "in training mode the Meta4D 1x1 convs' biases (kept, as the reference has them, for "
                    "its weights) and the downsampling convs' biases sit right before a batch-statistics "
                    "BN, which removes them exactly, so their gradient is 0; they act in eval through the "
                    "running statistics"},
    example=Example(
        # A small config keeps the generic tests fast; the constructor's defaults are the
        # paper's model (docs/catalogue.md measures it beside the paper's table).
        config=dict(in_chans=3, num_classes=10, dims=(4, 8), depths=(1, 1), key_dim=2, num_heads=1,
                    img_size=64),
        inputs=images("in_chans"), size=(64, 64),
        sizes=((40, 72), (33, 47)), out_shape=logits_shape,
        tiny=dict(num_classes=3, dims=(4, 8), depths=(1, 1), key_dim=2, num_heads=1, img_size=64),
    ),
)
def efficientformer_l1(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> EfficientFormer:
    """EfficientFormer-L1: widths 48-96-224-448, depths 3-2-6-4, one Meta3D block; 12,289,928 parameters.

    Li et al., arXiv 2206.01191, Table 1 (L1: 12.3M parameters, 1.3 GMACs at 224 x 224).
    Parameter count equal to PyTorch Image Models' ``efficientformer_l1`` (12,289,928), which
    like the released weights has the distillation head.

    Equation: see ``EfficientFormer``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``EfficientFormer``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return EfficientFormer(in_chans, num_classes, **kw)
