"""The arena's two fixed backbones: a small conv net for images, a small transformer for tokens.

Letters: B batch, C channels, H W spatial, T time steps, F features, D model width,
K classes, w conv width.

- ``ArenaConvNet``: three ``blockzoo.conv.ConvBnAct`` units, conv3x3(C->w)-BN-ReLU
  stem, ``stage1`` conv3x3(w->w)-BN-ReLU and ``stage2`` conv3x3 stride 2
  (w->2w)-BN-ReLU; global average pool; linear head.
  The attention block goes after ``stage1`` and ``stage2`` (``blockzoo.attach``).
- ``ArenaTransformer``: conv1d(F->D, kernel 5) stem (gives tokens their local
  order; no absolute position table, so no size is fixed); ``depth`` pre-norm
  layers ``x = x + mixer(LN(x)); x = x + MLP(LN(x))``; mean over tokens; LN;
  linear head. ``mixer`` is the block under test (identity for ``none``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from blockzoo.act import create_act
from blockzoo.checks import check_shape
from blockzoo.conv import ConvBnAct

__all__ = ["ArenaConvNet", "ArenaTransformer"]


class ArenaConvNet(nn.Module):
    """The arena's small conv net for images; attention goes after ``stage1`` and ``stage2``.

    Args:
        in_chans: C, input channels.
        num_classes: K, classes.
        width: w, the stem and ``stage1`` width (``stage2`` has 2w).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W >= 1. Output: (B, K) logits.
    """

    def __init__(self, in_chans: int, num_classes: int, *, width: int = 16) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.stem = ConvBnAct(in_chans, width, 3)
        self.stage1 = ConvBnAct(width, width, 3)
        self.stage2 = ConvBnAct(width, 2 * width, 3, stride=2)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="ArenaConvNet", C=self.in_chans)
        x = self.stage2(self.stage1(self.stem(x)))  # (B, 2w, H/2, W/2)
        return self.head(x.mean((2, 3)))  # (B, K)


class ArenaTransformer(nn.Module):
    """The arena's small pre-norm transformer for sequences; ``mixer`` mixes the tokens.

    Args:
        in_features: F, features per time step.
        num_classes: K, classes.
        mixer: a factory ``f(dim) -> nn.Module`` mapping (B, N, D) to (B, N, D), or
            ``None`` for no token mixing (the baseline).
        dim: D, the model width; depth: layers; mlp_ratio: MLP hidden = ratio * D.

    Shape:
        - Input: (B, T, F), F = in_features, any T. Output: (B, K) logits.
    """

    def __init__(self, in_features: int, num_classes: int, mixer: Callable[[int], nn.Module] | None = None,
                 *, dim: int = 32, depth: int = 2, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.in_features = in_features
        self.stem = nn.Conv1d(in_features, dim, 5, padding=2)
        self.norms1 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.mixers = nn.ModuleList((mixer(dim) if mixer else nn.Identity()) for _ in range(depth))
        self.norms2 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, mlp_ratio * dim), create_act("gelu"),
                          nn.Linear(mlp_ratio * dim, dim))
            for _ in range(depth)
        )
        self.mix = mixer is not None
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B T F", name="ArenaTransformer", F=self.in_features)
        x = self.stem(x.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        for n1, mixer, n2, mlp in zip(self.norms1, self.mixers, self.norms2, self.mlps, strict=True):
            if self.mix:
                x = x + mixer(n1(x))
            x = x + mlp(n2(x))
        return self.head(self.norm(x.mean(1)))  # (B, K)
