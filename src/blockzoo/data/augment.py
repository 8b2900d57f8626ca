"""Per-batch image augmentation in torch: random resized crop and horizontal flip.

The crop of Szegedy et al., "Going Deeper with Convolutions", arXiv:1409.4842, 2014
(patches of 8-100% of the image's area, aspect 3/4-4/3, resized to the input size;
here 60-100%, as for small images) with a left-right flip of probability 1/2, applied
to a whole batch tensor at once: each sample's crop box is an affine map of the output
grid, resampled bilinearly by one ``grid_sample`` call (no torchvision, no per-sample
Python loop).

Equation, per sample, with output coordinates (u, v) in [-1, 1]::

    s_x = min(1, sqrt(a r)),  s_y = min(1, sqrt(a / r)),  a ~ U(area),  log r ~ U(log ratio)
    t_x = c_x (1 - s_x),  t_y = c_y (1 - s_y),              c_x, c_y ~ U(-1, 1)
    x_in = f s_x u + t_x,  y_in = s_y v + t_y,               f = -1 with probability 1/2, else 1

so the box covers a share s_x s_y of the image and lies inside it. Bilinear
resampling is linear and the standardisation is a per-channel affine map, so
augmenting standardised pixels equals standardising augmented ones.

The loader draws the parameters from a generator seeded by (seed, epoch, batch): the
same seed gives the same augmented batches, each epoch fresh ones, and a resumed run
the ones it would have seen. Parameters are drawn for the whole global batch and each
DDP rank takes its rows, so N processes augment as one does.

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blockzoo.checks import ShapeError

__all__ = ["BatchAugment"]


@dataclass(frozen=True)
class BatchAugment:
    """Random resized crop + horizontal flip of a batch (B, C, H, W); see the module doc.

    Args:
        area: the crop's share of the image's area, drawn uniformly from this range.
        ratio: the crop's aspect relative to the output's, log-uniform in this range.
        flip: flip left-right with probability 1/2.

    Shape:
        - Input: (B, C, H, W) float, the rows ``offset:offset + B`` of a global batch of
          ``n_global`` samples.
        - Output: (B, C, H, W), the same size.
    """

    area: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    def __call__(self, x: torch.Tensor, generator: torch.Generator, offset: int = 0,
                 n_global: int | None = None) -> torch.Tensor:
        if x.dim() != 4 or not x.is_floating_point():
            raise ShapeError(f"BatchAugment: expected a float batch (B, C, H, W), got {tuple(x.shape)} "
                             f"{x.dtype}")
        n = len(x) if n_global is None else n_global
        u = torch.rand(n, 5, generator=generator, dtype=torch.float64)[offset:offset + len(x)]
        a = self.area[0] + (self.area[1] - self.area[0]) * u[:, 0]
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        r = torch.exp(lo + (hi - lo) * u[:, 1])
        sx, sy = (a * r).sqrt().clamp(max=1.0), (a / r).sqrt().clamp(max=1.0)
        f = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if self.flip else torch.ones_like(sx)
        theta = torch.zeros(len(x), 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = f * sx
        theta[:, 0, 2] = (2 * u[:, 2] - 1) * (1 - sx)
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = (2 * u[:, 3] - 1) * (1 - sy)
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
