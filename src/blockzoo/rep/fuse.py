r"""Structural re-parameterization: the shared maths and the one entry point.

A re-param block trains as several parallel (or sequential) linear branches and
deploys as one convolution. Every branch here is linear in its input in eval mode
(conv, BatchNorm with running statistics, average pooling, identity), so a sum of
branches is one conv whose kernel is the sum of the branches' kernels, each padded
to the common k x k. This file holds those transforms, written once:

- ``fuse_bn``: conv then BN  ->  one conv (DBB transform I);
- ``pad_kernel``: a 1x1, 1xk or kx1 kernel centred in k x k (transform VI, multi-scale);
- ``identity_kernel``/``avg_kernel``: identity and k x k average pooling as conv
  kernels, grouped (transforms for the identity and avg-pool branches, V);
- ``merge_1x1_kxk``: a 1x1 conv followed by a k x k conv  ->  one k x k conv (III),
  per group, which is the concatenation of transform IV;
- ``conv_as_fc``: a conv over a fixed h x w patch as the equivalent FC matrix (RepMLP);
- ``RepConv``: the base of RepVGG, ACNet, DBB and MobileOne blocks (sum of branches,
  ``reparameterize()`` into one ``nn.Conv2d``);
- ``reparameterize(model)``: walks any module tree and fuses every block that can.

Papers: RepVGG (Ding, arXiv 2101.03697, 2021); Diverse Branch Block (Ding, arXiv
2103.13425, 2021) for the transforms' names.

Letters: B batch, C input channels, O output channels, g groups, k kernel size,
M intermediate channels, H W spatial.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.act import LayerSpec, create_act
from blockzoo.checks import check_shape, require
from blockzoo.registry import ENTRY_ATTR

__all__ = [
    "BNIdentity",
    "ConvBN",
    "RepConv",
    "avg_kernel",
    "conv_as_fc",
    "fuse_bn",
    "identity_kernel",
    "mark_deployed",
    "merge_1x1_kxk",
    "pad_kernel",
    "rep_out_shape",
    "reparameterize",
]


def rep_out_shape(shape: Any, cfg: Any) -> tuple[int, ...]:
    """Output shape rule of a re-param block: (B, dim_out or C, ceil(H / stride), ceil(W / stride))."""
    s = cfg.get("stride", 1)
    return (shape[0], cfg.get("dim_out") or shape[1], (shape[2] - 1) // s + 1, (shape[3] - 1) // s + 1)

def mark_deployed(module: nn.Module) -> None:
    """After an in-place fusion: the recorded build config (``ENTRY_ATTR``, kept by
    ``Spec.build``) becomes the deploy form, ``deploy=True``, so that ``blockzoo.save``
    stores, and ``blockzoo.load`` rebuilds, the fused module the weights belong to."""
    entry = getattr(module, ENTRY_ATTR, None)
    if entry is not None:
        name, config = entry
        setattr(module, ENTRY_ATTR, (name, {**config, "deploy": True}))


Kernel = tuple[torch.Tensor, torch.Tensor]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


# --------------------------------------------------------------------------- maths


def fuse_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm) -> Kernel:
    """Fold eval-mode BatchNorm into the conv before it (DBB transform I).

    ``bn(conv(x)) = gamma (W*x + b - mu) / sqrt(var + eps) + beta``
    ``            = (t W) * x + (beta + t (b - mu))``,  ``t = gamma / sqrt(var + eps)``.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fuse_bn: BatchNorm without running statistics cannot be fused")
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    t = gamma / std
    b0 = bias if bias is not None else torch.zeros_like(std)
    # W' = t W,  b' = beta + t (b - mu)
    return weight * t.reshape(-1, *([1] * (weight.dim() - 1))), beta + t * (b0 - bn.running_mean)


def pad_kernel(weight: torch.Tensor, kernel_size: int | tuple[int, int]) -> torch.Tensor:
    """Centre a (O, C/g, kh, kw) kernel inside a larger kernel of ``kernel_size`` (zeros round it).

    Exact for 'same' padding: a kh x kw conv with padding (kh-1)/2 equals the padded
    k x k conv with padding (k-1)/2 (with dilation d both paddings scale by d).
    """
    kh, kw = _pair(kernel_size)
    h, w = weight.shape[-2:]
    require((kh - h) % 2 == 0 and (kw - w) % 2 == 0 and kh >= h and kw >= w,
            f"pad_kernel: cannot centre a {h}x{w} kernel in {kh}x{kw}")
    ph, pw = (kh - h) // 2, (kw - w) // 2
    return F.pad(weight, (pw, pw, ph, ph))


