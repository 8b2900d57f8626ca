"""Checkpoints: the one place that writes and reads them.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (the
model and optimizer state, the step, the RNG state, the history, the config), so
it loads with ``torch.load(..., weights_only=True)``: no arbitrary object is ever
unpickled. Writes are atomic: a temporary file in the same folder, then
``os.replace``, so a run killed mid-write leaves the previous checkpoint intact.
The training loop writes through ``CheckpointWriter``, which serialises at once
and leaves the disk write and ``fsync`` to a background thread.

``save_checkpoint`` / ``load_checkpoint`` are the only functions that touch the
file format; switching the weights to another format (safetensors) changes only
this module.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tempfile
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from blockzoo.checks import FileFormatError

__all__ = [
    "FORMAT", "CheckpointWriter", "check_run_checkpoint", "copy_checkpoint", "load_checkpoint",
    "save_checkpoint",
]

FORMAT = "blockzoo-checkpoint-1"


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    return _write_atomic(Path(path), _serialize(ckpt))


def _serialize(ckpt: dict[str, Any]) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **ckpt}, buf)
    return buf


def _write_atomic(path: Path, buf: io.BytesIO, link: Path | None = None) -> Path:
    """Bytes to a temp file, flushed to disk, renamed over ``path``; then ``link`` made a copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if link is not None:
        copy_checkpoint(path, link)
    return path


class CheckpointWriter:
    """Atomic checkpoint writes that overlap training: the file I/O runs in a thread.

    ``save`` serialises the checkpoint at once, in the caller's thread (so it holds
    the state of that moment, whatever training does next), then writes, flushes to
    disk (``fsync``, the slow part) and renames in a background thread. One write is
    in flight at a time; ``wait`` blocks until it is on disk and re-raises its error.
    Call ``wait`` before reading a checkpoint back and before the run ends.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, path: str | Path, ckpt: dict[str, Any], *, link: str | Path | None = None) -> None:
        """Write ``ckpt`` to ``path`` (and then make ``link`` a copy of it) in the background."""
        buf = _serialize(ckpt)
        self.wait()
        self._thread = threading.Thread(
            target=self._run, args=(Path(path), buf, None if link is None else Path(link)),
            name="blockzoo-checkpoint", daemon=False)
        self._thread.start()

    def _run(self, path: Path, buf: io.BytesIO, link: Path | None) -> None:
        try:
            _write_atomic(path, buf, link)
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def wait(self, *, raise_error: bool = True) -> None:
        """Block until the last write is on disk; raise the error it met, if any.

        ``raise_error=False`` (while another exception unwinds) drops that error.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        err, self._error = self._error, None
        if err is not None and raise_error:
            raise err


# The entries every checkpoint holds, with their types: checked on load, so a file
# that is a plain dict but not ours is refused by name instead of failing later.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": dict, "optimizer": dict, "step": int, "epoch": int, "history": list,
    "best_val": (float, int, type(None)), "best_epoch": int, "config": dict, "meta": dict,
    "rng": torch.Tensor, "partial": torch.Tensor, "grad_sum": torch.Tensor,
}


def _detail(e: BaseException) -> str:
    """The exception's first sentence, short, after its type: what a user can act on."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.split(". ")[0][:120]
    return f"{type(e).__name__}: {text}" if text and text != type(e).__name__ else type(e).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a ``FileFormatError`` naming the file if it is
    not a whole blockzoo checkpoint (empty, truncated, corrupted, pickled objects, another layout)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    with open(path, "rb"):  # a file we may not read fails here, as the OSError it is
        pass
    try:
        with warnings.catch_warnings():  # torch's notes on a damaged file; the outcome is what counts
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False: the one thing never to do with such a file
        raise FileFormatError(
            f"{path}: refused: it holds pickled objects that are not tensors or plain data "
            f"(blockzoo reads checkpoints with weights_only=True and never runs code from a file): "
            f"{_detail(e)}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, OSError, UnicodeDecodeError,
            zipfile.BadZipFile, AttributeError, TypeError, MemoryError, OverflowError) as e:
        raise FileFormatError(f"{path} is not a readable checkpoint (empty, truncated or corrupted: "
                              f"{_detail(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FileFormatError(f"{path} is not a blockzoo checkpoint (format {FORMAT!r})")
    return ckpt


def check_run_checkpoint(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Check that a checkpoint holds a training run's entries with their types (``fit`` writes them)."""
    for key, kind in _FIELDS.items():
        if not isinstance(ckpt.get(key), kind) or (isinstance(ckpt.get(key), bool) and kind is int):
            raise FileFormatError(f"{path}: checkpoint entry {key!r} is missing or not "
                                  f"{getattr(kind, '__name__', kind)}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        raise FileFormatError(f"{path}: checkpoint entry 'model' must map parameter names to tensors")
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
