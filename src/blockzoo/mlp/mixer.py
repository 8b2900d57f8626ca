r"""MLP-Mixer block and ResMLP, which is the same block built with other parts.

Papers: MLP-Mixer: An all-MLP Architecture for Vision (Tolstikhin, arXiv 2105.01601,
2021); ResMLP: Feedforward networks for image classification with data-efficient
training (Touvron, arXiv 2105.03404, 2021).

Letters: B batch, N tokens, C channels (dim), D_S token-mixing hidden width,
D_C channel-mixing hidden width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import call, direct, invoke, own
from blockzoo._kept import param_fold
from blockzoo.act import LayerSpec, create_norm, without_bias
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.mlp.mlp import MLP
from blockzoo.registry import Example, register, tokens

__all__ = ["Affine", "MixerBlock", "ResMLPBlock", "check_tokens"]


def check_tokens(x: torch.Tensor, name: str, num_tokens: int, dim: int) -> None:
    """Check (B, N, C) with C = dim and N = num_tokens, naming ``num_tokens`` when N is wrong."""
    dims = check_shape(x, "B N C", name=name, C=dim)
    if dims["N"] != num_tokens:
        raise ShapeError(
            f"{name}: its token-mixing weights were built for num_tokens={num_tokens}; "
            f"got input {tuple(x.shape)} with N={dims['N']}"
        )


class Affine(nn.Module):
    r"""ResMLP's affine normalisation: a per-channel scale and shift, no statistics.

    Touvron et al., "ResMLP", arXiv 2105.03404: ``Aff(x) = alpha * x + beta``.

    Args:
        dim: C, the size of the last dimension.

    Shape:
        - Input: (*, C); output: the same.
    """

    def __init__(self, dim: int, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Aff(x) = alpha * x + beta
        return self.alpha * x + self.beta

    def extra_repr(self) -> str:
        return f"{self.alpha.numel()}"


@direct(Affine)
def _affine(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``Affine.forward`` without the module call (blockzoo._fastcall.call)."""
    p = m._parameters
    return p["alpha"] * x + p["beta"]


def _example_cfg() -> dict[str, Any]:
    return dict(dim=16, num_tokens=8)


