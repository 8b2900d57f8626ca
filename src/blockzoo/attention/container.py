r"""Container's affinity mixing: a dynamic (attention) and a static (convolution) affinity on shared values.

Paper: Container: Context Aggregation Network (Gao et al., arXiv 2106.01401, NeurIPS 2021),
Sec. 3.1-3.3, Eq. (1) and (5).

Letters: B batch, C channels (= dim), H W spatial, N = H W tokens, h heads, d = C / h.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["AffinityMixing"]

# Up to this many tokens the dynamic affinity runs as two bmm's on the (B, 3C, N) conv
# output; beyond it as SDPA's fused kernel on one (B, N, 3C) copy of it (SDPA on the
# conv's own layout, d not innermost, takes its unfused math path, slower than both).
_BMM_MAX_TOKENS = 128


@register(
    name="affinity_mixing",
    family="attention",
    paper="Container: Context Aggregation Network",
    arxiv="2106.01401",
    year=2021,
    input="image",
    example=Example(config=dict(dim=16, num_heads=2), inputs=images("dim"), size=(6, 6), out_shape="same",
                    tiny=dict(dim=4, num_heads=2, kernel_size=3)),
)
class AffinityMixing(nn.Module):
    r"""Container's token mixer: a learnable mix of an attention affinity and a depthwise-conv affinity.

    Gao et al., "Container: Context Aggregation Network", arXiv 2106.01401, Eq. (1) and (5)
    (Container-Light, Sec. 3.3).

    Equation, V shared by both affinities, per head j for the dynamic one::

        [Q, K, V] = W_in x                                  1 x 1 conv, C -> 3C
        A_dyn V   = Concat_j softmax(Q_j K_j^T / sqrt(d)) V_j     (over all N tokens)
        A_sta V   = DWConv_{k x k}(V)                        a static, local, per-channel affinity
        y = W_out (sigmoid(a) A_dyn V + (1 - sigmoid(a)) A_sta V)      a a learned scalar

    With ``dynamic=False`` (Container-Light's first three stages) only the static affinity
    is used: W_in maps C -> C (V alone) and y = W_out DWConv(V).

    Args:
        dim: C. num_heads: h (must divide C).
        kernel_size: k of the static affinity (Container-Light: 5).
        dynamic: include the attention affinity and the mixing weight a (init 0: an even mix).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        Follows the authors' Container-Light code: the attention has no projection of its
        own (W_in and W_out are shared with the static branch), and a is a single scalar
        through a sigmoid (the paper's general form has free weights alpha, beta).

    Example:
        >>> mix = AffinityMixing(64, num_heads=8)
        >>> mix(torch.randn(2, 64, 7, 7)).shape
        torch.Size([2, 64, 7, 7])
    """

    def __init__(self, dim: int, num_heads: int = 8, *, kernel_size: int = 5, dynamic: bool = True,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(kernel_size % 2 == 1, f"AffinityMixing: kernel_size={kernel_size} must be odd")
        fk = dict(device=device, dtype=dtype)
        self.dim, self.num_heads, self.dynamic = dim, num_heads, dynamic
        self.head_dim = require_divides("AffinityMixing", "num_heads", num_heads, "dim", dim)
        self.conv1 = nn.Conv2d(dim, (3 if dynamic else 1) * dim, 1, **fk)
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **fk)
        self.conv2 = nn.Conv2d(dim, dim, 1, **fk)
        if dynamic:
            self.sa_weight = nn.Parameter(torch.zeros(1, **fk))
        else:
            self.register_parameter("sa_weight", None)
        self.attn_map = AttentionMap("weights")  # A_dyn, (B, h, N, N), when recorded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.dim:
            check_shape(x, "B C H W", name="AffinityMixing", C=self.dim)  # raises, naming the misfit
        c, mods = self.dim, self._modules
        qkv = call(mods["conv1"], x)  # (B, 3C, H, W) or (B, C, H, W)
        static = call(mods["conv"], qkv[:, -c:])  # A_sta V
        if self.sa_weight is None:
            return call(mods["conv2"], static)
        dyn = self._dynamic(qkv)  # A_dyn V: (B, C, H, W)
        # y = W_out (sigmoid(a) A_dyn V + (1 - sigmoid(a)) A_sta V)
        return call(mods["conv2"], torch.lerp(static, dyn, torch.sigmoid(self.sa_weight)))

    def _dynamic(self, qkv: torch.Tensor) -> torch.Tensor:
        """A_dyn V = softmax(Q K^T / sqrt(d)) V per head, (B, C, H, W), from the (B, 3C, H, W) projection."""
        b, _, h, w = qkv.shape
        nh, d, n, c = self.num_heads, self.head_dim, h * w, self.dim
        amap = self._modules["attn_map"]
        if torch.compiler.is_compiling() or n > _BMM_MAX_TOKENS:
            t = qkv.flatten(2).transpose(1, 2).contiguous()  # (B, N, 3C)
            q, k, v = t.view(b, n, 3, nh, d).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, d), d innermost
            if not amap.active:
                out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
                return out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        # on the conv's layout, heads as a batch: (B h, d, N) each
        q, k, v = qkv.view(b, 3, nh, d, n).transpose(0, 1).reshape(3, b * nh, d, n)  # one copy
        a = torch.bmm(q.transpose(1, 2), k).mul_(d ** -0.5).softmax(-1)  # (B h, N, N)
        if amap.active or amap._forward_hooks or amap._forward_pre_hooks:
            a = amap(a.view(b, nh, n, n)).reshape(b * nh, n, n)  # A_dyn, (B, h, N, N)
        return torch.bmm(v, a.transpose(1, 2)).view(b, c, h, w)  # V A^T

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, dynamic={self.dynamic}"
