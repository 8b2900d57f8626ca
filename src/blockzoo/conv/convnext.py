r"""ConvNeXt V2's Global Response Normalization and its block.

Paper: ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders (Woo et al.,
arXiv 2301.00808, 2023); the block's layout is ConvNeXt's, A ConvNet for the 2020s (Liu et
al., arXiv 2201.03545, 2022).

Letters: B batch, C channels, H W spatial, E = r C the inverted-bottleneck width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, listened, own
from blockzoo._fastops import scalar
from blockzoo.act import LayerNorm2d, LayerSpec, create_act, create_norm
from blockzoo.checks import check_shape, require
from blockzoo.conv._functional import ELEMENTWISE_ACTS, is_pointwise
from blockzoo.registry import Example, images, register

__all__ = ["ConvNeXtV2Block", "GlobalResponseNorm"]

_V2 = dict(paper="ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders",
           arxiv="2301.00808", year=2023, input="image")


@register(
    name="grn",
    family="conv",
    example=Example(config=dict(channels=8), inputs=images(), size=(6, 6), out_shape="same",
                    tiny=dict(channels=3)),
    **_V2,
)
class GlobalResponseNorm(nn.Module):
    r"""Global Response Normalization: each channel scaled by its spatial L2 norm relative to the others.

    Woo et al., "ConvNeXt V2", arXiv 2301.00808, Sec. 3.2, Eq. (1)-(3) and Algorithm 1.

    Equation, X_c the c-th channel map (H x W)::

        G_c = ||X_c||_2                                  global aggregation over H, W  (1)
        N_c = G_c / (mean_j G_j + eps)                    divisive normalization        (2)
        Y_c = gamma_c (X_c N_c) + beta_c + X_c            calibration, with a residual  (3)

    gamma and beta start at zero, so the block starts as the identity.

    Args:
        channels: C.
        eps: added to the mean norm (paper's code: 1e-6).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Example:
        >>> grn = GlobalResponseNorm(64)
        >>> grn(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, eps: float = 1e-6, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(eps > 0, f"GlobalResponseNorm: eps={eps} must be positive")
        self.channels, self.eps = channels, eps
        self.weight = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))  # gamma
        self.bias = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))  # beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="GlobalResponseNorm", C=self.channels)  # raises, naming it
        # not through nn.Module.__getattr__ (a few us per call at small sizes) unless parametrized
        gamma, beta = own(self, "weight").view(-1, 1, 1), own(self, "bias").view(-1, 1, 1)  # (C, 1, 1)
        if not (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing()):
            return _grn_eval(x, gamma, beta, self.eps, (2, 3), 1)
        # G_c = ||X_c||_2 over H, W;  N_c = G_c / (mean_j G_j + eps)
        g = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        n = g / (g.mean(1, keepdim=True) + self.eps)
        # Y = gamma (X N) + beta + X = X (gamma N + 1) + beta: the per-channel scale is formed
        # on the (B, C, 1, 1) tensor, so the map is read once and one (B, C, H, W) buffer is
        # written (then offset in place), instead of three full-size temporaries
        # (docs/benchmarks.md, "SE and GRN": 2-4x faster at 8x64x32x32).
        scale = torch.addcmul(torch.ones_like(n), gamma, n)
        return (x * scale).add_(beta)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, eps={self.eps}"


def _grn_eval(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float,
              spatial: tuple[int, int], channel: int) -> torch.Tensor:
    """GRN without autograd (gamma, beta shaped to broadcast over ``x``): the (B, C) statistics
    in place on their fresh tensors, their numbers as cached 0-dim tensors."""
    # G_c = ||X_c||_2 over H, W;  N_c = G_c / (mean_j G_j + eps)
    g = torch.linalg.vector_norm(x, dim=spatial, keepdim=True)  # (B, C, 1, 1) or (B, 1, 1, C)
    # (the mean as the sum divided by C, as torch.mean computes it, and the numbers as cached
    # 0-dim tensors: each Python number costs a conversion per call)
    mean = g.sum(channel, keepdim=True).div_(scalar(g.shape[channel], g))
    n = g.div_(mean.add_(scalar(eps, g)))
    # Y = gamma (X N) + beta + X = X (gamma N + 1) + beta (two passes: an addcmul whose first
    # operand is the broadcast beta ran 3.6x slower at 8 x 64 x 32 x 32 on CPU)
    return (x * torch.addcmul(scalar(1.0, g), gamma, n)).add_(beta)


