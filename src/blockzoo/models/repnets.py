"""Re-parameterizable classifiers: RepVGG and MobileOne, multi-branch in training, plain at deploy.

Papers: RepVGG: Making VGG-style ConvNets Great Again (Ding et al., arXiv 2101.03697,
2021); MobileOne: An Improved One millisecond Mobile Backbone (Vasu et al., arXiv
2206.04040, 2022).

Module names follow timm's ``repvgg_*`` / ``mobileone_*`` (``stem``, ``stages.i.j``,
``head.fc``) so that a checkpoint's keys map onto ours by renaming inside each block
only (``RepNet``'s docstring lists the correspondence).

Letters: B batch, C input channels (in_chans), H W spatial, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec
from blockzoo.checks import check_shape, require
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register
from blockzoo.rep.fuse import RepConv, mark_deployed
from blockzoo.rep.mobileone import MobileOneBlock
from blockzoo.rep.repvgg import RepVGGBlock

__all__ = ["MobileOne", "RepNet", "RepVGG", "mobileone_s0", "repvgg_a0", "repvgg_b0"]


class ClassifierHead(nn.Module):
    """Global average pooling then a linear layer: (B, F, H, W) -> (B, K), kept as ``head.fc``."""

    def __init__(self, num_features: int, num_classes: int, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.fc = nn.Linear(num_features, num_classes, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W GAP(h) + b
        return self.fc(x.mean((2, 3)))  # (B, K)


class RepNet(nn.Module):
    r"""Base of the re-param classifiers: a stride-2 stem block, stages of blocks, a linear head.

    Equation::

        h = stage_4(stage_3(stage_2(stage_1(stem(x)))))    the first block of each stage
                                                            and the stem have stride 2
        logits = W GAP(h) + b

    In training every block is a sum of conv-BN branches; ``reparameterize()`` fuses
    each into one conv (the plain network of the paper's deploy form) and records
    ``deploy=True`` in the model's registry config, so ``blockzoo.save`` / ``load``
    rebuild the fused model the weights belong to.

    Subclasses build ``self.stem`` and ``self.stages`` (an ``nn.Sequential`` of
    ``nn.Sequential``), then call ``_finish``.

    timm key correspondence (timm ``repvgg_a0``/``repvgg_b0``/``mobileone_s0`` -> ours),
    the same in the stem and in every ``stages.i.j``:

    - ``conv_kxk.{conv,bn}.*``   -> ``branches.conv_kxk.{conv,bn}.*``     (RepVGG)
    - ``conv_1x1.{conv,bn}.*``   -> ``branches.conv_1x1.{conv,bn}.*``     (RepVGG)
    - ``conv_kxk.{i}.{conv,bn}.*`` -> ``branches.conv_kxk_{i}.{conv,bn}.*`` (MobileOne)
    - ``conv_scale.{conv,bn}.*`` -> ``branches.scale.{conv,bn}.*``        (MobileOne)
    - ``identity.*`` (a BatchNorm) -> ``branches.identity.bn.*``
    - ``reparam_conv.{weight,bias}`` (timm's fused form) -> ``conv.{weight,bias}``
    - ``head.fc.{weight,bias}``  -> ``head.fc.{weight,bias}``; ``stem``/``stages.i.j``
      prefixes are the same.

    ``blockzoo.create_model(name, weights=PATH)`` applies it (``blockzoo.weights``): a
    training-form file builds the training form, a fused file the deploy form, and
    ``deploy=True`` with a training-form file loads it, then fuses.

    Args:
        num_classes: K. in_chans: C.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (five stride-2 steps, then global
          pooling).
        - Output: (B, K) logits, K = num_classes.
    """

    def _finish(self, num_classes: int, in_chans: int, num_features: int, *, device: Any = None,
                dtype: Any = None) -> None:
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, num_features
        self.head = ClassifierHead(num_features, num_classes, device=device, dtype=dtype)

    @property
    def deployed(self) -> bool:
        """True once every block is a single conv."""
        return all(m.deployed for m in self.modules() if isinstance(m, RepConv))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (B, F, H / 32, W / 32)."""
        check_shape(x, "B C H W", name=type(self).__name__, C=self.in_chans)
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))  # (B, K)

    @torch.no_grad()
    def reparameterize(self) -> RepNet:
        """Fuse every block into one conv, in place (eval-mode BN statistics); idempotent."""
        for m in self.modules():
            if isinstance(m, RepConv):
                m.reparameterize()
        mark_deployed(self)
        return self

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}, deployed={self.deployed}"


def _check_stages(name: str, layers: Sequence[int], widths: Sequence[int]) -> None:
    require(len(layers) == len(widths) and len(layers) >= 1 and all(n >= 1 for n in layers),
            f"{name}: layers={tuple(layers)} must be counts >= 1, one per width in widths={tuple(widths)}")
    require(all(w >= 1 for w in widths), f"{name}: widths={tuple(widths)} must be >= 1")


