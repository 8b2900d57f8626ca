r"""Vision Permutator's Weighted Permute-MLP: separate linear maps along H, W and C, re-weighted.

Paper: Vision Permutator: A Permutable MLP-Like Architecture for Visual Recognition
(Hou, arXiv 2106.12368, 2021).

Letters: B batch, C channels, H W spatial, S channels per segment, G = C / S segments.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo._fastcall import invoke
from blockzoo._kept import param_fold
from blockzoo.attention.maps import AttentionMap
from blockzoo.checks import require
from blockzoo.mlp.mlp import MLP
from blockzoo.mlp.smlp import check_image_size
from blockzoo.registry import Example, images, register

__all__ = ["WeightedPermuteMLP"]


@register(
    name="permute_mlp",
    family="mlp",
    paper="Vision Permutator: A Permutable MLP-Like Architecture for Visual Recognition",
    arxiv="2106.12368",
    year=2021,
    input="image",
    example=Example(config=dict(channels=16, height=8, width=6, segment_size=2), inputs=images(),
                    size=(8, 6), sizes=((8, 6),), out_shape="same", tiny=dict(channels=4)),
)
class WeightedPermuteMLP(nn.Module):
    r"""Weighted Permute-MLP: encode along height, width and channels separately, mix by learned weights.

    Hou et al., "Vision Permutator", arXiv 2106.12368, Sec. 3.2. The channels are cut
    into G segments of S channels. For the height branch, each segment's H x S values
    at one column are one vector, mapped by a linear layer shared by all segments and
    columns (the paper's height-channel permutation followed by an FC); likewise along W::

        X_H = FC_H over (H, S) of each (segment, column)      FC_H: H S -> H S
        X_W = FC_W over (W, S) of each (segment, row)         FC_W: W S -> W S
        X_C = FC_C over C at each pixel                       FC_C: C -> C
        a   = mean_{H, W}(X_H + X_W + X_C)                    (B, C)
        [w_H, w_W, w_C] = softmax over the 3 branches of MLP(a)   MLP: C -> C / 4 -> 3 C
        Y   = FC_proj(w_H X_H + w_W X_W + w_C X_C)

    The branch weights pass through ``attn_map`` (kind "branch", shape (B, 3, C)).

    Args:
        channels: C.
        height, width: H and W, fixed by FC_H and FC_W; other sizes raise ``ShapeError``
            naming them.
        segment_size: S, channels per segment, dividing C (default C / H, the paper's
            choice, which makes FC_H a C x C map; then H must divide C).
        bias: whether the linear maps have biases.

    Shape:
        - Input: (B, C, H, W), C = channels, H = height, W = width.
        - Output: (B, C, H, W).

    Deviations:
        - Input (B, C, H, W) as every image block here (the paper is channels-last).
        - The paper requires H S = W S = C; here S is free, so FC_H is (H S) x (H S) and
          FC_W is (W S) x (W S), which also allows non-square maps.

    Example:
        >>> block = WeightedPermuteMLP(64, 8, 8)      # S = 8
        >>> block(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
        self, channels: int, height: int, width: int, *, segment_size: int | None = None, bias: bool = True,
        device: Any = None, dtype: Any = None,
    ) -> None:
        super().__init__()
        if segment_size is None:
            require(channels % height == 0,
                    f"WeightedPermuteMLP: height={height} must divide channels={channels} "
                    f"for the default segment_size = C / H; pass segment_size")
            segment_size = channels // height
        require(segment_size >= 1 and channels % segment_size == 0,
                f"WeightedPermuteMLP: segment_size={segment_size} must divide channels={channels}")
        self.channels, self.height, self.width, self.segment_size = channels, height, width, segment_size
        fk = dict(device=device, dtype=dtype)
        self.fc_h = nn.Linear(height * segment_size, height * segment_size, bias=bias, **fk)
        self.fc_w = nn.Linear(width * segment_size, width * segment_size, bias=bias, **fk)
        self.fc_c = nn.Linear(channels, channels, bias=bias, **fk)
        self.reweight = MLP(channels, (max(1, channels // 4),), 3 * channels, act_layer="gelu", **fk)
        self.proj = nn.Linear(channels, channels, bias=bias, **fk)
        self.attn_map = AttentionMap("branch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_size(x, "WeightedPermuteMLP", self.channels, self.height, self.width)
        if not torch.is_grad_enabled():
            y = self._channels_first(x)
            if y is not None:
                return y
        b, c, h, w = x.shape
        s = self.segment_size
        g = c // s
        t = x.permute(0, 2, 3, 1).reshape(b, h, w, g, s)  # (B, H, W, G, S)
        # X_H: FC over (H, S) of each segment and column
        xh = t.permute(0, 3, 2, 1, 4).reshape(b, g, w, h * s)  # (B, G, W, H S)
        xh = self.fc_h(xh).reshape(b, g, w, h, s).permute(0, 3, 2, 1, 4).reshape(b, h, w, c)  # (B, H, W, C)
        # X_W: FC over (W, S) of each segment and row
        xw = t.permute(0, 3, 1, 2, 4).reshape(b, g, h, w * s)  # (B, G, H, W S)
        xw = self.fc_w(xw).reshape(b, g, h, w, s).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)  # (B, H, W, C)
        # X_C: FC over channels
        xc = self.fc_c(t.reshape(b, h, w, c))  # (B, H, W, C)
        # weights = softmax over branches of MLP(mean_{H,W}(X_H + X_W + X_C))
        a = (xh + xw + xc).mean((1, 2))  # (B, C)
        wts = self.attn_map(self.reweight(a).reshape(b, 3, c).softmax(dim=1))  # (B, 3, C)
        wh, ww, wc = wts[:, None, None, 0], wts[:, None, None, 1], wts[:, None, None, 2]  # (B, 1, 1, C)
        y = wh * xh + ww * xw + wc * xc  # (B, H, W, C)
        return self.proj(y).permute(0, 3, 1, 2)  # (B, C, H, W)

    def _channels_first(self, x: torch.Tensor) -> torch.Tensor | None:
        """The forward without autograd on (B, C, H, W) as it lies, viewed as (B, G, S, H, W):
        FC_H with its rows and columns reordered from (H, S) to (S, H) (cached,
        ``_kept.param_fold``) is one batched matmul on each segment's (S H, W) block, FC_C
        and the projection are batched matmuls on (C, H W), and only FC_W's input is permuted
        (one copy; the (H, W, C) order of the equation costs five). None (the module path)
        for a hook, a parametrized or missing weight, or where a fold must not be used."""
        mods = self._modules
        fh, fw, fc, proj = mods["fc_h"], mods["fc_w"], mods["fc_c"], mods["proj"]
        if not all(type(m) is nn.Linear and "weight" in m._parameters and "bias" in m._parameters
                   for m in (fh, fw, fc, proj)):
            return None
        b, c, h, w = x.shape
        s = self.segment_size
        g = c // s
        f = param_fold(self, "permute", (fh, fw, fc, proj),
                       (fh._parameters["weight"], fh._parameters["bias"], fw._parameters["weight"],
                        fw._parameters["bias"], fc._parameters["bias"], proj._parameters["bias"]),
                       lambda *t: _fold_permute(h, w, s, *t))
        if f is None:
            return None
        wh, bh, ww, bw, bc, bp = f
        x5 = x.reshape(b, g, s, h, w)  # (B, G, S, H, W)
        # X_H: FC over (S, H) of each segment and column
        if w >= _BMM_MIN_COLUMNS:  # B G matmuls (S H, S H) x (S H, W) on x as it lies
            xh = x5.reshape(b * g, s * h, w)
            xh = (torch.bmm(wh.expand(b * g, -1, -1), xh) if bh is None
                  else torch.baddbmm(bh, wh.expand(b * g, -1, -1), xh)).view(b, g, s, h, w)
        else:  # narrow columns: one copy to (B, G, W, S H) and one matmul beat B G tiny ones
            # (the reshape is a strided view, on which the matmul runs several times slower)
            xh = F.linear(x5.permute(0, 1, 4, 2, 3).reshape(b, g, w, s * h).contiguous(), wh,
                          None if bh is None else bh[:, 0])  # (B, G, W, S H)
            xh = xh.view(b, g, w, s, h).permute(0, 1, 3, 4, 2)  # (B, G, S, H, W), strided
        # X_W: FC over (W, S) of each segment and row, rows put out in (S, W) order
        xw = F.linear(x5.permute(0, 1, 3, 4, 2).reshape(b, g, h, w * s).contiguous(), ww, bw)  # (B, G, H, SW)
        xw = xw.view(b, g, h, s, w).transpose(2, 3)  # (B, G, S, H, W), strided
        # X_C: FC over channels
        wc = fc._parameters["weight"]
        xc = x.reshape(b, c, h * w)
        xc = (torch.bmm(wc.expand(b, -1, -1), xc) if bc is None
              else torch.baddbmm(bc, wc.expand(b, -1, -1), xc)).view(b, g, s, h, w)
        # weights = softmax over branches of MLP(mean_{H,W}(X_H + X_W + X_C))
        a = torch.add(xh, xc).add_(xw).mean((3, 4)).view(b, c)  # (B, C)
        wts = mods["attn_map"](invoke(mods["reweight"], a).reshape(b, 3, c).softmax(dim=1))  # (B, 3, C)
        wts = wts.view(b, 3, g, s, 1, 1)
        y = torch.mul(xc, wts[:, 2]).addcmul_(xh, wts[:, 0]).addcmul_(xw, wts[:, 1])  # (B, G, S, H, W)
        wp = proj._parameters["weight"]
        y = y.view(b, c, h * w)
        y = torch.bmm(wp.expand(b, -1, -1), y) if bp is None else torch.baddbmm(bp, wp.expand(b, -1, -1), y)
        return y.view(b, c, h, w)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, height={self.height}, width={self.width}, "
                f"segment_size={self.segment_size}")


# FC_H runs as B G batched matmuls on x as it lies from this many columns (W) up; below, the
# per-matmul cost dominates and one copy plus one matmul is faster (8x6 maps: 21 vs 54 us;
# 32x32: 1.7 vs 2.1 ms, one core).
_BMM_MIN_COLUMNS = 16


def _fold_permute(h: int, w: int, s: int, wh: torch.Tensor, bh: torch.Tensor | None, ww: torch.Tensor,
                  bw: torch.Tensor | None, bc: torch.Tensor | None, bp: torch.Tensor | None
                  ) -> tuple[torch.Tensor | None, ...]:
    """FC_H reordered from (H, S) to (S, H) on both sides, FC_W's output rows from (W, S) to
    (S, W), and the biases as columns (``WeightedPermuteMLP._channels_first``)."""
    wh = wh.view(h, s, h, s).permute(1, 0, 3, 2).reshape(s * h, s * h)
    bh = None if bh is None else bh.view(h, s).t().reshape(s * h, 1)
    ww = ww.view(w, s, w * s).transpose(0, 1).reshape(s * w, w * s)
    bw = None if bw is None else bw.view(w, s).t().reshape(s * w)
    return (wh, bh, ww, bw, None if bc is None else bc[:, None], None if bp is None else bp[:, None])
