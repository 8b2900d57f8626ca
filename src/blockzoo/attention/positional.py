"""Positional encodings: sinusoidal, learned absolute, rotary (RoPE).

Papers: Attention Is All You Need (Vaswani, arXiv 1706.03762, 2017) — sinusoidal
encoding; An Image is Worth 16x16 Words (Dosovitskiy, arXiv 2010.11929, 2020) and
BERT (Devlin, arXiv 1810.04805, 2018) — learned absolute embeddings; RoFormer:
Enhanced Transformer with Rotary Position Embedding (Su, arXiv 2104.09864, 2021).

Letters: B batch, N tokens, C model dim (= dim), d the rotated width, h heads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import (
    _global_backward_hooks,
    _global_backward_pre_hooks,
    _global_forward_hooks,
    _global_forward_pre_hooks,
)

from blockzoo._fastcall import own
from blockzoo._memo import memo_table
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.registry import Example, register, tokens

__all__ = [
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "apply_rotary",
    "rotary_angles",
    "sinusoidal_table",
]


def _dropout(drop: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``drop(y)``: ``y`` itself, without a module call, when the dropout is off (eval or p = 0)
    and no hook listens (``_fastcall.call`` and ``listened`` for one dropout, inlined: these
    blocks are one add, where ~0.3 us of call overhead shows)."""
    if ((drop.p == 0 or not drop.training) and type(drop) is nn.Dropout
            and not (drop._forward_hooks or drop._forward_pre_hooks or drop._backward_hooks
                     or drop._backward_pre_hooks or _global_forward_hooks or _global_forward_pre_hooks
                     or _global_backward_hooks or _global_backward_pre_hooks)):
        return y
    return drop(y)


def sinusoidal_table(
    length: int, dim: int, *, base: float = 10000.0, offset: int = 0,
    device: Any = None, dtype: Any = None,
) -> torch.Tensor:
    """The (length, dim) sinusoidal table of "Attention Is All You Need", section 3.5.

    ``PE(pos, 2i) = sin(pos / base^(2i/dim))``, ``PE(pos, 2i+1) = cos(pos / base^(2i/dim))``
    for ``pos = offset .. offset + length - 1``. An odd ``dim`` ends with a sine column.
    """
    dtype = dtype or torch.get_default_dtype()
    pos = torch.arange(offset, offset + length, device=device, dtype=torch.float64)[:, None]
    i2 = torch.arange(0, dim, 2, device=device, dtype=torch.float64)  # 2i
    angle = pos / base ** (i2 / dim)  # (N, ceil(dim/2))
    table = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)[:, :dim]  # (N, dim)
    return table.to(dtype)


@memo_table()
def _shared_sinusoidal_table(length: int, dim: int, base: float, device: Any, dtype: Any) -> torch.Tensor:
    """``sinusoidal_table`` built once per arguments and shared (``blockzoo._memo``): do not
    modify it in place."""
    return sinusoidal_table(length, dim, base=base, device=device, dtype=dtype)


