r"""ConTNet's patch-wise standard transformer encoder (STE): a transformer layer inside each patch.

Paper: ConTNet: Why not use convolution and transformer at the same time? (Yan et al.,
arXiv 2104.13497, 2021), Sec. 3 (the STE and its 2-D position encoding). Built from the
catalogue's ``TransformerEncoderBlock`` (itself ``MultiHeadAttention``).

Letters: B batch, C channels (= dim), H W spatial, P patch side (patch_size), N = P^2
tokens of a patch, n_P patches (windows) per image, h heads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import listened, own
from blockzoo._kept import derived
from blockzoo.attention.swin import _unwindows, _windows, real_window_tokens
from blockzoo.attention.transformer import TransformerEncoderBlock
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["PatchwiseTransformer"]


def _position_embedding(pos_row: torch.Tensor, pos_col: torch.Tensor) -> torch.Tensor:
    """(N, C) concat(E_row[i], E_col[j]) at token i P + j, from (P, C/2) E_row and E_col."""
    p, half = pos_row.shape
    rows = pos_row[:, None, :].expand(p, p, half)  # (P, P, C/2), varies along i
    cols = pos_col[None, :, :].expand(p, p, half)  # (P, P, C/2), varies along j
    return torch.cat((rows, cols), dim=-1).reshape(p * p, 2 * half)  # (N, C)


@register(
    name="patchwise_transformer",
    family="attention",
    paper="ConTNet: Why not use convolution and transformer at the same time?",
    arxiv="2104.13497",
    year=2021,
    input="image",
    example=Example(config=dict(dim=16, num_heads=2, patch_size=4), inputs=images("dim"), size=(8, 8),
                    sizes=((7, 10), (3, 5), (12, 4)), out_shape="same",
                    tiny=dict(dim=4, num_heads=1, patch_size=2, mlp_ratio=2.0)),
)
class PatchwiseTransformer(nn.Module):
    r"""ConTNet's STE: the map cut into non-overlapping P x P patches, one transformer layer in each.

    Yan et al., "ConTNet: Why not use convolution and transformer at the same time?", arXiv
    2104.13497, Sec. 3 (and the authors' released code for the details below).

    Equation, for every patch X (N = P^2 tokens of width C, row-major)::

        X[i, j] <- X[i, j] + concat(E_row[i], E_col[j])      E_row, E_col: (P, C/2) learned
        X' = LN_1(X + MHSA(X))                                 (post-norm, as released)
        Y  = LN_2(X' + W_2 GELU(W_1 X' + b_1) + b_2)

    Attention never crosses a patch border; the patches are put back where they came from,
    so the block maps (B, C, H, W) to (B, C, H, W). ``norm_first=True`` gives the pre-norm
    variant of the released code (x + MHSA(LN(x)), x + MLP(LN(x))).

    Args:
        dim: C (even: the row embedding covers the first C/2 channels, the column one the rest).
        num_heads: h (must divide C).
        patch_size: P (ConTNet alternates 7 and 14).
        mlp_ratio: the MLP's hidden width over C (ConT-M: 4, and 2 in its last stage).
        qkv_bias: biases on the q, k, v projections (released default: True).
        dropout: on the attention weights, after the output projection and in the MLP.
        norm_first: pre-norm instead of the released default post-norm.

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        The released code needs H and W divisible by P. Here other sizes are zero-padded at
        the bottom and right to whole patches and the padded tokens are masked out as keys
        (every patch keeps at least one real token), then cropped away, so the real tokens
        of a partial patch attend exactly to each other with their own position embeddings;
        at divisible sizes nothing is padded and the result is the released one.

    Example:
        >>> ste = PatchwiseTransformer(64, num_heads=2, patch_size=7)
        >>> ste(torch.randn(2, 64, 14, 20)).shape
        torch.Size([2, 64, 14, 20])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        *,
        patch_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        norm_first: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(dim > 0 and dim % 2 == 0,
                f"PatchwiseTransformer: dim={dim} must be even (row and column embeddings take half each)")
        require(patch_size >= 1, f"PatchwiseTransformer: patch_size={patch_size} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.dim, self.patch_size = dim, patch_size
        # E_row (P, C/2) on the first half of the channels, E_col (P, C/2) on the second
        self.pos_row = nn.Parameter(torch.zeros(patch_size, dim // 2, **fk))
        self.pos_col = nn.Parameter(torch.zeros(patch_size, dim // 2, **fk))
        self.encoder = TransformerEncoderBlock(
            dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, dropout=dropout, attn_dropout=dropout,
            act_layer="gelu", norm_first=norm_first, **fk)

    def position_embedding(self) -> torch.Tensor:
        """The (N, C) embedding added to every patch: concat(E_row[i], E_col[j]) at token i P + j."""
        return _position_embedding(self.pos_row, self.pos_col)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.dim:
            check_shape(x, "B C H W", name="PatchwiseTransformer", C=self.dim)  # raises
        b, c, h, w = x.shape
        p = self.patch_size
        hp, wp = -(-h // p) * p, -(-w // p) * p
        n_p = (hp // p) * (wp // p)
        z = None
        if not torch.compiler.is_compiling() and not torch.is_grad_enabled() and hp == h and wp == w:
            pos = derived(self, "position_embedding", (own(self, "pos_row"), own(self, "pos_col")),
                          _position_embedding)
            if pos is not None:
                # X[i, j] + concat(E_row[i], E_col[j]) written straight into patch order: one
                # pass over x (the windowing copy and the sum in one op)
                z = torch.empty(b, h // p, w // p, p, p, c, dtype=torch.result_type(x, pos), device=x.device)
                xw = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, nh, nw, P, P, C)
                z = torch.add(xw, pos.view(p, p, c), out=z).view(b * n_p, p * p, c)  # (B n_P, N, C)
        if z is None:
            z = x.permute(0, 2, 3, 1)  # (B, H, W, C)
            if hp > h or wp > w:
                z = F.pad(z, (0, 0, 0, wp - w, 0, hp - h))  # (B, Hp, Wp, C)
            z = _windows(z, p, p)  # (B, n_P, N, C)
            # X[i, j] + concat(E_row[i], E_col[j])
            z = (z + self.position_embedding()).reshape(b * n_p, p * p, c)  # (B n_P, N, C)
        pad = self._padding(h, w, hp, wp, b, x.device)  # (B n_P, N) or None
        # inference on whole patches: PyTorch's fused encoder layer where it computes the same
        # (nn.TransformerEncoderLayer's eval path; its explicit attention suits short patches)
        y = None if pad is not None or listened(self.encoder) else self.encoder._fused(z)
        z = self.encoder(z, key_padding_mask=pad) if y is None else y  # (B n_P, N, C)
        z = _unwindows(z.reshape(b, n_p, p * p, c), hp, wp, p, p)  # (B, Hp, Wp, C)
        return z[:, :h, :w].permute(0, 3, 1, 2)  # (B, C, H, W)

    def _padding(self, h: int, w: int, hp: int, wp: int, b: int, device: Any) -> torch.Tensor | None:
        """(B n_P, N) True at the padded tokens of each patch, or None when nothing is padded."""
        if hp == h and wp == w:
            return None
        p = self.patch_size
        pad = ~real_window_tokens(h, w, hp, wp, p, p, device)  # (n_P, N)
        return pad.expand(b, -1, -1).reshape(-1, p * p)  # (B n_P, N)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, patch_size={self.patch_size}"
