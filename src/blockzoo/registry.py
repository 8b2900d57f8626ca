"""The registry: one table of every block and model, with the facts every tool needs.

Each entry is registered once with ``@register(...)`` beside its class. The
conformance tests, ``blockzoo list``/``info``, the README catalogue, the
benchmarks and the arena read this table; none of them knows a block by name.

An entry's ``example`` holds a small constructor config and an *input maker*
(``images``, ``tokens``, ``sequence``, ``vectors``, ``token_ids``, ``graph``)
that builds a valid input for any batch size and size, so generic code can
build and feed any entry. Input makers read their feature count from the
config (``images("channels")``), so the same maker serves any config.

Letters: B batch, C channels, H W spatial, N tokens, T time steps, F features.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from blockzoo.checks import BlockzooError, ConfigError

__all__ = [
    "FAMILIES",
    "INPUT_KINDS",
    "Example",
    "InputMaker",
    "Spec",
    "UnknownNameError",
    "create",
    "create_model",
    "graph",
    "images",
    "list_blocks",
    "register",
    "sequence",
    "spec",
    "token_ids",
    "tokens",
    "vectors",
]

FAMILIES = ("attention", "mlp", "rep", "conv", "recurrent", "model")
INPUT_KINDS = ("image", "tokens", "sequence", "graph", "vector")
InputKind = Literal["image", "tokens", "sequence", "graph", "vector"]
Size = tuple[int, ...]
Args = tuple[Any, ...]

# The sizes the conformance suite tries besides the example's, per input kind:
# non-square, odd, and different from anything an example is built with.
DEFAULT_SIZES: dict[str, tuple[Size, ...]] = {
    "image": ((7, 9), (12, 10)),
    "tokens": ((5,), (11,)),
    "sequence": ((5,), (11,)),
    "graph": ((5,), (9,)),
    "vector": ((),),
}


class UnknownNameError(BlockzooError, KeyError, ValueError):
    """A name (block, model, data set, optimizer, ...) that is not registered.

    Both a ``KeyError`` (lookup failed) and a ``ValueError`` (bad argument), with a
    plain message that lists the closest registered names.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def unknown_name(kind: str, name: str, known: Sequence[str]) -> UnknownNameError:
    """Build the error for an unknown ``name`` among ``known``, naming close matches."""
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    if not close:
        close = [k for k in known if name.lower() in k.lower()][:5]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}{hint} (known: {len(known)})")


# --------------------------------------------------------------------------- inputs


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


# --------------------------------------------------------------------------- specs


OutShape = Callable[[Sequence[int], Mapping[str, Any]], Sequence[int]]


@dataclass(frozen=True)
class Example:
    """A small constructor config and how to feed it.

    Args:
        config: keyword arguments for the constructor; small, so tests stay fast.
        inputs: the input maker (``images("channels")``, ``tokens("dim")``, ...).
        size: the example's size: (H, W) for images, (N,) tokens, (T,) sequences,
            (N,) graph nodes, () vectors.
        sizes: other sizes the block must accept; defaults per input kind.
        out_shape: ``"same"`` (output shape equals the first input's), a callable
            ``(input_shape, config) -> output_shape``, or ``None`` (batch dim only).
        tiny: config overrides for gradcheck (cheap in float64).
    """

    config: Mapping[str, Any]
    inputs: InputMaker
    size: Size = ()
    sizes: tuple[Size, ...] | None = None
    out_shape: Literal["same"] | OutShape | None = None
    tiny: Mapping[str, Any] = field(default_factory=dict)

    def test_sizes(self) -> tuple[Size, ...]:
        return self.sizes if self.sizes is not None else DEFAULT_SIZES[self.inputs.kind]


