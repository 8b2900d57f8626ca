"""CMT: a convolutional stem and four stages of CMT blocks (LPU, lightweight MHSA, IRFFN).

Paper: CMT: Convolutional Neural Networks Meet Vision Transformers (Guo et al., arXiv
2107.06263, CVPR 2022). Built from the attention room's ``LightweightMHSA`` (itself the
catalogue's ``MultiHeadAttention``). No reference implementation is installed here: the
parameter count is checked against the paper's Table 1 (tests/test_backbones_paper_only.py).

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i,
k_i its key reduction, N tokens, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.attention.cmt import ONNX_EXEMPT, LightweightMHSA
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["CMT", "CMTBlock", "CMTStage", "InvertedResidualFFN", "cmt_ti"]


class InvertedResidualFFN(nn.Module):
    r"""CMT's inverted residual feed-forward network (IRFFN).

    Guo et al., arXiv 2107.06263, Sec. 3.2, Eq. (5)::

        IRFFN(x) = Conv(F(Conv(x))),   F(x) = DWConv_{3x3}(x) + x

    with the authors' activations and norms: h = BN(GELU(W_1 x)); h = BN(GELU(DWConv(h) + h));
    y = BN(W_2 h) (W_1: C -> rC and W_2: rC -> C are 1 x 1 convs with bias).

    Args:
        dim: C. hidden: rC (CMT: 3.6 C). act_layer: (GELU). norm_eps: of the BatchNorms (1e-5).

    Shape:
        - ``forward(x, H, W)``: x (B, N, C), N = H W tokens (row-major) -> (B, N, C).
    """

    def __init__(self, dim: int, hidden: int, *, act_layer: LayerSpec = "gelu", norm_eps: float = 1e-5,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.conv1 = nn.Sequential(nn.Conv2d(dim, hidden, 1, **fk), create_act(act_layer, **fk),
                                   nn.BatchNorm2d(hidden, eps=norm_eps, **fk))
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, **fk)
        self.act = create_act(act_layer, **fk)
        self.bn = nn.BatchNorm2d(hidden, eps=norm_eps, **fk)
        self.conv2 = nn.Sequential(nn.Conv2d(hidden, dim, 1, **fk), nn.BatchNorm2d(dim, eps=norm_eps, **fk))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, _, c = x.shape
        h = self.conv1(x.transpose(1, 2).reshape(b, c, height, width))  # (B, rC, H, W)
        # F(h) = DWConv(h) + h
        h = self.bn(self.act(self.dwconv(h) + h))
        return self.conv2(h).flatten(2).transpose(1, 2)  # (B, N, C)


class CMTBlock(nn.Module):
    r"""A CMT block: local perception unit, then LMHSA and IRFFN, each pre-norm and residual.

    Guo et al., arXiv 2107.06263, Sec. 3.2, Eq. (6)::

        LPU(x) = DWConv_{3x3}(x) + x
        x  = LPU(x)
        x' = x + LMHSA(LN(x))
        y  = x' + IRFFN(LN(x'))

    Args:
        dim: C. num_heads: h. sr_ratio: k of the LMHSA. mlp_ratio: r of the IRFFN (3.6).
        norm_layer: (LayerNorm). norm_eps: of the two LayerNorms (1e-6).

    Shape:
        - ``forward(z, H, W, bias, bias_size)``: z (B, N, C), N = H W -> (B, N, C); ``bias``
          the stage's relative position bias learned on the grid ``bias_size``.
    """

    def __init__(self, dim: int, num_heads: int, *, sr_ratio: int = 1, mlp_ratio: float = 3.6,
                 norm_layer: LayerSpec = "layernorm", norm_eps: float = 1e-6,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.lpu = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **fk)
        self.norm1 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.attn = LightweightMHSA(dim, num_heads, sr_ratio=sr_ratio, **fk)
        self.norm2 = create_norm(norm_layer, dim, eps=norm_eps, **fk)
        self.ffn = InvertedResidualFFN(dim, int(dim * mlp_ratio), **fk)

    def forward(self, z: torch.Tensor, height: int, width: int, bias: torch.Tensor | None = None,
                bias_size: tuple[int, int] | None = None) -> torch.Tensor:
        b, _, c = z.shape
        img = z.transpose(1, 2).reshape(b, c, height, width)  # (B, C, H, W)
        # LPU(x) = DWConv(x) + x
        z = (self.lpu(img) + img).flatten(2).transpose(1, 2)  # (B, N, C)
        # x' = x + LMHSA(LN(x));  y = x' + IRFFN(LN(x'))
        z = z + self.attn.attend_tokens(self.norm1(z), height, width, bias, bias_size)
        return z + self.ffn(self.norm2(z), height, width)


class CMTStage(nn.Module):
    r"""A CMT stage: a 2 x 2 stride-2 patch embedding with LayerNorm, then CMT blocks sharing one bias.

    Guo et al., arXiv 2107.06263, Sec. 3.3, Fig. 2(c)::

        z = LN(Conv_{2x2/2}(x));  z = Block_n(... Block_1(z))       each with the stage's B

    Args:
        dim: C_in. dim_out: C_out. depth: n. num_heads: h. sr_ratio: k. mlp_ratio: r.
        bias_size: the (H_0, W_0) token grid the stage's relative position bias
            B (h x N_0 x M_0) is learned at (the paper's input size / 2^(i+1)).

    Shape:
        - Input: (B, C_in, H, W); output (B, C_out, floor(H / 2), floor(W / 2)).
    """

    def __init__(self, dim: int, dim_out: int, depth: int, num_heads: int, *, sr_ratio: int = 1,
                 mlp_ratio: float = 3.6, bias_size: Sequence[int] = (14, 14),
                 norm_layer: LayerSpec = "layernorm",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.proj = nn.Conv2d(dim, dim_out, 2, stride=2, **fk)
        self.norm = create_norm(norm_layer, dim_out, **fk)
        self.blocks = nn.ModuleList(
            CMTBlock(dim_out, num_heads, sr_ratio=sr_ratio, mlp_ratio=mlp_ratio, norm_layer=norm_layer, **fk)
            for _ in range(depth))
        self.bias_size = (int(bias_size[0]), int(bias_size[1]))
        require(min(self.bias_size) >= sr_ratio,
                f"CMTStage: bias_size={self.bias_size} must be >= sr_ratio={sr_ratio} on each side")
        m = (self.bias_size[0] // sr_ratio) * (self.bias_size[1] // sr_ratio)
        n = self.bias_size[0] * self.bias_size[1]
        self.relative_pos = nn.Parameter(torch.randn(num_heads, n, m, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C_out, H', W')
        b, c, h, w = x.shape
        z = self.norm(x.flatten(2).transpose(1, 2))  # (B, N, C_out)
        for block in self.blocks:
            z = block(z, h, w, self.relative_pos, self.bias_size)
        return z.transpose(1, 2).reshape(b, c, h, w)  # (B, C_out, H', W')


class CMT(nn.Module):
    r"""CMT: a 3-conv stem at stride 2, four CMT stages (1/4 .. 1/32), a 1 x 1 conv head, GAP, linear.

    Guo et al., "CMT: Convolutional Neural Networks Meet Vision Transformers", arXiv
    2107.06263, Sec. 3.3, Fig. 2(c) and Table 1.

    Equation::

        z_0 = Stem(x)        3 x [Conv_{3x3} (first stride 2) -> GELU -> BN]
        z_i = Stage_i(z_{i-1})                        i = 1..4
        logits = W mean_{h,w} Swish(BN(Conv_{1x1}(z_4))) + b

    Args:
        in_chans: C. num_classes: K.
        img_size: the input size the relative position biases are learned at (CMT-Ti: 160).
        stem_dim: width of the stem (16). dims: D_1..D_4 (CMT-Ti: 46, 92, 184, 368).
        depths: blocks per stage (2, 2, 10, 2). num_heads: per stage (1, 2, 4, 8).
        sr_ratios: k_i (8, 4, 2, 1). mlp_ratio: r of the IRFFNs (3.6).
        fc_dim: width of the 1 x 1 conv before pooling (1280).
        dropout: before the classifier (training only).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W for which every stage's map is at
          least k_i on a side (31 x 31 and up for CMT-Ti); smaller raises ``ShapeError``.
          The relative biases are resized for sizes other than ``img_size``.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        No stochastic depth (training recipe). Other input sizes than ``img_size`` resize
        the learned relative position biases bilinearly (the paper's code needs img_size).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        img_size: int | Sequence[int] = 160,
        stem_dim: int = 16,
        dims: Sequence[int] = (46, 92, 184, 368),
        depths: Sequence[int] = (2, 2, 10, 2),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: float = 3.6,
        fc_dim: int = 1280,
        dropout: float = 0.1,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        cfg = [tuple(dims), tuple(depths), tuple(num_heads), tuple(sr_ratios)]
        require(len({len(c) for c in cfg}) == 1 and len(cfg[0]) >= 1,
                f"CMT: dims, depths, num_heads, sr_ratios must be equally long, got {cfg}")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.sr_ratios = cfg[3]
        h0, w0 = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(in_chans if i == 0 else stem_dim, stem_dim, 3, stride=2 if i == 0 else 1,
                                 padding=1, **fk), nn.GELU(), nn.BatchNorm2d(stem_dim, **fk)]
        self.stem = nn.Sequential(*layers)
        grids = self._grids(h0, w0)
        self.stages = nn.Sequential(*[
            CMTStage(stem_dim if i == 0 else dims[i - 1], dims[i], depths[i], num_heads[i],
                     sr_ratio=sr_ratios[i], mlp_ratio=mlp_ratio, bias_size=grids[i], **fk)
            for i in range(len(dims))
        ])
        self.num_features = fc_dim
        self.head_conv = nn.Sequential(nn.Conv2d(dims[-1], fc_dim, 1, **fk), nn.BatchNorm2d(fc_dim, **fk),
                                       nn.SiLU())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(fc_dim, num_classes, **fk)

    def _grids(self, height: int, width: int) -> list[tuple[int, int]]:
        """The (H_i, W_i) token grid of every stage for an H x W input."""
        h, w = (height + 1) // 2, (width + 1) // 2  # the stride-2, padding-1 3 x 3 stem conv
        sizes = []
        for _ in range(len(self.sr_ratios)):
            h, w = h // 2, w // 2
            sizes.append((h, w))
        return sizes

    def _check_size(self, height: int, width: int) -> None:
        for i, ((h, w), k) in enumerate(zip(self._grids(height, width), self.sr_ratios, strict=True)):
            if h < max(k, 1) or w < max(k, 1):
                side = next(s for s in range(1, 4096) if all(
                    min(g) >= max(kk, 1) for g, kk in zip(self._grids(s, s), self.sr_ratios, strict=True)))
                raise ShapeError(f"CMT: input {height}x{width} gives stage {i + 1} a {h}x{w} map, smaller "
                                 f"than its key reduction {k}; expected H, W >= {side}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, D_4, H_4, W_4)."""
        dims = check_shape(x, "B C H W", name="CMT", C=self.in_chans)
        self._check_size(dims["H"], dims["W"])
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W mean_{h,w} Swish(BN(Conv_{1x1}(z_4))) + b
        z = self.head_conv(self.forward_features(x)).mean((2, 3))  # (B, fc_dim)
        return self.head(self.drop(z))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="cmt_ti",
    family="model",
    size_arg="img_size",
    paper="CMT: Convolutional Neural Networks Meet Vision Transformers",
    arxiv="2107.06263",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(160, 160), params="9.49M", macs="0.62G", source="Table 1 (CMT-Ti, 160x160)"),
    exempt={"grad": "in training mode the biases just before a BatchNorm (the key-reduction conv's, each "
                    "IRFFN's middle BN and last conv's, the head conv's) are per-channel shifts that the "
                    "batch statistics remove exactly, so their gradient is 0; they act in eval through the "
                    "running statistics, and the authors' network has them "
                    "(tests/test_backbones_paper_only.py "
                    "checks that exactly these are zero)",
            "onnx": ONNX_EXEMPT},
    example=Example(
        # Small widths and one block per stage keep the generic tests fast; the constructor's
        # defaults are the paper's CMT-Ti (tests/test_backbones_paper_only.py builds it).
        config=dict(in_chans=3, num_classes=10, img_size=64, stem_dim=8, dims=(8, 16, 16, 32),
                    depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), fc_dim=32),
        inputs=images("in_chans"), size=(64, 64), sizes=((33, 47), (72, 40)), out_shape=logits_shape,
        tiny=dict(num_classes=3, img_size=32, stem_dim=4, dims=(4, 8), depths=(1, 1), num_heads=(1, 2),
                  sr_ratios=(2, 1), fc_dim=8),
    ),
)
def cmt_ti(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> CMT:
    """CMT-Ti: widths (46, 92, 184, 368), depths (2, 2, 10, 2), 160x160 input; 9,492,426 parameters.

    Guo et al., arXiv 2107.06263, Table 1 (CMT-Ti: 9.49M parameters, 0.62B FLOPs at 160x160,
    79.1% top-1) and Table 2 (its stages).

    Equation: see ``CMT``, ``CMTBlock``, ``LightweightMHSA`` and ``InvertedResidualFFN``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``CMT``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= 31.
        - Output: (B, K) logits, K = num_classes.
    """
    return CMT(in_chans, num_classes, **kw)
