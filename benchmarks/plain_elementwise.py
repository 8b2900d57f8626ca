"""Plain-PyTorch references for more elementwise / reduction-dominated blocks (issue 19, goal 4).

(CBAM's and triplet attention's references, elementwise too, are in ``plain_reference.py``.)

Imported by ``plain_reference.py``, which checks each against our block (same weights, max
relative difference <= 1e-4) before timing it. Written from the papers' equations the way a
reader would (the official codes' rotations and module calls included), not from our blocks.
They widen ``ELEMENTWISE``, the rows over which ``plain_reference.py --compile`` reports its
geometric mean: blocks whose work is pooling, gating and norms over the whole map, with at
most a small conv on a pooled 1- or 2-channel map. Not included: BAM (two 3x3 dilated convs
on C/r channels at full resolution: conv-dominated), the attention blocks with C x C
projections.
"""

from __future__ import annotations

import torch
from plain_common import reference_registry  # beside this file
from torch import nn

REFS, _ref = reference_registry()


@_ref("shuffle_attention")
class PlainShuffleAttention(nn.Module):
    """Zhang & Yang 2102.00240: per group, channel half x1 * sigmoid(W1 GAP(x1) + b1), spatial half
    x2 * sigmoid(W2 GN(x2) + b2), concatenate, channel shuffle with 2 groups."""

    def __init__(self, b: nn.Module) -> None:
        super().__init__()
        self.groups, self.channels = b.groups, b.channels
        for n in ("cweight", "cbias", "sweight", "sbias"):
            setattr(self, n, nn.Parameter(getattr(b, n).detach().clone()))
        self.gn = nn.GroupNorm(b.gn.num_groups, b.gn.num_channels, eps=b.gn.eps)
        self.gn.load_state_dict(b.gn.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = x.view(B * self.groups, -1, H, W)
        x1, x2 = x.chunk(2, dim=1)
        y1 = x1 * torch.sigmoid(self.cweight * x1.mean((2, 3), keepdim=True) + self.cbias)
        y2 = x2 * torch.sigmoid(self.sweight * self.gn(x2) + self.sbias)
        out = torch.cat([y1, y2], 1).view(B, -1, H, W)
        return out.view(B, 2, C // 2, H, W).transpose(1, 2).reshape(B, C, H, W)
