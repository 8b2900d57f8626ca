"""Weights on disk: ``save`` and ``load`` in the safetensors format.

A safetensors file holds only tensors and a string-to-string metadata table: no
pickled code runs when it is read. ``save`` stores the model's state dict and, in
the metadata, the registry name and constructor config the model was built with
(``blockzoo.create`` records them), so ``load(path)`` rebuilds the model with no
user code. Loading refuses a file whose tensor names or shapes do not match the
model, listing what differs.

    >>> model = blockzoo.create("mlp", in_features=8, out_features=2)
    >>> blockzoo.save(model, "mlp.safetensors")
    >>> same = blockzoo.load("mlp.safetensors")
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import blockzoo
from blockzoo.registry import ENTRY_ATTR, spec

__all__ = ["load", "load_weights", "read_metadata", "save"]

_NAME, _CONFIG, _VERSION, _ALIASES = (
    "blockzoo.name",
    "blockzoo.config",
    "blockzoo.version",
    "blockzoo.aliases",
)
# Constructor arguments that say where a model lives, not what it is.
_PLACEMENT = ("device", "dtype")


def _jsonable(config: Mapping[str, Any], name: str) -> str:
    clean = {k: v for k, v in config.items() if k not in _PLACEMENT}
    try:
        return json.dumps(clean, sort_keys=True)
    except TypeError as e:
        raise ValueError(
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
    config = config if config is not None else (recorded[1] if recorded else None)
    meta = {_VERSION: blockzoo.__version__, **dict(metadata or {})}
    if name is not None:
        meta[_NAME] = name
        meta[_CONFIG] = _jsonable(config or {}, name)
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


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a saved file: name, config (parsed), version and the rest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    out: dict[str, Any] = dict(meta)
    if _CONFIG in meta:
        out[_CONFIG] = json.loads(meta[_CONFIG])
    return out


def _read_tensors(path: Path, device: str | torch.device) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for alias, key in json.loads(meta.get(_ALIASES, "{}")).items():
        tensors[alias] = tensors[key]
    return tensors, meta


def _mismatch(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> str | None:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    shapes = [
        f"{k}: file {got[k]} vs model {want[k]}" for k in sorted(set(want) & set(got)) if got[k] != want[k]
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
    return f"{path} does not fit {type(model).__name__}: " + "; ".join(parts)


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> nn.Module:
    """Load a safetensors file into an existing ``model``; names and shapes must match."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    tensors, _ = _read_tensors(path, device)
    problem = _mismatch(model, tensors, path)
    if problem:
        raise ValueError(problem)
    float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        # Keep the stored precision (a model saved in float64 loads in float64).
        model.to(float_dtypes.pop())
    model.load_state_dict(tensors, strict=True)
    return model


def load(path: str | os.PathLike[str], *, device: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """Rebuild a registered model from a file written by ``save`` and load its weights.

    ``overrides`` change constructor arguments (they must keep the weights' shapes).
    """
    meta = read_metadata(path)
    if _NAME not in meta:
        raise ValueError(
            f"{path} stores no registry name: it was saved from a model not built by "
            "blockzoo.create; build the model yourself and use blockzoo.load_weights"
        )
    model = spec(meta[_NAME]).build(**{**meta.get(_CONFIG, {}), **overrides})
    return load_weights(model, path, device=device).to(device)