@register(
    name="sinusoidal_pe",
    family="attention",
    paper="Attention Is All You Need",
    arxiv="1706.03762",
    year=2017,
    input="tokens",
    example=Example(config=dict(dim=16), inputs=tokens("dim"), size=(8,), out_shape="same",
                    tiny=dict(dim=6)),
)
class SinusoidalPositionalEncoding(nn.Module):
    r"""Fixed sinusoidal positional encoding added to the tokens; any length.

    Vaswani et al., "Attention Is All You Need", arXiv 1706.03762, section 3.5.

    Equation::

        PE(pos, 2i)   = sin(pos / base^(2i / C))
        PE(pos, 2i+1) = cos(pos / base^(2i / C))
        y = dropout(x * scale + PE)

    The table is computed for the input's length (in float64, then cast), so there is no
    length limit; it is built once per length, device and dtype and reused.

    Args:
        dim: C, the token width.
        base: 10000 in the paper.
        scale: multiplies the input first (the paper scales embeddings by sqrt(C);
            default 1).
        dropout: dropout after the sum (paper: P_drop = 0.1 on the sums of embeddings
            and encodings, Sec. 5.4; was 0 until issue 15).

    Shape:
        - Input: (B, N, C), C = dim, any N.
        - Output: (B, N, C).

    Example:
        >>> pe = SinusoidalPositionalEncoding(16).eval()
        >>> pe(torch.zeros(1, 3, 16))[0, 0, :4]
        tensor([0., 1., 0., 1.])
    """

    def __init__(
        self, dim: int, *, base: float = 10000.0, scale: float = 1.0, dropout: float = 0.1
    ) -> None:
        super().__init__()
        require(dim > 0, f"SinusoidalPositionalEncoding: dim={dim} must be positive")
        require(base > 0, f"SinusoidalPositionalEncoding: base={base} must be positive")
        self.dim, self.base, self.scale = dim, base, scale
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if len(shape) != 3 or shape[2] != self.dim:  # integer tests first; the message on failure only
            check_shape(x, "B N C", name="SinusoidalPositionalEncoding", C=self.dim)
        pe = _shared_sinusoidal_table(shape[1], self.dim, self.base, x.device, x.dtype)  # (N, C)
        if self.scale != 1:  # x * 1 is x: no op, no copy
            x = x * self.scale
        return _dropout(self._modules["drop"], x + pe)  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}, scale={self.scale}"


@register(
    name="learned_pe",
    family="attention",
    paper="An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
    arxiv="2010.11929",
    year=2020,
    input="tokens",
    example=Example(config=dict(dim=16, max_len=16), inputs=tokens("dim"), size=(8,),
                    out_shape="same", tiny=dict(dim=4, max_len=12)),
    size_arg="max_len",
)
class LearnedPositionalEmbedding(nn.Module):
    r"""Learned absolute position embedding added to the tokens, up to ``max_len``.

    As in ViT (Dosovitskiy et al., arXiv 2010.11929) and BERT (arXiv 1810.04805).

    Equation::

        y_n = dropout(x_n + P_n)      P: (max_len, C) learned, n = 0 .. N-1

    Args:
        dim: C, the token width.
        max_len: the number of learned positions; longer inputs raise ``ShapeError``.
        dropout: dropout after the sum.
        init_std: the embeddings' initial normal std (0.02, as in ViT/BERT).

    Shape:
        - Input: (B, N, C), C = dim, N <= max_len (the first N rows of P are used).
        - Output: (B, N, C).

    Example:
        >>> pe = LearnedPositionalEmbedding(16, max_len=32)
        >>> pe(torch.randn(2, 10, 16)).shape
        torch.Size([2, 10, 16])
    """

    def __init__(
        self, dim: int, max_len: int, *, dropout: float = 0.0, init_std: float = 0.02,
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        require(dim > 0 and max_len > 0,
                f"LearnedPositionalEmbedding: dim={dim}, max_len={max_len} must be positive")
        self.dim, self.max_len, self.init_std = dim, max_len, init_std
        self.weight = nn.Parameter(torch.empty(max_len, dim, device=device, dtype=dtype))
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.weight, std=self.init_std, a=-2 * self.init_std, b=2 * self.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if len(shape) != 3 or shape[2] != self.dim:  # integer tests first; the message on failure only
            check_shape(x, "B N C", name="LearnedPositionalEmbedding", C=self.dim)
        n = shape[1]
        if n > self.max_len:
            raise ShapeError(
                f"LearnedPositionalEmbedding: input has N={n} tokens, more than max_len={self.max_len}"
            )
        pos = own(self, "weight")  # (max_len, C)
        if torch.compiler.is_compiling() or n != self.max_len:
            pos = pos[:n]  # (N, C)
        return _dropout(self._modules["drop"], x + pos)  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_len={self.max_len}"


def rotary_angles(
    length: int, dim: int, *, base: float = 10000.0, offset: int = 0, device: Any = None
) -> torch.Tensor:
    """(length, dim/2) angles m * theta_i, theta_i = base^(-2i/dim), m = offset .. offset+length-1."""
    pos = torch.arange(offset, offset + length, device=device, dtype=torch.float64)
    theta = base ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)
    return pos[:, None] * theta[None, :]  # (N, d/2)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_{2i}, x_{2i+1}) of ``x`` (..., N, d) by ``angles`` (N, d/2)."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    pairs = x.unflatten(-1, (-1, 2))  # (..., N, d/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    # (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos)
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


