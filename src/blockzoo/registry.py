"""The registry: one table of every block and model, with the facts every tool needs.

Each entry is registered once with ``@register(...)`` beside its class. The
conformance tests, ``blockzoo list``/``info``, the README catalogue, the
benchmarks and the arena read this table; none of them knows a block by name.

An entry's ``example`` holds a small constructor config and an *input maker*
(``inputs.py``: ``images``, ``tokens``, ``sequence``, ``vectors``, ``token_ids``,
``graph``, re-exported here) that builds a valid input for any batch size and
size, so generic code can build and feed any entry.

Letters: B batch, C channels, H W spatial, N tokens, T time steps, F features.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from blockzoo.checks import ConfigError
from blockzoo.errors import UnknownNameError, unknown_name
from blockzoo.inputs import (
    INPUT_KINDS,
    Args,
    InputKind,
    InputMaker,
    Size,
    graph,
    images,
    sequence,
    token_ids,
    tokens,
    vectors,
)
from blockzoo.vocab import FAMILIES

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

# The sizes the conformance suite tries besides the example's, per input kind:
# non-square, odd, and different from anything an example is built with.
DEFAULT_SIZES: dict[str, tuple[Size, ...]] = {
    "image": ((7, 9), (12, 10)),
    "tokens": ((5,), (11,)),
    "sequence": ((5,), (11,)),
    "graph": ((5,), (9,)),
    "vector": ((),),
}


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
    size_arg: str | None = None
    ids_arg: str | None = None
    paper_numbers: Mapping[str, Any] | None = None

    @property
    def width_arg(self) -> str | None:
        """The constructor argument that takes the input's channels or features (or vocabulary)."""
        f = self.example.inputs.features
        return f if isinstance(f, str) else None

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

    def build(self, **kwargs: Any) -> nn.Module:
        """Construct the entry with exactly ``kwargs``, like calling its class: every
        argument not given is the constructor's own default, which is the paper's.

        The module remembers how it was built (``ENTRY_ATTR``: name and arguments), so
        ``blockzoo.save`` can store it and ``blockzoo.load`` rebuild it without user code.

        Raises:
            ConfigError: a required argument is missing (all of them are named, with
                the example's values as a hint).
        """
        params = inspect.signature(self.builder).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            unknown = [k for k in kwargs if k not in params]
            if unknown:
                raise TypeError(f"{self.name}: unexpected argument{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(repr(k) for k in unknown)} (it takes: {', '.join(params)})")
        missing = self.missing_args(kwargs)
        if missing:
            hint = ", ".join(f"{k}={self.example.config[k]!r}" for k in missing if k in self.example.config)
            raise ConfigError(f"{self.name}: missing required argument{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(repr(k) for k in missing)} (example: blockzoo.create("
                              f"{self.name!r}{', ' + hint if hint else ''}))")
        module = self.builder(**kwargs)
        setattr(module, ENTRY_ATTR, (self.name, dict(kwargs)))
        return module

    def build_example(self, **overrides: Any) -> nn.Module:
        """The entry at its registered example config (small: for tests, ``info``, ``bench``
        and the arena), updated by ``overrides``."""
        return self.build(**{**self.example.config, **overrides})

    def missing_args(self, given: Mapping[str, Any]) -> list[str]:
        """The constructor's required arguments (no default) that ``given`` lacks."""
        params = inspect.signature(self.builder).parameters.values()
        return [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in given
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]

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

# The rooms whose modules register entries, imported in this order before the first
# lookup: ``import blockzoo`` imports no room (nor torch), so ``blockzoo --help`` is
# quick, and a lookup from any module still sees every entry.
ROOMS = ("attention", "conv", "mlp", "models", "recurrent", "rep")
_rooms_loaded = False


