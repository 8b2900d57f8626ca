"""EfficientFormer's Meta4D block: pooling as the token mixer, then a conv-BN MLP, both layer-scaled.

Paper: EfficientFormer: Vision Transformers at MobileNet Speed (Li et al., arXiv 2206.01191,
2022), Sec. 3, Eq. (3)-(4). The pooling mixer is PoolFormer's (Yu et al., arXiv 2111.11418).

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import listened
from blockzoo._kept import param_fold
from blockzoo.act import LayerSpec
from blockzoo.checks import check_shape, require
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.registry import Example, images, register

__all__ = ["EfficientFormerMeta4D"]


@register(
    name="efficientformer_meta4d",
    family="conv",
    paper="EfficientFormer: Vision Transformers at MobileNet Speed",
    arxiv="2206.01191",
    year=2022,
    input="image",
    exempt={"grad": "in training mode the 1x1 convs' biases (the reference's, kept for its weights) "
                    "sit right before a batch-statistics BN, which removes them exactly, so their "
                    "gradient is 0; they act in eval through the running statistics"},
    example=Example(config=dict(channels=8), inputs=images(), size=(8, 8), out_shape="same",
                    tiny=dict(channels=3, mlp_ratio=2.0)),
)
class EfficientFormerMeta4D(nn.Module):
    r"""Meta4D: x + s_1 (Pool(x) - x), then x + s_2 BN(conv1x1(GELU(BN(conv1x1(x))))).

    Li et al., "EfficientFormer: Vision Transformers at MobileNet Speed", arXiv 2206.01191,
    Eq. (3)-(4).

    Equation::

        I = X + s_1 * (AvgPool_{k x k, stride 1}(X) - X)                  token mixer
        Y = I + s_2 * BN(Conv_{1x1}(GELU(BN(Conv_{1x1}(I)))))              conv MLP, r C hidden

    s_1, s_2 are learned per-channel layer scales; the average pool counts only the pixels
    inside the map (no zero padding in the mean).

    Args:
        channels: C.
        pool_size: k (3).
        mlp_ratio: r, the MLP's hidden width / C (4).
        layer_scale: initial s_1, s_2 (1e-5).
        act_layer: the MLP's activation (GELU).
        norm_layer: after each 1x1 conv (BatchNorm).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, C, H, W).

    Deviations:
        The 1x1 convs keep their biases before BN, as the reference code has them (for
        its weights); in training BN removes them, in eval they act through the running
        statistics.

    Example:
        >>> blk = EfficientFormerMeta4D(48)
        >>> blk(torch.randn(2, 48, 14, 9)).shape
        torch.Size([2, 48, 14, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        pool_size: int = 3,
        mlp_ratio: float = 4.0,
        layer_scale: float = 1e-5,
        act_layer: LayerSpec = "gelu",
        norm_layer: LayerSpec = "batchnorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(pool_size % 2 == 1, f"EfficientFormerMeta4D: pool_size={pool_size} must be odd")
        hidden = int(channels * mlp_ratio)
        require(hidden >= 1, f"EfficientFormerMeta4D: mlp_ratio={mlp_ratio} gives hidden width {hidden}")
        fk = dict(device=device, dtype=dtype)
        self.channels, self.pool_size, self.mlp_ratio = channels, pool_size, mlp_ratio
        self.scale1 = nn.Parameter(torch.full((channels,), float(layer_scale), **fk))
        self.mlp = nn.Sequential(
            ConvBnAct(channels, hidden, 1, bias=True, act_layer=act_layer, norm_layer=norm_layer, **fk),
            ConvBnAct(hidden, channels, 1, bias=True, act_layer=None, norm_layer=norm_layer, **fk),
        )
        self.scale2 = nn.Parameter(torch.full((channels,), float(layer_scale), **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="EfficientFormerMeta4D", C=self.channels)  # raises
        k = self.pool_size
        pooled = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)  # (B, C, H, W)
        if not torch.is_grad_enabled():
            y = self._folded(x, pooled)
            if y is not None:
                return y
        # I = X + s_1 (Pool(X) - X)
        x = x + self.scale1[:, None, None] * (pooled - x)
        # Y = I + s_2 MLP(I)
        return x + self.scale2[:, None, None] * self.mlp(x)

    def _folded(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor | None:
        """The forward without autograd: I as one ``lerp`` (X + s_1 (Pool(X) - X)), and s_2 with
        the second BatchNorm folded into the second 1x1 convolution (cached,
        ``_kept.param_fold``), whose output takes I in place. None (the module path) for
        another structure, training-mode norms, a hook, a parametrized tensor."""
        p, mlp = self._parameters, self._modules["mlp"]
        if type(mlp) is not nn.Sequential or len(mlp) != 2 or "scale1" not in p or "scale2" not in p:
            return None
        first, second = mlp[0], mlp[1]
        if type(first) is not ConvBnAct or type(second) is not ConvBnAct:
            return None
        conv, bn, act = second._modules["conv"], second._modules["bn"], second._modules["act"]
        if (type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d or type(act) is not nn.Identity
                or bn.training):
            return None
        cp, bp, bb = conv._parameters, bn._parameters, bn._buffers
        if not ("weight" in cp and "bias" in cp and "weight" in bp and "bias" in bp and "running_mean" in bb
                and bb["running_mean"] is not None):
            return None
        f = param_fold(self, "meta4d", (mlp, second, conv, bn, act),
                       (cp["weight"], cp["bias"], bp["weight"], bp["bias"], bb["running_mean"],
                        bb["running_var"], p["scale2"]),
                       lambda *t: _fold_scaled_conv_bn(bn.eps, *t), extra=(bn.eps,))
        if f is None or listened(first):
            return None
        # I = X + s_1 (Pool(X) - X)
        i = torch.lerp(x, pooled, p["scale1"][:, None, None])
        # Y = I + s_2 BN(conv(GELU(BN(conv(I)))))
        h = first.forward(i)
        return F.conv2d(h, f[0], f[1], conv.stride, conv.padding, conv.dilation, conv.groups).add_(i)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, pool_size={self.pool_size}, mlp_ratio={self.mlp_ratio}"


def _fold_scaled_conv_bn(eps: float, w: torch.Tensor, b: torch.Tensor | None, gamma: torch.Tensor | None,
                         beta: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor, s: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``s * BN(conv(h))`` as one convolution: W' = W s gamma / sqrt(var + eps),
    b' = s ((b - mean) gamma / sqrt(var + eps) + beta)."""
    scale = torch.rsqrt(var + eps)
    if gamma is not None:
        scale = scale * gamma
    bias = -mean * scale if b is None else (b - mean) * scale
    if beta is not None:
        bias = bias + beta
    return w * (scale * s).view(-1, 1, 1, 1), bias * s
