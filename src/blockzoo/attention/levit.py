"""LeViT's attention: multi-head attention with a learned bias per head and relative offset,
and its shrink form, whose queries come from a subsampled grid.

Paper: LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference (Graham et al.,
arXiv 2104.01136, 2021), Sec. 4.2-4.3. EfficientFormer (arXiv 2206.01191) uses the same
attention (with biased projections instead of BatchNorm, and no activation before the output
projection) in its last stage.

Letters: B batch, C channels (dim), O output channels (dim_out), H W spatial, N = H W keys,
s stride, N_q = ceil(H / s) ceil(W / s) queries, h heads, d key dim, e = r d value dim,
R the bias table's side (resolution).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._memo import memo_table
from blockzoo.act import LayerSpec, create_act
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, images, register

__all__ = ["LeViTAttention", "LinearNorm"]


class LinearNorm(nn.Module):
    """A linear map over the last dim followed by BatchNorm over all leading positions
    (LeViT's "BN after every linear"); with ``norm=False`` a biased linear map alone.

    Shape: (*, F_in) -> (*, F_out).
    """

    def __init__(self, in_features: int, out_features: int, *, norm: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.linear = nn.Linear(in_features, out_features, bias=not norm, **fk)  # BN's shift is the bias
        self.bn = nn.BatchNorm1d(out_features, **fk) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return self.bn(y.flatten(0, -2)).view_as(y)  # BN over every position of every sample


@memo_table()
def _bias_index(height: int, width: int, s: int, r: int, device: Any) -> torch.Tensor:
    """LeViTAttention.bias_index, built once per size (shared: not to be modified)."""

    def offsets(n: int) -> torch.Tensor:
        q = torch.arange(0, n, s, device=device)
        return (q[:, None] - torch.arange(n, device=device)[None, :]).abs().clamp(max=r - 1)  # (n_q, n)

    dy, dx = offsets(height), offsets(width)
    idx = dy[:, None, :, None] * r + dx[None, :, None, :]  # (H_q, W_q, H, W)
    return idx.reshape(dy.shape[0] * dx.shape[0], height * width)


def _out(shape: tuple[int, ...], cfg: dict[str, Any]) -> tuple[int, ...]:
    s = cfg.get("stride", 1)
    return (shape[0], cfg.get("dim_out") or cfg["dim"], -(-shape[2] // s), -(-shape[3] // s))


@register(
    name="levit_attention",
    family="attention",
    paper="LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference",
    arxiv="2104.01136",
    year=2021,
    input="image",
    example=Example(config=dict(dim=16, key_dim=4, num_heads=2, resolution=4), inputs=images("dim"),
                    size=(6, 6), out_shape=_out, tiny=dict(dim=4, key_dim=2, num_heads=1, resolution=3)),
)
class LeViTAttention(nn.Module):
    r"""LeViT attention: per-head attention with a learned bias for each relative offset.

    Graham et al., "LeViT: a Vision Transformer in ConvNet's Clothing for Faster
    Inference", arXiv 2104.01136, Sec. 4.2 (attention bias) and 4.3 (shrink attention).

    Equation, for query position (x, y) and key position (x', y') of head h::

        A^h_{(x,y),(x',y')} = Q_{(x,y),:} . K_{(x',y'),:} / sqrt(d)  +  B^h_{|x - x'|, |y - y'|}
        Y = P( act( concat_h softmax(A^h) V^h ) )

    Q, K, V = BN(W x) per token (no biases: BN shifts), values r = ``attn_ratio`` times
    wider than keys, ``act`` (hard-swish) before the output projection P = BN(W .). The
    shrink attention (``stride`` s > 1) takes Q from the tokens at (s i, s j) only, so
    the output map is ceil(H / s) x ceil(W / s) and may be wider (``dim_out``); the
    bias is indexed by |s i - x'|, |s j - y'|.

    Args:
        dim: C, input channels.
        dim_out: O, output channels (default C).
        key_dim: d, the query / key width per head.
        num_heads: h.
        attn_ratio: r, value width per head as a multiple of d.
        stride: s, 1 for attention, 2 for LeViT's shrink attention.
        resolution: R, the bias table holds R x R offsets (0..R-1 per axis): the map side
            at the resolution the model is trained on (LeViT at 224: 14, 7, 4).
        act_layer: before the output projection (LeViT: hard-swish; ``None``: none).
        norm: BatchNorm after each projection, bias-free (LeViT); ``False``: biased
            projections without BN (EfficientFormer's Meta3D attention).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W.
        - Output: (B, O, ceil(H / s), ceil(W / s)), O = dim_out, s = stride.

    Deviations:
        - Offsets beyond the table (a map larger than R x R) use the largest learned
          offset R - 1 along that axis (clipped relative positions, Shaw et al. 2018);
          the reference fixes the map size to the training resolution. At maps up to
          R x R the biases are the reference's exactly.
        - Works on (B, C, H, W) maps: BN over every token of the batch, as the reference's
          BatchNorm1d over (B N, C) does.

    Example:
        >>> attn = LeViTAttention(128, key_dim=16, num_heads=4, resolution=14)
        >>> attn(torch.randn(2, 128, 14, 14)).shape
        torch.Size([2, 128, 14, 14])
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        key_dim: int = 16,
        num_heads: int = 4,
        attn_ratio: float = 2.0,
        stride: int = 1,
        resolution: int = 14,
        act_layer: LayerSpec = "hardswish",
        norm: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(key_dim >= 1 and num_heads >= 1,
                f"LeViTAttention: key_dim={key_dim} and num_heads={num_heads} must be >= 1")
        require(stride >= 1 and resolution >= 1,
                f"LeViTAttention: stride={stride} and resolution={resolution} must be >= 1")
        val_dim = int(attn_ratio * key_dim)
        require(val_dim >= 1, f"LeViTAttention: attn_ratio={attn_ratio} gives value width {val_dim}")
        fk = dict(device=device, dtype=dtype)
        self.dim, self.dim_out = dim, dim_out or dim
        self.key_dim, self.val_dim, self.num_heads = key_dim, val_dim, num_heads
        self.stride, self.resolution = stride, resolution
        h = num_heads
        if stride == 1:  # rows per head: [q (d) | k (d) | v (e)]
            self.qkv = LinearNorm(dim, h * (2 * key_dim + val_dim), norm=norm, **fk)
        else:  # rows per head: [k (d) | v (e)]; queries from the subsampled grid
            self.kv = LinearNorm(dim, h * (key_dim + val_dim), norm=norm, **fk)
            self.q = LinearNorm(dim, h * key_dim, norm=norm, **fk)
        self.act = create_act(act_layer, **fk)
        self.proj = LinearNorm(h * val_dim, self.dim_out, norm=norm, **fk)
        self.attention_biases = nn.Parameter(torch.zeros(h, resolution * resolution, **fk))  # B^h, (h, R R)
        self.attn_map = AttentionMap("weights")

    def bias_index(self, height: int, width: int, device: Any = None) -> torch.Tensor:
        """(N_q, N) indices into the (R R) table: R min(|s i - x'|, R-1) + min(|s j - y'|, R-1)."""
        return _bias_index(height, width, self.stride, self.resolution, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="LeViTAttention", C=self.dim)
        B, H, W = dims["B"], dims["H"], dims["W"]
        h, d, e, s = self.num_heads, self.key_dim, self.val_dim, self.stride
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        if s == 1:
            q, k, v = self.qkv(t).view(B, H * W, h, -1).transpose(1, 2).split([d, d, e], -1)  # (B, h, N, *)
            hq, wq = H, W
        else:
            k, v = self.kv(t).view(B, H * W, h, -1).transpose(1, 2).split([d, e], -1)  # (B, h, N, *)
            xs = x[:, :, ::s, ::s]  # (B, C, H_q, W_q)
            hq, wq = xs.shape[-2:]
            q = self.q(xs.flatten(2).transpose(1, 2)).view(B, hq * wq, h, d).transpose(1, 2)  # (B, h, N_q, d)
        # A = Q K^T / sqrt(d) + B[|dx|, |dy|];  Y = softmax(A) V
        bias = self.attention_biases[:, self.bias_index(H, W, x.device)]  # (h, N_q, N)
        # written out: with a float bias and e != d, SDPA takes its generic path (a safe
        # softmax with extra passes over the logits); the bias is added in place
        a = ((q * d ** -0.5) @ k.transpose(-1, -2)).add_(bias)  # (B, h, N_q, N)
        y = self.attn_map(a.softmax(dim=-1)) @ v  # (B, h, N_q, e)
        y = self.proj(self.act(y.transpose(1, 2).reshape(B, hq * wq, h * e)))  # (B, N_q, O)
        return y.transpose(1, 2).reshape(B, self.dim_out, hq, wq)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, dim_out={self.dim_out}, key_dim={self.key_dim}, "
                f"num_heads={self.num_heads}, val_dim={self.val_dim}, stride={self.stride}, "
                f"resolution={self.resolution}")
