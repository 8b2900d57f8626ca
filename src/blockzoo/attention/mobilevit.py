"""The MobileViT block: local convolution, global transformer over unfolded patches, fusion.

Paper: MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer
(Mehta, Rastegari; arXiv 2110.02178, 2021).

Letters: B batch, C channels, H W spatial, D transformer width, p patch side,
P = p*p pixels per patch, N number of patches, h heads, e head dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, conv_bn, direct, invoke, sequential
from blockzoo.act import LayerSpec, create_act, create_norm, without_bias
from blockzoo.attention._attend import attend, key_mask, pad_to_multiple
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import check_shape, require, require_divides
from blockzoo.registry import Example, images, register

__all__ = ["MobileViTBlock"]


class _ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, act: LayerSpec, **fk: Any) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False, **fk),
            nn.BatchNorm2d(cout, **fk),
            create_act(act, **fk),
        )


@direct(_ConvNormAct)
def _conv_norm_act(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``_ConvNormAct.forward`` (nn.Sequential's) with each layer through :func:`call`, the
    conv and norm through ``conv_bn`` (in eval without autograd: one convolution, the norm
    folded in)."""
    layers = tuple(m._modules.values())
    if len(layers) != 3:
        for layer in layers:
            x = call(layer, x)
        return x
    return call(layers[2], conv_bn(layers[0], layers[1], x))