def identity_kernel(
    channels: int, groups: int, kernel_size: int | tuple[int, int] = 1, *,
    device: Any = None, dtype: Any = None,
) -> torch.Tensor:
    """The grouped conv kernel (C, C/g, kh, kw) that maps x to x (1 at each channel's centre tap)."""
    kh, kw = _pair(kernel_size)
    cpg = channels // groups
    w = torch.zeros(channels, cpg, kh, kw, device=device, dtype=dtype)
    idx = torch.arange(channels, device=device)
    w[idx, idx % cpg, kh // 2, kw // 2] = 1.0
    return w


def avg_kernel(
    channels: int, groups: int, kernel_size: int | tuple[int, int], *,
    device: Any = None, dtype: Any = None,
) -> torch.Tensor:
    """k x k average pooling (every window full) as a grouped conv kernel (C, C/g, kh, kw)."""
    kh, kw = _pair(kernel_size)
    cpg = channels // groups
    w = torch.zeros(channels, cpg, kh, kw, device=device, dtype=dtype)
    idx = torch.arange(channels, device=device)
    w[idx, idx % cpg] = 1.0 / (kh * kw)
    return w


def merge_1x1_kxk(
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, groups: int
) -> Kernel:
    """A 1x1 conv (w1, b1) followed by a k x k conv (w2, b2), both with ``groups``, as one conv.

    Exact when the intermediate map is padded with ``b1`` (what the 1x1 conv gives for
    a zero input) instead of zeros, as DBB's BN-and-pad layer does. Per group j:
    ``W_j = sum_m W2_j[o, m] W1_j[m, c]``,  ``b = b2 + sum_{m, taps} W2[o, m] b1[m]``.
    """
    g = groups
    m, cg = w1.shape[:2]
    o, mg, kh, kw = w2.shape
    w1g = w1.reshape(g, m // g, cg)  # (g, M/g, C/g)
    w2g = w2.reshape(g, o // g, mg, kh, kw)  # (g, O/g, M/g, kh, kw)
    w = torch.einsum("gomhw,gmc->gochw", w2g, w1g).reshape(o, cg, kh, kw)
    b = b2 + torch.einsum("gomhw,gm->go", w2g, b1.reshape(g, m // g)).reshape(o)
    return w, b


def conv_as_fc(
    weight: torch.Tensor, bias: torch.Tensor, groups: int, height: int, width: int, *,
    dilation: int = 1,
) -> Kernel:
    """A 'same'-padded conv on a fixed (C, h, w) patch as the grouped FC it equals (RepMLP).

    Returns ``(W_fc, b_fc)`` with ``W_fc`` of shape (O h w, C h w / g) acting on the
    patch flattened in (C, h, w) order, group by group (group j's inputs are its C/g
    channels' h w positions). Found by feeding the conv the identity matrix.
    """
    o, cg, kh, kw = weight.shape
    n = cg * height * width  # inputs of one group
    eye = torch.eye(n, device=weight.device, dtype=weight.dtype).reshape(n, cg, height, width)
    x = eye.repeat(1, groups, 1, 1)  # (n, C, h, w): basis vector i in every group
    pad = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
    y = F.conv2d(x, weight, None, padding=pad, dilation=dilation, groups=groups)  # (n, O, h, w)
    y = y.reshape(n, groups, (o // groups) * height * width)  # (n, g, O/g h w)
    w_fc = y.permute(1, 2, 0).reshape(o * height * width, n)  # (O h w, C h w / g)
    return w_fc, bias.repeat_interleave(height * width)


# --------------------------------------------------------------------------- branches


class ConvBN(nn.Module):
    """A bias-free conv followed by BatchNorm: one branch of a re-param block.

    Args:
        in_channels, out_channels: C and O.
        kernel_size: int or (kh, kw); stride, padding, dilation, groups as ``nn.Conv2d``.

    Shape:
        - Input: (B, C, H, W); output: (B, O, H', W') as the conv gives.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], *,
        stride: int = 1, padding: int | tuple[int, int] = 0, dilation: int = 1, groups: int = 1,
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=False, **fk)
        self.bn = nn.BatchNorm2d(out_channels, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def fused(self) -> Kernel:
        """The (weight, bias) of the single conv equal to this branch in eval mode."""
        return fuse_bn(self.conv.weight, None, self.bn)


class BNIdentity(nn.Module):
    """The identity branch with its BatchNorm (RepVGG, MobileOne): ``BN(x)``.

    Args:
        channels: C (input = output channels); groups: the block's conv groups, so the
            fused identity kernel has the block's (C, C/g) layout.

    Shape:
        - Input: (B, C, H, W); output: the same.
    """

    def __init__(self, channels: int, groups: int = 1, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.groups = groups
        self.bn = nn.BatchNorm2d(channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)

    def fused(self) -> Kernel:
        w = self.bn.running_mean
        eye = identity_kernel(w.numel(), self.groups, 1, device=w.device, dtype=w.dtype)
        return fuse_bn(eye, None, self.bn)


# --------------------------------------------------------------------------- base block


class RepConv(nn.Module):
    r"""Base of the conv re-param blocks: ``act(sum_i branch_i(x))``, fused into one conv.

    Subclasses fill ``self.branches`` (an ``nn.ModuleDict`` of modules with a
    ``fused() -> (weight, bias)`` method whose kernel is centred in k x k) unless
    built with ``deploy=True``. ``reparameterize()`` replaces the branches by one
    ``nn.Conv2d`` with bias (``self.conv``), in place.

    Equation (eval mode)::

        y = act(sum_i (W_i * x + b_i)) = act((sum_i pad(W_i)) * x + sum_i b_i)

    Args:
        channels: C, input channels.
        dim_out: O, output channels (default C).
        kernel_size: k, odd.
        stride: 1 or 2 (any positive int works).
        dilation: d; padding is always ``d (k - 1) / 2`` ('same' at stride 1).
        groups: g, dividing C and O.
        act_layer: the activation after the sum.
        deploy: build the fused single-conv form directly (to load fused weights).

    Shape:
        - Input: (B, C, H, W), C = channels.
        - Output: (B, O, H', W'), H' = floor((H - 1) / stride) + 1, likewise W'.
    """

    def __init__(
        self, channels: int, dim_out: int | None = None, *, kernel_size: int = 3, stride: int = 1,
        dilation: int = 1, groups: int = 1, act_layer: LayerSpec = "relu", deploy: bool = False,
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        dim_out = dim_out or channels
        require(kernel_size >= 1 and kernel_size % 2 == 1, f"{name}: kernel_size={kernel_size} must be odd")
        require(stride >= 1 and dilation >= 1, f"{name}: stride={stride}, dilation={dilation} must be >= 1")
        require(groups >= 1 and channels % groups == 0 and dim_out % groups == 0,
                f"{name}: groups={groups} must divide channels={channels} and dim_out={dim_out}")
        self.channels, self.dim_out = channels, dim_out
        self.kernel_size, self.stride, self.dilation, self.groups = kernel_size, stride, dilation, groups
        self.padding = dilation * (kernel_size - 1) // 2
        self._fk = dict(device=device, dtype=dtype)
        self.act = create_act(act_layer, **self._fk)
        self.conv: nn.Conv2d | None = None
        if deploy:
            self.conv = self._deploy_conv(**self._fk)

    def _deploy_conv(self, *, device: Any = None, dtype: Any = None) -> nn.Conv2d:
        return nn.Conv2d(self.channels, self.dim_out, self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, groups=self.groups, bias=True,
                         device=device, dtype=dtype)

    @property
    def deployed(self) -> bool:
        """True once the block is a single conv."""
        return self.conv is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name=type(self).__name__, C=self.channels)
        if self.conv is not None:
            return self.act(self.conv(x))
        # y = act(sum_i branch_i(x))
        out = None
        for branch in self.branches.values():
            y = branch(x)
            out = y if out is None else out + y
        return self.act(out)

    @torch.no_grad()
    def fused_kernel(self) -> Kernel:
        """The (weight, bias) of the one conv equal to the block in eval mode."""
        if self.conv is not None:
            return self.conv.weight.detach().clone(), self.conv.bias.detach().clone()
        w_sum, b_sum = None, None
        for branch in self.branches.values():
            w, b = branch.fused()
            w = pad_kernel(w, self.kernel_size)
            w_sum = w if w_sum is None else w_sum + w
            b_sum = b if b_sum is None else b_sum + b
        return w_sum, b_sum

    @torch.no_grad()
    def reparameterize(self) -> RepConv:
        """Fuse the branches into one conv, in place; idempotent; keeps device and dtype."""
        if self.conv is not None:
            return self
        w, b = self.fused_kernel()
        conv = self._deploy_conv(device=w.device, dtype=w.dtype)
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        conv.train(self.training)
        del self.branches
        self.conv = conv
        mark_deployed(self)
        return self

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, {self.dim_out}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"dilation={self.dilation}, groups={self.groups}, deployed={self.deployed}"
        )


# --------------------------------------------------------------------------- the walker

_busy = threading.local()


def _supports(m: nn.Module) -> bool:
    return callable(getattr(m, "reparameterize", None))


def _post_order(model: nn.Module) -> Iterator[nn.Module]:
    for child in model.children():
        yield from _post_order(child)
    yield model


def reparameterize(model: nn.Module) -> nn.Module:
    """Reparameterize every block of ``model`` that supports it, in place; returns ``model``.

    Walks the whole module tree (inside ``nn.Sequential``, ``nn.ModuleList`` and any
    user class), children before parents, and calls ``reparameterize()`` on every
    module that has one — ours or a user's (duck typing). Idempotent. A user module
    whose own ``reparameterize`` calls this function on itself is not re-entered.

    The fused form equals the *eval-mode* training form: BatchNorm is folded with its
    running statistics, so call it on a trained model (in training mode the unfused
    BNs would normalise with batch statistics instead).

    Example:
        >>> from blockzoo.rep import RepVGGBlock
        >>> net = nn.Sequential(RepVGGBlock(8), nn.Sequential(RepVGGBlock(8, 16, stride=2)))
        >>> reparameterize(net.eval()) is net
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"reparameterize: expected an nn.Module, got {type(model).__name__}")
    busy: set[int] = getattr(_busy, "ids", None) or set()
    _busy.ids = busy
    for m in list(_post_order(model)):
        if id(m) in busy or not _supports(m):
            continue
        busy.add(id(m))
        try:
            m.reparameterize()
        finally:
            busy.discard(id(m))
    return model
