"""Weights on disk: ``save`` and ``load`` in the safetensors format.

A safetensors file holds only tensors and a string-to-string metadata table: no
pickled code runs when it is read. ``save`` stores the model's state dict and, in
the metadata, the registry name and constructor config the model was built with
(``blockzoo.create`` records them), so ``load(path)`` rebuilds the model with no
user code. Loading refuses a file whose tensor names or shapes do not match the
model, listing what differs.

A file is data: its metadata can select a registered entry and that entry's
constructor arguments, nothing else (no import, no call of anything else). Before a
model is built from metadata, it is built on the meta device (no memory) and its
tensor names and shapes are compared with the file's, so metadata naming huge sizes
is refused before anything is allocated (``build_checked``). See docs/security.md.

    >>> model = blockzoo.create("mlp", in_features=8, out_features=2)
    >>> blockzoo.save(model, "mlp.safetensors")
    >>> same = blockzoo.load("mlp.safetensors")
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.modules import module as _module

from blockzoo._version import __version__
from blockzoo.attach import ATTACHED_ATTR, reattach
from blockzoo.checks import BlockzooError, ConfigError, FileFormatError
from blockzoo.registry import ENTRY_ATTR, spec

__all__ = [
    "BUILDER_ARGS_KEY", "BUILDER_ATTR", "BUILDER_KEY", "DATA_KEY", "NAME_KEY", "SAMPLE_SHAPE_KEY",
    "build_checked", "import_target", "load", "load_weights", "mismatch", "read_metadata", "save",
    "shapes_of",
]

_NAME, _CONFIG, _VERSION, _ALIASES, _ATTACHED = (
    "blockzoo.name",
    "blockzoo.config",
    "blockzoo.version",
    "blockzoo.aliases",
    "blockzoo.attached",  # attach() calls on the model: registered block names and globs
)
NAME_KEY = _NAME  # the metadata key that names the registered entry
BUILDER_ATTR = "_blockzoo_builder"  # on a user's model: (import target, arguments) it was built with
# A user's own model: the import target and arguments it was built with, and one sample's
# shape. Recorded so that a mismatch is refused; never imported from the file.
BUILDER_KEY, BUILDER_ARGS_KEY, SAMPLE_SHAPE_KEY = (
    "blockzoo.builder", "blockzoo.builder_args", "blockzoo.sample_shape")
# A trained model's data facts as JSON (``Data.facts``: class names, a table's or a text's
# encoding): plain data for whoever deploys the file, never read as code.
DATA_KEY = "blockzoo.data"

# Constructor arguments that say where a model lives, not what it is.
_PLACEMENT = ("device", "dtype")


def _jsonable(config: Mapping[str, Any], name: str) -> str:
    clean = {k: v for k, v in config.items() if k not in _PLACEMENT}
    try:
        return json.dumps(clean, sort_keys=True)
    except TypeError as e:
        raise ConfigError(
            f"save: the config of {name!r} is not JSON data ({e}); pass config= with plain "
            "values (names instead of classes, e.g. act_layer='gelu')"
        ) from None


def _dedupe(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split tied tensors (same storage and view) into one stored key and aliases."""
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    for key, t in state.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        stored[key] = t.detach().to("cpu").contiguous().clone()
    return stored, aliases


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model``'s weights (and how to rebuild it) to a safetensors file.

    Args:
        model: the module; if it was built by ``blockzoo.create``/``create_model``
            its registry name and config are stored unless given here.
        path: the file to write; written atomically (temp file, then rename).
        name: registry name to store (overrides the recorded one).
        config: constructor config to store (overrides the recorded one).
        metadata: extra string metadata to store beside ours.

    Returns:
        The path written.
    """
    path = Path(path)
    recorded = getattr(model, ENTRY_ATTR, None)
    name = name or (recorded[0] if recorded else None)
    user = getattr(model, BUILDER_ATTR, None)
    if name is None and user is not None:  # a user's own model, as blockzoo train built it
        metadata = {BUILDER_KEY: user[0], BUILDER_ARGS_KEY: json.dumps(user[1], sort_keys=True, default=repr),
                    **dict(metadata or {})}
    config = config if config is not None else (recorded[1] if recorded else None)
    meta = {_VERSION: __version__, **dict(metadata or {})}
    if name is not None:
        meta[_NAME] = name
        meta[_CONFIG] = _jsonable(config or {}, name)
        if getattr(model, ATTACHED_ATTR, None):
            meta[_ATTACHED] = json.dumps(getattr(model, ATTACHED_ATTR))
    elif BUILDER_KEY not in meta:
        cls = type(model).__name__
        warnings.warn(f"blockzoo.save: {cls} is not a registered blockzoo entry, so {path} holds its weights "
                      f"only; load them with blockzoo.load_weights({cls}(...), {str(path)!r}) or "
                      "blockzoo.load(path, builder=<your builder>)", stacklevel=2)
    tensors, aliases = _dedupe(model.state_dict())
    if aliases:
        meta[_ALIASES] = json.dumps(aliases, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def _open(path: Path, device: str | torch.device = "cpu") -> Iterator[Any]:
    """``safe_open`` with a file that is not safetensors (truncated, empty, text) named as such."""
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        f = safe_open(str(path), framework="pt", device=str(device))
    except SafetensorError as e:
        raise FileFormatError(f"{path} is not a readable safetensors file ({e})") from None
    with f:
        yield f


def _meta_table(path: Path, f: Any) -> dict[str, Any]:
    """The file's metadata with our JSON fields parsed and their types checked."""
    out: dict[str, Any] = dict(f.metadata() or {})
    for key, kind in ((_CONFIG, dict), (_ALIASES, dict)):
        if key in out:
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError as e:
                raise FileFormatError(f"{path}: metadata {key!r} is not JSON ({e})") from None
            if not isinstance(out[key], kind):
                raise FileFormatError(f"{path}: metadata {key!r} must be a JSON object, got "
                                      f"{type(out[key]).__name__}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in out.get(_ALIASES, {}).items()):
        raise FileFormatError(f"{path}: metadata {_ALIASES!r} must map names to names")
    return out


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a saved file: name, config (parsed), version and the rest."""
    path = Path(path)
    with _open(path) as f:
        return _meta_table(path, f)


def _read_tensors(path: Path, device: str | torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with _open(path, device) as f:
        meta = _meta_table(path, f)
        try:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        except SafetensorError as e:
            raise FileFormatError(f"{path}: a tensor cannot be read ({e})") from None
    for alias, key in meta.get(_ALIASES, {}).items():
        if key not in tensors:
            raise FileFormatError(f"{path}: alias {alias!r} names {key!r}, which the file does not hold")
        tensors[alias] = tensors[key]
    return tensors, meta


def _read_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """Tensor names and shapes from the file's header (no tensor data is read)."""
    with _open(path) as f:
        meta = _meta_table(path, f)
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    for alias, key in meta.get(_ALIASES, {}).items():
        if key not in shapes:
            raise FileFormatError(f"{path}: alias {alias!r} names {key!r}, which the file does not hold")
        shapes[alias] = shapes[key]
    return shapes, meta


def mismatch(want: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]],
             what: str) -> str | None:
    """What differs between a model's tensor shapes (``want``) and a file's (``got``), or None."""
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    shapes = [
        f"{k}: file {tuple(got[k])} vs model {tuple(want[k])}"
        for k in sorted(set(want) & set(got)) if tuple(got[k]) != tuple(want[k])
    ]
    if not (missing or unexpected or shapes):
        return None

    def few(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

    parts = []
    if missing:
        parts.append(f"missing from the file: {few(missing)}")
    if unexpected:
        parts.append(f"not in the model: {few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch: {few(shapes)}")
    return f"{what}: " + "; ".join(parts)


def shapes_of(tensors: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of a module's state dict or of a mapping of tensors (what ``mismatch`` compares)."""
    items = tensors.state_dict() if isinstance(tensors, nn.Module) else tensors
    return {k: tuple(v.shape) for k, v in items.items()}


@contextlib.contextmanager
def _size_guard(max_elements: int, max_modules: int, what: str) -> Iterator[None]:
    """Stop a model's construction once it holds more parameters or modules than allowed.

    Metadata that names a depth of a billion layers would otherwise keep the meta-device
    build busy for hours; this aborts it at the first registration past the bound.
    """
    count = {"elements": 0, "modules": 0}

    def on_param(module: nn.Module, name: str, param: Any) -> None:
        if param is not None:
            count["elements"] += param.numel()
            if count["elements"] > max_elements:
                raise FileFormatError(f"{what}: its config builds more parameters than the file holds "
                                      f"({max_elements:,} elements at most)")

    def on_module(module: nn.Module, name: str, sub: Any) -> None:
        count["modules"] += 1
        if count["modules"] > max_modules:
            raise FileFormatError(f"{what}: its config builds more than {max_modules:,} modules "
                                  "for the tensors the file holds")

    handles = [_module.register_module_parameter_registration_hook(on_param),
               _module.register_module_module_registration_hook(on_module)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def build_checked(name: str, config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]],
                  source: str | os.PathLike[str],
                  adjust: Callable[[nn.Module], nn.Module] | None = None) -> nn.Module:
    """Build registered entry ``name`` from a file's ``config`` only if it fits the file's ``shapes``.

    The entry is first built on the meta device (no memory is allocated), under a
    guard that stops the build once it holds more parameter elements than the file
    stores; its state dict's names and shapes are then compared with ``shapes``. Only
    a model that fits exactly is built for real. ``name`` must be registered and
    ``config`` is passed as keyword arguments to its constructor: nothing else runs.
    ``adjust`` (e.g. ``attach.reattach`` of recorded blocks) is applied to the probe and
    to the model before their tensors are compared.

    Raises:
        UnknownNameError: ``name`` is not registered.
        FileFormatError: the config does not fit the constructor or the tensors.
    """
    s = spec(name)
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        raise FileFormatError(f"{source}: the stored config of {name!r} is not a mapping of argument names")
    what = f"{source} ({name})"
    numel = sum(math.prod(v) for v in shapes.values())
    try:
        with _size_guard(2 * numel + 4096, 8 * len(shapes) + 1024, what), torch.device("meta"):
            probe = s.build(**config)
            if adjust is not None:
                probe = adjust(probe)
    except BlockzooError:
        raise
    except (TypeError, ValueError) as e:
        raise FileFormatError(f"{what}: the stored config {dict(config)} does not fit the constructor "
                              f"({e})") from None
    problem = mismatch(shapes_of(probe), shapes, f"{what} does not fit the model its metadata names")
    if problem:
        raise FileFormatError(problem)
    return s.build(**config) if adjust is None else adjust(s.build(**config))


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> nn.Module:
    """Load a safetensors file into an existing ``model``; names and shapes must match."""
    path = Path(path)
    tensors, _ = _read_tensors(path, device)
    problem = mismatch(shapes_of(model), shapes_of(tensors),
                       f"{path} does not fit {type(model).__name__}")
    if problem:
        raise FileFormatError(problem)
    float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        # Keep the stored precision (a model saved in float64 loads in float64).
        model.to(float_dtypes.pop())
    model.load_state_dict(tensors, strict=True)
    return model


def import_target(target: str) -> Any:
    """The callable ``module:callable`` (or ``path/to/file.py:callable``) names.

    Imports user code: call it only with a target the user named (command line or
    Python), never with one read from a file.
    """
    import importlib
    import importlib.util
    import sys

    mod_name, sep, attr = target.rpartition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"model {target!r}: expected MODULE:CALLABLE or path/to/file.py:CALLABLE")
    try:
        if mod_name.endswith(".py"):
            file = Path(mod_name)
            spec_ = importlib.util.spec_from_file_location(file.stem, file)
            if spec_ is None or spec_.loader is None or not file.is_file():
                raise ImportError(f"no Python file {mod_name}")
            module = importlib.util.module_from_spec(spec_)
            sys.modules[file.stem] = module
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model {target!r}: cannot import {attr!r} from {mod_name!r} ({e})") from None


