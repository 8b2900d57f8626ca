"""Input makers: valid (and deliberately invalid) inputs for every input kind.

An entry's ``Example`` names one maker (``images``, ``tokens``, ``sequence``,
``token_ids``, ``vectors``, ``graph``), which builds an input for any batch size
and size and reads its feature count from the entry's config (``images("channels")``),
so generic code can feed any entry. Each maker also knows its ``layout`` (how a user
writes the shape, ``B,C,H,W``) and the constructor argument that takes the input's
width (``features``).

Letters: B batch, C channels, H W spatial, N tokens, T time steps, F features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from blockzoo.checks import ConfigError

__all__ = [
    "INPUT_KINDS", "Args", "InputKind", "InputMaker", "Size", "graph", "images", "sequence", "token_ids",
    "tokens", "vectors",
]

INPUT_KINDS = ("image", "tokens", "sequence", "graph", "vector")
InputKind = Literal["image", "tokens", "sequence", "graph", "vector"]
Size = tuple[int, ...]
Args = tuple[Any, ...]


def _features(features: int | str, config: Mapping[str, Any]) -> int:
    if isinstance(features, int):
        return features
    if features not in config:
        raise KeyError(f"input maker reads config[{features!r}], which the config lacks")
    return int(config[features])


@dataclass(frozen=True)
class InputMaker:
    """Makes valid (and deliberately invalid) inputs for one input kind.

    ``maker(batch, size, config)`` returns the tuple of positional arguments for
    ``forward``. ``bad(batch, size, config)`` returns ``(label, args)`` pairs that a
    block must reject with ``ShapeError``. ``batched`` names the arguments whose
    first dimension is the batch.
    """

    kind: InputKind
    features: int | str
    build: Callable[[int, Size, int, torch.Generator, torch.dtype], Args]
    bad_inputs: Callable[[int, Size, int, torch.Generator, torch.dtype], list[tuple[str, Args]]]
    batched: tuple[int, ...] = (0,)
    layout: str = "B,C,H,W"  # the first argument's dimensions, as a user writes its shape

    def parse(self, dims: Sequence[int]) -> tuple[int, Size, int | None]:
        """A shape in ``layout`` (``2,3,32,48``) -> (batch, size, features or None for ids)."""
        letters = self.layout.split(",")
        if len(dims) != len(letters) or min(dims, default=0) < 1:
            raise ConfigError(f"{self.kind} input: give {self.layout} with positive sizes, got "
                              f"{','.join(map(str, dims))}")
        named = dict(zip(letters, dims, strict=True))
        batch = named.pop("B")
        feat = next((named.pop(k) for k in ("C", "F") if k in named), None)
        return batch, tuple(named.values()), feat

    def __call__(
        self,
        batch: int,
        size: Size,
        config: Mapping[str, Any],
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Args:
        g = torch.Generator().manual_seed(seed)
        args = self.build(batch, tuple(size), _features(self.features, config), g, dtype)
        return _to(args, device)

    def bad(
        self, batch: int, size: Size, config: Mapping[str, Any], *, seed: int = 0
    ) -> list[tuple[str, Args]]:
        g = torch.Generator().manual_seed(seed)
        f = _features(self.features, config)
        return self.bad_inputs(batch, tuple(size), f, g, torch.float32)


def _to(args: Args, device: torch.device | str | None) -> Args:
    if device is None:
        return args
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def _randn(g: torch.Generator, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=dtype)


def images(channels: int | str = "channels") -> InputMaker:
    """Images (B, C, H, W); ``size`` is (H, W)."""

    def build(b: int, size: Size, c: int, g: torch.Generator, dt: torch.dtype) -> Args:
        return (_randn(g, dt, b, c, *size),)

    def bad(b: int, size: Size, c: int, g: torch.Generator, dt: torch.dtype):
        return [
            ("rank 3 (no batch dim)", (_randn(g, dt, c, *size),)),
            ("channels + 1", (_randn(g, dt, b, c + 1, *size),)),
        ]

    return InputMaker("image", channels, build, bad)


def tokens(dim: int | str = "dim") -> InputMaker:
    """Token sequences (B, N, C); ``size`` is (N,)."""

    def build(b: int, size: Size, c: int, g: torch.Generator, dt: torch.dtype) -> Args:
        return (_randn(g, dt, b, size[0], c),)

    def bad(b: int, size: Size, c: int, g: torch.Generator, dt: torch.dtype):
        return [
            ("rank 2 (no batch dim)", (_randn(g, dt, size[0], c),)),
            ("dim + 1", (_randn(g, dt, b, size[0], c + 1),)),
        ]

    return InputMaker("tokens", dim, build, bad, layout="B,N,C")


def sequence(input_size: int | str = "input_size", *, lengths: bool = False) -> InputMaker:
    """Feature sequences (B, T, F), optionally with per-sample ``lengths`` (B,).

    With ``lengths=True`` the batch holds sequences of different lengths, the
    longest exactly T, padded with zeros after each one's end.
    """

    def build(b: int, size: Size, f: int, g: torch.Generator, dt: torch.dtype) -> Args:
        t = size[0]
        x = _randn(g, dt, b, t, f)
        if not lengths:
            return (x,)
        lens = torch.randint(1, t + 1, (b,), generator=g)
        lens[0] = t
        mask = torch.arange(t)[None, :] < lens[:, None]
        return (x * mask[..., None].to(dt), lens)

    def bad(b: int, size: Size, f: int, g: torch.Generator, dt: torch.dtype):
        t = size[0]
        extra = (torch.full((b,), t),) if lengths else ()
        return [
            ("rank 2 (no feature dim)", (_randn(g, dt, b, t), *extra)),
            ("features + 1", (_randn(g, dt, b, t, f + 1), *extra)),
        ]

    return InputMaker("sequence", input_size, build, bad, batched=(0, 1) if lengths else (0,),
                      layout="B,T,F")


def token_ids(vocab_size: int | str = "vocab_size") -> InputMaker:
    """Integer token ids (B, T) in [1, vocab_size); ``size`` is (T,). Id 0 is left for padding."""

    def build(b: int, size: Size, v: int, g: torch.Generator, dt: torch.dtype) -> Args:
        return (torch.randint(1, v, (b, size[0]), generator=g),)

    def bad(b: int, size: Size, v: int, g: torch.Generator, dt: torch.dtype):
        return [
            ("rank 1 (no batch dim)", (torch.randint(1, v, (size[0],), generator=g),)),
            ("floating-point ids", (_randn(g, dt, b, size[0]),)),
        ]

    return InputMaker("sequence", vocab_size, build, bad, layout="B,T")


def vectors(in_features: int | str = "in_features", *, nonnegative: bool = False) -> InputMaker:
    """Feature vectors (B, F); ``size`` is (). ``nonnegative`` gives counts (bag of words)."""

    def build(b: int, size: Size, f: int, g: torch.Generator, dt: torch.dtype) -> Args:
        x = _randn(g, dt, b, f)
        return (x.abs().round() if nonnegative else x,)

    def bad(b: int, size: Size, f: int, g: torch.Generator, dt: torch.dtype):
        return [
            ("rank 1 (no batch dim)", (_randn(g, dt, f),)),
            ("features + 1", (_randn(g, dt, b, f + 1),)),
        ]

    return InputMaker("vector", in_features, build, bad, layout="B,F")


def graph(dim: int | str = "dim", *, edge_prob: float = 0.35) -> InputMaker:
    """Node features (B, N, C) and a boolean adjacency (N, N) shared by the batch.

    ``adjacency[i, j]`` is True when node i receives a message from node j. ``size``
    is (N,). The last node is left without neighbours, to exercise that path.
    """

    def build(b: int, size: Size, c: int, g: torch.Generator, dt: torch.dtype) -> Args:
        n = size[0]
        adj = torch.rand(n, n, generator=g) < edge_prob
        adj[-1] = False
        return (_randn(g, dt, b, n, c), adj)

    def bad(b: int, size: Size, c: int, g: torch.Generator, dt: torch.dtype):
        n = size[0]
        adj = torch.ones(n, n, dtype=torch.bool)
        return [
            ("rank 2 (no batch dim)", (_randn(g, dt, n, c), adj)),
            ("dim + 1", (_randn(g, dt, b, n, c + 1), adj)),
            ("adjacency (N+1, N+1)", (_randn(g, dt, b, n, c), torch.ones(n + 1, n + 1).bool())),
        ]

    return InputMaker("graph", dim, build, bad, layout="B,N,C")