class _TransformerLayer(nn.Module):
    """Pre-norm transformer layer over (..., N, D) with an optional additive key mask."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, act: LayerSpec,
                 norm: LayerSpec, **fk: Any) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.norm1 = create_norm(norm, dim, **fk)
        self.qkv = nn.Linear(dim, 3 * dim, **fk)
        self.proj = nn.Linear(dim, dim, **fk)
        self.attn_map = AttentionMap("weights")
        self.norm2 = create_norm(norm, dim, **fk)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden, **fk), create_act(act, **fk),
                                 nn.Linear(hidden, dim, **fk))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        *lead, N, D = x.shape
        h, e = self.num_heads, self.head_dim
        # stock submodules nobody hooks run as their functional op (blockzoo._fastcall)
        m = self._modules
        qkv = call(m["qkv"], call(m["norm1"], x)).view(*lead, N, 3, h, e)
        q, k, v = qkv.movedim(-3, 0).transpose(-3, -2)  # (..., h, N, e) each
        # x = x + W_o softmax(q k^T / sqrt(e)) v
        y = attend(q, k, v, m["attn_map"], bias=mask, scale=1.0 / math.sqrt(e))  # (..., h, N, e)
        x = x + call(m["proj"], y.transpose(-3, -2).reshape(*lead, N, D))
        # x = x + MLP(LN(x))
        return x + sequential(m["mlp"], call(m["norm2"], x))


@register(
    name="mobilevit_block",
    family="attention",
    paper="MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer",
    arxiv="2110.02178",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, dim=16, depth=1, num_heads=2, patch_size=2),
                    inputs=images(), size=(8, 8), out_shape="same",
                    tiny=dict(channels=4, dim=4, num_heads=1)),
)
class MobileViTBlock(nn.Module):
    r"""MobileViT block: convolutions for local structure, a transformer across patches for global.

    Mehta & Rastegari, "MobileViT: Light-weight, General-purpose, and Mobile-friendly
    Vision Transformer", arXiv 2110.02178.

    Equation::

        X_L = W_1x1( act(BN(conv_kxk(X))) )                    C -> D, local representation
        X_U = unfold(X_L)                                      (P, N, D): pixel i of every p x p patch
        X_G(i) = Transformer_L(X_U(i))                         attention across the N patches, i = 1..P
        X_F = act(BN(W_1x1(fold(X_G))))                        D -> C
        Y   = act(BN(conv_kxk([X ; X_F])))                     2C -> C, fusion

    Each transformer layer is pre-norm: z = z + MHSA(LN(z)); z = z + MLP(LN(z)), and a
    final LN follows the last one. Every pixel reaches the whole image: the conv sees
    its k x k neighbourhood, and the transformer links the pixels at the same position
    of all patches.

    Args:
        channels: C, input and output channels.
        dim: D, the transformer width (default ``channels``).
        depth: L, transformer layers.
        num_heads: h, attention heads (``dim`` must be divisible by it).
        patch_size: p, the patch side (paper: 2).
        mlp_ratio: MLP hidden width as a multiple of D (paper: 2).
        kernel_size: k, the local and fusion convolutions' side (paper: 3).
        act_layer: activation of convs and MLP (paper: SiLU / swish).
        norm_layer: the transformer's normalisation (paper: LayerNorm).
        final_norm_bias: keep the shift of the LN after the last layer, as the reference
            code has it (for loading its weights; see Deviations).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W: X_L is zero-padded at the
          bottom/right to multiples of p, padded patches are masked out of the
          attention, and the folded map is cropped back to H x W.
        - Output: (B, C, H, W).

    Deviations:
        - Padding with masked keys for sizes that p does not divide (the reference code
          resizes the map by bilinear interpolation instead, which mixes pixels).
        - The final LN has no shift (the reference code's has one): it adds the same
          vector to every token, which after folding is a per-channel constant that the
          1x1 conv keeps constant and the BN after it subtracts in training, so
          training cannot need it. With trained running statistics (eval) it does act,
          so ``final_norm_bias=True`` keeps it for loading the reference's weights.

    Example:
        >>> blk = MobileViTBlock(32, dim=48, depth=2, num_heads=4)
        >>> blk(torch.randn(2, 32, 7, 9)).shape
        torch.Size([2, 32, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        dim: int | None = None,
        depth: int = 2,
        num_heads: int = 4,
        patch_size: int = 2,
        mlp_ratio: float = 2.0,
        kernel_size: int = 3,
        act_layer: LayerSpec = "silu",
        norm_layer: LayerSpec = "layernorm",
        final_norm_bias: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dim = dim or channels
        require_divides("MobileViTBlock", "num_heads", num_heads, "dim", dim)
        require(depth >= 1, f"MobileViTBlock: depth={depth} must be >= 1")
        require(patch_size >= 1, f"MobileViTBlock: patch_size={patch_size} must be >= 1")
        require(kernel_size % 2 == 1, f"MobileViTBlock: kernel_size={kernel_size} must be odd")
        require(mlp_ratio > 0, f"MobileViTBlock: mlp_ratio={mlp_ratio} must be positive")
        self.channels, self.dim, self.depth = channels, dim, depth
        self.num_heads, self.patch_size = num_heads, patch_size
        fk = dict(device=device, dtype=dtype)
        self.local = nn.Sequential(_ConvNormAct(channels, channels, kernel_size, act_layer, **fk),
                                   nn.Conv2d(channels, dim, 1, bias=False, **fk))
        self.layers = nn.ModuleList(
            _TransformerLayer(dim, num_heads, mlp_ratio, act_layer, norm_layer, **fk) for _ in range(depth)
        )
        self.norm = create_norm(norm_layer, dim, **fk)
        if not final_norm_bias:
            self.norm = without_bias(self.norm)  # proj's BN cancels its shift in training
        self.proj = _ConvNormAct(dim, channels, 1, act_layer, **fk)
        self.fuse = _ConvNormAct(2 * channels, channels, kernel_size, act_layer, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="MobileViTBlock", C=self.channels)  # raises, naming the misfit
        B, _, H, W = x.shape
        p, D = self.patch_size, self.dim
        # submodules without nn.Module.__call__ unless hooked (blockzoo._fastcall): ~25 calls
        mods = self._modules
        z, _, _ = pad_to_multiple(sequential(mods["local"], x), p, p)  # (B, D, Hp, Wp)
        Hp, Wp = z.shape[-2:]
        nh, nw = Hp // p, Wp // p
        # unfold: pixel i of each patch forms one sequence of N = nh * nw tokens
        z = z.view(B, D, nh, p, nw, p).permute(0, 3, 5, 2, 4, 1).reshape(B, p * p, nh * nw, D)  # (B, P, N, D)
        mask = None
        if Hp != H or Wp != W:
            valid = torch.zeros(Hp, Wp, dtype=torch.bool, device=x.device)
            valid[:H, :W] = True
            valid = valid.view(nh, p, nw, p).permute(1, 3, 0, 2).reshape(p * p, 1, 1, nh * nw)  # (P, 1, 1, N)
            mask = key_mask(valid, z.dtype)
        layers = mods["layers"]
        for layer in (layers._modules.values() if type(layers) is nn.ModuleList else layers):
            z = invoke(layer, z, mask)
        z = call(mods["norm"], z)
        # fold back to the map
        z = z.view(B, p, p, nh, nw, D).permute(0, 5, 3, 1, 4, 2).reshape(B, D, Hp, Wp)  # (B, D, Hp, Wp)
        xf = call(mods["proj"], z[:, :, :H, :W])  # (B, C, H, W)
        return call(mods["fuse"], torch.cat([x, xf], dim=1))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, dim={self.dim}, depth={self.depth}, "
                f"num_heads={self.num_heads}, patch_size={self.patch_size}")