def _reattach_from(meta: Mapping[str, Any], path: Path) -> Callable[[nn.Module], nn.Module] | None:
    """The file's recorded attach() calls as a function on the rebuilt model, or None."""
    if _ATTACHED not in meta:
        return None
    try:
        records = json.loads(meta[_ATTACHED])
        shape = [int(v) for v in json.loads(meta[SAMPLE_SHAPE_KEY])] if SAMPLE_SHAPE_KEY in meta else None
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise FileFormatError(f"{path}: metadata {_ATTACHED!r} or {SAMPLE_SHAPE_KEY!r} is not valid "
                              f"({e})") from None

    def adjust(model: nn.Module) -> nn.Module:
        example = torch.zeros(2, *shape) if shape else None
        return reattach(model, records, example_input=example, source=str(path))

    return adjust


def load(path: str | os.PathLike[str], *, device: str | torch.device = "cpu", builder: Any = None,
         **overrides: Any) -> nn.Module:
    """Rebuild a model from a file written by ``save`` and load its weights.

    A registered model: the metadata selects the entry and its constructor arguments;
    the model is built only after its tensor shapes are checked against the file's
    (``build_checked``). ``overrides`` change constructor arguments (they must keep
    the weights' shapes).

    A user's own model (trained with ``--model pkg.module:build``): pass ``builder``,
    the same ``"pkg.module:build"`` (refused if the file records another) or the
    callable itself; it is called with the recorded arguments (and ``overrides``). The
    file alone never causes an import.
    """
    path = Path(path)
    shapes, meta = _read_shapes(path)
    if _NAME in meta:
        if builder is not None:
            raise ConfigError(f"{path} holds the registered model {meta[_NAME]!r}; it needs no builder")
        model = build_checked(meta[_NAME], {**meta.get(_CONFIG, {}), **overrides}, shapes, path,
                              adjust=_reattach_from(meta, path))
        return load_weights(model, path, device=device).to(device)
    recorded = meta.get(BUILDER_KEY)
    if builder is None:
        if recorded:
            raise FileFormatError(
                f"{path} holds the weights of your own model {recorded!r}; blockzoo never imports code "
                f"named by a file: blockzoo.load(path, builder={recorded!r}) (or blockzoo export --model "
                f"{recorded})")
        raise FileFormatError(
            f"{path} stores no registry name: it was saved from a model not built by blockzoo.create; "
            "build the model yourself and use blockzoo.load_weights(model, path), or pass builder=")
    if isinstance(builder, str):
        if recorded and builder != recorded:
            raise ConfigError(f"{path} was saved from model {recorded!r}; you passed {builder!r}")
        builder = import_target(builder)
    try:
        args = json.loads(meta.get(BUILDER_ARGS_KEY, "{}"))
    except json.JSONDecodeError as e:
        raise FileFormatError(f"{path}: metadata {BUILDER_ARGS_KEY!r} is not JSON ({e})") from None
    if not isinstance(args, dict):
        raise FileFormatError(f"{path}: metadata {BUILDER_ARGS_KEY!r} must be a JSON object")
    try:
        model = builder(**{**args, **overrides})
    except TypeError as e:
        raise ConfigError(f"{path}: the builder does not take the recorded arguments {args} ({e})") from None
    return load_weights(model, path, device=device).to(device)
