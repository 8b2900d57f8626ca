"""Positional encodings as pictures: the table, and the dot product by offset.

The encodings are the library's own (``blockzoo.attention.positional``):

- ``sinusoidal``: the (N, D) table of "Attention Is All You Need" (arXiv 1706.03762);
  PE(m) . PE(n) = sum_i cos((n - m) w_i) depends on the offset n - m only.
- ``rope``: RoFormer's rotary embedding (arXiv 2104.09864) applied to the same
  all-ones query at every position; <R_m q, R_n q> depends on n - m only.

``offset_dot_products`` returns that dot product against the offset n - m for a
few anchor positions m: the curves lie on top of each other, which is why the
encoding carries relative position.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from blockzoo.checks import ConfigError

__all__ = ["KINDS", "encoding_table", "offset_dot_products", "plot_posenc"]

KINDS = ("sinusoidal", "rope")


def encoding_table(kind: str, length: int, dim: int) -> torch.Tensor:
    """(length, dim) float64 table: position m's encoding in row m.

    ``sinusoidal``: PE(m); ``rope``: R_m applied to the all-ones vector.
    """
    from blockzoo.attention import positional

    if kind not in KINDS:
        raise ConfigError(f"posenc kind {kind!r} not in {KINDS}")
    if length < 1 or dim < 2:
        raise ConfigError(f"posenc: length={length} must be >= 1 and dim={dim} >= 2")
    if kind == "sinusoidal":
        return positional.sinusoidal_table(length, dim, dtype=torch.float64)
    if dim % 2:
        raise ConfigError(f"posenc rope: dim={dim} must be even")
    rope = positional.RotaryEmbedding(dim)
    return rope(torch.ones(1, length, dim, dtype=torch.float64))[0]  # (N, D)


def offset_dot_products(
    kind: str, length: int, dim: int, anchors: Sequence[int] | None = None
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``{m: (offsets n - m, dot(row m, row n))}`` for n = 0 .. length-1, per anchor m."""
    table = encoding_table(kind, length, dim)
    if anchors is None:
        anchors = sorted({0, length // 4, length // 2})
    bad = [m for m in anchors if not 0 <= m < length]
    if bad:
        raise ConfigError(f"posenc: anchors {bad} outside positions 0..{length - 1}")
    n = torch.arange(length)
    return {m: (n - m, table @ table[m]) for m in anchors}


def plot_posenc(
    kind: str = "sinusoidal",
    length: int = 64,
    dim: int = 64,
    path: str | Path = "posenc.png",
    *,
    show: bool = False,
) -> Path:
    """Heatmap of the table and the dot-product-by-offset curves; returns the PNG path."""
    from blockzoo.viz._figure import pyplot, save

    plt = pyplot(show)
    table = encoding_table(kind, length, dim)
    curves = offset_dot_products(kind, length, dim)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw=dict(width_ratios=[1.1, 1]))
    im = ax1.imshow(table.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax1.set_xlabel("feature (encoding dimension)")
    ax1.set_ylabel("position m")
    what = "PE(m)" if kind == "sinusoidal" else "R_m . 1 (RoPE applied to an all-ones vector)"
    ax1.set_title(f"{kind}: {what}, N={length}, D={dim}")
    fig.colorbar(im, ax=ax1, fraction=0.046)
    for i, (m, (off, dots)) in enumerate(curves.items()):
        # wider lines first, so overlapping curves stay visible
        ax2.plot(off.numpy(), dots.numpy(), lw=max(1.0, 4.5 - 1.5 * i), alpha=0.85, label=f"anchor m = {m}")
    ax2.set_xlabel("offset n - m")
    ax2.set_ylabel("dot product of rows m and n")
    ax2.set_title("same curve from every anchor: only the offset matters")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path, show=show)
