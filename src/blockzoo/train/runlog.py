"""The run directory: ``config.json``, ``metrics.csv``, ``metrics.json``, ``curves.png``, ``grad_flow.png``.

``RunFolder`` claims a run directory for one run: a lock against a second run of
the same name, a refusal to start over an existing run unless asked, and for
``overwrite`` a staging folder that replaces the old run only once the new one has
a checkpoint — so no earlier run is lost to a new run that fails.

Written by rank 0 only. Every file is written to a uniquely named temporary file
and renamed over its target. Figures use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from blockzoo.checks import ConfigError

__all__ = [
    "RUN_FILES", "RunFolder", "plot_curves", "plot_grad_flow", "write_config", "write_final_metrics",
    "write_grad_stats", "write_metrics",
]

# The files a run leaves in its folder; any of them means the folder holds a run.
RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.csv", "model.safetensors", "grad_stats.csv",
             "curves.png", "grad_flow.png", "metrics.json", "confusion.png", "tensorboard")


def _lock(f: TextIO) -> bool:
    """Take an exclusive, non-blocking lock on an open file; False if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class RunFolder:
    """The folder of one run, claimed for as long as the run lasts (a context manager).

    Args:
        path: ``runs/<name>``.
        resume: continue the run in ``path`` (it must hold one).
        overwrite: replace the run in ``path``; the new run trains in ``work``, a
            staging folder beside it, which replaces ``path`` when the new run has
            written a checkpoint (``finish``). Until then the old run stays whole.
        main: this process writes (rank 0); other ranks only compute ``work``.

    Raises (on entry):
        ConfigError: ``path`` holds a run and neither ``resume`` nor ``overwrite`` is
            set, or another process is running in it (named by its pid).
    """

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False,
                 main: bool = True) -> None:
        self.path = Path(path)
        self.main = main
        existing = [f for f in RUN_FILES if (self.path / f).exists()]
        if existing and not (resume or overwrite):
            raise ConfigError(
                f"{self.path} already holds a run ({', '.join(existing[:3])}); use --resume to continue "
                "it, --overwrite to replace it, or --name for a new run folder")
        self.staged = bool(existing) and overwrite and not resume
        self.work = self.path.with_name(f".{self.path.name}.overwrite") if self.staged else self.path
        self._lock_file: TextIO | None = None

    def __enter__(self) -> RunFolder:
        if not self.main:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.path.with_name(f".{self.path.name}.lock")
        while True:
            f = open(self._lock_path, "a+")
            if not _lock(f):
                f.seek(0)
                pid = f.read().strip() or "unknown"
                f.close()
                raise ConfigError(f"{self.path} is in use by another blockzoo run (pid {pid}); wait for "
                                  "it to finish or choose another --name")
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(self._lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()  # the holder removed the file as we opened it: take the new one
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock_file = f
        if self.staged and self.work.exists():
            shutil.rmtree(self.work)  # what an earlier, failed --overwrite left (we hold the lock)
        self.work.mkdir(parents=True, exist_ok=True)
        return self

    def finish(self) -> None:
        """Put a staged run in place if it has a checkpoint; else drop it and keep the old run."""
        if not (self.main and self.staged and self.work.exists()):
            return
        if not (self.work / "last.pt").exists():
            shutil.rmtree(self.work, ignore_errors=True)
            return
        old = self.path.with_name(f".{self.path.name}.replaced")
        if old.exists():
            shutil.rmtree(old)
        os.replace(self.path, old)
        os.replace(self.work, self.path)
        shutil.rmtree(old, ignore_errors=True)
        self.staged = False

    def final(self, text: str) -> str:
        """``text`` with the staging folder's path replaced by the run's own."""
        return text.replace(str(self.work), str(self.path))

    def __exit__(self, *exc: object) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._lock_path)  # still locked: a process that opened it retries
            self._lock_file.close()  # releases the lock
            self._lock_file = None


@contextlib.contextmanager
def _atomic(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """A text file written under a unique temporary name and renamed over ``path`` on success."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline=newline) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _atomic_text(path: Path, text: str) -> None:
    with _atomic(path) as f:
        f.write(text)


def write_config(run_dir: Path, config: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_text(run_dir / "config.json", json.dumps({**config, **extra}, indent=2, default=str) + "\n")


def write_metrics(run_dir: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """One row per epoch; the columns of every row (a run resumed with other options may add
    some: the earlier rows leave them empty)."""
    if not history:
        return
    cols = list(dict.fromkeys(k for row in history for k in row))
    with _atomic(run_dir / "metrics.csv", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_final_metrics(run_dir: Path, metrics: Mapping[str, Any]) -> None:
    """``metrics.json``: the best weights' final metrics by split (``metrics.py``)."""
    def finite(v: Any) -> Any:  # NaN and infinity are not JSON: None (undefined)
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, Mapping):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    _atomic_text(run_dir / "metrics.json", json.dumps(finite(metrics), indent=2, allow_nan=False) + "\n")


def write_grad_stats(run_dir: Path, grad_history: Sequence[Mapping[str, float]]) -> None:
    if not grad_history:
        return
    names = list(grad_history[0])
    with _atomic(run_dir / "grad_stats.csv", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", *names])
        for e, row in enumerate(grad_history, 1):
            w.writerow([e, *(f"{row[n]:.6g}" for n in names)])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dir: Path, history: Sequence[Mapping[str, Any]], metric: str, title: str) -> Path:
    """Loss and the metric per epoch, train vs val."""
    plt = _pyplot()
    ep = [h["epoch"] for h in history]
    panels = [("loss", "loss")] + ([(metric, "accuracy")] if metric == "acc" else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(ep, [h[f"val_{key}"] for h in history], "o-", ms=3, label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_grad_flow(run_dir: Path, grad_history: Sequence[Mapping[str, float]], title: str) -> Path:
    """Mean gradient norm of each layer's parameters, one line per epoch (log scale)."""
    plt = _pyplot()
    names = list(grad_history[0])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4.2))
    cmap = plt.get_cmap("viridis")
    n = len(grad_history)
    for e, row in enumerate(grad_history):
        ax.plot(range(len(names)), [max(row[k], 1e-30) for k in names], "o-", ms=3,
                color=cmap(e / max(1, n - 1)), label=f"epoch {e + 1}" if e in (0, n - 1) else None)
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("mean gradient norm")
    ax.set_xlabel("parameter (input side -> output side)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    out = run_dir / "grad_flow.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
