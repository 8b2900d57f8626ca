r"""Twins-SVT's locally-grouped self-attention (LSA).

Paper: Twins: Revisiting the Design of Spatial Attention in Vision Transformers (Chu et al.,
arXiv 2104.13840, 2021), Sec. 3.2. Its other half, global sub-sampled attention (GSA), is
PVT's spatial-reduction attention (``spatial_reduction_attention``, the same q, kv, strided
conv and LayerNorm), so it is not registered again.

Letters: B batch, C channels (= dim), H W spatial, k the window (group) side, Hp Wp the
padded size, nW = (Hp / k)(Wp / k) windows, N = k^2 tokens per window, h heads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.attention.dot_product import MultiHeadAttention
from blockzoo.attention.swin import _unwindows, _windows
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["LocallyGroupedAttention"]


@register(
    name="lsa",
    family="attention",
    paper="Twins: Revisiting the Design of Spatial Attention in Vision Transformers",
    arxiv="2104.13840",
    year=2021,
    input="image",
    example=Example(config=dict(dim=16, num_heads=2, window_size=3), inputs=images("dim"), size=(6, 9),
                    sizes=((7, 5), (2, 11)), out_shape="same", tiny=dict(dim=4, num_heads=1, window_size=2)),
)
class LocallyGroupedAttention(nn.Module):
    r"""Multi-head self-attention inside each k x k window (group) of the map, windows not shifted.

    Chu et al., "Twins", arXiv 2104.13840, Sec. 3.2 and Eq. (1): the map is cut into
    m x n groups of k x k tokens and each group attends only to itself::

        x = [x_{1,1}, ..., x_{m,n}]               groups of k x k tokens
        LSA(x)_{i,j} = MHSA(x_{i,j})              = Concat(head_1..head_h) W^O per group
        head = softmax(Q K^T / sqrt(d)) V         Q, K, V from the group's own tokens

    The attention is the catalogue's ``MultiHeadAttention`` (fused SDPA) over the windows
    as a batch.

    Args:
        dim: C. num_heads: h. window_size: k (Twins-SVT: 7).
        qkv_bias: biases on the q, k, v projections (Twins: True).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W; output (B, C, H, W).
        - ``attend_tokens(x, H, W)`` (what Twins' blocks call): (B, N, C) -> (B, N, C),
          N = H W tokens in row-major order.

    Deviations:
        None from the released code, which zero-pads H and W up to multiples of k *before*
        the q, k, v projections and does not mask the padding: the padded tokens take part
        as keys with k = b_K, v = b_V (the authors' "forward_padding"; their masked variant
        is commented out). Swin's window attention (``shifted_window_attention``) masks them.

    Example:
        >>> lsa = LocallyGroupedAttention(64, num_heads=2, window_size=7)
        >>> lsa(torch.randn(2, 64, 56, 40)).shape
        torch.Size([2, 64, 56, 40])
    """

    def __init__(self, dim: int, num_heads: int = 1, *, window_size: int = 7, qkv_bias: bool = True,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(window_size >= 1, f"LocallyGroupedAttention: window_size={window_size} must be >= 1")
        self.dim, self.window_size = dim, window_size
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias=qkv_bias, device=device, dtype=dtype)

    def attend_tokens(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """LSA on tokens (B, N, C) of an H x W map (row-major) -> (B, N, C)."""
        b, n, c = x.shape
        k = self.window_size
        hp, wp = -(-height // k) * k, -(-width // k) * k
        z = x.reshape(b, height, width, c)
        if hp > height or wp > width:
            z = F.pad(z, (0, 0, 0, wp - width, 0, hp - height))  # (B, Hp, Wp, C), zero tokens
        groups = _windows(z, k, k)  # (B, nW, k^2, C)
        # LSA(x)_{i,j} = MHSA(x_{i,j}): the windows as a batch
        out = self.attn(groups.flatten(0, 1))  # (B nW, k^2, C)
        z = _unwindows(out.view(b, -1, k * k, c), hp, wp, k, k)  # (B, Hp, Wp, C)
        return z[:, :height, :width].reshape(b, n, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = check_shape(x, "B C H W", name="LocallyGroupedAttention", C=self.dim).values()
        out = self.attend_tokens(x.flatten(2).transpose(1, 2), h, w)  # (B, N, C)
        return out.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}"
