"""Checkpoints: the one place that writes and reads them.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (the
model and optimizer state, the step, the RNG state, the history, the config), so
it loads with ``torch.load(..., weights_only=True)``: no arbitrary object is ever
unpickled. Writes are atomic: a temporary file in the same folder, then
``os.replace``, so a run killed mid-write leaves the previous checkpoint intact.

``save_checkpoint`` / ``load_checkpoint`` are the only functions that touch the
file format; switching the weights to another format (safetensors) changes only
this module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "copy_checkpoint", "load_checkpoint", "save_checkpoint"]

FORMAT = "blockzoo-checkpoint-1"


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **ckpt}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a clear error if it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a blockzoo checkpoint (format {FORMAT!r})")
    return ckpt


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Make ``dst`` a copy of the checkpoint ``src``, atomically.

    A hard link where the file system allows it (no second serialisation; ``src``
    is later replaced by ``os.replace``, which leaves the linked file untouched),
    else a byte copy.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst
