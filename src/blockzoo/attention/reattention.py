r"""DeepViT's re-attention: the heads' attention maps re-mixed by a learned H x H matrix.

Paper: DeepViT: Towards Deeper Vision Transformer (Zhou et al., arXiv 2103.11886, 2021),
Sec. 4.1, Eq. (3).

Letters: B batch, N tokens, C channels (= dim), h heads, d = C / h.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, folded_conv_bn
from blockzoo._fastops import softmax_last_
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require_divides
from blockzoo.registry import Example, register, tokens

__all__ = ["ReAttention"]


@register(
    name="re_attention",
    family="attention",
    paper="DeepViT: Towards Deeper Vision Transformer",
    arxiv="2103.11886",
    year=2021,
    input="tokens",
    example=Example(config=dict(dim=16, num_heads=4), inputs=tokens("dim"), size=(10,), out_shape="same",
                    tiny=dict(dim=4, num_heads=2)),
    exempt={"grad": "in training mode the bias of the head-mixing matrix sits just before a batch-statistics "
                    "BatchNorm over the maps, which removes it exactly (gradient 0); it acts in eval through "
                    "the running statistics and the authors' code has it "
                    "(tests/test_backbones_paper_only.py checks "
                    "the list)"},
)
class ReAttention(nn.Module):
    r"""Multi-head self-attention whose h attention maps are re-mixed by a learned h x h matrix.

    Zhou et al., "DeepViT: Towards Deeper Vision Transformer", arXiv 2103.11886, Eq. (3)::

        A_j = softmax(Q_j K_j^T / sqrt(d))                          j = 1..h,  (N x N)
        A'_i = BN(sum_j Theta_ij A_j + theta_i)                     Theta in R^{h x h}
        Re-Attention(x) = Concat_i(A'_i V_i) W^O

    Args:
        dim: C. num_heads: h (must divide C; DeepViT: 12). qkv_bias: (DeepViT: True).
        norm_eps: of the BatchNorm over the h maps (1e-5).

    Shape:
        - Input: (B, N, C), C = dim, any N.
        - Output: (B, N, C).

    Deviations:
        Follows the authors' code: Theta is a 1 x 1 conv over the head axis (with a bias
        theta) and Norm is a BatchNorm2d over the h maps. The re-mixed maps are explicit
        (h N^2 memory): the fused attention kernel cannot mix heads. ``attn_map`` records
        the heads' softmax maps A before the re-mixing (the distributions the figures draw).

    Example:
        >>> attn = ReAttention(384, num_heads=12)
        >>> attn(torch.randn(2, 197, 384)).shape
        torch.Size([2, 197, 384])
    """

    def __init__(self, dim: int, num_heads: int = 8, *, qkv_bias: bool = True, norm_eps: float = 1e-5,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = require_divides("ReAttention", "num_heads", num_heads, "dim", dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **fk)
        self.reatten_matrix = nn.Conv2d(num_heads, num_heads, 1, **fk)
        self.var_norm = nn.BatchNorm2d(num_heads, eps=norm_eps, **fk)
        self.proj = nn.Linear(dim, dim, **fk)
        self.attn_map = AttentionMap("weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[2] == self.dim):
            check_shape(x, "B N C", name="ReAttention", C=self.dim)  # raises, naming the misfit
        b, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        mods = self._modules
        if not torch.is_grad_enabled() and not mods["attn_map"].active:
            out = self._inference(x, b, n, h, d)
            if out is not None:
                return out
        q, k, v = self.qkv(x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        a = self.attn_map((q @ k.transpose(-1, -2) * d ** -0.5).softmax(-1))  # A: (B, h, N, N)
        # A' = BN(Theta A + theta), mixing the h maps at every (query, key) pair
        a = self.var_norm(self.reatten_matrix(a))  # (B, h, N, N)
        out = (a @ v).transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        return self.proj(out)

    def _inference(self, x: torch.Tensor, b: int, n: int, h: int, d: int) -> torch.Tensor | None:
        """``forward`` without autograd, None where the norm cannot be folded (hooks, training,
        tracing): q, k, v laid out per head in one copy for plain ``bmm`` (``matmul`` copied
        each permuted view), and BN(Theta A + theta) as one batched product of A's h maps with
        the norm folded into Theta, W' A + b' (the 1 x 1 convolution, then the norm: two passes
        over the (B, h, N, N) maps and oneDNN's fixed cost)."""
        mods = self._modules
        # decided before any work (x[:, None] stands in for the 4-D maps: the fold reads its rank)
        folded = folded_conv_bn(mods["reatten_matrix"], mods["var_norm"], x[:, None])
        if folded is None:
            return None
        weight, bias = folded  # (h, h, 1, 1), (h,)
        qkv = call(mods["qkv"], x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d)
        q, k, v = qkv.reshape(3, b * h, n, d).unbind(0)  # 3 x (B h, N, d), contiguous
        a = softmax_last_(torch.bmm(q, k.transpose(1, 2)).mul_(d ** -0.5))  # A: (B h, N, N)
        # A' = W' A + b', over the head axis at every (query, key) pair
        a = torch.baddbmm(bias.view(1, h, 1), weight.view(1, h, h).expand(b, h, h), a.view(b, h, n * n))
        out = torch.bmm(a.view(b * h, n, n), v).view(b, h, n, d)  # (B, h, N, d)
        return call(mods["proj"], out.transpose(1, 2).reshape(b, n, h * d))  # (B, N, C)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"