def load_rooms() -> None:
    """Import every block room (registering its entries), once; lookups call this first.

    The flag is set before the imports: a lookup made while a room is importing sees
    the entries registered so far (as a lookup during ``import blockzoo`` always did).
    """
    global _rooms_loaded
    if _rooms_loaded:
        return
    _rooms_loaded = True
    try:
        for room in ROOMS:
            importlib.import_module(f"blockzoo.{room}")
    except BaseException:
        _rooms_loaded = False  # the next lookup raises the same import error again
        raise

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
    size_arg: str | None = None,
    ids_arg: str | None = None,
    paper_numbers: Mapping[str, Any] | None = None,
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
        size_arg: the constructor argument that fixes the input's spatial size or length
            (``image_size``, ``seq_len``, ``max_len``, ``num_tokens``): ``blockzoo train``
            and the arena set it from the data. The argument that takes the input's
            width is the example input maker's ``features`` (``Spec.width_arg``).
        ids_arg: for a model that can embed integer token ids beside taking real
            features, the argument that takes the vocabulary size (``vocab_size``).
        paper_numbers: what the paper's table states for the entry at its default
            config, as printed there: ``size`` (H, W), ``params`` (``"28M"``), ``macs``
            (multiply-adds, the "FLOPs" of most vision papers: ``"4.5G"``; ``None`` when the
            paper gives none), ``source`` (``"Table 1(a)"``) and, optionally, ``checked``: what
            the tests check the parameter count against when it is neither timm's model (an
            entry with a weights layout) nor the paper's table (``"authors' code"``).
            ``docs/catalogue.md`` lists them beside the counts measured at that size.
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
    needed = {"size", "params", "macs", "source"}
    if paper_numbers is not None and not needed <= set(paper_numbers) <= needed | {"checked"}:
        raise ValueError(f"register({name!r}): paper_numbers needs size, params, macs, source (optionally "
                         f"checked); got {sorted(paper_numbers)}")

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not (getattr(builder, "__module__", None) or "").startswith("blockzoo."):
            load_rooms()  # a user's entry: a clash with a built-in name is reported here
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
            size_arg=size_arg,
            ids_arg=ids_arg,
            paper_numbers=dict(paper_numbers) if paper_numbers is not None else None,
        )
        params = inspect.signature(builder).parameters
        open_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for arg in (size_arg, ids_arg, _REGISTRY[name].width_arg):
            if arg is not None and arg not in params and not open_kw:
                del _REGISTRY[name]
                raise ValueError(f"register({name!r}): {builder.__qualname__} takes no argument {arg!r}")
        return builder

    return deco


def unregister(name: str) -> None:
    """Remove an entry (for tests that register throw-away blocks)."""
    load_rooms()
    _REGISTRY.pop(name, None)


def spec(name: str) -> Spec:
    """The ``Spec`` of a registered entry; unknown names list close matches."""
    load_rooms()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_name("block or model", name, sorted(_REGISTRY)) from None


def list_blocks(family: str | None = None, pattern: str | None = None) -> list[str]:
    """Registered names, sorted, optionally filtered by family and a glob pattern."""
    load_rooms()
    if family is not None and family not in FAMILIES:
        raise unknown_name("family", family, FAMILIES)
    return sorted(
        n
        for n, s in _REGISTRY.items()
        if (family is None or s.family == family)
        and (pattern is None or fnmatch.fnmatch(n, pattern))
    )


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered entry with exactly ``kwargs``, as ``Class(**kwargs)`` would: every
    argument not given is the class's own (paper) default; a missing required argument
    is named. ``spec(name).build_example()`` builds the small example config instead.

    Example:
        >>> block = create("mlp", in_features=8, hidden_features=(16,), out_features=3)
        >>> block(torch.randn(4, 8)).shape
        torch.Size([4, 3])
    """
    return spec(name).build(**kwargs)


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
        if s.width_arg is None:
            raise ConfigError(f"create_model: {name!r} has a fixed input width; in_chans cannot be set")
        kw[s.width_arg] = in_chans
    return kw
