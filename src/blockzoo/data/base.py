"""Data sets as whole tensors: the registry, the ``Data`` bundle, views and the loader.

A data set is a function registered with ``@register_dataset`` that returns a
``Data``: train/val/test splits held as tensors, the input kind and per-sample
shape, the task and the number of classes or targets. Small data sets live in
memory, so a batch is one index into a tensor (``x[idx]``), never a Python loop
of per-sample ``__getitem__`` calls.

Letters: B batch, C channels, H W spatial, T time steps, F features, K classes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch
from torch.utils.data import Dataset

from blockzoo.checks import ConfigError
from blockzoo.registry import unknown_name

__all__ = [
    "TASKS",
    "Data",
    "DatasetEntry",
    "TensorData",
    "TensorLoader",
    "dataset_entry",
    "is_file_data",
    "list_datasets",
    "load_data",
    "parse_file_spec",
    "register_dataset",
    "register_file_loader",
    "split_indices",
    "split_off",
    "split_train_val",
    "standardize",
    "subsample",
    "view_tensor",
]

TASKS = ("classification", "binary", "regression")


class TensorData(Dataset):
    """Inputs ``x`` and targets ``y`` held as tensors; indexing takes an int or an index tensor."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"TensorData: {len(x)} inputs but {len(y)} targets")
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]


