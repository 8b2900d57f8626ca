"""Class-specific residual attention (CSRA): a classification head, not a drop-in block.

Paper: Residual Attention: A Simple but Effective Method for Multi-Label Recognition
(Zhu, arXiv 2108.02456, 2021).

Letters: B batch, C channels, H W spatial, N = H W, K classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import own
from blockzoo._kept import derived
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["ResidualAttentionHead"]


def _normalised(*weights: torch.Tensor) -> tuple[torch.Tensor]:
    """The heads' (K, C, 1, 1) class weights stacked to (T K, C), each row over its norm."""
    m = torch.cat(weights).flatten(1)  # (T K, C)
    return (m / m.norm(dim=1, keepdim=True),)


@register(
    name="csra",
    family="attention",
    paper="Residual Attention: A Simple but Effective Method for Multi-Label Recognition",
    arxiv="2108.02456",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, num_classes=5, temperatures=(1.0, math.inf)),
                    inputs=images(), size=(8, 8),
                    out_shape=lambda shape, cfg: (shape[0], cfg["num_classes"]),
                    tiny=dict(channels=4, num_classes=3)),
)
class ResidualAttentionHead(nn.Module):
    r"""CSRA head: class logits from average pooling plus class-specific attention pooling.

    Zhu & Wu, "Residual Attention: A Simple but Effective Method for Multi-Label
    Recognition", arXiv 2108.02456.

    Equation, per head with temperature T and classifier m_i (1x1 conv, no bias), for
    class i and position j of N = H W::

        s_ij  = m_i . x_j / ||m_i||                        class score at each position
        base  = 1/N sum_j s_ij                             (= m_i . g / ||m_i||, g the average pool)
        a_ij  = exp(T s_ij) / sum_j exp(T s_ij)             class-specific spatial attention
        y_i   = base_i + lambda * sum_j a_ij s_ij          (T = inf: lambda * max_j s_ij)
        logits = sum over heads of y (each head its own m and T; one lambda)

    Not a drop-in block: it takes a feature map and returns class logits.

    Args:
        channels: C, the feature map's channels.
        num_classes: K.
        temperatures: one T per head (paper: (1,) for one head; e.g. (1, 2, 3, 4, 5, 6, inf)
            for multi-head); ``math.inf`` gives max pooling.
        lam: lambda, the weight of the attention logits (paper: 0.1).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, K) class logits, K = num_classes.

    Example:
        >>> head = ResidualAttentionHead(64, 20, temperatures=(1.0, math.inf))
        >>> head(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 20])
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        *,
        temperatures: Sequence[float] = (1.0,),
        lam: float = 0.1,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        temperatures = tuple(float(t) for t in temperatures)
        require(len(temperatures) >= 1 and all(t > 0 for t in temperatures),
                f"ResidualAttentionHead: temperatures={temperatures} must be one or more values > 0")
        require(num_classes >= 1, f"ResidualAttentionHead: num_classes={num_classes} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.channels, self.num_classes = channels, num_classes
        self.temperatures, self.lam = temperatures, lam
        self.heads = nn.ModuleList(nn.Conv2d(channels, num_classes, 1, bias=False, **fk)
                                   for _ in temperatures)
        self.attn_maps = nn.ModuleList(AttentionMap("spatial") for _ in temperatures)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="ResidualAttentionHead", C=self.channels)  # raises
        b, _, hh, ww = x.shape
        k = self.num_classes
        # m_i / ||m_i|| for every head's classes: normalising the (T K, C) weights costs
        # less than dividing the (B, T K, N) scores, and one product serves all heads.
        weights = tuple(own(head, "weight") for head in self._modules["heads"])
        m = None
        if not (torch.is_grad_enabled() or torch.compiler.is_compiling()):
            m = derived(self, "normalised", weights, _normalised)  # kept until a weight changes
        m = _normalised(*weights)[0] if m is None else m[0]  # (T K, C)
        # s_ij = m_i . x_j / ||m_i||
        s = torch.matmul(m, x.flatten(2))  # (B, T K, N)
        # base, summed over heads: 1/N sum_j s_ij
        logits = s.mean(-1).view(b, len(self.heads), k).sum(1)  # (B, K)
        for i, (t, amap) in enumerate(zip(self.temperatures, self._modules["attn_maps"], strict=True)):
            si = s[:, i * k:(i + 1) * k]  # (B, K, N): head i
            if math.isinf(t):
                att_logit = si.amax(-1)
            else:
                # a_ij = softmax_j(T s_ij)
                a = amap((t * si).softmax(-1).view(b, k, hh, ww)).flatten(2)  # (B, K, N)
                att_logit = (a * si).sum(-1)
            logits = logits + self.lam * att_logit
        return logits

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_classes={self.num_classes}, "
                f"temperatures={self.temperatures}, lam={self.lam}")
