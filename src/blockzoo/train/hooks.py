"""What the loop tells its loggers: one small interface, one class per logger.

A ``Hook`` sees the run's state at four moments: the start, after each optimizer
step, after each epoch (validated, checkpointed, its row in ``state.history``) and
the end of the loop, however it ends. The loop calls them on rank 0 only and knows
no logger by name; adding one is a new class here and one line where ``loop.py``
builds its list.

A hook must not add per-step work the run does not ask for: ``on_step`` runs after
every step, so it reads the partial sums (a host sync on an accelerator) only when
it shows them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from blockzoo.checks import ConfigError
from blockzoo.train import runlog
from blockzoo.train.state import RunState

__all__ = ["Console", "Hook", "MetricsFile", "TensorBoard", "summary_writer"]

log = logging.getLogger("blockzoo.train")


class Hook:
    """A logger of a run; each method does nothing unless overridden."""

    def on_start(self, state: RunState) -> None:
        """Before the first step of this process (``state.step`` > 0 after a resume)."""

    def on_step(self, state: RunState) -> None:
        """After each optimizer step; its loss may still be pending (``state.read_pending``)."""

    def on_epoch(self, state: RunState) -> None:
        """After each epoch's validation and checkpoint; its row is ``state.history[-1]``."""

    def close(self) -> None:
        """When the loop ends: finished, stopped, interrupted or failed."""


class MetricsFile(Hook):
    """``metrics.csv`` in the run folder, rewritten (atomically) after each epoch."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_epoch(self, state: RunState) -> None:
        runlog.write_metrics(self.run_dir, state.history)


class Console(Hook):
    """One log line per epoch and, on a terminal, a tqdm bar with the epoch's running loss/acc.

    Args:
        total: the run's steps; epochs, per_epoch: its epochs and steps per epoch.
        classify: the task has an accuracy (not regression).
        bar: show the progress bar (stderr is a terminal); its epoch lines go through it.
    """

    def __init__(self, *, total: int, epochs: int, per_epoch: int, classify: bool, bar: bool) -> None:
        self.total, self.epochs, self.per_epoch, self.classify = total, epochs, per_epoch, classify
        self.show_bar = bar
        self.bar = None

    def on_start(self, state: RunState) -> None:
        if self.show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=state.step, unit="step", dynamic_ncols=True,
                            leave=False)

    def on_step(self, state: RunState) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if state.step % 10 == 0 or state.step == self.total:
            state.read_pending()
            live = {"loss": f"{state.loss_sum / max(1, state.count):.4f}"}
            if self.classify:
                live["acc"] = f"{state.correct / max(1, state.count):.3f}"
            self.bar.set_postfix(epoch=(state.step - 1) // self.per_epoch + 1, **live)

    def on_epoch(self, state: RunState) -> None:
        row = state.history[-1]
        msg = f"epoch {row['epoch']}/{self.epochs}  train loss {row['train_loss']:.4f}  " \
              f"val loss {row['val_loss']:.4f}"
        if self.classify:
            msg += f"  val acc {row['val_acc']:.4f}"
        (self.bar.write if self.bar is not None else log.info)(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summary_writer() -> type:
    """PyTorch's ``SummaryWriter``; a ``ConfigError`` naming the extra to install if the
    ``tensorboard`` package is missing (``fit`` asks before training starts)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard=True (--tensorboard) needs the tensorboard package: "
                          "pip install 'blockzoo[tensorboard]'") from None
    return SummaryWriter


# metrics.csv columns -> TensorBoard tags: one chart per quantity, train beside val
_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "acc/train",
         "val_acc": "acc/val", "lr": "lr"}


class TensorBoard(Hook):
    """TensorBoard scalars in ``<run>/tensorboard/``, by optimizer step: each epoch's row of
    ``metrics.csv`` (``loss/train``, ``loss/val``, ``acc/...``, ``lr``, ``grad_norm``,
    ``grad_norm/<module>``) and, with ``grad_stats``, every step's global gradient norm
    (``grad_norm_per_step``).

    A resumed run drops what the interrupted one wrote after its checkpoint's step
    (``purge_step``: the first step this process writes), so the curves do not double back.
    """

    def __init__(self, run_dir: Path) -> None:
        self.log_dir = run_dir / "tensorboard"
        self.writer: Any = None

    def on_start(self, state: RunState) -> None:
        self.writer = summary_writer()(str(self.log_dir), purge_step=state.step + 1 if state.step else None)

    def on_step(self, state: RunState) -> None:
        if state.grad_norm is not None:
            self.writer.add_scalar("grad_norm_per_step", state.grad_norm, state.step)

    def on_epoch(self, state: RunState) -> None:
        row = state.history[-1]
        for key, value in row.items():
            tag = _TAGS.get(key, key if key.startswith("grad_norm") else None)
            if tag is not None and value is not None:
                self.writer.add_scalar(tag, value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