@register(
    name="mixer",
    family="mlp",
    paper="MLP-Mixer: An all-MLP Architecture for Vision",
    arxiv="2105.01601",
    year=2021,
    input="tokens",
    example=Example(config=dict(_example_cfg(), token_hidden=8, channel_hidden=32), inputs=tokens(),
                    size=(8,), sizes=((8,),), out_shape="same",
                    tiny=dict(dim=4, token_hidden=3, channel_hidden=5)),
    size_arg="num_tokens",
)
class MixerBlock(nn.Module):
    r"""MLP-Mixer block: a token-mixing MLP across patches, then a channel-mixing MLP.

    Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision", arXiv 2105.01601.

    Equation (X is N x C; MLPs act on the last dim; T transposes N and C)::

        U = X + s_1 * T(MLP_tok(T(norm_1(X))))       MLP_tok: N -> D_S -> N
        Y = U + s_2 * MLP_ch(norm_2(U))               MLP_ch:  C -> D_C -> C

    s_1 = s_2 = 1 in the Mixer paper; with ``layer_scale`` they are learnable
    per-channel vectors (ResMLP). ``token_hidden=()`` makes the token mixing one
    linear map N -> N (ResMLP).

    Args:
        dim: C, channels per token.
        num_tokens: N, fixed by the token-mixing weights (N x D_S); other N raise
            ``ShapeError`` naming ``num_tokens``.
        token_hidden: D_S, hidden width(s) of the token-mixing MLP (default C / 2;
            ``()`` for a single linear map).
        channel_hidden: D_C, hidden width of the channel-mixing MLP (default 4 C).
        act_layer: the MLPs' activation (paper: GELU).
        norm_layer: the pre-norm (paper: LayerNorm; ResMLP: ``Affine``).
        layer_scale: initial value of s_1, s_2 (None: no layer-scale, the Mixer).
        dropout: dropout after each MLP's hidden activation.
        token_bias: whether MLP_tok's output layer has its bias, b in R^N: one number
            per token, the same for every channel. A LayerNorm over the channels removes
            exactly such a shift, so in a stack of Mixer blocks under a final LayerNorm
            (``mixer_tiny``) it can never change the output and is built off.

    Shape:
        - Input: (B, N, C), N = num_tokens, C = dim.
        - Output: (B, N, C).

    Deviations:
        - No stochastic depth (a training-recipe choice, not part of the block).

    Example:
        >>> block = MixerBlock(64, 49)
        >>> block(torch.randn(2, 49, 64)).shape
        torch.Size([2, 49, 64])
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        *,
        token_hidden: int | Sequence[int] | None = None,
        channel_hidden: int | None = None,
        act_layer: LayerSpec = "gelu",
        norm_layer: LayerSpec = "layernorm",
        layer_scale: float | None = None,
        dropout: float = 0.0,
        token_bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        require(dim > 0 and num_tokens > 0, f"{name}: dim={dim}, num_tokens={num_tokens} must be positive")
        self.dim, self.num_tokens = dim, num_tokens
        token_hidden = max(1, dim // 2) if token_hidden is None else token_hidden
        self.channel_hidden = channel_hidden or 4 * dim
        fk = dict(device=device, dtype=dtype)
        self.norm1 = create_norm(norm_layer, dim, **fk)
        self.token_mlp = MLP(num_tokens, token_hidden, num_tokens, act_layer=act_layer, dropout=dropout, **fk)
        if not token_bias:
            without_bias(self.token_mlp.layers[-1])
        self.norm2 = create_norm(norm_layer, dim, **fk)
        self.channel_mlp = MLP(dim, (self.channel_hidden,), dim, act_layer=act_layer, dropout=dropout, **fk)
        self.layer_scale = layer_scale
        if layer_scale is None:
            self.register_parameter("scale1", None)
            self.register_parameter("scale2", None)
        else:
            self.scale1 = nn.Parameter(torch.full((dim,), float(layer_scale), **fk))
            self.scale2 = nn.Parameter(torch.full((dim,), float(layer_scale), **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[1] != self.num_tokens
                or x.shape[2] != self.dim):
            check_tokens(x, type(self).__name__, self.num_tokens, self.dim)  # raises, naming the misfit
        if not torch.is_grad_enabled():
            y = self._folded(x)
            if y is not None:
                return y
        # Submodules from ``_modules`` and run without ``nn.Module.__call__`` unless hooked
        # (blockzoo._fastcall; the same ops, ~1-2 us less per module call).
        mods = self._modules
        scale1, scale2 = own(self, "scale1"), own(self, "scale2")
        # T(MLP_tok(T(norm_1(X))))
        t = invoke(mods["token_mlp"], call(mods["norm1"], x).transpose(1, 2)).transpose(1, 2)  # (B, N, C)
        x = x + (t if scale1 is None else scale1 * t)
        c = invoke(mods["channel_mlp"], call(mods["norm2"], x))  # (B, N, C)
        return x + (c if scale2 is None else scale2 * c)

    def _folded(self, x: torch.Tensor) -> torch.Tensor | None:
        """The forward without autograd, with constants folded into cached tensors
        (``_kept.param_fold``) and the token mixing as a batched matmul on (B, N, C), no
        transposes; None (the module path) for any other structure, a hook, a parametrized
        tensor, or where a fold must not be used. Two forms:

        - ResMLP (Affine norms, one token linear A, a): Aff_1 and s_1 fold into
          ``Z = X + k * (A X) + R`` (k = s_1 alpha_1, R = s_1 (A 1 beta_1^T + a 1^T)); Aff_2
          into the first channel linear, s_2 into the second, whose bias rides on Z.
        - Mixer (LayerNorms): the token MLP as ``W_1 X + b_1`` and ``W_2 H`` on (B, ., C);
          its output bias b_2 (one number per token) is added after norm_2, which removes
          such a per-token shift exactly, and joins the channel MLP's output bias.
        """
        mods = self._modules
        n1, tm, n2, cm = mods["norm1"], mods["token_mlp"], mods["norm2"], mods["channel_mlp"]
        if type(tm) is not MLP or type(cm) is not MLP:
            return None
        tseq, cseq = tm._modules["layers"], cm._modules["layers"]
        tl, cl = tuple(tseq._modules.values()), tuple(cseq._modules.values())
        if (type(tseq) is not nn.Sequential or type(cseq) is not nn.Sequential or len(cl) != 5
                or type(cl[0]) is not nn.Linear or type(cl[1]) is not nn.Identity
                or type(cl[4]) is not nn.Linear or not _elementwise(cl[2])):
            return None  # (an activation with parameters, a per-channel PReLU, reads the layout)
        mlist = (n1, tm, tseq, *tl, n2, cm, cseq, *cl)
        p, c1, c2 = self._parameters, cl[0]._parameters, cl[4]._parameters
        if not ("scale1" in p and "scale2" in p and "weight" in c1 and "bias" in c1
                and "weight" in c2 and "bias" in c2):
            return None  # a parametrized tensor: computed through the attribute, the module path
        B, N, C = x.shape
        if type(n1) is Affine and type(n2) is Affine and len(tl) == 1 and type(tl[0]) is nn.Linear:
            a1, a2, t = n1._parameters, n2._parameters, tl[0]._parameters
            if not ("alpha" in a1 and "beta" in a1 and "alpha" in a2 and "beta" in a2
                    and "weight" in t and "bias" in t):
                return None
            f = param_fold(self, "resmlp", mlist,
                           (a1["alpha"], a1["beta"], t["weight"], t["bias"], p["scale1"], a2["alpha"],
                            a2["beta"], c1["weight"], c1["bias"], c2["weight"], c2["bias"], p["scale2"]),
                           _fold_resmlp)
            if f is None:
                return None
            A, k, r, w1, b1, w2t = f
            z = torch.addcmul(r, torch.bmm(A.expand(B, -1, -1), x), k).add_(x)  # (B, N, C): Z + s_2 b_2
            z2 = z.reshape(B * N, C)
            h = F.linear(z2, w1, b1)  # (B N, D_C)
            for m in cl[1:4]:  # norm, act, dropout
                h = call(m, h)
            return torch.addmm(z2, h, w2t).view(B, N, C)
        if (type(n1) is not nn.LayerNorm or type(n2) is not nn.LayerNorm or n2.normalized_shape != (C,)
                or len(tl) != 5 or type(tl[0]) is not nn.Linear or type(tl[1]) is not nn.Identity
                or type(tl[4]) is not nn.Linear or not _elementwise(tl[2]) or p["scale1"] is not None
                or p["scale2"] is not None):
            return None
        t1, t2 = tl[0]._parameters, tl[4]._parameters
        if not ("weight" in t1 and "bias" in t1 and "weight" in t2 and "bias" in t2):
            return None
        f = param_fold(self, "mixer", mlist, (t1["weight"], t1["bias"], t2["weight"], t2["bias"], c2["bias"]),
                       _fold_mixer)
        if f is None:
            return None
        w1, b1, w2, bias = f
        h = call(n1, x)  # (B, N, C)
        h = torch.matmul(w1, h) if b1 is None else torch.baddbmm(b1, w1.expand(B, -1, -1), h)  # (B, D_S, C)
        for m in tl[1:4]:  # norm, act, dropout
            h = call(m, h)
        v = torch.baddbmm(x, w2.expand(B, -1, -1), h)  # (B, N, C): U less b_2 (norm_2 removes it)
        h = F.linear(call(n2, v), c1["weight"], c1["bias"])  # (B, N, D_C)
        for m in cl[1:4]:
            h = call(m, h)
        y = torch.addmm(v.reshape(B * N, C), h.reshape(B * N, -1), c2["weight"].t()).view(B, N, C)
        return y if bias is None else y.add_(bias)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_tokens={self.num_tokens}, token_hidden={self.token_mlp.hidden_features}, "
            f"channel_hidden={self.channel_hidden}, layer_scale={self.layer_scale}"
        )


def _elementwise(act: nn.Module) -> bool:
    """An activation without parameters, buffers or submodules: it acts elementwise, whatever
    the layout of its input."""
    return not (act._parameters or act._buffers or act._modules)


def _fold_resmlp(alpha1: torch.Tensor, beta1: torch.Tensor, a: torch.Tensor, a_bias: torch.Tensor | None,
                 s1: torch.Tensor, alpha2: torch.Tensor, beta2: torch.Tensor, w1: torch.Tensor,
                 b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None, s2: torch.Tensor
                 ) -> tuple[torch.Tensor, ...]:
    """ResMLP's constants: Z + s_2 b_2 = X + k * (A X) + r, and the channel MLP on it (see
    ``MixerBlock._folded``)."""
    k = s1 * alpha1  # (C,)
    r = a.sum(1, keepdim=True) * beta1  # (N, C): A 1 beta_1^T
    if a_bias is not None:
        r = r + a_bias[:, None]
    r = r * s1
    w1f = w1 * alpha2  # (D_C, C)
    b1f = w1 @ beta2 if b1 is None else torch.addmv(b1, w1, beta2)
    w2f = w2 * s2[:, None]  # (C, D_C)
    if b2 is not None:
        b2f = b2 * s2
        r = r + b2f
        b1f = b1f - w1f @ b2f  # the first linear sees Z + s_2 b_2
    return a, k, r, w1f, b1f, w2f.t()


def _fold_mixer(w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None,
                c2_bias: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The Mixer's token biases as columns, and b_2 (per token) joined with the channel MLP's
    output bias (per channel) into one (N, C) table (see ``MixerBlock._folded``)."""
    bias = None
    if b2 is not None:
        bias = b2[:, None] if c2_bias is None else b2[:, None] + c2_bias
    elif c2_bias is not None:
        bias = c2_bias
    return w1, None if b1 is None else b1[:, None], w2, bias


