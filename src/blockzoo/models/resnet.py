"""ResNet and ResNeXt classifiers, optionally with an attention block in every residual block.

Papers: Deep Residual Learning for Image Recognition (He et al., arXiv 1512.03385,
2015); Aggregated Residual Transformations for Deep Neural Networks (Xie et al.,
arXiv 1611.05431, 2016). ``attention=`` follows Squeeze-and-Excitation Networks
(Hu, arXiv 1709.01507) and CBAM (Woo, arXiv 1807.06521): one attention block on
each residual branch, before the addition.

Letters: B batch, C input channels (in_chans), H W spatial, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.checks import check_shape, require
from blockzoo.conv.resnet import BasicBlock, Bottleneck
from blockzoo.conv.resnext import ResNeXtBlock
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "resnext50"]

BLOCKS = ("basic", "bottleneck", "resnext")


class ResNet(nn.Module):
    r"""ResNet: a stem, four stages of residual blocks, global average pooling, a linear head.

    He et al., "Deep Residual Learning for Image Recognition", arXiv 1512.03385 (Table 1).

    Equation::

        h = stem(x)                                   imagenet: conv7x7/2-BN-act, maxpool3x3/2
                                                      cifar:    conv3x3-BN-act
        h = stage_4(stage_3(stage_2(stage_1(h))))     stage_i: n_i blocks, the first of
                                                      stages 2-4 with stride 2
        logits = W GAP(h) + b

    Args:
        block: ``"basic"``, ``"bottleneck"`` or ``"resnext"``.
        layers: n_1..n_4, blocks per stage (ResNet-18: 2, 2, 2, 2).
        num_classes: K.
        in_chans: C, the image channels.
        stem: ``"imagenet"`` (the paper's; / 4 before stage 1) or ``"cifar"`` (one
            3x3 conv, no pool: for 28x28 / 32x32 / 8x8 images).
        width: stage 1's base width (paper: 64); stages double it.
        cardinality, base_width: for ``block="resnext"`` (ResNeXt-50: 32, 4).
        attention: an image attention block in every residual block (``"se"``,
            ``"cbam"``, a class or factory; ``None``: none).
        attention_kwargs: its keyword arguments.
        zero_init_residual: zero the last BN scale of every residual branch, so
            each block starts as its shortcut.
        norm_layer, act_layer: for every block and the stem.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (the network pools globally).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        Bottleneck blocks stride on the 3x3 conv (ResNet v1.5); projection
        shortcuts only where the shape changes (the paper's option B).

    Example:
        >>> model = ResNet("basic", (2, 2, 2, 2), num_classes=10, in_chans=1, stem="cifar",
        ...                attention="se")
        >>> model(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        *,
        stem: str = "imagenet",
        width: int = 64,
        cardinality: int = 32,
        base_width: int = 4,
        attention: LayerSpec = None,
        attention_kwargs: dict[str, Any] | None = None,
        zero_init_residual: bool = False,
        norm_layer: LayerSpec = "batchnorm",
        act_layer: LayerSpec = "relu",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(block in BLOCKS, f"ResNet: block={block!r} must be one of {BLOCKS}")
        require(stem in ("imagenet", "cifar"), f"ResNet: stem={stem!r} must be 'imagenet' or 'cifar'")
        require(len(layers) == 4 and all(n >= 1 for n in layers),
                f"ResNet: layers={tuple(layers)} must be four counts >= 1")
        self.in_chans, self.num_classes, self.block = in_chans, num_classes, block
        fk = dict(device=device, dtype=dtype)
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, width, 7, 2, 3, bias=False, **fk)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False, **fk)
            self.maxpool = nn.Identity()
        self.bn1 = create_norm(norm_layer, width, **fk)
        self.act = create_act(act_layer, **fk)
        common = dict(norm_layer=norm_layer, act_layer=act_layer, attention=attention,
                      attention_kwargs=attention_kwargs, zero_init_last=zero_init_residual, **fk)
        prev = width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                if block == "basic":
                    b: nn.Module = BasicBlock(prev, planes, stride=stride, **common)
                elif block == "bottleneck":
                    b = Bottleneck(prev, planes, stride=stride, **common)
                else:
                    b = ResNeXtBlock(prev, planes * 4, cardinality=cardinality, base_width=base_width,
                                     stride=stride, **common)
                prev = b.dim_out
                blocks.append(b)
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_features = prev
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes, **fk)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (B, F, H / 32, W / 32) for the imagenet stem."""
        check_shape(x, "B C H W", name="ResNet", C=self.in_chans)
        h = self.maxpool(self.act(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(h))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W GAP(h) + b
        return self.fc(self.avgpool(self.forward_features(x)).flatten(1))  # (B, K)

    def extra_repr(self) -> str:
        return f"block={self.block!r}, in_chans={self.in_chans}, num_classes={self.num_classes}"


def _example(**extra: Any) -> Example:
    # 1000 classes: ``blockzoo info`` / ``list`` then show the paper's parameter
    # counts; 16x16 images keep the conformance checks fast (the nets pool globally).
    return Example(
        config=dict(num_classes=1000, in_chans=3, **extra),
        inputs=images("in_chans"),
        size=(16, 16),
        out_shape=logits_shape,
        tiny=dict(width=4, num_classes=3),
    )


_RESNET = dict(family="model", paper="Deep Residual Learning for Image Recognition",
               arxiv="1512.03385", year=2015, input="image", output="logits")


@register(name="resnet18", example=_example(), **_RESNET)
def resnet18(num_classes: int = 1000, in_chans: int = 3, **kw: Any) -> ResNet:
    """ResNet-18: basic blocks, (2, 2, 2, 2) per stage; 11.69M parameters at 1000 classes.

    He et al., "Deep Residual Learning for Image Recognition", arXiv 1512.03385.
    1.8 G multiply-adds at 224x224 (the paper's Table 1).

    Equation: see ``ResNet``; y = act(F(x) + S(x)) in every block.

    Args:
        num_classes: K. in_chans: C.
        **kw: ``ResNet``'s keyword arguments (``stem="cifar"``, ``attention="se"``, ...).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (global pooling before the head).
        - Output: (B, K) logits, K = num_classes.
    """
    return ResNet("basic", (2, 2, 2, 2), num_classes, in_chans, **kw)


@register(name="resnet34", example=_example(), **_RESNET)
def resnet34(num_classes: int = 1000, in_chans: int = 3, **kw: Any) -> ResNet:
    """ResNet-34: basic blocks, (3, 4, 6, 3) per stage; 21.8M parameters at 1000 classes.

    He et al., "Deep Residual Learning for Image Recognition", arXiv 1512.03385.
    3.6 G multiply-adds at 224x224.

    Equation: see ``ResNet``; y = act(F(x) + S(x)) in every block.

    Args:
        num_classes: K. in_chans: C.
        **kw: ``ResNet``'s keyword arguments (``stem="cifar"``, ``attention="se"``, ...).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (global pooling before the head).
        - Output: (B, K) logits, K = num_classes.
    """
    return ResNet("basic", (3, 4, 6, 3), num_classes, in_chans, **kw)


@register(name="resnet50", example=_example(), **_RESNET)
def resnet50(num_classes: int = 1000, in_chans: int = 3, **kw: Any) -> ResNet:
    """ResNet-50: bottleneck blocks, (3, 4, 6, 3) per stage; 25.6M parameters at 1000 classes.

    He et al., "Deep Residual Learning for Image Recognition", arXiv 1512.03385.
    About 4.1 G multiply-adds at 224x224 with the stride on the 3x3 conv (v1.5).

    Equation: see ``ResNet``; y = act(F(x) + S(x)) in every bottleneck block.

    Args:
        num_classes: K. in_chans: C.
        **kw: ``ResNet``'s keyword arguments (``stem="cifar"``, ``attention="se"``, ...).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (global pooling before the head).
        - Output: (B, K) logits, K = num_classes.
    """
    return ResNet("bottleneck", (3, 4, 6, 3), num_classes, in_chans, **kw)


@register(
    name="resnext50",
    family="model",
    paper="Aggregated Residual Transformations for Deep Neural Networks",
    arxiv="1611.05431",
    year=2016,
    input="image",
    output="logits",
    example=Example(
        config=dict(num_classes=1000, in_chans=3),
        inputs=images("in_chans"),
        size=(16, 16),
        out_shape=logits_shape,
        tiny=dict(width=8, cardinality=2, base_width=32, num_classes=3),
    ),
)
def resnext50(num_classes: int = 1000, in_chans: int = 3, **kw: Any) -> ResNet:
    """ResNeXt-50 (32x4d): ResNet-50 with grouped 3x3 convs, cardinality 32, width 4; 25.0M parameters.

    Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", arXiv 1611.05431.

    Equation: see ``ResNeXtBlock``; y = act(sum_i T_i(x) + S(x)).

    Args:
        num_classes: K. in_chans: C.
        **kw: ``ResNet``'s keyword arguments (``cardinality``, ``base_width``,
            ``stem="cifar"``, ``attention="se"``, ...).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (global pooling before the head).
        - Output: (B, K) logits, K = num_classes.
    """
    kw = {"cardinality": 32, "base_width": 4, **kw}
    return ResNet("resnext", (3, 4, 6, 3), num_classes, in_chans, **kw)
