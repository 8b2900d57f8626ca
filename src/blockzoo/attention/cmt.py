r"""CMT's lightweight multi-head self-attention (LMHSA).

Paper: CMT: Convolutional Neural Networks Meet Vision Transformers (Guo et al., arXiv
2107.06263, CVPR 2022), Sec. 3.2, Eq. (3)-(4).

Letters: B batch, C channels (= dim), H W spatial, k the reduction (stride of the
depthwise conv), N = H W queries, M = floor(H / k) floor(W / k) keys, h heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import conv_bn, invoke, listened
from blockzoo.attention.dot_product import MultiHeadAttention
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["LightweightMHSA", "resize_relative_bias"]

ONNX_EXEMPT = ("torch.onnx (torch 2.13) fails on attention with a learned additive mask: its lowering of "
               "F.scaled_dot_product_attention with a mask that requires grad views the non-contiguous "
               "result (ValueError: Cannot view a tensor ...); the same block without the bias exports, and "
               "torch.export and compile pass")


def resize_relative_bias(table: torch.Tensor, grid: tuple[int, int], key_grid: tuple[int, int],
                         size: tuple[int, int], key_size: tuple[int, int]) -> torch.Tensor:
    """Resize a learned (h, N_0, M_0) bias between a (H_0, W_0) query grid and a (h_0, w_0)
    key grid to a (H, W) query grid and (h', w') key grid: bilinear along the key axes, then
    along the query axes (as ViT resizes its position embedding). Returns (h, H W, h' w')."""
    heads = table.shape[0]
    if tuple(grid) == tuple(size) and tuple(key_grid) == tuple(key_size):
        return table
    t = table.reshape(heads * grid[0] * grid[1], 1, *key_grid)  # (h N_0, 1, h_0, w_0)
    t = F.interpolate(t, size=key_size, mode="bilinear", align_corners=False)  # (h N_0, 1, h', w')
    m = key_size[0] * key_size[1]
    t = t.reshape(heads, grid[0] * grid[1], m).transpose(1, 2)  # (h, M, N_0)
    t = t.reshape(heads * m, 1, *grid)  # (h M, 1, H_0, W_0)
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # (h M, 1, H, W)
    return t.reshape(heads, m, size[0] * size[1]).transpose(1, 2)  # (h, N, M)


@register(
    name="lightweight_mhsa",
    family="attention",
    paper="CMT: Convolutional Neural Networks Meet Vision Transformers",
    arxiv="2107.06263",
    year=2021,
    input="image",
    example=Example(config=dict(dim=16, num_heads=2, sr_ratio=2, bias_size=(8, 8)), inputs=images("dim"),
                    size=(8, 8), sizes=((6, 10), (9, 7), (2, 2)), out_shape="same",
                    tiny=dict(dim=4, num_heads=1, bias_size=(4, 4))),
    exempt={"grad": "in training mode the key-reduction conv's bias sits just before a batch-statistics "
                    "BatchNorm, which removes it exactly (gradient 0); it acts in eval through the "
                    "running statistics and the authors' network has it (tests/test_backbones_paper_only.py "
                    "checks the list)",
            "onnx": ONNX_EXEMPT},
)
class LightweightMHSA(nn.Module):
    r"""Multi-head attention whose keys and values come from a k x k / k depthwise conv, plus a relative bias.

    Guo et al., "CMT", arXiv 2107.06263, Sec. 3.2, Eq. (3)-(4).

    Equation, x the N = H W tokens, d = C / h::

        x'   = BN(DWConv_{k x k, stride k}(x))                              (M = N / k^2 tokens)
        Q, K', V' = x W^Q, x' W^K, x' W^V
        head_j = softmax(Q_j K'_j^T / sqrt(d) + B_j) V'_j                    B in R^{h x N x M} learned
        LMHSA(x) = Concat(head_1, ..., head_h) W^O

    The attention is the catalogue's ``MultiHeadAttention`` (fused SDPA) in its
    cross-attention form, B passed as its additive mask. With k = 1 there is no
    reduction (no conv or norm).

    Args:
        dim: C. num_heads: h.
        sr_ratio: k (CMT: 8, 4, 2, 1 in stages 1-4).
        qkv_bias: biases on the q, k, v projections (CMT's code: True).
        bias_size: the query grid (H_0, W_0) at which this block learns its own B (h x N_0 x
            M_0, M_0 = floor(H_0 / k) floor(W_0 / k)); ``None``: no own bias (the CMT model
            shares one B per stage and passes it to ``attend_tokens``).
        norm_eps: of the BatchNorm after the conv (1e-5).

    Shape:
        - Input: (B, C, H, W), C = dim, H, W >= k (the stride-k conv floors; a side shorter
          than k raises ``ShapeError``). Any H, W: B is resized when the grids differ
          from the ones it was learned at.
        - Output: (B, C, H, W).
        - ``attend_tokens(x, H, W, bias=None)``: (B, N, C) -> (B, N, C); ``bias``
          (h, N_b, M_b) learned on another grid is resized (``resize_relative_bias``).

    Deviations:
        Follows the authors' code: the depthwise conv (with bias) and a BatchNorm reduce x
        before the key and value projections (the paper writes the conv on K and V; the
        parameter count is the same). B, learned for one input size in the paper, is
        bilinearly resized for other sizes (the paper fine-tunes at one size).
        B starts as N(0, 1) noise, as in the authors' code.

    Example:
        >>> attn = LightweightMHSA(64, num_heads=2, sr_ratio=4, bias_size=(40, 40))
        >>> attn(torch.randn(2, 64, 40, 40)).shape
        torch.Size([2, 64, 40, 40])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        *,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        bias_size: Sequence[int] | None = None,
        norm_eps: float = 1e-5,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(sr_ratio >= 1, f"LightweightMHSA: sr_ratio={sr_ratio} must be >= 1")
        fk = dict(device=device, dtype=dtype)
        self.dim, self.num_heads, self.sr_ratio = dim, num_heads, sr_ratio
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias=qkv_bias, **fk)
        if sr_ratio > 1:
            self.sr: nn.Module | None = nn.Sequential(
                nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio, groups=dim, **fk),
                nn.BatchNorm2d(dim, eps=norm_eps, **fk))
        else:
            self.sr = None
        if bias_size is not None:
            self.bias_size: tuple[int, int] | None = (int(bias_size[0]), int(bias_size[1]))
            hk, wk = self.key_grid(*self.bias_size)
            require(hk >= 1 and wk >= 1, f"LightweightMHSA: bias_size={tuple(bias_size)} must be >= "
                    f"sr_ratio={sr_ratio} on each side")
            self.relative_pos = nn.Parameter(torch.randn(num_heads, self.bias_size[0] * self.bias_size[1],
                                                         hk * wk, **fk))
        else:
            self.bias_size = None
            self.register_parameter("relative_pos", None)

    def key_grid(self, height: int, width: int) -> tuple[int, int]:
        """The (h', w') key grid of an H x W map."""
        return height // self.sr_ratio, width // self.sr_ratio

    def attend_tokens(self, x: torch.Tensor, height: int, width: int, bias: torch.Tensor | None = None,
                      bias_size: tuple[int, int] | None = None) -> torch.Tensor:
        """LMHSA on tokens (B, N, C) of an H x W map (row-major) -> (B, N, C).

        ``bias``: (h, N_b, M_b) learned on the query grid ``bias_size``; default this block's own.
        """
        k = self.sr_ratio
        if height < k or width < k:
            raise ShapeError(f"LightweightMHSA: the map is {height}x{width}, smaller than sr_ratio={k} "
                             f"on a side; expected H, W >= {k}")
        if bias is None and self.relative_pos is not None:
            bias, bias_size = self.relative_pos, self.bias_size
        b, _, c = x.shape
        if self.sr is not None:
            # x' = BN(DWConv_{k x k / k}(x))
            img = x.transpose(1, 2).reshape(b, c, height, width)  # (B, C, H, W)
            sr = self.sr
            if type(sr) is nn.Sequential and not listened(sr):  # the BatchNorm folded into the conv in eval
                kv = conv_bn(*sr._modules.values(), img)
            else:
                kv = sr(img)
            kv = kv.flatten(2).transpose(1, 2)  # (B, M, C)
        else:
            kv = x
        if bias is None:
            return invoke(self.attn, x, kv, kv)
        require(bias_size is not None, "LightweightMHSA: a bias needs the bias_size it was learned at")
        grid = (int(bias_size[0]), int(bias_size[1]))
        b_ = resize_relative_bias(bias, grid, self.key_grid(*grid), (height, width),
                                  self.key_grid(height, width))
        # softmax(Q K'^T / sqrt(d) + B) V'
        return invoke(self.attn, x, kv, kv, attn_mask=b_.to(x.dtype).unsqueeze(0).expand(b, -1, -1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="LightweightMHSA", C=self.dim)
        out = self.attend_tokens(x.flatten(2).transpose(1, 2), dims["H"], dims["W"])  # (B, N, C)
        return out.transpose(1, 2).reshape(x.shape)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}, "
                f"bias_size={self.bias_size}")
