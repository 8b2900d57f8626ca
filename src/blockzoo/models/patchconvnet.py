"""PatchConvNet: a convolutional stem, a single column of residual conv blocks with SE, and
attention-based pooling through a class token.

Paper: Augmenting Convolutional networks with attention-based aggregation (Touvron et al.,
arXiv 2112.13692, 2021). Built from the catalogue's ``SqueezeExcite``, ``MultiHeadAttention``
and ``MLP``. No reference implementation is installed here: the parameter count is checked
against the paper's table (tests/test_backbones_paper_only.py).

Letters: B batch, C input channels (in_chans), H W spatial, D the trunk width, N = H W / 16^2
patch positions, K classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call, invoke
from blockzoo.act import create_norm
from blockzoo.attention.channel import SqueezeExcite
from blockzoo.attention.dot_product import MultiHeadAttention
from blockzoo.checks import check_shape, require
from blockzoo.mlp.mlp import MLP
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["AttentionPooling", "PatchConvBlock", "PatchConvNet", "patchconvnet_s60"]

_PAPER = dict(paper="Augmenting Convolutional networks with attention-based aggregation", arxiv="2112.13692",
              year=2021, input="image")


@register(
    name="patchconvnet_block",
    family="conv",
    example=Example(config=dict(dim=16), inputs=images("dim"), size=(6, 6), out_shape="same",
                    tiny=dict(dim=4, layer_scale=1.0)),
    **_PAPER,
)
class PatchConvBlock(nn.Module):
    r"""PatchConvNet's trunk block: LN, 1 x 1 conv, GELU, 3 x 3 depthwise conv, GELU, SE, 1 x 1 conv.

    Touvron et al., arXiv 2112.13692, Sec. 3 and Fig. 2 (the authors' ``Conv_blocks_se``)::

        y = x + gamma * W_2 SE(GELU(DWConv_{3x3}(GELU(W_1 LN(x) + b_1))))     W_1, W_2: C -> C

    Args:
        dim: C. se_ratio: SE's bottleneck width / C (1/4, hidden = round(C / 4)).
        layer_scale: initial gamma (1e-4). norm_eps: of the LayerNorm over channels (1e-6).

    Shape:
        - Input: (B, C, H, W), C = dim, any H, W; output (B, C, H, W).

    Deviations:
        The LayerNorm runs over the channels of the (B, C, H, W) map (the authors apply it
        to the same values laid out as (B, H W, C) tokens).

    Example:
        >>> block = PatchConvBlock(384)
        >>> block(torch.randn(2, 384, 14, 14)).shape
        torch.Size([2, 384, 14, 14])
    """

    def __init__(self, dim: int, *, se_ratio: float = 0.25, layer_scale: float = 1e-4, norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.dim = dim
        self.norm = create_norm("layernorm2d", dim, eps=norm_eps, **fk)
        self.conv1 = nn.Conv2d(dim, dim, 1, **fk)
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **fk)
        self.act = nn.GELU()
        self.se = SqueezeExcite(dim, hidden=max(1, round(dim * se_ratio)), **fk)
        self.conv2 = nn.Conv2d(dim, dim, 1, **fk)
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), layer_scale, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.dim:
            check_shape(x, "B C H W", name="PatchConvBlock", C=self.dim)  # raises, naming the misfit
        # submodules without nn.Module.__call__ unless hooked (blockzoo._fastcall)
        m = self._modules
        act = m["act"]
        h = call(act, call(m["dwconv"], call(act, call(m["conv1"], call(m["norm"], x)))))  # (B, C, H, W)
        # y = x + gamma * W_2 SE(h)
        return torch.addcmul(x, self.gamma, call(m["conv2"], invoke(m["se"], h)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class AttentionPooling(nn.Module):
    r"""Attention-based pooling: a learned class token attends to the patches, then an MLP.

    Touvron et al., arXiv 2112.13692, Sec. 3 (CaiT's class-attention block, arXiv 2103.17239)::

        u = [x_cls; x_1 .. x_N]
        x_cls' = x_cls + gamma_1 * MHA(q = LN_1(x_cls), k = v = LN_1(u))
        y = x_cls' + gamma_2 * MLP(LN_2(x_cls'))

    Args:
        dim: D. num_heads: (1). mlp_ratio: (3). layer_scale: initial gammas (1e-4).
        norm_eps: (1e-6).

    Shape:
        - Input: tokens (B, N, D); output x_cls (B, D).
    """

    def __init__(self, dim: int, num_heads: int = 1, *, mlp_ratio: float = 3.0, layer_scale: float = 1e-4,
                 norm_eps: float = 1e-6, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.attn = MultiHeadAttention(dim, num_heads, **fk)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **fk)
        self.mlp = MLP(dim, int(dim * mlp_ratio), act_layer="gelu", **fk)
        self.gamma_1 = nn.Parameter(torch.full((dim,), layer_scale, **fk))
        self.gamma_2 = nn.Parameter(torch.full((dim,), layer_scale, **fk))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **fk))
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        u = self.norm1(torch.cat([cls, tokens], 1))  # (B, 1 + N, D)
        # x_cls' = x_cls + gamma_1 * MHA(LN(x_cls), LN(u), LN(u))
        cls = cls + self.gamma_1 * self.attn(u[:, :1], u, u)
        return (cls + self.gamma_2 * self.mlp(self.norm2(cls)))[:, 0]  # (B, D)


class PatchConvNet(nn.Module):
    r"""PatchConvNet: a 16x-downsampling conv stem, L trunk blocks at one resolution, attention pooling.

    Touvron et al., "Augmenting Convolutional networks with attention-based aggregation",
    arXiv 2112.13692, Sec. 3, Fig. 2 and Table 1.

    Equation::

        z_0 = Conv_{3x3/2}(GELU(Conv_{3x3/2}(GELU(Conv_{3x3/2}(GELU(Conv_{3x3/2}(x)))))))   D/8, D/4, D/2, D
        z_l = PatchConvBlock(z_{l-1})              l = 1..L
        y = LN(AttentionPooling(x_cls, tokens(z_L)))
        logits = W y + b

    Args:
        in_chans: C. num_classes: K. dim: D (S: 384; divisible by 8). depth: L (60).
        num_heads: of the pooling attention (1). mlp_ratio: of the pooling MLP (3).
        layer_scale: initial gammas (1e-4).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (the stride-2 convs round up).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        No stochastic depth (training recipe).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, *, dim: int = 384, depth: int = 60,
                 num_heads: int = 1, mlp_ratio: float = 3.0, layer_scale: float = 1e-4,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(dim % 8 == 0 and depth >= 1,
                f"PatchConvNet: dim={dim} must be a multiple of 8 and depth={depth} >= 1")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        widths = [in_chans, dim // 8, dim // 4, dim // 2, dim]
        layers: list[nn.Module] = []
        for i in range(4):
            layers.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1, bias=False, **fk))
            if i < 3:
                layers.append(nn.GELU())
        self.stem = nn.Sequential(*layers)
        self.trunk = nn.Sequential(*[PatchConvBlock(dim, layer_scale=layer_scale, **fk)
                                     for _ in range(depth)])
        self.pool = AttentionPooling(dim, num_heads, mlp_ratio=mlp_ratio, layer_scale=layer_scale, **fk)
        self.num_features = dim
        self.norm = nn.LayerNorm(dim, eps=1e-6, **fk)
        self.head = nn.Linear(dim, num_classes, **fk)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's map (B, D, H / 16, W / 16) (rounded up)."""
        check_shape(x, "B C H W", name="PatchConvNet", C=self.in_chans)
        return self.trunk(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.forward_features(x).flatten(2).transpose(1, 2)  # (B, N, D)
        # logits = W LN(x_cls) + b
        return self.head(self.norm(self.pool(z)))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="patchconvnet_s60",
    family="model",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="25.2M", macs="4.0G", source="Table 1 (S60)"),
    example=Example(
        # Small width and two blocks keep the generic tests fast; the constructor's defaults are
        # the paper's S60 (tests/test_backbones_paper_only.py builds it).
        config=dict(in_chans=3, num_classes=10, dim=16, depth=2),
        inputs=images("in_chans"), size=(32, 32), sizes=((33, 47), (20, 12)), out_shape=logits_shape,
        tiny=dict(num_classes=3, dim=8, depth=1, layer_scale=1.0),
    ),
    **_PAPER,
)
def patchconvnet_s60(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> PatchConvNet:
    """PatchConvNet-S60: D = 384, 60 trunk blocks, one-head attention pooling; 25,231,096 parameters.

    Touvron et al., arXiv 2112.13692, Table 1 (S60: 25.2M parameters, 4.0G FLOPs at
    224x224, 82.1% top-1).

    Equation: see ``PatchConvNet``, ``PatchConvBlock`` and ``AttentionPooling``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``PatchConvNet``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.
    """
    return PatchConvNet(in_chans, num_classes, **kw)
