r"""HorNet's recursive gated convolution (gnConv) and the HorNet block.

Paper: HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions
(Rao et al., arXiv 2207.14284, NeurIPS 2022), Sec. 3.1-3.2.

Letters: B batch, C channels, H W spatial, n the interaction order, C_k = C / 2^(n-1-k) the
width of order k (C_0 smallest, C_{n-1} = C).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, listened
from blockzoo._fastops import _SMALL_GROUPED
from blockzoo._kept import scaled_projection
from blockzoo.act import LayerNorm2d, LayerSpec, create_act, create_norm
from blockzoo.checks import check_shape, require
from blockzoo.conv._functional import ELEMENTWISE_ACTS, is_pointwise
from blockzoo.registry import Example, images, register

__all__ = ["GnConv", "HorNetBlock"]

_HORNET = dict(paper="HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions",
               arxiv="2207.14284", year=2022, input="image")


@register(
    name="gnconv",
    family="conv",
    example=Example(config=dict(dim=16, order=3), inputs=images("dim"), size=(8, 8), out_shape="same",
                    tiny=dict(dim=4, order=2, kernel_size=3)),
    **_HORNET,
)
class GnConv(nn.Module):
    r"""Recursive gated convolution: n-th order spatial interactions from gates and a depthwise conv.

    Rao et al., "HorNet", arXiv 2207.14284, Sec. 3.1, Eq. (3.3)-(3.4).

    Equation, every product elementwise, f a k x k depthwise conv over all q_k at once::

        [p_0, q_0, q_1, ..., q_{n-1}] = phi_in(x)                 1 x 1 conv, C -> C_0 + sum C_k = 2C
        p_{k+1} = f_k(q_k) * g_k(p_k) / alpha                    k = 0..n-1
        g_0 = identity,  g_k = 1 x 1 conv C_{k-1} -> C_k  (k >= 1)
        y = phi_out(p_n)                                         1 x 1 conv, C -> C

    with C_k = C / 2^(n-1-k): the low orders are cheap and the last has the full width.

    Args:
        dim: C (must be divisible by 2^(n-1)).
        order: n (HorNet: 2, 3, 4, 5 in stages 1-4).
        kernel_size: k of the depthwise conv f (HorNet-7x7: 7; odd).
        scale: 1 / alpha, multiplied into f's output (HorNet: 1/3).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        Follows the authors' code: f is one depthwise conv (with bias) over the
        concatenated q_0..q_{n-1}, and 1 / alpha multiplies its output. The paper's global
        filter variant (HorNet-GF) is not provided.

    Example:
        >>> gn = GnConv(64, order=3)
        >>> gn(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
    """

    def __init__(self, dim: int, order: int = 5, *, kernel_size: int = 7, scale: float = 1.0 / 3.0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(order >= 1, f"GnConv: order={order} must be >= 1")
        require(dim % 2 ** (order - 1) == 0 and dim >= 2 ** (order - 1),
                f"GnConv: dim={dim} must be a positive multiple of 2^(order-1)={2 ** (order - 1)}")
        require(kernel_size % 2 == 1, f"GnConv: kernel_size={kernel_size} must be odd")
        fk = dict(device=device, dtype=dtype)
        self.dim, self.order, self.scale = dim, order, scale
        self.dims = [dim // 2 ** (order - 1 - k) for k in range(order)]  # C_0 .. C_{n-1}
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1, **fk)
        width = sum(self.dims)
        self.dwconv = nn.Conv2d(width, width, kernel_size, padding=kernel_size // 2, groups=width, **fk)
        self.pws = nn.ModuleList(nn.Conv2d(self.dims[k], self.dims[k + 1], 1, **fk) for k in range(order - 1))
        self.proj_out = nn.Conv2d(dim, dim, 1, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if len(shape) != 4 or shape[1] != self.dim:  # (integer tests first; the message on failure)
            check_shape(x, "B C H W", name="GnConv", C=self.dim)
        if not torch.is_grad_enabled():
            fast = self._forward_eval(x)
            if fast is not None:
                return fast
        # [p_0, q_0 .. q_{n-1}] = phi_in(x)
        # p: (B, C_0, H, W), q: (B, sum C_k, H, W)
        p, q = self.proj_in(x).split([self.dims[0], sum(self.dims)], dim=1)
        fq = (self.dwconv(q) * self.scale).split(self.dims, dim=1)  # n x (B, C_k, H, W)
        # p_1 = f_0(q_0) * p_0 / alpha;  p_{k+1} = f_k(q_k) * g_k(p_k) / alpha
        p = p * fq[0]
        for k in range(1, self.order):
            p = self.pws[k - 1](p) * fq[k]  # (B, C_k, H, W)
        return self.proj_out(p)  # y = phi_out(p_n)

    def _forward_eval(self, x: torch.Tensor) -> torch.Tensor | None:
        """forward without autograd: 1 / alpha folded into f's weight and bias (cached), the
        products in place on fresh tensors, the convs as functional ops. None (the module path)
        when a submodule is hooked (a hook could keep a tensor changed in place here) or the fold
        does not apply."""
        dw, pws = self.dwconv, self.pws._modules
        if type(dw) is not nn.Conv2d or listened(self.proj_in, dw, self.proj_out, *pws.values()):
            return None
        params = dw._parameters
        if "weight" not in params or "bias" not in params:
            return None  # a parametrized tensor: the module path
        folded = scaled_projection(dw, "gnconv.scale", params["weight"], params["bias"], self.scale)
        if folded is None:
            return None
        dims = self.dims
        # on a small map the convs run on channels-last copies (the depthwise k x k runs 1.5x
        # faster there on CPU): a (B, C, H, W)-contiguous input is copied once, the output copied
        # back; at 8 x 64 x 32 x 32 the two copies cost more than that gains
        back = (x.numel() <= _SMALL_GROUPED and x.is_contiguous()
                and not x.is_contiguous(memory_format=torch.channels_last))
        if back:
            x = x.contiguous(memory_format=torch.channels_last)
        # [p_0, q_0 .. q_{n-1}] = phi_in(x)
        p, q = call(self.proj_in, x).split([dims[0], sum(dims)], dim=1)
        fq = dw._conv_forward(q, folded[0], folded[1]).split(dims, dim=1)  # f(q) / alpha
        p = p.mul_(fq[0])  # p_1 = f_0(q_0) * p_0 / alpha
        for k, pw in enumerate(pws.values(), start=1):
            p = call(pw, p).mul_(fq[k])  # p_{k+1} = f_k(q_k) * g_k(p_k) / alpha
        y = call(self.proj_out, p)  # y = phi_out(p_n)
        return y.contiguous() if back else y

    def extra_repr(self) -> str:
        return f"dim={self.dim}, order={self.order}, dims={self.dims}, scale={self.scale:.4g}"


@register(
    name="hornet_block",
    family="conv",
    example=Example(config=dict(dim=16, order=3), inputs=images("dim"), size=(8, 8), out_shape="same",
                    tiny=dict(dim=4, order=2, kernel_size=3, layer_scale=0.5)),
    **_HORNET,
)
class HorNetBlock(nn.Module):
    r"""HorNet block: gnConv in place of self-attention, then an MLP, each pre-norm with layer scale.

    Rao et al., arXiv 2207.14284, Sec. 3.2 (the Transformer/ConvNeXt block layout, Fig. 2).

    Equation, LN over channels at every position::

        x' = x + gamma_1 * gnConv(LN(x))
        y  = x' + gamma_2 * (W_2 GELU(W_1 LN(x') + b_1) + b_2)      W_1: C -> rC, W_2: rC -> C

    Args:
        dim: C. order: n of the gnConv. kernel_size, scale: of the gnConv.
        mlp_ratio: r (4). layer_scale: initial gamma (1e-6; 0 leaves it out).
        act_layer: (GELU). norm_layer: (LayerNorm2d). norm_eps: (1e-6, the authors' code).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        No stochastic depth (training recipe). The MLP's linear layers are 1 x 1 convs on
        (B, C, H, W), the same maps as linear layers on (B, H, W, C).

    Example:
        >>> block = HorNetBlock(64, order=2)
        >>> block(torch.randn(2, 64, 14, 14)).shape
        torch.Size([2, 64, 14, 14])
    """

    def __init__(self, dim: int, order: int = 5, *, kernel_size: int = 7, scale: float = 1.0 / 3.0,
                 mlp_ratio: float = 4.0, layer_scale: float = 1e-6, act_layer: LayerSpec = "gelu",
                 norm_layer: LayerSpec = "layernorm2d", norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.dim, hidden = dim, int(dim * mlp_ratio)
        self.norm1 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.gnconv = GnConv(dim, order, kernel_size=kernel_size, scale=scale, **fk)
        self.norm2 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Conv2d(dim, hidden, 1, **fk))
        self.mlp.add_module("act", create_act(act_layer, **fk))
        self.mlp.add_module("fc2", nn.Conv2d(hidden, dim, 1, **fk))
        if layer_scale > 0:
            self.gamma1 = nn.Parameter(torch.full((dim, 1, 1), layer_scale, **fk))
            self.gamma2 = nn.Parameter(torch.full((dim, 1, 1), layer_scale, **fk))
        else:
            self.register_parameter("gamma1", None)
            self.register_parameter("gamma2", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if len(shape) != 4 or shape[1] != self.dim:  # (integer tests first; the message on failure)
            check_shape(x, "B C H W", name="HorNetBlock", C=self.dim)
        if not torch.is_grad_enabled():
            fast = self._forward_eval(x)
            if fast is not None:
                return fast
        a = self.gnconv(self.norm1(x))
        # x' = x + gamma_1 * gnConv(LN(x))
        x = x + (a if self.gamma1 is None else self.gamma1 * a)
        m = self.mlp(self.norm2(x))
        # y = x' + gamma_2 * MLP(LN(x'))
        return x + (m if self.gamma2 is None else self.gamma2 * m)

    def _forward_eval(self, x: torch.Tensor) -> torch.Tensor | None:
        """forward without autograd, for the stock layout (LayerNorm2d norms, an MLP of two
        1 x 1 convs around an elementwise activation, nobody hooked): the MLP on (B, H, W, C)
        tokens as two matrix products (a 1 x 1 conv on the norm's channels-last output takes
        a copy and a per-sample kernel), gamma_2 folded into the second (cached), the residual
        sums in place on fresh tensors. None otherwise (the module path)."""
        mlp, norm2 = self.mlp, self.norm2
        layers = mlp._modules
        fc1, act, fc2 = layers.get("fc1"), layers.get("act"), layers.get("fc2")
        if (type(norm2) is not LayerNorm2d or type(mlp) is not nn.Sequential or len(layers) != 3
                or type(act) not in ELEMENTWISE_ACTS or not is_pointwise(fc1) or not is_pointwise(fc2)
                or listened(mlp, norm2, fc1, act, fc2, self.gnconv)):
            return None
        p1, p2 = fc1._parameters, fc2._parameters
        w1, w2 = p1.get("weight"), p2.get("weight")
        if w1 is None or w2 is None or "bias" not in p1 or "bias" not in p2:
            return None  # a parametrized tensor: the module path
        gamma1, gamma2 = self._parameters.get("gamma1"), self._parameters.get("gamma2")
        b2 = p2["bias"]
        if gamma2 is not None:
            folded = scaled_projection(fc2, "hornet.gamma2", w2, b2, gamma2)
            if folded is None:
                return None
            w2, b2 = folded
        a = call(self.norm1, x)
        a = self.gnconv._forward_eval(a) if type(self.gnconv) is GnConv else None
        if a is None:
            return None
        # x' = x + gamma_1 * gnConv(LN(x))
        x = a.add_(x) if gamma1 is None else torch.addcmul(x, gamma1, a)
        ln = norm2._parameters
        t = F.layer_norm(x.permute(0, 2, 3, 1), norm2.normalized_shape, ln["weight"], ln["bias"],
                         norm2.eps)  # (B, H, W, C)
        t = call(act, F.linear(t, w1.flatten(1), p1["bias"]))  # (B, H, W, rC)
        # y = x' + gamma_2 * MLP(LN(x'))
        return x.add_(F.linear(t, w2.flatten(1), b2).permute(0, 3, 1, 2))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
