"""MobileNetV3-Large and -Small: inverted residuals with hard-swish and hard-sigmoid SE.

Paper: Searching for MobileNetV3 (Howard et al., arXiv 1905.02244, 2019), Tables 1 and 2.
Built from the conv room's ``MBConv`` (inverted residual with SE) and ``ConvBnAct`` and the
attention room's ``SqueezeExcite`` (inside ``MBConv``).

Letters: B batch, C input channels (in_chans), H W spatial, E expansion width, K classes.

Key correspondence with PyTorch Image Models' ``MobileNetV3`` state dict (timm name -> ours;
batch-norm keys include ``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``)::

    conv_stem.weight             ->  stem.conv.weight
    bn1.*                        ->  stem.bn.*
    blocks.0.0 (depthwise-separable block, no expansion):
      conv_dw / bn1              ->  blocks.0.0.dw.conv / .dw.bn
      conv_pw / bn2              ->  blocks.0.0.project.conv / .project.bn
    blocks.i.j (inverted residual):
      conv_pw / bn1              ->  blocks.i.j.expand.conv / .expand.bn
      conv_dw / bn2              ->  blocks.i.j.dw.conv / .dw.bn
      conv_pwl / bn3             ->  blocks.i.j.project.conv / .project.bn
    blocks.i.j.se.conv_reduce    ->  blocks.i.j.se.fc1
    blocks.i.j.se.conv_expand    ->  blocks.i.j.se.fc2
    blocks.{last}.0.conv / bn1   ->  blocks.{last}.0.conv / .bn     (the 1x1 conv before pooling)
    conv_head.*, classifier.*    ->  the same
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_act
from blockzoo.checks import check_shape, require
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.conv.mbconv import MBConv
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["LARGE", "SMALL", "MobileNetV3", "make_divisible", "mobilenetv3_large", "mobilenetv3_small"]

# One row per bneck: (kernel k, expansion E, output channels, SE, nonlinearity, stride), grouped
# into stages as the reference implementation groups them (a stage ends where the width changes).
Row = tuple[int, int, int, bool, str, int]

# Table 1 of arXiv 1905.02244 (MobileNetV3-Large).
LARGE: tuple[tuple[Row, ...], ...] = (
    ((3, 16, 16, False, "RE", 1),),
    ((3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1)),
    ((5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1)),
    ((3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
     (3, 184, 80, False, "HS", 1)),
    ((3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1)),
    ((5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1)),
)

# Table 2 of arXiv 1905.02244 (MobileNetV3-Small).
SMALL: tuple[tuple[Row, ...], ...] = (
    ((3, 16, 16, True, "RE", 2),),
    ((3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1)),
    ((5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1)),
    ((5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1)),
    ((5, 288, 96, True, "HS", 2), (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1)),
)

_ACTS = {"RE": "relu", "HS": "hardswish"}


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never
    more than 10% below it: the channel rounding of the MobileNet reference code."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


class MobileNetV3(nn.Module):
    r"""MobileNetV3: hard-swish stem, bneck stages, 1x1 conv, pooling, 1x1 head conv, classifier.

    Howard et al., "Searching for MobileNetV3", arXiv 1905.02244, Sec. 5 and Tables 1-2.

    Equation::

        h = hswish(BN(conv_{3x3/2}(x)))                            stem, 16 channels
        h = bneck_n(... bneck_1(h))                                  Table rows (MBConv):
            bneck = x + BN(W_p SE(act(BN(dw_k(act(BN(W_e x)))))))    (residual iff s = 1, C = O)
            SE(h) = h * hsigmoid(W_2 relu(W_1 GAP(h) + b_1) + b_2)  (width E/4 rounded to 8)
        h = hswish(BN(conv_{1x1}(h)))                                 last_dim channels
        logits = W_c dropout(hswish(W_h GAP(h) + b_h)) + b_c         head_dim, no BN (NBN)
        hswish(x) = x ReLU6(x + 3) / 6,   hsigmoid(x) = ReLU6(x + 3) / 6

    Args:
        in_chans: C. num_classes: K.
        arch: the bneck table, stages of rows (k, E, O, SE, "RE" or "HS", stride) (``LARGE``,
            ``SMALL``).
        stem_dim: the stem's width (16). last_dim: the 1x1 conv before pooling (960 / 576).
        head_dim: the head conv's width (1280 / 1024).
        dropout: before the classifier (paper's code: 0.2; training only).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (every conv is padded; total stride 32).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        MobileNetV3-Small's Table 2 marks an SE on the last 1x1 conv; like the authors'
        released models and the reference implementation, there is none.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        arch: Sequence[Sequence[Sequence[Any]]] = LARGE,
        stem_dim: int = 16,
        last_dim: int = 960,
        head_dim: int = 1280,
        dropout: float = 0.2,
        norm_layer: LayerSpec = "batchnorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(len(arch) >= 1 and all(len(stage) >= 1 for stage in arch),
                f"MobileNetV3: arch must be stages of bneck rows, got {arch!r}")
        require(all(len(r) == 6 and r[4] in _ACTS for stage in arch for r in stage),
                f"MobileNetV3: each bneck row is (k, exp, out, se, 'RE' or 'HS', stride), got {arch!r}")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.stem = ConvBnAct(in_chans, stem_dim, 3, stride=2, act_layer="hardswish", norm_layer=norm_layer,
                              **fk)
        c = stem_dim
        stages: list[nn.Module] = []
        for stage in arch:
            blocks = []
            for k, exp, out, se, nl, s in stage:
                blocks.append(MBConv(
                    c, out, expand_ratio=exp / c, kernel_size=k, stride=s, se_ratio=0.25 if se else 0.0,
                    se_hidden=make_divisible(exp / 4) if se else None, se_act_layer="relu",
                    se_gate_layer="hardsigmoid", act_layer=_ACTS[nl], norm_layer=norm_layer, **fk,
                ))
                c = out
            stages.append(nn.Sequential(*blocks))
        stages.append(nn.Sequential(ConvBnAct(c, last_dim, 1, act_layer="hardswish", norm_layer=norm_layer,
                                              **fk)))
        self.blocks = nn.Sequential(*stages)
        self.num_features = last_dim
        self.conv_head = nn.Conv2d(last_dim, head_dim, 1, **fk)
        self.act = create_act("hardswish")
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(head_dim, num_classes, **fk)
        # He init N(0, 2 / fan_out), fan_out = k^2 O / groups (a depthwise conv's fan is k^2):
        # with PyTorch's default init the untrained network's activations vanish (1e-9 at the
        # head), and with groups left out of the fan, too.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The map before pooling (B, last_dim, H / 32, W / 32) (sizes rounded up)."""
        check_shape(x, "B C H W", name="MobileNetV3", C=self.in_chans)
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.forward_features(x).mean((2, 3), keepdim=True)  # (B, last_dim, 1, 1)
        # logits = W_c dropout(hswish(W_h GAP(h) + b_h)) + b_c
        return self.classifier(self.drop(self.act(self.conv_head(h)).flatten(1)))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