@dataclass(frozen=True)
class Data:
    """One data set, ready to train on.

    Attributes:
        name: the registered name.
        train, val, test: the splits.
        input: the input kind, as in the registry: ``image`` (C, H, W), ``sequence``
            (T, F) or integer ids (T,), ``tokens`` (N, C), ``vector`` (F,).
        task: ``classification`` (y int64 in [0, K), or (T,) per time step),
            ``binary`` (y float in {0, 1}, shape (1,)) or ``regression`` (y float, (K,)).
        num_classes: K, classes (classification), 1 (binary) or targets (regression).
        in_chans: C (images), F (vectors, sequences) or the vocabulary size (ids).
        ids: True when inputs are integer token ids (a ``vocab_size`` model).
        baselines: published or trivial reference numbers of the test metric.
        stats: per-feature ``mean``/``std`` used to standardise (to apply at predict); a
            table's also holds ``table``, its column encoding as plain data.
        classes: optional class names.
        vocab: the words of a bag-of-words data set, in feature order.
        headline: ``"loss"`` where the headline metric is the test loss (baselines
            given as losses), else accuracy / MSE by task.
        augment: a per-batch augmentation of the training split,
            ``augment(x, generator, offset, n_global) -> x`` (``augment.BatchAugment``); the
            training loader applies it, evaluation never does.
    """

    name: str
    train: TensorData
    val: TensorData
    test: TensorData
    input: str
    task: str
    num_classes: int
    in_chans: int
    ids: bool = False
    baselines: Mapping[str, float] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    vocab: tuple[str, ...] | None = None
    headline: str | None = None
    about: str = ""
    augment: Callable[..., torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Data {self.name!r}: task {self.task!r} not in {TASKS}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample input shape."""
        return tuple(self.train.x.shape[1:])

    @property
    def metric(self) -> str:
        """The headline metric: accuracy for classification, MSE for regression, or the
        one the data set names (``headline="loss"``: its baselines are losses)."""
        if self.headline:
            return self.headline
        return "mse" if self.task == "regression" else "acc"

    def view(self, kind: str) -> Data:
        """The same data reshaped for a model of input ``kind``; ``ValueError`` if none fits.

        image (C, H, W) -> vector (C*H*W,) or sequence/tokens (H*W, C), pixel by pixel;
        sequence/tokens (T, F) -> vector (T*F,) or each other; vector (F,) -> sequence
        (F, 1). Integer ids only feed sequence models.
        """
        if kind == self.input:
            return self
        if self.ids:
            raise ConfigError(
                f"data {self.name!r} holds integer token ids (sequence input); "
                f"a {kind} model cannot take them"
            )
        if not isinstance(self.train.x, torch.Tensor):
            raise ConfigError(f"data {self.name!r} is streamed from files ({self.input} {self.shape}); it "
                              f"feeds {self.input} models only, not {kind}")
        if (self.input, kind) not in _VIEWS:
            raise ConfigError(
                f"data {self.name!r} is {self.input} {self.shape}; it has no {kind} view "
                f"(models for it take input: {', '.join(self.kinds())})"
            )
        splits = {s: TensorData(view_tensor(getattr(self, s).x, self.input, kind), getattr(self, s).y)
                  for s in ("train", "val", "test")}
        in_chans = splits["train"].x.shape[-1]
        return replace(self, input=kind, in_chans=int(in_chans), **splits)

    def kinds(self) -> list[str]:
        """Input kinds this data can feed (its own first)."""
        if self.ids:
            return [self.input]
        return [self.input] + [k for (a, k) in _VIEWS if a == self.input]

    def facts(self) -> dict[str, Any]:
        """What a model trained on this data needs beside its weights, as plain data (JSON): the
        class names and the non-tensor ``stats`` (a table's column encoding, a text's vocabulary)."""
        out: dict[str, Any] = {"classes": list(self.classes)} if self.classes else {}
        out.update({k: v for k, v in self.stats.items() if not isinstance(v, torch.Tensor)})
        return out

    def describe(self) -> str:
        n = f"{len(self.train)}/{len(self.val)}/{len(self.test)}"
        what = f"{self.num_classes} classes" if self.task == "classification" else (
            "binary" if self.task == "binary" else f"{self.num_classes} targets")
        return f"{self.name}: {self.input} {self.shape}, {what}, train/val/test {n}"


def _img_to_seq(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2).contiguous()  # (B, H*W, C)


_VIEWS: dict[tuple[str, str], Callable[[torch.Tensor], torch.Tensor]] = {
    ("image", "vector"): lambda x: x.flatten(1),  # (B, C*H*W)
    ("image", "sequence"): _img_to_seq,
    ("image", "tokens"): _img_to_seq,
    ("sequence", "vector"): lambda x: x.flatten(1),  # (B, T*F)
    ("sequence", "tokens"): lambda x: x,
    ("tokens", "sequence"): lambda x: x,
    ("tokens", "vector"): lambda x: x.flatten(1),  # (B, N*C)
    ("vector", "sequence"): lambda x: x.unsqueeze(-1),  # (B, F, 1)
    ("vector", "tokens"): lambda x: x.unsqueeze(-1),  # (B, F, 1)
}


def view_tensor(x: torch.Tensor, from_kind: str, to_kind: str) -> torch.Tensor:
    """Reshape a batch of ``from_kind`` inputs for a model of ``to_kind`` (see ``Data.view``)."""
    if from_kind == to_kind:
        return x
    try:
        return _VIEWS[(from_kind, to_kind)](x)
    except KeyError:
        raise ConfigError(f"no view of {from_kind} inputs as {to_kind}") from None


def split_off(n: int, fraction: float, seed: int, labels: torch.Tensor | None = None, *, reserve: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices ``(kept, held)``: a seeded random ``fraction`` of ``n`` rows held out (at least one).

    Without ``labels`` the first ``round(n * fraction)`` rows of a seeded permutation are held.
    With ``labels`` (one class index per row) the split is stratified: the same number of rows
    is held out, shared among the classes in proportion to their sizes (largest remainders
    take the rounding), so every class keeps its share in both parts. A class with more than
    ``reserve`` rows holds out at least one and keeps at least ``reserve`` (the rows later
    splits and training need); a smaller class holds out none. Within a class the held rows
    are the first of the same seeded permutation, so the result depends only on ``seed``,
    ``n`` and the labels.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"val/test fraction {fraction} must be in (0, 1)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_held = max(1, round(n * fraction))
    if labels is None:
        return perm[n_held:], perm[:n_held]
    if labels.shape != (n,) or labels.dtype.is_floating_point:
        raise ConfigError(f"split_off: expected labels (n={n},) of class indices, got "
                          f"{tuple(labels.shape)} {labels.dtype}")
    counts = torch.bincount(labels)
    quota = _share(counts.tolist(), n_held, reserve)
    # each row's rank among the rows of its class, in permutation order
    cls = labels[perm]
    order = torch.sort(cls, stable=True).indices  # rows grouped by class, permutation order kept
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts[cls[order]]
    held = rank < torch.tensor(quota, dtype=torch.int64)[cls]
    return perm[~held], perm[held]


def _share(counts: list[int], total: int, reserve: int) -> list[int]:
    """How many rows of each class to hold out: ``total`` in proportion to ``counts`` (largest
    remainders), each class with more than ``reserve`` rows at least 1 and at most
    ``count - reserve``, a smaller class none; the sum exceeds ``total`` only where these
    minimums demand it."""
    n = sum(counts)
    exact = [c * total / n for c in counts]
    low = [1 if c > reserve else 0 for c in counts]
    high = [max(c - reserve, 0) for c in counts]
    out = [min(max(math.floor(e), lo), hi) for e, lo, hi in zip(exact, low, high, strict=True)]
    # ties in the remainder go to the lower class index: deterministic
    by_remainder = sorted(range(len(counts)), key=lambda k: (out[k] - exact[k], k))
    while sum(out) < total and any(o < h for o, h in zip(out, high, strict=True)):
        for k in by_remainder:
            if sum(out) < total and out[k] < high[k]:
                out[k] += 1
    while sum(out) > total and any(o > lo for o, lo in zip(out, low, strict=True)):
        for k in reversed(by_remainder):
            if sum(out) > total and out[k] > low[k]:
                out[k] -= 1
    return out


def split_train_val(
    x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int, *, stratify: bool = False
) -> tuple[TensorData, TensorData]:
    """Split off a random ``val_fraction`` of (x, y) as validation, deterministically; with
    ``stratify``, each class of ``y`` (class indices) in proportion (``split_off``)."""
    tr, va = split_off(len(x), val_fraction, seed, y if stratify else None)
    return TensorData(x[tr], y[tr]), TensorData(x[va], y[va])


def split_indices(n: int, seed: int, val_fraction: float, test_fraction: float,
                  labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row indices of train, val and test: the test rows are fixed (seeded by ``n``, so they do
    not move with the run's seed), val a seeded share of the rest.

    With ``labels`` (a classifier's class index per row) both splits are stratified
    (``split_off``): each class is in train, val and test in proportion to its size, and a
    class with 3 rows or more has at least one row in each.
    """
    rest, te = split_off(n, test_fraction, n, labels, reserve=2)
    tr, va = split_off(len(rest), val_fraction, seed, None if labels is None else labels[rest])
    return rest[tr], rest[va], te


def parse_file_spec(spec: str, parsers: Mapping[str, Callable[[str], Any]], prefix: str
                    ) -> tuple[Path, dict[str, Any]]:
    """``PATH?key=value&...`` (what follows ``prefix:``) -> (path, {key: parsed value}).

    ``parsers`` maps each option a loader knows to the function that checks and converts
    its value; an unknown key lists the known ones.
    """
    path, sep, query = spec.rpartition("?")
    if not sep:
        return Path(spec), {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        example = "&".join(f"{k}=..." for k in parsers)
        raise ConfigError(f"{prefix} data: options {query!r} must be key=value pairs joined by '&' "
                          f"({prefix}:PATH?{example})") from None
    opts: dict[str, Any] = {}
    for key, value in pairs:
        if key not in parsers:
            raise unknown_name(f"{prefix} data option", key, list(parsers))
        opts[key] = parsers[key](value)
    return Path(path), opts


def standardize(data: Data, *, per_channel: bool = False) -> Data:
    """Standardise inputs with the training split's mean and std.

    Per feature (vectors, tabular data) or, with ``per_channel``, one mean and std
    per image channel (dim 1 of (B, C, H, W)).
    """
    x = data.train.x
    dims = (0, *range(2, x.dim())) if per_channel else (0,)
    mean = x.mean(dims, keepdim=True)
    std = x.std(dims, keepdim=True).clamp_min(1e-8)
    splits = {s: TensorData((getattr(data, s).x - mean) / std, getattr(data, s).y)
              for s in ("train", "val", "test")}
    return replace(data, stats={"mean": mean[0], "std": std[0]}, **splits)


def subsample(data: Data, n_train: int, n_eval: int | None = None) -> Data:
    """The first ``n_train`` training and ``n_eval`` val/test samples (``quick`` mode)."""
    n_eval = n_eval or max(1, n_train // 4)
    return replace(
        data,
        train=TensorData(data.train.x[:n_train], data.train.y[:n_train]),
        val=TensorData(data.val.x[:n_eval], data.val.y[:n_eval]),
        test=TensorData(data.test.x[:n_eval], data.test.y[:n_eval]),
    )


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetEntry:
    """A registered data set: its loader and the facts ``list`` shows."""

    name: str
    loader: Callable[..., Data]
    input: str
    task: str
    about: str
    source: str = "generated"  # bundled, generated or file
    reference: str = ""  # where the data set's published baselines come from


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str, *, input: str, task: str, about: str, source: str = "generated", reference: str = ""
) -> Callable[[Callable[..., Data]], Callable[..., Data]]:
    """Register a loader ``fn(*, seed, val_fraction, data_dir, quick) -> Data`` under ``name``.

    ``reference`` cites where the loader's ``Data.baselines`` were published.
    """

    def deco(fn: Callable[..., Data]) -> Callable[..., Data]:
        if name in _DATASETS:
            raise ValueError(f"register_dataset: {name!r} is already registered")
        _DATASETS[name] = DatasetEntry(name, fn, input, task, about, source, reference)
        return fn

    return deco


# Loaders of a user's own files, by the prefix of ``--data PREFIX:PATH`` (``csv``): each
# module registers its own, so this one imports none of them.
_FILE_LOADERS: dict[str, Callable[..., Data]] = {}


def register_file_loader(prefix: str) -> Callable[[Callable[..., Data]], Callable[..., Data]]:
    """Register ``fn(path, *, seed, val_fraction, **options) -> Data`` for ``--data PREFIX:PATH``."""

    def deco(fn: Callable[..., Data]) -> Callable[..., Data]:
        if prefix in _FILE_LOADERS:
            raise ValueError(f"register_file_loader: {prefix!r} is already registered")
        _FILE_LOADERS[prefix] = fn
        return fn

    return deco


def is_file_data(name: str) -> bool:
    """Whether ``name`` (``load_data``'s, and so ``Data.name``) is a user's own file, ``PREFIX:PATH``
    of a registered file loader (``csv:``, ``text:``, ...), rather than a registered data set."""
    prefix, sep, _ = name.partition(":")
    return bool(sep) and prefix in _FILE_LOADERS


def list_datasets() -> list[str]:
    """Registered data set names, sorted (plus ``csv:PATH`` for any CSV file)."""
    return sorted(_DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    try:
        return _DATASETS[name]
    except KeyError:
        files = [f"{p}:PATH" for p in sorted(_FILE_LOADERS)]
        raise unknown_name("data set", name, [*sorted(_DATASETS), *files]) from None


def _accepts(fn: Callable[..., Any], options: Mapping[str, Any]) -> bool:
    """Whether the file loader ``fn`` takes every one of ``options`` (``--target``, ...)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return True
    return set(options) <= {p.name for p in params}


def load_data(
    name: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    data_dir: str | Path | None = None,
    quick: bool = False,
    file_options: Mapping[str, Any] | None = None,
) -> Data:
    """Load a registered data set (or ``csv:PATH``).

    Args:
        name: a registered name (``blockzoo.data.list_datasets()``) or ``csv:PATH``.
        seed: seeds generated data and the train/val split.
        val_fraction: share of the training data held out for validation where the
            data set has no validation split of its own.
        data_dir: where file-backed data sets live (default ``./data``).
        quick: a small version (for tests and ``--quick`` examples).
        file_options: options of a file loader (``csv:``/``tsv:``: target, features, task,
            fill_missing); those set (not None) are refused for a registered data set.
    """
    options = {k: v for k, v in (file_options or {}).items() if v is not None}
    prefix, sep, path = name.partition(":")
    fits = sorted(p for p, fn in _FILE_LOADERS.items() if _accepts(fn, options))
    if options and not (sep and prefix in fits):
        flags = ", ".join("--" + k.replace("_", "-") for k in options)
        files = " or ".join(f"{p}:PATH" for p in fits) or "no data"
        raise ConfigError(f"{flags} applies to {files}, not to data {name!r}")
    if sep and prefix in _FILE_LOADERS:
        return _FILE_LOADERS[prefix](path, seed=seed, val_fraction=val_fraction, **options)
    entry = dataset_entry(name)
    return entry.loader(seed=seed, val_fraction=val_fraction,
                        data_dir=Path(data_dir or "data"), quick=quick)


# --------------------------------------------------------------------------- loader


class TensorLoader:
    """Batches of (x, y) taken from whole tensors by index, reshuffled each epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run can
    rebuild it and skip the batches already done. Under DDP each rank takes its
    contiguous share of every global batch (``rank``/``world_size``), so N processes
    see exactly the batches one process would see with the same global batch size.

    Args:
        data: the split.
        batch_size: the global batch size; ``None`` or ``0`` is the whole split
            (full-batch gradient descent); 1 is pure SGD.
        shuffle: reshuffle every epoch (train) or keep the order (eval).
        seed: seeds the shuffles.
        drop_last: drop a last batch smaller than ``batch_size``.
        rank, world_size: this process's share under DDP.
        augment: applied to every batch (``Data.augment``), with a generator seeded by
            (seed, epoch, batch) and this rank's rows of the global batch.
    """

    def __init__(
        self,
        data: TensorData,
        batch_size: int | None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        augment: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        self.data = data
        self.augment = augment
        self.batch_size = batch_size or len(data)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        n = len(self.data)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(n, generator=g)

    def shares(self, start: int = 0) -> Iterator[tuple[int, torch.Tensor, int, int]]:
        """``(batch, this rank's indices, their offset in the global batch, global batch size)``
        from batch ``start`` of this epoch on."""
        order = self.order()
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            n_global, offset = len(idx), 0
            if self.world_size > 1:
                parts = idx.tensor_split(self.world_size)
                offset, idx = sum(map(len, parts[:self.rank])), parts[self.rank]
            yield b, idx, offset, n_global

    def augmented(self, x: torch.Tensor, b: int, offset: int, n_global: int) -> torch.Tensor:
        """Batch ``b``'s inputs after ``augment`` (drawn from (seed, epoch, b)), or as they are."""
        if self.augment is None or len(x) == 0:
            return x
        key = ((self.seed * 100_003 + self.epoch) * 1_000_003 + b) % 2**63
        return self.augment(x, torch.Generator().manual_seed(key), offset, n_global)

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Yield ``(x, y, global_batch_size)`` from batch ``start`` of this epoch on."""
        for b, idx, offset, n_global in self.shares(start):
            yield self.augmented(self.data.x[idx], b, offset, n_global), self.data.y[idx], n_global

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, _ in self.batches():
            yield x, y
