"""Attention Free Transformer: full, local, simple and conv variants.

Paper: An Attention Free Transformer (Zhai, arXiv 2105.14103, 2021).

Letters: B batch, T (= N) tokens, C model dim (= dim), D hidden width
(= hidden_dim), n = max_len the longest sequence, s window / kernel size, h heads.

All variants compute, per channel, a weighted average of the values with weights
exp(K_t' + w_{t,t'}), gated by sigmoid(Q_t); they differ in the position bias w.
Exponentials are shifted by their maximum (per sample and channel for K, per row for
w) — a factor that cancels between numerator and denominator.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from blockzoo._fastcall import call, own
from blockzoo._kept import derived
from blockzoo.checks import ShapeError, check_shape, require, require_divides
from blockzoo.registry import Example, register, tokens

__all__ = ["AFTConv", "AFTFull", "AFTLocal", "AFTSimple", "aft_weighted_average"]


def aft_weighted_average(k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    r"""sum_t' exp(K_t' + w_tt') V_t' / sum_t' exp(K_t' + w_tt'), for w (T, T).

    Shape: k, v (B, T, D); w (T, T); output (B, T, D).
    """
    ek = (k - k.amax(dim=1, keepdim=True).detach()).exp()  # (B, T, D)
    ew = (w - w.amax(dim=1, keepdim=True).detach()).exp()  # (T, T)
    return (ew @ (ek * v)) / (ew @ ek)  # (B, T, D)


def _exp_rows(w: torch.Tensor) -> torch.Tensor:
    """exp(w - max_t' w_tt'), the row-shifted exponential of a (T, T) position bias."""
    return (w - w.amax(dim=1, keepdim=True)).exp()


def _aft_eval(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ew: torch.Tensor) -> torch.Tensor:
    """sigmoid(Q) * (ew @ (exp(K) V)) / (ew @ exp(K)) without autograd, for ``ew`` = exp(w) row-
    shifted (T, T): exp(K) V and exp(K) side by side in one (T, B, 2D) buffer, so both sums are
    one (T, T) @ (T, B 2D) product instead of two batched ones. Shape: q, k, v (B, T, D)."""
    b, t, d = k.shape
    buf = torch.empty((t, b, 2 * d), dtype=k.dtype, device=k.device)  # (T, B, 2D)
    e = buf.transpose(0, 1)  # (B, T, 2D) view
    ek = torch.sub(k, k.amax(dim=1, keepdim=True), out=e[..., d:]).exp_()  # exp(K - max_t K)
    torch.mul(ek, v, out=e[..., :d])  # exp(K) V
    sums = torch.mm(ew, buf.view(t, b * 2 * d)).view(t, b, 2 * d).transpose(0, 1)  # (B, T, 2D)
    y = torch.sigmoid(q)  # (B, T, D), fresh
    return y.mul_(sums[..., :d]).div_(sums[..., d:])


def _window_sums(e: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """sum_t' e_t' + sum_j kernel_j * e_(t + j - s//2) (zero outside 0..T-1), per channel, for e
    (B, T, D) and kernel (s, D): a zero-padded depthwise conv1d over T plus the global sum."""
    s, t = kernel.shape[0], e.shape[1]
    pad = s // 2
    out = torch.addcmul(e.sum(1, keepdim=True), e, kernel[pad])  # (B, T, D): global sum + centre tap
    for j in range(s):
        o = j - pad  # the tap's offset
        if o > 0 and o < t:
            out[:, : t - o].addcmul_(e[:, o:], kernel[j])
        elif o < 0 and -o < t:
            out[:, -o:].addcmul_(e[:, : t + o], kernel[j])
    return out


class _AFTBase(nn.Module):
    def __init__(self, dim: int, hidden_dim: int | None, fk: dict[str, Any]) -> None:
        super().__init__()
        self.dim = dim
        self.hidden_dim = hidden_dim or dim
        self.qkv = nn.Linear(dim, 3 * self.hidden_dim, **fk)
        self.proj = nn.Linear(self.hidden_dim, dim, **fk)

    def _qkv(self, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        shape = x.shape
        if len(shape) != 3 or shape[2] != self.dim:  # integer tests first; the message on failure only
            check_shape(x, "B T C", name=name, C=self.dim)
        q, k, v = call(self._modules["qkv"], x).chunk(3, dim=-1)  # 3 x (B, T, D)
        return q, k, v, shape[1]

    def _check_len(self, n: int, name: str, max_len: int) -> None:
        if n > max_len:
            raise ShapeError(f"{name}: input has T={n} tokens, more than max_len={max_len}")




@register(
    name="aft_full",
    family="attention",
    paper="An Attention Free Transformer",
    arxiv="2105.14103",
    year=2021,
    input="tokens",
    example=Example(config=dict(dim=16, max_len=16), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=4, max_len=12)),
    size_arg="max_len",
)
class AFTFull(_AFTBase):
    r"""AFT-full: gated weighted average of values with a learned pairwise position bias.

    Zhai et al., "An Attention Free Transformer", arXiv 2105.14103, eq. (2).

    Equation::

        Q, K, V = x W^Q, x W^K, x W^V                        (B, T, D)
        Y_t = sigmoid(Q_t) * sum_t' exp(K_t' + w_tt') * V_t' / sum_t' exp(K_t' + w_tt')
        y   = Y W^O

    w is a learned (max_len, max_len) matrix; cost O(T^2 D).

    Args:
        dim: C, the token width.
        max_len: n, the longest sequence (w is n x n).
        hidden_dim: D, the width of Q, K, V (default C).

    Shape:
        - Input: (B, T, C), C = dim, T <= max_len (longer raises ``ShapeError``).
        - Output: (B, T, C).

    Deviations:
        A sequence shorter than ``max_len`` uses w[:T, :T], i.e. it behaves as the first
        T tokens of a max_len sequence whose later tokens are masked out. An output
        projection W^O follows, as in the paper's transformer blocks. The paper's
        factorised w = U V^T (for large n) is not included.

    Example:
        >>> aft = AFTFull(64, max_len=128)
        >>> aft(torch.randn(2, 100, 64)).shape
        torch.Size([2, 100, 64])
    """

    def __init__(
        self, dim: int, max_len: int, *, hidden_dim: int | None = None, device: Any = None, dtype: Any = None
    ) -> None:
        fk = dict(device=device, dtype=dtype)
        super().__init__(dim, hidden_dim, fk)
        require(max_len > 0, f"AFTFull: max_len={max_len} must be positive")
        self.max_len = max_len
        self.pos_bias = nn.Parameter(torch.zeros(max_len, max_len, **fk))
        nn.init.normal_(self.pos_bias, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, n = self._qkv(x, "AFTFull")
        self._check_len(n, "AFTFull", self.max_len)
        ew = derived(self, n, (own(self, "pos_bias"),), lambda w: _exp_rows(w[:n, :n]))
        if ew is not None:
            return call(self._modules["proj"], _aft_eval(q, k, v, ew))
        # Y_t = sigmoid(Q_t) * sum exp(K + w) V / sum exp(K + w)
        y = q.sigmoid() * aft_weighted_average(k, v, self.pos_bias[:n, :n])  # (B, T, D)
        return self.proj(y)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_len={self.max_len}, hidden_dim={self.hidden_dim}"


@register(
    name="aft_local",
    family="attention",
    paper="An Attention Free Transformer",
    arxiv="2105.14103",
    year=2021,
    input="tokens",
    example=Example(config=dict(dim=16, max_len=16, window=3), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=4, max_len=12)),
    size_arg="max_len",
)
class AFTLocal(AFTFull):
    r"""AFT-local: AFT-full with the position bias kept only within a local window.

    Zhai et al., "An Attention Free Transformer", arXiv 2105.14103, eq. (3).

    Equation::

        w'_tt' = w_tt' if |t - t'| < s else 0
        Y_t = sigmoid(Q_t) * sum_t' exp(K_t' + w'_tt') V_t' / sum_t' exp(K_t' + w'_tt')
        y   = Y W^O

    Every token still contributes (with bias 0 outside the window): the context stays
    global, only the learned bias is local.

    Args:
        dim: C, the token width.
        max_len: n, the longest sequence (w is n x n).
        window: s; the bias is kept where |t - t'| < s.
        hidden_dim: D, the width of Q, K, V (default C).

    Shape:
        - Input: (B, T, C), C = dim, T <= max_len (longer raises ``ShapeError``).
        - Output: (B, T, C).

    Deviations:
        As AFT-full: w[:T, :T] for shorter inputs, and an output projection W^O.

    Example:
        >>> aft = AFTLocal(64, max_len=128, window=8)
        >>> aft(torch.randn(2, 100, 64)).shape
        torch.Size([2, 100, 64])
    """

    def __init__(
        self, dim: int, max_len: int, window: int, *, hidden_dim: int | None = None,
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__(dim, max_len, hidden_dim=hidden_dim, device=device, dtype=dtype)
        require(window > 0, f"AFTLocal: window={window} must be positive")
        self.window = window
        t = torch.arange(max_len, device=device)
        self.register_buffer("local", (t[:, None] - t[None, :]).abs() < window, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, n = self._qkv(x, "AFTLocal")
        self._check_len(n, "AFTLocal", self.max_len)
        w = self.pos_bias[:n, :n] * self.local[:n, :n]  # (T, T), 0 outside the window
        return self.proj(q.sigmoid() * aft_weighted_average(k, v, w))  # (B, T, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_len={self.max_len}, window={self.window}, hidden_dim={self.hidden_dim}"


@register(
    name="aft_simple",
    family="attention",
    paper="An Attention Free Transformer",
    arxiv="2105.14103",
    year=2021,
    input="tokens",
    example=Example(config=dict(dim=16), inputs=tokens("dim"), size=(8,), out_shape="same",
                    tiny=dict(dim=4)),
)
class AFTSimple(_AFTBase):
    r"""AFT-simple: no position bias; a softmax over tokens per channel, linear in T.

    Zhai et al., "An Attention Free Transformer", arXiv 2105.14103, eq. (4).

    Equation::

        Y_t = sigmoid(Q_t) * sum_t' softmax_t'(K)_t' * V_t'      (softmax over tokens)
        y   = Y W^O

    Cost O(T D): linear in T; any length.

    Args:
        dim: C, the token width.
        hidden_dim: D, the width of Q, K, V (default C).

    Shape:
        - Input: (B, T, C), C = dim, any T.
        - Output: (B, T, C).

    Example:
        >>> aft = AFTSimple(64)
        >>> aft(torch.randn(2, 4096, 64)).shape
        torch.Size([2, 4096, 64])
    """

    def __init__(
        self, dim: int, *, hidden_dim: int | None = None, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__(dim, hidden_dim, dict(device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, _ = self._qkv(x, "AFTSimple")
        context = (k.softmax(dim=1) * v).sum(dim=1, keepdim=True)  # (B, 1, D)
        return call(self._modules["proj"], q.sigmoid() * context)  # (B, T, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_dim={self.hidden_dim}"


@register(
    name="aft_conv",
    family="attention",
    paper="An Attention Free Transformer",
    arxiv="2105.14103",
    year=2021,
    input="tokens",
    example=Example(config=dict(dim=16, kernel_size=3, num_heads=4), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=4, num_heads=2)),
)
class AFTConv(_AFTBase):
    r"""AFT-conv: a translation-invariant position bias per head, as a depthwise conv.

    Zhai et al., "An Attention Free Transformer", arXiv 2105.14103, eq. (5), over a
    1-D token sequence.

    Equation, for head i (its D/h channels) with kernel w^i of size s::

        num = conv1d(exp(K^i) * V^i, exp(w^i) - 1) + sum_t' exp(K^i_t') * V^i_t'
        den = conv1d(exp(K^i),       exp(w^i) - 1) + sum_t' exp(K^i_t')
        Y^i = sigmoid(Q^i) * num / den,   y = Concat(Y^i) W^O

    This equals AFT with w_tt' = w^i_{t'-t+s//2} for |t' - t| <= s//2 and 0 elsewhere
    (tested): global context, local learned bias, O(T s D) cost, any length.

    Args:
        dim: C, the token width.
        kernel_size: s, odd.
        num_heads: h; w has one kernel per head, shared by its channels.
        hidden_dim: D, the width of Q, K, V (default C); h must divide it.

    Shape:
        - Input: (B, T, C), C = dim, any T.
        - Output: (B, T, C).

    Deviations:
        The paper applies it to 2-D feature maps (s x s kernels); this is the same
        operator on a 1-D token sequence (kernel of s taps), as the blocks here take
        tokens (B, T, C).

    Example:
        >>> aft = AFTConv(64, kernel_size=7, num_heads=8)
        >>> aft(torch.randn(2, 4096, 64)).shape
        torch.Size([2, 4096, 64])
    """

    def __init__(
        self, dim: int, kernel_size: int, num_heads: int = 1, *, hidden_dim: int | None = None,
        device: Any = None, dtype: Any = None,
    ) -> None:
        fk = dict(device=device, dtype=dtype)
        super().__init__(dim, hidden_dim, fk)
        require(kernel_size > 0 and kernel_size % 2 == 1, f"AFTConv: kernel_size={kernel_size} must be odd")
        require_divides("AFTConv", "num_heads", num_heads, "hidden_dim", self.hidden_dim)
        self.kernel_size, self.num_heads = kernel_size, num_heads
        self.pos_bias = nn.Parameter(torch.zeros(num_heads, kernel_size, **fk))
        nn.init.normal_(self.pos_bias, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, _ = self._qkv(x, "AFTConv")
        d, h, s = self.hidden_dim, self.num_heads, self.kernel_size
        ek = (k - k.amax(dim=1, keepdim=True).detach()).exp()  # (B, T, D)
        # compiling, tracing, or under a dispatch mode (the FLOP and copy counters): the conv form,
        # whose multiply-adds the FLOP counter counts
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or is_in_torch_dispatch_mode():
            ek = ek.transpose(1, 2)  # (B, D, T)
            ekv = ek * v.transpose(1, 2)  # (B, D, T)
            kernel = (self.pos_bias.exp() - 1).repeat_interleave(d // h, dim=0)[:, None]  # (D, 1, s)
            pad = s // 2
            # conv(exp(K) V, exp(w) - 1) + sum exp(K) V, over conv(exp(K), exp(w) - 1) + sum exp(K)
            num = F.conv1d(ekv, kernel, padding=pad, groups=d) + ekv.sum(-1, keepdim=True)  # (B, D, T)
            den = F.conv1d(ek, kernel, padding=pad, groups=d) + ek.sum(-1, keepdim=True)  # (B, D, T)
            return call(self._modules["proj"], q.sigmoid() * (num / den).transpose(1, 2))  # (B, T, C)
        # eager: the same two depthwise convolutions as s shifted multiply-adds on
        # (B, T, [exp(K) V | exp(K)]), channels last (oneDNN's depthwise conv1d: a large fixed cost, twice)
        kernel = (self.pos_bias.exp() - 1).t()  # (s, h)
        kernel = kernel[:, None, :, None].expand(s, 2, h, d // h).reshape(s, 2 * d)  # (s, 2D), num | den
        sums = _window_sums(torch.cat((ek * v, ek), dim=-1), kernel)  # (B, T, 2D)
        num, den = sums.chunk(2, dim=-1)  # 2 x (B, T, D)
        return call(self._modules["proj"], q.sigmoid() * (num / den))  # (B, T, C)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, kernel_size={self.kernel_size}, num_heads={self.num_heads}, "
                f"hidden_dim={self.hidden_dim}")