_COMPLEX_OF = (torch.float32, torch.float64)  # the dtypes whose pairs view as complex64 / complex128


@memo_table()
def _rotary_phases(length: int, dim: int, base: float, offset: int, device: Any, dtype: Any) -> torch.Tensor:
    """(length, dim/2) complex e^(i m theta_i), its cos and sin those of ``apply_rotary`` (float64
    angles, then cast to ``dtype``); built once per arguments and shared (``blockzoo._memo``)."""
    angles = rotary_angles(length, dim, base=base, offset=offset, device=device)
    return torch.complex(angles.cos().to(dtype), angles.sin().to(dtype))


@register(
    name="rope",
    family="attention",
    paper="RoFormer: Enhanced Transformer with Rotary Position Embedding",
    arxiv="2104.09864",
    year=2021,
    input="tokens",
    example=Example(config=dict(dim=16), inputs=tokens("dim"), size=(8,), out_shape="same",
                    tiny=dict(dim=4)),
)
class RotaryEmbedding(nn.Module):
    r"""Rotary position embedding: rotate feature pairs by position-dependent angles.

    Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding",
    arXiv 2104.09864, eq. (34).

    Equation, for the token at position m and pair i = 0 .. d/2 - 1::

        theta_i = base^(-2i / d)
        [y_{2i}, y_{2i+1}] = [x_{2i} cos(m theta_i) - x_{2i+1} sin(m theta_i),
                              x_{2i} sin(m theta_i) + x_{2i+1} cos(m theta_i)]

    Applied to queries and keys, <R_m q, R_n k> depends on q, k and n - m only.
    ``MultiHeadAttention(..., rope=True)`` applies it to each head's q and k.

    Args:
        dim: d, the rotated (last) width; must be even. For use inside attention this is
            the head dim.
        base: 10000 in the paper.

    Shape:
        - Input: (..., N, d), d = dim (tokens (B, N, d) or heads (B, h, N, d)), any N.
        - Output: the same shape; ``forward(x, offset=m0)`` numbers positions from m0.

    Example:
        >>> rope = RotaryEmbedding(8)
        >>> rope(torch.randn(2, 4, 10, 8)).shape
        torch.Size([2, 4, 10, 8])
    """

    def __init__(self, dim: int, *, base: float = 10000.0) -> None:
        super().__init__()
        require(dim > 0 and dim % 2 == 0, f"RotaryEmbedding: dim={dim} must be positive and even")
        require(base > 0, f"RotaryEmbedding: base={base} must be positive")
        self.dim, self.base = dim, base

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        shape = x.shape
        if len(shape) < 3 or shape[-1] != self.dim:  # integer tests first; the message on failure only
            check_shape(x, "* B N C", name="RotaryEmbedding", C=self.dim)
        n = shape[-2]
        if not torch.compiler.is_compiling() and not torch.jit.is_tracing() and x.dtype in _COMPLEX_OF:
            # each pair (x_2i, x_2i+1) as the complex number x_2i + i x_2i+1: the rotation is one
            # complex product by e^(i m theta_i) (no strided halves, no stack)
            try:
                xc = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # (..., N, d/2) complex
            except RuntimeError:  # odd strides or storage offset: no complex view
                xc = None
            if xc is not None:
                phase = _rotary_phases(n, self.dim, self.base, offset, x.device, x.dtype)  # (N, d/2)
                return torch.view_as_real(xc * phase).flatten(-2)  # (..., N, d)
        angles = rotary_angles(n, self.dim, base=self.base, offset=offset, device=x.device)
        return apply_rotary(x, angles)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"

