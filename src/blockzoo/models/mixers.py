r"""Small all-MLP image classifiers: patch embedding, a stack of mixer blocks, pooling, a linear head.

Papers: MLP-Mixer (Tolstikhin, arXiv 2105.01601, 2021); ResMLP (Touvron, arXiv
2105.03404, 2021); gMLP — Pay Attention to MLPs (Liu, arXiv 2105.08050, 2021);
sMLP — Sparse MLP for Image Recognition (Tang, arXiv 2109.05422, 2021); Vision
Permutator (Hou, arXiv 2106.12368, 2021).

Every model here is one ``PatchMLPClassifier`` with a different block; sized for
8x8 digits, 28x28 and 32x32 images (e.g. patch 2, 4 or 7 and 4).

Letters: B batch, C input channels (in_chans), H W image size, p patch size,
h w = H/p, W/p patch grid, N = h w tokens, D dim, K classes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_norm
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.mlp.gmlp import GMLPBlock
from blockzoo.mlp.mixer import Affine, MixerBlock, ResMLPBlock
from blockzoo.mlp.permutator import WeightedPermuteMLP
from blockzoo.mlp.smlp import SparseMLP
from blockzoo.registry import Example, images, register

__all__ = [
    "PatchMLPClassifier",
    "gmlp_tiny",
    "mixer_tiny",
    "permutator_tiny",
    "resmlp_tiny",
    "smlp_tiny",
]

# A block factory: (dim, grid_h, grid_w, device/dtype kwargs) -> one block.
BlockFactory = Callable[..., nn.Module]

# The Mixer and gMLP LayerNorms: epsilon 1e-6, as the Mixer paper's released JAX code (Flax's
# default) and timm's MlpMixer / gMLP, whose checkpoints these models load.
LN_1E6 = functools.partial(nn.LayerNorm, eps=1e-6)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class PatchMLPClassifier(nn.Module):
    r"""Patch embedding, ``depth`` blocks at one resolution, a final norm, mean pooling, a linear head.

    The common skeleton of the all-MLP classifiers (Mixer, ResMLP, gMLP, ...)::

        Z_0 = PatchEmbed(X)                 p x p patches, stride p, to D channels
        Z_l = block_l(Z_{l-1})              l = 1..depth
        y   = W_head mean_N(norm(Z_depth)) + b

    Args:
        name: the model's name, used in error messages.
        num_classes: K.
        in_chans: C.
        image_size: (H, W) the model is built for; token-mixing weights fix the
            grid, so other sizes raise ``ShapeError`` naming ``image_size``.
        patch_size: p, dividing H and W.
        dim: D.
        depth: number of blocks.
        block: factory ``block(dim, grid_h, grid_w, device=, dtype=)``.
        tokens: whether blocks take tokens (B, N, D) (else images (B, D, h, w)).
        norm_layer: the final norm over D.

    Shape:
        - Input: (B, C, H, W), C = in_chans, (H, W) = image_size.
        - Output: (B, K) logits, K = num_classes.
    """

    def __init__(
        self, name: str, num_classes: int, *, in_chans: int, image_size: int | tuple[int, int],
        patch_size: int, dim: int, depth: int, block: BlockFactory, tokens: bool,
        norm_layer: LayerSpec = "layernorm", device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        hh, ww = _pair(image_size)
        require(num_classes >= 1 and depth >= 1 and dim >= 1,
                f"{name}: num_classes={num_classes}, depth={depth}, dim={dim} must be positive")
        require(patch_size >= 1 and hh % patch_size == 0 and ww % patch_size == 0,
                f"{name}: patch_size={patch_size} must divide image_size=({hh}, {ww})")
        self.name, self.num_classes, self.in_chans = name, num_classes, in_chans
        self.image_size, self.patch_size, self.dim, self.depth = (hh, ww), patch_size, dim, depth
        self.grid = (hh // patch_size, ww // patch_size)
        self.tokens = tokens
        fk = dict(device=device, dtype=dtype)
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size, **fk)
        self.blocks = nn.Sequential(*[block(dim, *self.grid, **fk) for _ in range(depth)])
        self.norm = create_norm(norm_layer, dim, **fk)
        self.head = nn.Linear(dim, num_classes, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name=self.name, C=self.in_chans)
        if (dims["H"], dims["W"]) != self.image_size:
            raise ShapeError(f"{self.name}: built for image_size={self.image_size} (its token mixing fixes "
                             f"the patch grid); got input {tuple(x.shape)}")
        z = self.patch_embed(x)  # (B, D, h, w)
        if self.tokens:
            z = self.blocks(z.flatten(2).transpose(1, 2))  # (B, N, D)
        else:
            z = self.blocks(z).flatten(2).transpose(1, 2)  # (B, N, D)
        # y = W_head mean_N(norm(Z)) + b
        return self.head(self.norm(z).mean(1))  # (B, K)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, num_classes={self.num_classes}, in_chans={self.in_chans}, "
                f"image_size={self.image_size}, patch_size={self.patch_size}, dim={self.dim}, "
                f"depth={self.depth}")


def _logits(shape: Any, cfg: Any) -> tuple[int, int]:
    return (shape[0], cfg["num_classes"])


def _example() -> Example:
    return Example(
        config=dict(num_classes=10, in_chans=1, image_size=8, patch_size=2, dim=16, depth=2),
        inputs=images("in_chans"), size=(8, 8), sizes=((8, 8),), out_shape=_logits,
        tiny=dict(dim=4, depth=1),
    )





@register(name="mixer_tiny", family="model", paper="MLP-Mixer: An all-MLP Architecture for Vision",
          arxiv="2105.01601", year=2021, input="image", output="logits", example=_example(),
          size_arg="image_size")
def mixer_tiny(
    num_classes: int = 10, *, in_chans: int = 3, image_size: int | tuple[int, int] = 32, patch_size: int = 4,
    dim: int = 64, depth: int = 4, token_bias: bool = False, device: Any = None, dtype: Any = None,
) -> PatchMLPClassifier:
    """A small MLP-Mixer: patch embedding, Mixer blocks (D_S = D/2, D_C = 4D), LayerNorm, head.

    Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision", arXiv 2105.01601.
    Equation: ``y = head(mean_N(LN(Mixer^depth(PatchEmbed(x)))))``.

    Args:
        num_classes: K.
        in_chans: C, input channels.
        image_size: H (or (H, W)); the only input size accepted (``ShapeError`` otherwise).
        patch_size: p, dividing H and W (8x8 digits: 2; 28x28: 4 or 7; 32x32: 4).
        dim: D, channels per token.
        depth: number of blocks.
        token_bias: keep the token-mixing MLPs' output bias (the official Mixer's, and so
            pretrained Mixer-B/16 checkpoints, have it; it cannot change the output, below).

    With ``dim=768, depth=12, patch_size=16, image_size=224`` this is Mixer-B/16 (the
    sizes ``weights=`` reads from a Mixer-B/16 checkpoint). LayerNorm epsilon 1e-6.

    Shape:
        - Input: (B, C, H, W), C = in_chans, (H, W) = image_size.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        By default the token-mixing MLPs' output layers have no bias (the official Mixer's have):
        it adds one number per token to all D channels, and every later reader of the
        token stream (the next LayerNorms and the final one) subtracts each token's mean
        over D, so it could never change the output. A lone ``MixerBlock`` keeps it.
    """

    def block(d: int, gh: int, gw: int, **fk: Any) -> nn.Module:
        # every reader of the token stream is a LayerNorm over D: it cancels MLP_tok's bias
        return MixerBlock(d, gh * gw, token_bias=token_bias, norm_layer=LN_1E6, **fk)

    return PatchMLPClassifier("mixer_tiny", num_classes, in_chans=in_chans, image_size=image_size,
                              patch_size=patch_size, dim=dim, depth=depth, block=block, tokens=True,
                              norm_layer=LN_1E6, device=device, dtype=dtype)


@register(name="resmlp_tiny", family="model",
          paper="ResMLP: Feedforward networks for image classification with data-efficient training",
          arxiv="2105.03404", year=2021, input="image", output="logits", example=_example(),
          size_arg="image_size")
def resmlp_tiny(
    num_classes: int = 10, *, in_chans: int = 3, image_size: int | tuple[int, int] = 32, patch_size: int = 4,
    dim: int = 64, depth: int = 4, device: Any = None, dtype: Any = None,
) -> PatchMLPClassifier:
    """A small ResMLP: patch embedding, ResMLP blocks (layer-scale 0.1), a final Affine, head.

    Touvron et al., "ResMLP", arXiv 2105.03404.
    Equation: ``y = head(mean_N(Aff(ResMLP^depth(PatchEmbed(x)))))``.

    With ``dim=384, depth=12, patch_size=16, image_size=224`` this is ResMLP-12. Its norms
    are the paper's Affine (no statistics, so no epsilon).

    Args:
        num_classes: K.
        in_chans: C, input channels.
        image_size: H (or (H, W)); the only input size accepted (``ShapeError`` otherwise).
        patch_size: p, dividing H and W (8x8 digits: 2; 28x28: 4 or 7; 32x32: 4).
        dim: D, channels per token.
        depth: number of blocks.

    Shape:
        - Input: (B, C, H, W), C = in_chans, (H, W) = image_size.
        - Output: (B, K) logits, K = num_classes.
    """

    def block(d: int, gh: int, gw: int, **fk: Any) -> nn.Module:
        return ResMLPBlock(d, gh * gw, **fk)

    return PatchMLPClassifier("resmlp_tiny", num_classes, in_chans=in_chans, image_size=image_size,
                              patch_size=patch_size, dim=dim, depth=depth, block=block, tokens=True,
                              norm_layer=Affine, device=device, dtype=dtype)


@register(name="gmlp_tiny", family="model", paper="Pay Attention to MLPs", arxiv="2105.08050", year=2021,
          input="image", output="logits", example=_example(),
          size_arg="image_size")
def gmlp_tiny(
    num_classes: int = 10, *, in_chans: int = 3, image_size: int | tuple[int, int] = 32, patch_size: int = 4,
    dim: int = 64, depth: int = 4, device: Any = None, dtype: Any = None,
) -> PatchMLPClassifier:
    """A small gMLP: patch embedding, gMLP blocks (d_ffn = 6 D), LayerNorm, head.

    Liu et al., "Pay Attention to MLPs", arXiv 2105.08050.
    Equation: ``y = head(mean_N(LN(gMLP^depth(PatchEmbed(x)))))``.

    With ``dim=256, depth=30, patch_size=16, image_size=224`` this is gMLP-S/16. The
    pre-norms and the final norm use epsilon 1e-6, the gating unit's LayerNorm 1e-5
    (as timm's gMLP, whose checkpoints it loads).

    Args:
        num_classes: K.
        in_chans: C, input channels.
        image_size: H (or (H, W)); the only input size accepted (``ShapeError`` otherwise).
        patch_size: p, dividing H and W (8x8 digits: 2; 28x28: 4 or 7; 32x32: 4).
        dim: D, channels per token.
        depth: number of blocks.

    Shape:
        - Input: (B, C, H, W), C = in_chans, (H, W) = image_size.
        - Output: (B, K) logits, K = num_classes.
    """

    def block(d: int, gh: int, gw: int, **fk: Any) -> nn.Module:
        return GMLPBlock(d, gh * gw, norm_layer=LN_1E6, sgu_norm_layer="layernorm", **fk)

    return PatchMLPClassifier("gmlp_tiny", num_classes, in_chans=in_chans, image_size=image_size,
                              patch_size=patch_size, dim=dim, depth=depth, block=block, tokens=True,
                              norm_layer=LN_1E6, device=device, dtype=dtype)


class _Residual(nn.Module):
    """``x + mixer(norm(x))``, then ``x + MLP(norm(x))`` on images (B, D, h, w): a token mixer made a block.

    ``norm`` is BatchNorm2d or a LayerNorm over the channels of each pixel.
    """

    def __init__(self, dim: int, mixer: nn.Module, hidden: int, norm: str, **fk: Any) -> None:
        super().__init__()
        self.norm1 = create_norm(norm, dim, **fk)
        self.mixer = mixer
        self.norm2 = create_norm(norm, dim, **fk)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1, **fk), nn.GELU(), nn.Conv2d(hidden, dim, 1, **fk))

    def _norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(norm, nn.LayerNorm):
            return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, D, h, w)
        return norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self._norm(self.norm1, x))
        return x + self.mlp(self._norm(self.norm2, x))


@register(name="smlp_tiny", family="model",
          paper="Sparse MLP for Image Recognition: Is Self-Attention Really Necessary?",
          arxiv="2109.05422", year=2021, input="image", output="logits", example=_example(),
          size_arg="image_size")
def smlp_tiny(
    num_classes: int = 10, *, in_chans: int = 3, image_size: int | tuple[int, int] = 32, patch_size: int = 4,
    dim: int = 64, depth: int = 4, device: Any = None, dtype: Any = None,
) -> PatchMLPClassifier:
    """A small sMLPNet-style classifier: blocks ``x + sMLP(BN(x))``, ``x + MLP(BN(x))`` at one resolution.

    Tang et al., "Sparse MLP for Image Recognition", arXiv 2109.05422 (one stage, no
    depthwise-conv token mixer: only the sparse MLP mixes tokens).
    Equation: ``y = head(mean_N(LN(Block^depth(PatchEmbed(x)))))``.

    Args:
        num_classes: K.
        in_chans: C, input channels.
        image_size: H (or (H, W)); the only input size accepted (``ShapeError`` otherwise).
        patch_size: p, dividing H and W (8x8 digits: 2; 28x28: 4 or 7; 32x32: 4).
        dim: D, channels per token.
        depth: number of blocks.

    Shape:
        - Input: (B, C, H, W), C = in_chans, (H, W) = image_size.
        - Output: (B, K) logits, K = num_classes.
    """

    def block(d: int, gh: int, gw: int, **fk: Any) -> nn.Module:
        return _Residual(d, SparseMLP(d, gh, gw, **fk), 4 * d, "batchnorm", **fk)

    return PatchMLPClassifier("smlp_tiny", num_classes, in_chans=in_chans, image_size=image_size,
                              patch_size=patch_size, dim=dim, depth=depth, block=block, tokens=False,
                              device=device, dtype=dtype)


@register(name="permutator_tiny", family="model",
          paper="Vision Permutator: A Permutable MLP-Like Architecture for Visual Recognition",
          arxiv="2106.12368", year=2021, input="image", output="logits", example=_example(),
          size_arg="image_size")
def permutator_tiny(
    num_classes: int = 10, *, in_chans: int = 3, image_size: int | tuple[int, int] = 32, patch_size: int = 4,
    dim: int = 64, depth: int = 4, device: Any = None, dtype: Any = None,
) -> PatchMLPClassifier:
    """A small Vision Permutator: blocks ``x + PermuteMLP(LN(x))``, ``x + MLP(LN(x))``, one stage.

    Hou et al., "Vision Permutator", arXiv 2106.12368 (segment size D / h, the paper's
    choice, when the grid height h divides D; otherwise gcd(D, floor(D / h))).
    Equation: ``y = head(mean_N(LN(Permutator^depth(PatchEmbed(x)))))``.

    Args:
        num_classes: K.
        in_chans: C, input channels.
        image_size: H (or (H, W)); the only input size accepted (``ShapeError`` otherwise).
        patch_size: p, dividing H and W (8x8 digits: 2; 28x28: 4 or 7; 32x32: 4).
        dim: D, channels per token.
        depth: number of blocks.

    Shape:
        - Input: (B, C, H, W), C = in_chans, (H, W) = image_size.
        - Output: (B, K) logits, K = num_classes.
    """

    def block(d: int, gh: int, gw: int, **fk: Any) -> nn.Module:
        seg = math.gcd(d, max(1, d // gh))  # D / h when h divides D (the paper), else a divisor of D
        return _Residual(d, WeightedPermuteMLP(d, gh, gw, segment_size=seg, **fk), 3 * d, "layernorm", **fk)

    return PatchMLPClassifier("permutator_tiny", num_classes, in_chans=in_chans, image_size=image_size,
                              patch_size=patch_size, dim=dim, depth=depth, block=block, tokens=False,
                              device=device, dtype=dtype)

