"""What the loop tells its loggers: one small interface, one class per logger.

A ``Hook`` sees the run's state at four moments: the start, after each optimizer
step, after each epoch (validated, checkpointed, its row in ``state.history``) and
the end of the loop, however it ends. The loop calls them on rank 0 only and knows
no logger by name; adding one (TensorBoard, say) is a new class here and one line
where ``loop.py`` builds its list.

A hook must not add per-step work the run does not ask for: ``on_step`` runs after
every step, so it reads the partial sums (a host sync on an accelerator) only when
it shows them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from blockzoo.train import runlog
from blockzoo.train.state import RunState

__all__ = ["Console", "Hook", "MetricsFile"]

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
