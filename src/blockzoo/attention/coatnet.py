"""CoAtNet's relative attention: global self-attention with a translation-invariant 2-D bias.

Paper: CoAtNet: Marrying Convolution and Attention for All Data Sizes (Dai, Liu, Le,
Tan; arXiv 2106.04803, 2021).

Letters: B batch, C channels, H W spatial, N = H*W positions, h heads, d head dim.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call
from blockzoo.attention._attend import attend, pair
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import ShapeError, check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["RelativeAttention2d"]

# The gathered bias w[i - j] per block, for inference: a function of the table and the input
# size only, kept with a weak reference to the table and its address and version (an
# optimiser step, load_state_dict's copy_, ``.data =`` or a new table rebuilds it). Biases of
# at most this many elements are kept (1 MiB in float32); larger ones are gathered per call.
_BIAS: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()
_BIAS_KEEP = 1 << 18


@register(
    name="coatnet_relative_attention",
    family="attention",
    paper="CoAtNet: Marrying Convolution and Attention for All Data Sizes",
    arxiv="2106.04803",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, num_heads=2, max_size=12), inputs=images(),
                    size=(8, 8), out_shape="same", tiny=dict(channels=4, num_heads=1, max_size=12)),
)
class RelativeAttention2d(nn.Module):
    r"""CoAtNet relative attention: softmax(q k^T / sqrt(d) + w[i - j]) v over all H*W pixels.

    Dai et al., "CoAtNet: Marrying Convolution and Attention for All Data Sizes",
    arXiv 2106.04803 (the "pre-normalisation relative attention" of its Eq. 3).

    Equation, for pixels i = (i_h, i_w) and j = (j_h, j_w), per head::

        q, k, v = W_qkv x                                  (1x1 conv)
        A_{i,j} = softmax_j(q_i . k_j / sqrt(d) + w[i_h - j_h, i_w - j_w])
        y_i     = W_o sum_j A_{i,j} v_j

    The bias w depends only on the offset i - j (translation-invariant, like a
    convolution kernel spanning the whole image). It is a learned table of
    (2 H_max - 1) x (2 W_max - 1) entries per head, ``H_max, W_max = max_size``: any
    H <= H_max and W <= W_max works; a larger input raises ``ShapeError``.
    ``resize_table(new_max)`` grows (or shrinks) the table by bicubic interpolation,
    which is how the paper moves a model to a higher resolution before fine-tuning.

    Args:
        channels: C, input and output channels.
        num_heads: h, attention heads.
        head_dim: d, per-head width (default ``channels // num_heads``).
        max_size: (H_max, W_max), the largest input the bias table covers (int: square).
        qkv_bias: whether the q/k/v projection has a bias.

    Shape:
        - Input: (B, C, H, W), C = channels, H <= H_max, W <= W_max.
        - Output: (B, C, H, W).

    Deviations:
        - The block is the attention sublayer only; the paper wraps it in a pre-norm
          transformer block with an MLP and, in down-sampling blocks, pooling.

    Example:
        >>> attn = RelativeAttention2d(32, num_heads=4, max_size=14)
        >>> attn(torch.randn(2, 32, 7, 9)).shape
        torch.Size([2, 32, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 1,
        head_dim: int | None = None,
        max_size: int | tuple[int, int] = 32,
        qkv_bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(num_heads >= 1, f"RelativeAttention2d: num_heads={num_heads} must be >= 1")
        if head_dim is None:
            head_dim = require_divides("RelativeAttention2d", "num_heads", num_heads, "channels", channels)
        self.channels, self.num_heads, self.head_dim = channels, num_heads, head_dim
        self.max_size = pair(max_size, "max_size", "RelativeAttention2d")
        fk = dict(device=device, dtype=dtype)
        inner = num_heads * head_dim
        self.qkv = nn.Conv2d(channels, 3 * inner, 1, bias=qkv_bias, **fk)
        self.proj = nn.Conv2d(inner, channels, 1, **fk)
        mh, mw = self.max_size
        self.rel_table = nn.Parameter(torch.empty(num_heads, 2 * mh - 1, 2 * mw - 1, **fk))
        self.attn_map = AttentionMap("weights")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.rel_table, std=0.02)

    def relative_bias(self, H: int, W: int) -> torch.Tensor:
        """The bias w[i - j] for an H x W input, (h, H*W, H*W); ShapeError beyond max_size."""
        mh, mw = self.max_size
        if H > mh or W > mw:
            raise ShapeError(
                f"RelativeAttention2d: input {H}x{W} exceeds the relative-bias table's "
                f"max_size=({mh}, {mw}); sizes H <= {mh}, W <= {mw} work (build with a larger "
                "max_size or call resize_table)"
            )
        dev = self.rel_table.device
        ih = torch.arange(H, device=dev)
        iw = torch.arange(W, device=dev)
        dh = (ih[:, None] - ih[None, :]) + (mh - 1)  # (H, H): i_h - j_h, shifted to >= 0
        dw = (iw[:, None] - iw[None, :]) + (mw - 1)  # (W, W)
        # w[i_h - j_h, i_w - j_w] for i = (i_h, i_w), j = (j_h, j_w)
        bias = self.rel_table[:, dh[:, None, :, None], dw[None, :, None, :]]  # (h, H, W, H, W)
        return bias.reshape(self.num_heads, H * W, H * W)

    @torch.no_grad()
    def resize_table(self, max_size: int | tuple[int, int]) -> None:
        """Resample the bias table to a new ``max_size`` (bicubic, as for fine-tuning)."""
        mh, mw = pair(max_size, "max_size", "RelativeAttention2d")
        new = F.interpolate(self.rel_table[None], size=(2 * mh - 1, 2 * mw - 1), mode="bicubic",
                            align_corners=True)[0]
        self.rel_table = nn.Parameter(new.contiguous())
        self.max_size = (mh, mw)

    def _inference_bias(self, H: int, W: int, dtype: torch.dtype) -> torch.Tensor:
        """``relative_bias(H, W).to(dtype)`` without autograd, reused while the table is unchanged."""
        table = self._parameters.get("rel_table")
        try:
            state = (None if table is None else (table.data_ptr(), table._version), H, W, dtype,
                     self.max_size, torch.is_inference_mode_enabled())
        except RuntimeError:  # an inference tensor has no version counter: nothing to key on
            state = None
        hit = _BIAS.get(self)
        if state is not None and table is not None and hit is not None and hit[1] == state \
                and hit[0]() is table:
            return hit[2]
        bias = self.relative_bias(H, W).to(dtype)
        if state is not None and table is not None and bias.numel() <= _BIAS_KEEP:
            _BIAS[self] = (weakref.ref(table), state, bias)
        return bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="RelativeAttention2d", C=self.channels)  # raises
        B, _, H, W = x.shape
        h, d = self.num_heads, self.head_dim
        mods = self._modules
        if (torch.is_grad_enabled() or mods["attn_map"].active or torch.compiler.is_compiling()
                or torch.jit.is_tracing()):
            bias = self.relative_bias(H, W).to(x.dtype)  # (h, N, N)
            q, k, v = call(mods["qkv"], x).view(B, 3, h, d, H * W).permute(1, 0, 2, 4, 3)  # (B, h, N, d)
            # y = softmax(q k^T / sqrt(d) + w[i - j]) v
            y = attend(q, k, v, mods["attn_map"], bias=bias, scale=1.0 / math.sqrt(d))  # (B, h, N, d)
            y = y.transpose(-2, -1).reshape(B, h * d, H, W)  # (B, h*d, H, W)
            return call(mods["proj"], y)
        # Inference: the bias built once per table and size, and the attention as two matmuls
        # on the (B, h, d, N) layout of the projection. SDPA with a float mask takes its
        # unfused math path here, whose safe softmax makes three extra passes over the
        # (B, h, N, N) logits; and y^T = v A^T lands as (B, h, d, N), the output's own layout.
        bias = self._inference_bias(H, W, x.dtype)  # (h, N, N)
        q, k, v = call(mods["qkv"], x).view(B, 3, h, d, H * W).unbind(1)  # (B, h, d, N) each
        # A = softmax(q k^T / sqrt(d) + w[i - j])
        logits = torch.matmul((q * (1.0 / math.sqrt(d))).transpose(-2, -1), k).add_(bias)  # (B, h, N, N)
        a = logits.softmax(-1)
        y = torch.matmul(v, a.transpose(-2, -1))  # (B, h, d, N): (A v)^T
        return call(mods["proj"], y.view(B, h * d, H, W))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"max_size={self.max_size}")