class RepVGG(RepNet):
    r"""RepVGG: a plain stack of 3x3 conv-ReLU at inference, RepVGG blocks in training.

    Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", arXiv 2101.03697
    (Sec. 3.4, Table 2).

    Equation (every block, training form; one 3x3 conv + ReLU after ``reparameterize()``)::

        y = ReLU(BN(W_3x3 * x) + BN(W_1x1 * x) + BN(x))     BN(x) only when C_in = C_out, stride 1
        stages: stem (1 block, stride 2), then len(layers) stages of layers[i] blocks,
                the first with stride 2; widths: stem_width, widths[0], widths[1], ...

    Args:
        layers: blocks per stage (RepVGG-A: 2, 4, 14, 1; B: 4, 6, 16, 1).
        widths: channels per stage (the paper's 64a, 128a, 256a, 512b).
        num_classes: K. in_chans: C.
        stem_width: the stem block's channels (paper: min(64, 64a); default widths[0]).
        act_layer: the activation after every block (paper: ReLU).
        deploy: build the fused form directly (to load fused weights).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        None in the architecture. The paper's groupwise variants (g2/g4) are not
        registered; ``groups`` is not exposed.

    Example:
        >>> model = RepVGG((1, 1, 1, 1), (8, 16, 16, 32), num_classes=10).eval()
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.allclose(model(x), model.reparameterize()(x), atol=1e-5)
        True
    """

    def __init__(
        self, layers: Sequence[int], widths: Sequence[int], num_classes: int = 1000, in_chans: int = 3, *,
        stem_width: int | None = None, act_layer: LayerSpec = "relu", deploy: bool = False,
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        _check_stages("RepVGG", layers, widths)
        fk = dict(act_layer=act_layer, deploy=deploy, device=device, dtype=dtype)
        prev = stem_width or widths[0]
        self.stem = RepVGGBlock(in_chans, prev, stride=2, **fk)
        stages = []
        for n, width in zip(layers, widths, strict=True):
            blocks = []
            for j in range(n):
                blocks.append(RepVGGBlock(prev, width, stride=2 if j == 0 else 1, **fk))
                prev = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self._finish(num_classes, in_chans, prev, device=device, dtype=dtype)


class MobileOne(RepNet):
    r"""MobileOne: depthwise-then-pointwise MobileOne blocks, each k-branch in training.

    Vasu et al., "MobileOne: An Improved One millisecond Mobile Backbone", arXiv 2206.04040
    (Sec. 3, Tables 7-8).

    Equation (one unit; each block one conv + ReLU after ``reparameterize()``)::

        h = ReLU(sum_{i<k} BN(DW3x3_i * x) + BN(DW1x1 * x) + BN(x))      depthwise block
        y = ReLU(sum_{i<k} BN(PW1x1_i * h) + BN(h))                     pointwise block
        BN(.) identity branches only when C_in = C_out, stride 1; k = num_branches
        stem: one 3x3 stride-2 block with one branch (+ its 1x1 scale branch);
        stage i: layers[i] units, the first depthwise block with stride 2

    Args:
        layers: units per stage (paper: 2, 8, 10, 1).
        widths: channels per stage (S0: 48, 128, 256, 1024).
        num_classes: K. in_chans: C.
        stem_width: the stem's channels (paper: min(64, 64 alpha_1); default widths[0]).
        num_branches: k, the over-parameterization factor of the stage blocks (S0: 4).
        act_layer: the activation after every block (paper: ReLU).
        deploy: build the fused form directly (to load fused weights).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        The SE blocks of the paper's S4 variant are not offered (S0 has none).

    Example:
        >>> model = MobileOne((1, 1, 1, 1), (8, 16, 16, 32), num_classes=10).eval()
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.allclose(model(x), model.reparameterize()(x), atol=1e-5)
        True
    """

    def __init__(
        self, layers: Sequence[int], widths: Sequence[int], num_classes: int = 1000, in_chans: int = 3, *,
        stem_width: int | None = None, num_branches: int = 4, act_layer: LayerSpec = "relu",
        deploy: bool = False, device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        _check_stages("MobileOne", layers, widths)
        require(num_branches >= 1, f"MobileOne: num_branches={num_branches} must be >= 1")
        fk = dict(act_layer=act_layer, deploy=deploy, device=device, dtype=dtype)
        prev = stem_width or widths[0]
        self.stem = MobileOneBlock(in_chans, prev, stride=2, num_branches=1, **fk)
        stages = []
        for n, width in zip(layers, widths, strict=True):
            blocks = []
            for j in range(n):
                stride = 2 if j == 0 else 1
                blocks.append(MobileOneBlock(prev, prev, kernel_size=3, stride=stride, groups=prev,
                                             num_branches=num_branches, **fk))
                blocks.append(MobileOneBlock(prev, width, kernel_size=1, num_branches=num_branches, **fk))
                prev = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_branches = num_branches
        self._finish(num_classes, in_chans, prev, device=device, dtype=dtype)


# --------------------------------------------------------------------------- registered sizes


def _example(**tiny: Any) -> Example:
    # 1000 classes: ``blockzoo info`` / ``list`` show the paper's parameter counts; 16x16
    # images keep the conformance checks fast (the nets pool globally).
    return Example(
        config=dict(num_classes=1000, in_chans=3),
        inputs=images("in_chans"),
        size=(16, 16),
        out_shape=logits_shape,
        tiny=dict(num_classes=3, **tiny),
    )


_TINY = dict(layers=(1, 1, 1, 1), widths=(2, 2, 4, 4), stem_width=2)
_REPVGG = dict(family="model", paper="RepVGG: Making VGG-style ConvNets Great Again", arxiv="2101.03697",
               year=2021, input="image", output="logits", example=_example(**_TINY))


def _repvgg(layers: Sequence[int], a: float, b: float, num_classes: int, in_chans: int, kw: dict) -> RepVGG:
    # widths 64a, 128a, 256a, 512b; stem min(64, 64a) (the paper's Sec. 3.4)
    widths = (int(64 * a), int(128 * a), int(256 * a), int(512 * b))
    cfg = {"layers": tuple(layers), "widths": widths, "stem_width": min(64, int(64 * a)), **kw}
    return RepVGG(num_classes=num_classes, in_chans=in_chans, **cfg)


@register(name="repvgg_a0", **_REPVGG)
def repvgg_a0(num_classes: int = 1000, in_chans: int = 3, **kw: Any) -> RepVGG:
    """RepVGG-A0: layers (2, 4, 14, 1), a = 0.75, b = 2.5; 8.31M parameters deployed (9.11M training).

    Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", arXiv 2101.03697
    (Table 2: 8.30M, 72.41% top-1). Widths 48, 96, 192, 1280, stem 48.

    Equation: see ``RepVGG``; y = ReLU(BN(W_3x3 * x) + BN(W_1x1 * x) + BN(x)) per block.

    Args:
        num_classes: K. in_chans: C.
        **kw: ``RepVGG``'s keyword arguments (``deploy=True``, ``act_layer``, ...).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return _repvgg((2, 4, 14, 1), 0.75, 2.5, num_classes, in_chans, kw)


@register(name="repvgg_b0", **_REPVGG)
def repvgg_b0(num_classes: int = 1000, in_chans: int = 3, **kw: Any) -> RepVGG:
    """RepVGG-B0: layers (4, 6, 16, 1), a = 1, b = 2.5; 14.34M parameters deployed (15.82M training).

    Ding et al., "RepVGG: Making VGG-style ConvNets Great Again", arXiv 2101.03697
    (Table 2: 14.33M, 75.14% top-1). Widths 64, 128, 256, 1280, stem 64.

    Equation: see ``RepVGG``; y = ReLU(BN(W_3x3 * x) + BN(W_1x1 * x) + BN(x)) per block.

    Args:
        num_classes: K. in_chans: C.
        **kw: ``RepVGG``'s keyword arguments (``deploy=True``, ``act_layer``, ...).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return _repvgg((4, 6, 16, 1), 1.0, 2.5, num_classes, in_chans, kw)


@register(
    name="mobileone_s0",
    family="model",
    paper="MobileOne: An Improved One millisecond Mobile Backbone",
    arxiv="2206.04040",
    year=2022,
    input="image",
    output="logits",
    example=_example(**_TINY, num_branches=2),
)
def mobileone_s0(num_classes: int = 1000, in_chans: int = 3, **kw: Any) -> MobileOne:
    """MobileOne-S0: layers (2, 8, 10, 1), widths 48, 128, 256, 1024, k = 4; 2.08M deployed (5.29M training).

    Vasu et al., "MobileOne: An Improved One millisecond Mobile Backbone", arXiv 2206.04040
    (Table 8: 2.1M parameters, 71.4% top-1); alpha = (0.75, 1, 1, 2), stem 48.

    Equation: see ``MobileOne``; each unit a depthwise 3x3 block then a pointwise block,
    k conv-BN branches each in training.

    Args:
        num_classes: K. in_chans: C.
        **kw: ``MobileOne``'s keyword arguments (``deploy=True``, ``num_branches``, ...).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    cfg = {"layers": (2, 8, 10, 1), "widths": (48, 128, 256, 1024), "stem_width": 48, "num_branches": 4, **kw}
    return MobileOne(num_classes=num_classes, in_chans=in_chans, **cfg)