@dataclass(frozen=True)
class Spec:
    """Everything the tools know about one registered entry."""

    name: str
    family: str
    paper: str
    arxiv: str
    year: int
    input: InputKind
    example: Example
    builder: Callable[..., nn.Module]
    output: str = "tensor"
    exempt: Mapping[str, str] = field(default_factory=dict)
    out_batch_dims: tuple[int, ...] | None = None

    @property
    def summary(self) -> str:
        """The first paragraph of the builder's docstring."""
        doc = inspect.getdoc(self.builder) or ""
        return " ".join(doc.split("\n\n")[0].split())

    @property
    def url(self) -> str:
        a = self.arxiv
        if a.startswith("http"):
            return a
        if a and a[0].isdigit() and "." in a:
            return f"https://arxiv.org/abs/{a}"
        return ""

    def build(self, **overrides: Any) -> nn.Module:
        """Construct the entry with its example config updated by ``overrides``.

        The module remembers how it was built (``ENTRY_ATTR``: name and config), so
        ``blockzoo.save`` can store it and ``blockzoo.load`` rebuild it without user code.
        """
        config = {**self.example.config, **overrides}
        module = self.builder(**config)
        setattr(module, ENTRY_ATTR, (self.name, config))
        return module

    def make_input(
        self,
        batch: int = 2,
        size: Size | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Args:
        """A valid input tuple for ``batch`` samples at ``size`` (default: the example's)."""
        cfg = {**self.example.config, **(config or {})}
        sz = self.example.size if size is None else size
        return self.example.inputs(batch, sz, cfg, seed=seed, dtype=dtype, device=device)


_REGISTRY: dict[str, Spec] = {}

# The attribute under which a module built by ``create`` keeps (name, config).
ENTRY_ATTR = "_blockzoo_entry"

# Exemption categories an entry may claim, each with a reason.
EXEMPT_CATEGORIES = (
    "batch_independence",
    "determinism",
    "grad",
    "gradcheck",
    "float64",
    "export",
    "sizes",
    "bad_input",
    "onnx",
    "compile",
    "fullgraph",
    "dynamic_batch",
)


def register(
    *,
    name: str,
    family: str,
    paper: str,
    arxiv: str,
    year: int,
    input: InputKind,
    example: Example,
    output: str = "tensor",
    exempt: Mapping[str, str] | None = None,
    out_batch_dims: tuple[int, ...] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a block or model class (or factory) under ``name``.

    Args:
        name: unique snake_case name.
        family: one of ``FAMILIES``.
        paper: the paper's title; arxiv: its arXiv id or a URL / venue; year.
        input: the input kind, one of ``INPUT_KINDS``.
        example: a small config and its input maker (see ``Example``).
        output: what the entry returns: ``"tensor"`` for blocks, and for models
            ``"logits"``, ``"log_probs"`` or ``"regression"`` (the loss follows).
        exempt: conformance categories the entry cannot meet, each with its reason.
        out_batch_dims: batch dim of each flattened output (default 0 for all),
            e.g. ``(0, 1)`` for ``(output (B, T, H), state (L, B, H))``.
    """
    if family not in FAMILIES:
        raise ValueError(f"register({name!r}): family {family!r} not in {FAMILIES}")
    if input not in INPUT_KINDS:
        raise ValueError(f"register({name!r}): input {input!r} not in {INPUT_KINDS}")
    if example.inputs.kind != input:
        raise ValueError(
            f"register({name!r}): input kind {input!r} but example inputs are "
            f"{example.inputs.kind!r}"
        )
    bad_cats = set(exempt or {}) - set(EXEMPT_CATEGORIES)
    if bad_cats:
        raise ValueError(f"register({name!r}): unknown exemption categories {sorted(bad_cats)}")
    if name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"register: name {name!r} must be snake_case")

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(
                f"register: {name!r} is already registered by "
                f"{_REGISTRY[name].builder.__module__}.{_REGISTRY[name].builder.__qualname__}"
            )
        _REGISTRY[name] = Spec(
            name=name,
            family=family,
            paper=paper,
            arxiv=arxiv,
            year=year,
            input=input,
            example=example,
            builder=builder,
            output=output,
            exempt=dict(exempt or {}),
            out_batch_dims=out_batch_dims,
        )
        return builder

    return deco


def unregister(name: str) -> None:
    """Remove an entry (for tests that register throw-away blocks)."""
    _REGISTRY.pop(name, None)


def spec(name: str) -> Spec:
    """The ``Spec`` of a registered entry; unknown names list close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_name("block or model", name, sorted(_REGISTRY)) from None


def list_blocks(family: str | None = None, pattern: str | None = None) -> list[str]:
    """Registered names, sorted, optionally filtered by family and a glob pattern."""
    if family is not None and family not in FAMILIES:
        raise unknown_name("family", family, FAMILIES)
    return sorted(
        n
        for n, s in _REGISTRY.items()
        if (family is None or s.family == family)
        and (pattern is None or fnmatch.fnmatch(n, pattern))
    )


def create(name: str, **overrides: Any) -> nn.Module:
    """Build a registered entry; arguments not given come from its example config.

    Example:
        >>> block = create("mlp", in_features=8, hidden_features=(16,), out_features=3)
        >>> block(torch.randn(4, 8)).shape
        torch.Size([4, 3])
    """
    return spec(name).build(**overrides)


def create_model(
    name: str, num_classes: int | None = None, in_chans: int | None = None, **kw: Any
) -> nn.Module:
    """Build a registered model (family ``model``) with its head and input stem set.

    ``in_chans`` is the input's channels (images) or features (vectors, sequences):
    it is passed as the model's ``in_chans``, ``in_features``, ``input_size`` or
    ``vocab_size`` argument, whichever the model has.
    """
    return spec(name).build(**model_kwargs(name, num_classes, in_chans, **kw))


def model_kwargs(name: str, num_classes: int | None = None, in_chans: int | None = None,
                 **kw: Any) -> dict[str, Any]:
    """The constructor arguments ``create_model`` passes to registered model ``name``."""
    s = spec(name)
    if s.family != "model":
        models = list_blocks(family="model")
        raise ConfigError(
            f"create_model: {name!r} is a {s.family} block, not a model "
            f"(models: {', '.join(models[:8])}{', ...' if len(models) > 8 else ''}); "
            f"use blockzoo.create({name!r})"
        )
    if num_classes is not None:
        kw["num_classes"] = num_classes
    if in_chans is not None:
        kw[_input_arg(s.builder)] = in_chans
    return kw


# What ``in_chans`` is called by models of each input kind, in order of preference.
_INPUT_ARGS = ("in_chans", "in_features", "input_size", "vocab_size")


def _input_arg(builder: Callable[..., nn.Module]) -> str:
    """The constructor argument that takes the input's channels/features."""
    params = inspect.signature(builder).parameters
    return next((k for k in _INPUT_ARGS if k in params), "in_chans")


def import_room(package: str, path: Sequence[str], namespace: dict[str, Any]) -> list[str]:
    """Import every module of a block room and re-export each module's ``__all__``.

    Called from a room's ``__init__.py``; importing the modules registers their
    entries, so adding a block means adding its file: nothing else learns its name.
    Returns the re-exported names (the room's ``__all__``).
    """
    import importlib
    import pkgutil

    exported: list[str] = []
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        namespace[info.name] = module
        for attr in getattr(module, "__all__", ()):
            namespace[attr] = getattr(module, attr)
            exported.append(attr)
    return sorted(exported)