_V3 = dict(
    family="model", paper="Searching for MobileNetV3", arxiv="1905.02244", year=2019, input="image",
    output="logits",
    exempt={"grad": "in training mode each bneck's projection-BN bias is a per-channel shift that the next "
                    "1x1 conv's batch-statistics BN removes exactly, so its gradient is 0; it acts in eval "
                    "through the running statistics, and the paper's network (and the reference) has it"},
)


def _example() -> Example:
    # The default (paper) config, so ``info`` and the catalogue show the paper's counts;
    # 32 x 32 leaves a 1 x 1 map after the last stride.
    return Example(config=dict(in_chans=3, num_classes=1000), inputs=images("in_chans"), size=(32, 32),
                   out_shape=logits_shape,
                   tiny=dict(num_classes=3, arch=(((3, 8, 8, True, "HS", 2),),), stem_dim=8, last_dim=8,
                             head_dim=8))


@register(name="mobilenetv3_large", example=_example(), **_V3,
          paper_numbers=dict(size=(224, 224), params="5.4M", macs="219M", source="Table 3"))
def mobilenetv3_large(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> MobileNetV3:
    """MobileNetV3-Large 1.0: Table 1's 15 bnecks, 960 -> 1280 head; 5,483,032 parameters.

    Howard et al., arXiv 1905.02244, Tables 1 and 3 (Large 1.0: 5.4M parameters, 219M
    multiply-adds at 224x224). Parameter count equal to PyTorch Image Models'
    ``mobilenetv3_large_100`` (5,483,032).

    Equation: see ``MobileNetV3``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``MobileNetV3``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return MobileNetV3(in_chans, num_classes, **{"arch": LARGE, "last_dim": 960, "head_dim": 1280, **kw})


@register(name="mobilenetv3_small", example=_example(), **_V3,
          paper_numbers=dict(size=(224, 224), params="2.5M", macs="56M", source="Table 3"))
def mobilenetv3_small(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> MobileNetV3:
    """MobileNetV3-Small 1.0: Table 2's 11 bnecks, 576 -> 1024 head; 2,542,856 parameters.

    Howard et al., arXiv 1905.02244, Tables 2 and 3 (Small 1.0: 2.5M parameters, 56M
    multiply-adds at 224x224). Parameter count equal to PyTorch Image Models'
    ``mobilenetv3_small_100`` (2,542,856).

    Equation: see ``MobileNetV3``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``MobileNetV3``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return MobileNetV3(in_chans, num_classes, **{"arch": SMALL, "last_dim": 576, "head_dim": 1024, **kw})
