"""The Inception block: parallel 1x1, 3x3, 5x5 and pooling branches, concatenated.

Paper: Going Deeper with Convolutions (Szegedy et al., arXiv 1409.4842, 2014).

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastops import max_pool_same
from blockzoo._kept import param_fold
from blockzoo.act import LayerSpec
from blockzoo.checks import check_shape, require
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.registry import Example, images, register

__all__ = ["InceptionBlock"]


def _inception_out(shape: Any, cfg: Any) -> tuple[int, ...]:
    pool = cfg.get("pool_proj") or shape[1]
    c = cfg["out_1x1"] + cfg["out_3x3"] + cfg["out_5x5"] + pool
    return (shape[0], c, shape[2], shape[3])


@register(
    name="inception",
    family="conv",
    paper="Going Deeper with Convolutions",
    arxiv="1409.4842",
    year=2014,
    input="image",
    example=Example(
        config=dict(channels=16, out_1x1=8, red_3x3=8, out_3x3=12, red_5x5=4, out_5x5=6, pool_proj=6),
        inputs=images(),
        size=(8, 8),
        out_shape=_inception_out,
        tiny=dict(channels=3, out_1x1=2, red_3x3=2, out_3x3=2, red_5x5=1, out_5x5=2, pool_proj=1),
    ),
)
class InceptionBlock(nn.Module):
    r"""Inception block: four parallel branches concatenated along channels.

    Szegedy et al., "Going Deeper with Convolutions" (GoogLeNet), arXiv 1409.4842.

    Equation (each conv followed by its norm and ReLU; [.,.] concatenation on C)::

        y = [ conv1x1(x),
              conv3x3(conv1x1_r3(x)),
              conv5x5(conv1x1_r5(x)),
              conv1x1_p(maxpool3x3(x)) ]

    The 1x1 reductions (``red_3x3``, ``red_5x5``) shrink the channels before the
    expensive 3x3 and 5x5 convolutions; that is what makes the block cheap (with
    C = 192, the paper's 3a block costs about a quarter of the naive one).
    Passing ``None`` for a reduction (or for ``pool_proj``) gives the paper's
    naive version of that branch: the 3x3 / 5x5 conv reads all C channels, the
    pooled branch passes the C channels on unprojected.

    Args:
        channels: C, the input channels.
        out_1x1: channels of the 1x1 branch.
        red_3x3: the 1x1 reduction before the 3x3 conv (``None``: none).
        out_3x3: channels of the 3x3 branch.
        red_5x5: the 1x1 reduction before the 5x5 conv (``None``: none).
        out_5x5: channels of the 5x5 branch.
        pool_proj: the 1x1 projection after the 3x3 max pool (``None``: none, C channels).
        norm_layer: norm after every conv (paper: none; GoogLeNet v1 predates
            batch norm; ``"batchnorm"`` trains more easily).
        act_layer: activation after every conv (paper: ReLU).

    Shape:
        - Input: (B, C, H, W), C = channels, any H, W.
        - Output: (B, O, H, W), O = out_1x1 + out_3x3 + out_5x5 + (pool_proj or C).

    Example:
        >>> block = InceptionBlock(192, 64, 96, 128, 16, 32, 32)      # GoogLeNet 3a
        >>> block(torch.randn(1, 192, 28, 28)).shape
        torch.Size([1, 256, 28, 28])
    """

    def __init__(
        self,
        channels: int,
        out_1x1: int,
        red_3x3: int | None,
        out_3x3: int,
        red_5x5: int | None,
        out_5x5: int,
        pool_proj: int | None,
        *,
        norm_layer: LayerSpec = None,
        act_layer: LayerSpec = "relu",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        sizes = [out_1x1, out_3x3, out_5x5] + [v for v in (red_3x3, red_5x5, pool_proj) if v is not None]
        require(all(v >= 1 for v in sizes), f"InceptionBlock: branch widths {sizes} must be >= 1")
        self.channels = channels
        self.dim_out = out_1x1 + out_3x3 + out_5x5 + (pool_proj or channels)
        kw = dict(norm_layer=norm_layer, act_layer=act_layer, device=device, dtype=dtype)

        def reduced(red: int | None, out: int, k: int) -> nn.Module:
            if red is None:
                return ConvBnAct(channels, out, k, **kw)
            return nn.Sequential(ConvBnAct(channels, red, 1, **kw), ConvBnAct(red, out, k, **kw))

        self.branch1 = ConvBnAct(channels, out_1x1, 1, **kw)
        self.branch3 = reduced(red_3x3, out_3x3, 3)
        self.branch5 = reduced(red_5x5, out_5x5, 5)
        pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.branch_pool = (
            pool if pool_proj is None else nn.Sequential(pool, ConvBnAct(channels, pool_proj, 1, **kw))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.channels:
            check_shape(x, "B C H W", name="InceptionBlock", C=self.channels)  # raises, naming the misfit
        if not torch.is_grad_enabled():
            y = self._shared_input(x)
            if y is not None:
                return y
        # y = [b1(x), b3(x), b5(x), bpool(x)] along C
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)

    def _shared_input(self, x: torch.Tensor) -> torch.Tensor | None:
        """The forward without autograd: the three 1x1 convolutions that read x (branch 1 and the
        3x3 and 5x5 reductions) run as one, their weights (each norm folded in) concatenated and
        cached (``_kept.param_fold``), one ReLU in place on the result; a 3x3 max pool of
        stride 1 as ``_fastops.max_pool_same``. None (the module path) for another structure
        (no reductions, another activation, a training norm) or a hook."""
        mods = self._modules
        b1, b3, b5, bp = mods["branch1"], mods["branch3"], mods["branch5"], mods["branch_pool"]
        if type(b3) is not nn.Sequential or type(b5) is not nn.Sequential:
            return None
        if type(bp) is nn.Sequential and (len(bp) != 2 or type(bp[1]) is not ConvBnAct):
            return None
        first = (b1, b3[0], b5[0])
        tensors: list[torch.Tensor | None] = []
        mlist: list[nn.Module] = [b3, b5, b3[1], b5[1], bp, *(bp if type(bp) is nn.Sequential else ())]
        eps = []
        for u in first:
            conv, bn, act = u._modules["conv"], u._modules["bn"], u._modules["act"]
            cp = conv._parameters
            if (type(u) is not ConvBnAct or type(conv) is not nn.Conv2d or type(act) is not nn.ReLU
                    or conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0)
                    or conv.groups != 1 or "weight" not in cp or "bias" not in cp):
                return None
            tensors += [cp["weight"], cp["bias"]]
            if type(bn) is nn.BatchNorm2d:
                bb, bq = bn._buffers, bn._parameters
                if bn.training or bb["running_mean"] is None or "weight" not in bq or "bias" not in bq:
                    return None
                tensors += [bq["weight"], bq["bias"], bb["running_mean"], bb["running_var"]]
                eps.append(bn.eps)
            elif type(bn) is nn.Identity:
                tensors += [None, None, None, None]
                eps.append(None)
            else:
                return None
            mlist += [u, conv, bn, act]
        f = param_fold(self, "1x1", tuple(mlist), tuple(tensors), lambda *t: _fold_1x1(eps, *t),
                       extra=tuple(eps))
        if f is None:
            return None
        o1, r3 = b1._modules["conv"].out_channels, b3[0]._modules["conv"].out_channels
        y = torch.relu_(F.conv2d(x, f[0], f[1]))  # (B, o1 + r3 + r5, H, W)
        y3, y5 = b3[1].forward(y[:, o1:o1 + r3]), b5[1].forward(y[:, o1 + r3:])
        pool = bp[0] if type(bp) is nn.Sequential else bp
        if (type(pool) is nn.MaxPool2d and pool.kernel_size in (3, (3, 3)) and pool.stride in (1, (1, 1))
                and pool.padding in (1, (1, 1)) and pool.dilation in (1, (1, 1)) and not pool.ceil_mode
                and not pool.return_indices):
            p = max_pool_same(x, 3)  # the same maxima as the pooling kernel, which is slow on CPU
        else:
            p = pool(x)
        if pool is not bp:
            p = bp[1].forward(p)
        return torch.cat([y[:, :o1], y3, y5, p], 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, dim_out={self.dim_out}"


def _fold_1x1(eps: list[float | None], *t: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Three 1x1 conv [+ eval BatchNorm] units on the same input as one convolution: each norm
    folded into its conv (W' = W gamma / sqrt(var + eps), b' = (b - mean) gamma / sqrt(var +
    eps) + beta), the weights and biases concatenated over the output channels."""
    weights, biases = [], []
    for i, e in enumerate(eps):
        w, b, gamma, beta, mean, var = t[6 * i:6 * i + 6]
        b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if b is None else b
        if e is not None:
            scale = torch.rsqrt(var + e)
            if gamma is not None:
                scale = scale * gamma
            w, b = w * scale.view(-1, 1, 1, 1), (b - mean) * scale
            if beta is not None:
                b = b + beta
        weights.append(w)
        biases.append(b)
    return torch.cat(weights), torch.cat(biases)