@register(
    name="resmlp",
    family="mlp",
    paper="ResMLP: Feedforward networks for image classification with data-efficient training",
    arxiv="2105.03404",
    year=2021,
    input="tokens",
    example=Example(config=dict(_example_cfg(), channel_hidden=32), inputs=tokens(),
                    size=(8,), sizes=((8,),), out_shape="same", tiny=dict(dim=4, channel_hidden=5)),
    size_arg="num_tokens",
)
class ResMLPBlock(MixerBlock):
    r"""ResMLP block: a Mixer block with affine norms, linear token mixing and layer-scale.

    Touvron et al., "ResMLP: Feedforward networks for image classification with
    data-efficient training", arXiv 2105.03404. Built as ``MixerBlock(norm_layer=Affine,
    token_hidden=(), layer_scale=...)``: only the arguments differ.

    Equation (A is N x N, B: C -> D_C, C': D_C -> C; T transposes N and C)::

        Z = X + s_1 * T(A T(Aff_1(X)) + a)
        Y = Z + s_2 * C' GELU(B Aff_2(Z))
        Aff(x) = alpha * x + beta

    Args:
        dim: C, channels per token.
        num_tokens: N, fixed by A (N x N); other N raise ``ShapeError`` naming it.
        channel_hidden: D_C (default 4 C).
        act_layer: activation of the channel MLP (paper: GELU).
        layer_scale: initial s_1, s_2 (paper: 0.1 for 12 blocks, 1e-5 for 24, 1e-6 deeper).
        dropout: dropout after the channel MLP's activation.

    Shape:
        - Input: (B, N, C), N = num_tokens, C = dim.
        - Output: (B, N, C).

    Deviations:
        - No stochastic depth (a training-recipe choice, not part of the block).

    Example:
        >>> block = ResMLPBlock(64, 49)
        >>> block(torch.randn(2, 49, 64)).shape
        torch.Size([2, 49, 64])
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        *,
        channel_hidden: int | None = None,
        act_layer: LayerSpec = "gelu",
        layer_scale: float = 0.1,
        dropout: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(dim, num_tokens, token_hidden=(), channel_hidden=channel_hidden, act_layer=act_layer,
                         norm_layer=Affine, layer_scale=layer_scale, dropout=dropout,
                         device=device, dtype=dtype)
