"""Container-Light: a four-stage hierarchy of Container blocks (static affinity, then static + dynamic).

Paper: Container: Context Aggregation Network (Gao et al., arXiv 2106.01401, NeurIPS 2021),
Sec. 3.3 (Container-Light). Built from the attention room's ``AffinityMixing``. No
reference implementation is installed here: the parameter count is checked against the
paper's Table 1 (tests/test_backbones_paper_only.py).

Letters: B batch, C input channels (in_chans), H W spatial, D_i the width of stage i,
P_i its patch size, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.attention.container import AffinityMixing
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.models.classic import logits_shape
from blockzoo.registry import Example, images, register

__all__ = ["ContainerBlock", "ContainerLight", "ContainerStage", "container_light"]


class ContainerBlock(nn.Module):
    r"""A Container block: a depthwise-conv position embedding, affinity mixing and a 1 x 1-conv MLP.

    Gao et al., arXiv 2106.01401, Sec. 3.3 (the authors' Container-Light code)::

        x  = x + DWConv_{3x3}(x)
        x' = x + AffinityMixing(BN(x))
        y  = x' + W_2 GELU(W_1 BN(x') + b_1) + b_2        W_1: C -> rC, W_2: rC -> C (1 x 1 convs)

    Args:
        dim: C. num_heads: h of the dynamic affinity. mlp_ratio: r.
        dynamic: static + dynamic affinity (True) or static only (False).
        kernel_size: of the static affinity (5). act_layer: (GELU). norm_layer: (BatchNorm2d).

    Shape:
        - Input: (B, C, H, W), C = dim; output (B, C, H, W).
    """

    def __init__(self, dim: int, num_heads: int = 16, *, mlp_ratio: float = 4.0, dynamic: bool = True,
                 kernel_size: int = 5, act_layer: LayerSpec = "gelu", norm_layer: LayerSpec = "batchnorm2d",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        hidden = int(dim * mlp_ratio)
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **fk)
        self.norm1 = create_norm(norm_layer, dim, **fk)
        self.mixing = AffinityMixing(dim, num_heads, kernel_size=kernel_size, dynamic=dynamic, **fk)
        self.norm2 = create_norm(norm_layer, dim, **fk)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Conv2d(dim, hidden, 1, **fk))
        self.mlp.add_module("act", create_act(act_layer, **fk))
        self.mlp.add_module("fc2", nn.Conv2d(hidden, dim, 1, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        # x' = x + Mixing(BN(x));  y = x' + MLP(BN(x'))
        x = x + self.mixing(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ContainerStage(nn.Module):
    r"""A Container stage: a P x P stride-P patch embedding with LayerNorm, then Container blocks.

    Gao et al., arXiv 2106.01401, Sec. 3.3::

        z = Blocks(LN(Conv_{PxP/P}(x)))          LN over channels at every position

    Args:
        dim: C_in. dim_out: C_out. depth: blocks. patch_size: P. num_heads, mlp_ratio,
        dynamic: of the blocks. norm_eps: of the LayerNorm (1e-5).

    Shape:
        - Input: (B, C_in, H, W); output (B, C_out, floor(H / P), floor(W / P)).
    """

    def __init__(self, dim: int, dim_out: int, depth: int, patch_size: int, *, num_heads: int = 16,
                 mlp_ratio: float = 4.0, dynamic: bool = False, norm_eps: float = 1e-5,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.proj = nn.Conv2d(dim, dim_out, patch_size, stride=patch_size, **fk)
        self.norm = create_norm("layernorm2d", dim_out, eps=norm_eps, **fk)
        self.blocks = nn.Sequential(*[
            ContainerBlock(dim_out, num_heads, mlp_ratio=mlp_ratio, dynamic=dynamic, **fk)
            for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.norm(self.proj(x)))


class ContainerLight(nn.Module):
    r"""Container-Light: patch embeddings at strides 4, 8, 16, 32; static affinity in stages 1-3,
    static + dynamic in stage 4; BatchNorm, GAP, linear head.

    Gao et al., "Container: Context Aggregation Network", arXiv 2106.01401, Sec. 3.3 and Table 1.

    Equation::

        z_i = Blocks_i(LN(Conv_{P_i x P_i / P_i}(z_{i-1})))      z_0 = x, P = (4, 2, 2, 2)
        logits = W mean_{h,w} BN(z_4) + b

    Args:
        in_chans: C. num_classes: K.
        dims: D_1..D_4 (64, 128, 320, 512). depths: (3, 4, 8, 3). patch_sizes: (4, 2, 2, 2).
        mlp_ratios: (4, 4, 4, 4). num_heads: of the dynamic affinity (16).
        dynamic: per stage, whether its blocks add the dynamic affinity (False, False, False, True).

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= prod(P) = 32 (the strided convs floor);
          smaller raises ``ShapeError``.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        No stochastic depth (training recipe). MLP ratio 4 in every stage: that is what the
        paper's Table 1 counts (20.0M parameters, 3.2G FLOPs; ours 20,008,235 and 3.13 GMACs);
        ratios (8, 8, 4, 4), which the authors' released detection backbone defaults to,
        would give 20,633,643 parameters and 3.85 GMACs.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        *,
        dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 4, 8, 3),
        patch_sizes: Sequence[int] = (4, 2, 2, 2),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        num_heads: int = 16,
        dynamic: Sequence[bool] = (False, False, False, True),
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        cfg = [tuple(dims), tuple(depths), tuple(patch_sizes), tuple(mlp_ratios), tuple(dynamic)]
        require(len({len(c) for c in cfg}) == 1 and len(cfg[0]) >= 1,
                f"ContainerLight: dims, depths, patch_sizes, mlp_ratios, dynamic must be equally long, "
                f"got {cfg}")
        fk = dict(device=device, dtype=dtype)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.min_size = 1
        for p in cfg[2]:
            self.min_size *= p
        self.stages = nn.Sequential(*[
            ContainerStage(in_chans if i == 0 else dims[i - 1], dims[i], depths[i], patch_sizes[i],
                           num_heads=num_heads, mlp_ratio=mlp_ratios[i], dynamic=dynamic[i], **fk)
            for i in range(len(dims))
        ])
        self.num_features = dims[-1]
        self.norm = nn.BatchNorm2d(dims[-1], **fk)
        self.head = nn.Linear(dims[-1], num_classes, **fk)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, D_4, H / 32, W / 32) (rounded down)."""
        dims = check_shape(x, "B C H W", name="ContainerLight", C=self.in_chans)
        if dims["H"] < self.min_size or dims["W"] < self.min_size:
            raise ShapeError(f"ContainerLight: expected H, W >= {self.min_size} (total stride), "
                             f"got {dims['H']}x{dims['W']}")
        return self.stages(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # logits = W mean_{h,w} BN(z_4) + b
        return self.head(self.norm(self.forward_features(x)).mean((2, 3)))  # (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="container_light",
    family="model",
    paper="Container: Context Aggregation Network",
    arxiv="2106.01401",
    year=2021,
    input="image",
    output="logits",
    paper_numbers=dict(size=(224, 224), params="20.0M", macs="3.2G", source="Table 1 (Container-Light)"),
    exempt={"grad": "in training mode a per-channel constant just before a batch-statistics BatchNorm is "
                    "removed exactly: the last block's MLP bias (only the final BN follows it) and, on the "
                    "example's 2 x 2 last map, a few more biases of the last stage have a zero gradient; "
                    "they act in eval through the running statistics (tests/test_backbones_paper_only.py "
                    "checks "
                    "the list)"},
    example=Example(
        # Small widths and one block per stage keep the generic tests fast; the constructor's
        # defaults are the paper's Container-Light (tests/test_backbones_paper_only.py builds it).
        config=dict(in_chans=3, num_classes=10, dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=4),
        inputs=images("in_chans"), size=(64, 64), sizes=((33, 47), (64, 40)), out_shape=logits_shape,
        tiny=dict(num_classes=3, dims=(4, 8), depths=(1, 1), patch_sizes=(2, 2), mlp_ratios=(2, 2),
                  num_heads=2, dynamic=(False, True)),
    ),
)
def container_light(in_chans: int = 3, num_classes: int = 1000, **kw: Any) -> ContainerLight:
    """Container-Light: widths (64, 128, 320, 512), depths (3, 4, 8, 3), MHSA in stage 4; 20,008,235 params.

    Gao et al., arXiv 2106.01401, Sec. 3.3 and Table 1 (Container-Light: 20.0M parameters,
    3.2G FLOPs at 224x224, 82.7% top-1).

    Equation: see ``ContainerLight``, ``ContainerBlock`` and ``AffinityMixing``.

    Args:
        in_chans: C. num_classes: K.
        **kw: ``ContainerLight``'s keyword arguments.

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= 32.
        - Output: (B, K) logits, K = num_classes.
    """
    return ContainerLight(in_chans, num_classes, **kw)
