"""SimAM: a parameter-free 3-D attention from an energy function.

Paper: SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks
(Yang, ICML 2021, PMLR 139:11863-11874).

Letters: B batch, C channels, H W spatial, M = H W.
"""

from __future__ import annotations

import torch
from torch import nn

from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["SimAM"]


@register(
    name="simam",
    family="attention",
    paper="SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks",
    arxiv="https://proceedings.mlr.press/v139/yang21o.html",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16), inputs=images(), size=(8, 8),
                    out_shape="same", tiny=dict(channels=4)),
)
class SimAM(nn.Module):
    r"""SimAM: weigh each neuron by sigmoid of its inverse minimal energy; no parameters.

    Yang et al., "SimAM: A Simple, Parameter-Free Attention Module for Convolutional
    Neural Networks", ICML 2021.

    Equation, per channel, over its M = H W neurons t::

        mu      = 1/M sum_i x_i
        sigma^2 = 1/(M - 1) sum_i (x_i - mu)^2
        e*_t    = 4 (sigma^2 + lambda) / ((t - mu)^2 + 2 sigma^2 + 2 lambda)
        y       = x * sigmoid(1 / e*)

    so 1 / e*_t = (t - mu)^2 / (4 (sigma^2 + lambda)) + 1/2: the more a neuron stands out
    from its channel, the lower its energy and the larger its weight.

    Args:
        channels: C, the input channels (checked; SimAM itself has no weights).
        lambda_: the regulariser lambda (paper: 1e-4), > 0.

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        Follows the official code (ZjjConan/SimAM, ``simam_module``) step for step: the
        variance divisor is n = H W - 1, lambda = 1e-4, and the gate is the plain sigmoid
        of (t - mu)^2 / (4 (sigma^2 + lambda)) + 1/2. Only for a 1x1 input, where the
        official code divides 0 by 0 (NaN), the divisor is taken as 1 (so y = x sigmoid(1/2)).

    Example:
        >>> simam = SimAM(64)
        >>> simam(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, lambda_: float = 1e-4) -> None:
        super().__init__()
        require(lambda_ > 0, f"SimAM: lambda_={lambda_} must be > 0")
        self.channels = channels
        self.lambda_ = lambda_
        self.attn_map = AttentionMap("channel_spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="SimAM", C=self.channels)  # raises, naming the misfit
        n = max(x.shape[2] * x.shape[3] - 1, 1)
        if torch.is_grad_enabled() and x.requires_grad:
            d = (x - x.mean((2, 3), keepdim=True)).pow(2)  # (B, C, H, W): (t - mu)^2
            var = d.sum((2, 3), keepdim=True) / n  # (B, C, 1, 1)
            # 1/e* = (t - mu)^2 / (4 (sigma^2 + lambda)) + 1/2
            inv_energy = d / (4 * (var + self.lambda_)) + 0.5
            return x * self.attn_map(torch.sigmoid(inv_energy))
        # Without autograd the same ops, in place on the one (B, C, H, W) temporary: one
        # allocation instead of five (the output is still a new tensor; x is not touched).
        # 4 (sigma^2 + lambda) as sum * (4 / n) + 4 lambda: two scalar ops instead of three.
        d = (x - x.mean((2, 3), keepdim=True)).square_()
        var4 = d.sum((2, 3), keepdim=True).mul_(4 / n).add_(4 * self.lambda_)  # (B, C, 1, 1)
        gate = d.div_(var4).add_(0.5).sigmoid_()
        amap = self.attn_map
        if amap._recording or amap._forward_hooks or amap._forward_pre_hooks:
            return x * amap(gate)  # the map keeps the gate itself
        return gate.mul_(x)  # nobody holds the gate: the product written over it

    def extra_repr(self) -> str:
        return f"channels={self.channels}, lambda_={self.lambda_}"
