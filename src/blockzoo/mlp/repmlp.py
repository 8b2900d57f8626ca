r"""RepMLP: a partition-wise FC whose parallel conv branches are merged into the FC at deploy.

Paper: RepMLP: Re-parameterizing Convolutions into Fully-connected Layers for Image
Recognition (Ding, arXiv 2105.01883, 2021).

Letters: B batch, C channels, H W spatial, h w partition size, P = (H / h)(W / w)
partitions per image, g groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.registry import Example, images, register
from blockzoo.rep.fuse import ConvBN, conv_as_fc, mark_deployed

__all__ = ["RepMLPBlock"]


def _partition_fc(flat: torch.Tensor, fc: nn.Conv2d, *, grouped: bool = False) -> torch.Tensor:
    """The grouped partition FC, ``fc`` (a grouped 1x1 conv on (B P, N, 1, 1)), as one
    batched matrix product over the groups: on CPU the grouped 1x1 convolution of a 1x1
    "image" took ~2.6x as long as the same products through ``baddbmm``. Returns (B P, N),
    or with ``grouped`` the product's own (g, B P, N / g) layout (no copy)."""
    bp, n, g = flat.shape[0], flat.shape[1], fc.groups
    w = fc.weight.view(g, n // g, n // g)  # (g, N/g out, N/g in)
    xs = flat.view(bp, g, n // g).transpose(0, 1)  # (g, B P, N/g)
    if fc.bias is None:
        y = torch.bmm(xs, w.transpose(1, 2))
    else:
        y = torch.baddbmm(fc.bias.view(g, 1, n // g), xs, w.transpose(1, 2))  # (g, B P, N/g)
    return y if grouped else y.transpose(0, 1).reshape(bp, n)


@register(
    name="repmlp",
    family="mlp",
    paper="RepMLP: Re-parameterizing Convolutions into Fully-connected Layers for Image Recognition",
    arxiv="2105.01883",
    year=2021,
    input="image",
    example=Example(config=dict(channels=8, partition_size=4, groups=2), inputs=images(), size=(8, 8),
                    sizes=((4, 12), (12, 8)), out_shape="same", tiny=dict(channels=2, groups=1)),
)
class RepMLPBlock(nn.Module):
    r"""RepMLP block: global, partition and local perceptrons; the local convs fold into the FC.

    Ding et al., "RepMLP: Re-parameterizing Convolutions into Fully-connected Layers
    for Image Recognition", arXiv 2105.01883. The map is cut into P partitions of
    h x w; each partition, flattened in (C, h, w) order, is one vector::

        v_p   = FC_2(ReLU(FC_1(BN_g(avgpool_{h x w}(X)))))      global perceptron, per partition
        F_p   = BN(FC_3 x_p)                                     partition perceptron, grouped FC
        L_p   = sum_k BN_k(conv_k(x_p))                          local perceptron, 'same'-padded
                                                                 inside the partition, groups g
        Y_p   = F_p + L_p + v_p                                  v_p broadcast over h x w

    Deploy form (``reparameterize()``): every conv on a fixed h x w patch is a linear
    map of the patch, so BN and the conv branches fold into one grouped FC, and BN_g
    (eval mode: a per-channel affine map) folds into FC_1::

        Y_p = FC'(x_p) + v_p,   FC' = fold(FC_3, BN) + sum_k fc(fold(conv_k, BN_k))
        v_p = FC_2(ReLU(FC_1'(avgpool(X)))),   FC_1' = fold(BN_g, FC_1)

    Args:
        channels: C.
        partition_size: h (or (h, w)); H and W must be multiples, others raise
            ``ShapeError`` naming ``partition_size``.
        groups: g, groups of FC_3 and of the local convs (dividing C).
        kernel_sizes: the local perceptron's odd kernel sizes, each at most the partition
            size (the authors' RepMLP-Res50 blocks: 1, 3, 5 with 7 x 7 partitions; RepMLPNet,
            arXiv 2112.11081: 1, 3, the default).
        reduction: FC_1's width is C / reduction.
        deploy: build the fused form directly (to load fused weights).

    Shape:
        - Input: (B, C, H, W), C = channels, H a multiple of h, W of w.
        - Output: (B, C, H, W).

    Deviations:
        - The global perceptron's FCs act on the channels of each pooled partition
          (1x1 convs), so the block does not fix the number of partitions; its output
          is added to every pixel of its partition.

    Example:
        >>> block = RepMLPBlock(16, 4).eval()
        >>> x = torch.randn(2, 16, 8, 12)
        >>> torch.allclose(block(x), block.reparameterize()(x), atol=1e-5)
        True
    """

    def __init__(
        self, channels: int, partition_size: int | tuple[int, int], *, groups: int = 1,
        kernel_sizes: Sequence[int] = (1, 3), reduction: int = 4, deploy: bool = False,
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        h, w = (partition_size, partition_size) if isinstance(partition_size, int) else partition_size
        require(h > 0 and w > 0, f"RepMLPBlock: partition_size={partition_size} must be positive")
        require(channels % groups == 0, f"RepMLPBlock: groups={groups} must divide channels={channels}")
        require(all(k % 2 == 1 and k <= max(h, w) for k in kernel_sizes),
                f"RepMLPBlock: kernel_sizes={tuple(kernel_sizes)} must be odd and at most the partition size")
        self.channels, self.h, self.w, self.groups = channels, h, w, groups
        self.kernel_sizes = tuple(kernel_sizes)
        fk = dict(device=device, dtype=dtype)
        hidden = max(1, channels // reduction)
        # the deploy form has BN_g folded into FC_1
        self.gp_bn: nn.BatchNorm2d | None = None if deploy else nn.BatchNorm2d(channels, **fk)
        self.gp_fc1 = nn.Conv2d(channels, hidden, 1, **fk)
        self.gp_fc2 = nn.Conv2d(hidden, channels, 1, **fk)
        n = channels * h * w
        self.fc: nn.Conv2d | None = None
        if deploy:
            self.fc = nn.Conv2d(n, n, 1, groups=groups, bias=True, **fk)
            return
        self.fc3 = nn.Conv2d(n, n, 1, groups=groups, bias=False, **fk)
        self.fc3_bn = nn.BatchNorm2d(channels, **fk)
        self.local = nn.ModuleDict({
            f"conv{k}": ConvBN(channels, channels, k, padding=k // 2, groups=groups, **fk)
            for k in kernel_sizes
        })

    @property
    def deployed(self) -> bool:
        """True once the conv branches are merged into the FC."""
        return self.fc is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = check_shape(x, "B C H W", name="RepMLPBlock", C=self.channels)
        b, c, hh, ww = x.shape
        h, w = self.h, self.w
        if hh % h or ww % w:
            raise ShapeError(f"RepMLPBlock: H={hh} and W={ww} must be multiples of "
                             f"partition_size=({h}, {w}); got input {tuple(x.shape)}")
        nh, nw = dims["H"] // h, dims["W"] // w
        p = x.reshape(b, c, nh, h, nw, w).permute(0, 2, 4, 1, 3, 5)  # (B, nh, nw, C, h, w)
        p = p.reshape(b * nh * nw, c, h, w)  # (B P, C, h, w)
        flat = p.reshape(b * nh * nw, c * h * w, 1, 1)  # (B P, C h w, 1, 1)
        inference = not ((torch.is_grad_enabled() and (x.requires_grad or self.gp_fc1.weight.requires_grad))
                         or torch.compiler.is_compiling())
        # v = FC_2(ReLU(FC_1(BN(avgpool(X)))))
        if inference and self.gp_bn is None:
            # deploy form: the partition means from the contiguous partition copy just made
            # (rows of h w values) instead of a second pass over X by avg_pool2d
            pooled = p.view(b, nh, nw, c, h * w).mean(-1).permute(0, 3, 1, 2)  # (B, C, nh, nw)
        else:
            pooled = F.avg_pool2d(x, (h, w))  # (B, C, nh, nw)
        if self.gp_bn is not None:
            pooled = self.gp_bn(pooled)
        v = self.gp_fc2(F.relu(self.gp_fc1(pooled)))  # (B, C, nh, nw)
        v = v.permute(0, 2, 3, 1).reshape(b * nh * nw, c, 1, 1)  # (B P, C, 1, 1)
        if inference:
            # Inference: v is added in place to the FC's own product, then one permuting copy
            # writes the (B, C, H, W) output: no transpose copy of the (g, B P, N / g) product
            # (deploy form), no separate sum y + v, no merge copy. The same sums as below,
            # element by element. One broadcast add straight into the strided output was
            # slower: a 7-D add with a broadcast operand and 7-element inner runs
            # (docs/benchmarks.md, RepMLP deploy form).
            g, cg = self.groups, c // self.groups
            if self.fc is not None:
                y = _partition_fc(flat, self.fc, grouped=True)  # (g, B P, C h w / g)
                y.view(g, b * nh * nw, cg, h * w).add_(v.view(b * nh * nw, g, cg, 1).transpose(0, 1))
                y = y.view(g, b, nh, nw, cg, h, w).permute(1, 0, 4, 2, 5, 3, 6)  # (B, g, C/g, nh, h, nw, w)
            else:
                y = self.fc3_bn(_partition_fc(flat, self.fc3).reshape(b * nh * nw, c, h, w))
                for branch in self.local.values():
                    y.add_(branch(p))
                y.view(b * nh * nw, c, h * w).add_(v.view(b * nh * nw, c, 1))
                y = y.view(b, nh, nw, g, cg, h, w).permute(0, 3, 4, 1, 5, 2, 6)
            out = x.new_empty(b, c, hh, ww)
            out.view(b, g, cg, nh, h, nw, w).copy_(y)
            return out
        if self.fc is not None:
            y = _partition_fc(flat, self.fc).reshape(b * nh * nw, c, h, w)  # (B P, C, h, w)
        else:
            # F + L = BN(FC_3 x) + sum_k BN_k(conv_k(x))
            y = self.fc3_bn(_partition_fc(flat, self.fc3).reshape(b * nh * nw, c, h, w))  # (B P, C, h, w)
            for branch in self.local.values():
                y = y + branch(p)
        y = y + v
        return y.reshape(b, nh, nw, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww)  # (B, C, H, W)

    @torch.no_grad()
    def reparameterize(self) -> RepMLPBlock:
        """Merge BN and the local conv branches into the partition FC and BN_g into FC_1, in
        place; idempotent; keeps device and dtype. No BatchNorm remains."""
        if self.fc is not None:
            return self
        c, h, w, g = self.channels, self.h, self.w, self.groups
        # FC_1(BN_g(p)) = W (t p + beta - mu t) + b = (W diag(t)) p + (W (beta - mu t) + b)
        gbn, fc1 = self.gp_bn, self.gp_fc1
        tg = gbn.weight / (gbn.running_var + gbn.eps).sqrt()  # (C)
        shift = gbn.bias - gbn.running_mean * tg  # (C)
        fc1.bias.add_(fc1.weight[:, :, 0, 0] @ shift)
        fc1.weight.mul_(tg[None, :, None, None])
        self.gp_bn = None
        bn = self.fc3_bn
        t = bn.weight / (bn.running_var + bn.eps).sqrt()
        # fold BN (per channel, repeated over the h w positions of that channel) into FC_3
        weight = self.fc3.weight[:, :, 0, 0] * t.repeat_interleave(h * w)[:, None]  # (C h w, C h w / g)
        bias = (bn.bias - bn.running_mean * t).repeat_interleave(h * w)  # (C h w)
        for branch in self.local.values():
            kw, kb = branch.fused()
            fw, fb = conv_as_fc(kw, kb, g, h, w)
            weight, bias = weight + fw, bias + fb
        fc = nn.Conv2d(c * h * w, c * h * w, 1, groups=g, bias=True, device=weight.device, dtype=weight.dtype)
        fc.weight.copy_(weight[:, :, None, None])
        fc.bias.copy_(bias)
        fc.train(self.training)
        del self.fc3, self.fc3_bn, self.local
        self.fc = fc
        mark_deployed(self)
        return self

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, partition_size=({self.h}, {self.w}), groups={self.groups}, "
                f"kernel_sizes={self.kernel_sizes}, deployed={self.deployed}")
