"""Data too large for memory: samples made on demand, batched by a torch DataLoader.

A streamed split is a ``TensorData`` whose ``x`` is a ``LazyTensor``: it has the shape
of the (N, ...) tensor it stands for, and row i is made by ``fetch(i)`` (an image
decoded from its file) when asked for. ``make_loader`` gives the engine a loader with
one interface either way:

- ``TensorLoader`` for tensors in memory (the fast path: a batch is one index), or
- ``StreamLoader`` for a ``LazyTensor``: the same batches of the same indices, in the
  same order (epoch e's order depends only on (seed, e), as ``TensorLoader``'s), each
  sample made by one of ``workers`` DataLoader processes. Workers are seeded from a
  generator seeded by (seed, epoch), so anything random in ``fetch`` repeats with the
  seed; ``Data.augment`` runs on the collated batch, as on the fast path.

Letters: N samples, B batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from blockzoo.data.base import TensorData, TensorLoader

__all__ = ["LazyTensor", "StreamLoader", "make_loader"]


class LazyTensor:
    """A stand-in for an (N, *shape) tensor whose row i is ``fetch(i)``, made when indexed.

    Indexing with an int gives one row; with a slice, a list or an index tensor, the rows
    stacked (made one by one: for a few, such as a dry run; a DataLoader batches the rest).

    Args:
        n: N, the number of rows.
        shape: one row's shape.
        fetch: i -> the row (a tensor of ``shape``); picklable, for worker processes.
        workers: DataLoader worker processes that make rows in parallel (0: this process).
    """

    def __init__(self, n: int, shape: Sequence[int], fetch: Callable[[int], torch.Tensor], *,
                 workers: int = 0) -> None:
        self.n, self.row_shape, self.fetch, self.workers = n, tuple(shape), fetch, workers

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.n, *self.row_shape))

    def dim(self) -> int:
        return 1 + len(self.row_shape)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: Any) -> torch.Tensor:
        if isinstance(idx, int | np.integer):
            return self.fetch(int(idx))
        if isinstance(idx, slice):
            rows = range(self.n)[idx]
        else:
            rows = torch.as_tensor(idx).reshape(-1).tolist()
        if not rows:
            return torch.zeros(0, *self.row_shape)
        return torch.stack([self.fetch(int(i)) for i in rows])

    def __repr__(self) -> str:
        return f"LazyTensor(shape={tuple(self.shape)}, workers={self.workers})"


class _Stack:
    """Collate (x, y) pairs into a batch; an empty share (a DDP rank's, at the end) keeps its shape."""

    def __init__(self, row_shape: tuple[int, ...], y: torch.Tensor) -> None:
        self.row_shape, self.y_shape, self.y_dtype = row_shape, tuple(y.shape[1:]), y.dtype

    def __call__(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        if not items:
            return torch.zeros(0, *self.row_shape), torch.zeros(0, *self.y_shape, dtype=self.y_dtype)
        xs, ys = zip(*items, strict=True)
        return torch.stack(xs), torch.stack(ys)


def _seed_worker(worker_id: int) -> None:
    """Seed Python's and numpy's generators from torch's (which DataLoader seeds per worker)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class StreamLoader(TensorLoader):
    """``TensorLoader``'s batches of a split whose ``x`` is a ``LazyTensor``, made by DataLoader workers.

    Same arguments as ``TensorLoader``; the worker count is the ``LazyTensor``'s.
    """

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        shares = list(self.shares(start))
        if not shares:
            return
        x = self.data.x
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        loader = DataLoader(self.data, batch_sampler=[idx.tolist() for _, idx, _, _ in shares],
                            num_workers=x.workers, collate_fn=_Stack(x.row_shape, self.data.y),
                            worker_init_fn=_seed_worker, generator=g)
        for (xb, yb), (b, _, offset, n_global) in zip(loader, shares, strict=True):
            yield self.augmented(xb, b, offset, n_global), yb, n_global


def make_loader(split: TensorData, batch_size: int | None, **kwargs: Any) -> TensorLoader:
    """The loader for ``split``: ``TensorLoader`` for tensors, ``StreamLoader`` for a ``LazyTensor``."""
    cls = StreamLoader if isinstance(split.x, LazyTensor) else TensorLoader
    return cls(split, batch_size, **kwargs)