@register(
    name="convnextv2_block",
    family="conv",
    example=Example(config=dict(dim=8), inputs=images("dim"), size=(8, 8), out_shape="same",
                    tiny=dict(dim=4, kernel_size=3)),
    **_V2,
)
class ConvNeXtV2Block(nn.Module):
    r"""ConvNeXt V2 block: depthwise 7 x 7, LayerNorm, inverted-bottleneck MLP with GRN, residual.

    Woo et al., arXiv 2301.00808, Fig. 5 (ConvNeXt's block, Liu et al. arXiv 2201.03545,
    Fig. 4, with GRN after the GELU and without layer scale).

    Equation::

        y = x + W_2 GRN(GELU(W_1 LN(DWConv_{7x7}(x)) + b_1)) + b_2     W_1: C -> rC, W_2: rC -> C

    Args:
        dim: C.
        mlp_ratio: r (paper: 4).
        kernel_size: of the depthwise conv (paper: 7).
        act_layer: (GELU). norm_layer: the norm over channels (LayerNorm2d).
        norm_eps: its epsilon (paper's code: 1e-6).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        No stochastic depth (a training-recipe choice). The pointwise layers are 1 x 1
        convs on (B, C, H, W), the same maps as the paper's linear layers on (B, H, W, C).

    Example:
        >>> block = ConvNeXtV2Block(40)
        >>> block(torch.randn(2, 40, 56, 56)).shape
        torch.Size([2, 40, 56, 56])
    """

    def __init__(
        self,
        dim: int,
        *,
        mlp_ratio: float = 4.0,
        kernel_size: int = 7,
        act_layer: LayerSpec = "gelu",
        norm_layer: LayerSpec = "layernorm2d",
        norm_eps: float = 1e-6,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(kernel_size % 2 == 1, f"ConvNeXtV2Block: kernel_size={kernel_size} must be odd")
        fk = dict(device=device, dtype=dtype)
        self.dim, hidden = dim, int(dim * mlp_ratio)
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **fk)
        self.norm = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Conv2d(dim, hidden, 1, **fk))
        self.mlp.add_module("act", create_act(act_layer, **fk))
        self.mlp.add_module("grn", GlobalResponseNorm(hidden, **fk))
        self.mlp.add_module("fc2", nn.Conv2d(hidden, dim, 1, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if len(shape) != 4 or shape[1] != self.dim:  # (integer tests first; the message on failure)
            check_shape(x, "B C H W", name="ConvNeXtV2Block", C=self.dim)
        if not (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing()):
            fast = self._forward_eval(x)
            if fast is not None:
                return fast
        # y = x + W_2 GRN(GELU(W_1 LN(DWConv(x)) + b_1)) + b_2
        return x + self.mlp(self.norm(self.conv_dw(x)))

    def _forward_eval(self, x: torch.Tensor) -> torch.Tensor | None:
        """forward without autograd, for the stock layout (a LayerNorm2d norm, an MLP of 1 x 1
        conv, elementwise activation, GRN, 1 x 1 conv; nobody hooked), as the paper's code runs
        it: the depthwise conv on a channels-last map (1.5-3x faster on CPU than on (B, C, H, W)),
        whose (B, H, W, C) tokens the norm reads without a copy; the MLP as two matrix products
        on those tokens (a 1 x 1 conv on the norm's channels-last output copies and loops per
        sample); GRN's statistics in place. None otherwise (the module path)."""
        mlp, norm, dw = self.mlp, self.norm, self.conv_dw
        layers = mlp._modules
        fc1, act, grn, fc2 = (layers.get(k) for k in ("fc1", "act", "grn", "fc2"))
        if (type(norm) is not LayerNorm2d or type(mlp) is not nn.Sequential or len(layers) != 4
                or type(dw) is not nn.Conv2d or type(act) not in ELEMENTWISE_ACTS
                or type(grn) is not GlobalResponseNorm or not is_pointwise(fc1) or not is_pointwise(fc2)
                or listened(dw, norm, mlp, fc1, act, grn, fc2)):
            return None
        p1, p2, pg, ln = fc1._parameters, fc2._parameters, grn._parameters, norm._parameters
        w1, w2, gamma, beta = p1.get("weight"), p2.get("weight"), pg.get("weight"), pg.get("bias")
        if (w1 is None or w2 is None or gamma is None or beta is None or "bias" not in p1
                or "bias" not in p2 or "weight" not in ln or "bias" not in ln):
            return None  # a parametrized tensor: the module path
        h = call(dw, x if x.is_contiguous(memory_format=torch.channels_last)
                 else x.contiguous(memory_format=torch.channels_last))  # (B, C, H, W), channels-last
        t = F.layer_norm(h.permute(0, 2, 3, 1), norm.normalized_shape, ln["weight"], ln["bias"],
                         norm.eps)  # (B, H, W, C)
        t = call(act, F.linear(t, w1.flatten(1), p1["bias"]))  # (B, H, W, E)
        t = _grn_eval(t, gamma, beta, grn.eps, (1, 2), 3)
        # y = x + W_2 GRN(GELU(W_1 LN(DWConv(x)) + b_1)) + b_2
        return torch.add(x, F.linear(t, w2.flatten(1), p2["bias"]).permute(0, 3, 1, 2))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
