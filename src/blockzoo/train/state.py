"""A run and its state: what the loop trains with, what it changes, what a checkpoint keeps.

``Run`` is what ``loop._setup`` builds once (config, model, optimizer, loader,
device, the checkpoint writer, the hooks). ``RunState`` is what the loop changes:
the step, the history, the best epoch and this epoch's partial sums; its
``to_checkpoint`` / ``from_checkpoint`` map it to and from a checkpoint's entries,
and ``save_run`` / ``resume_run`` add the model, the optimizer and the RNG — the one
place where what is saved and what a resume reads sit side by side.

The partial sums are host floats added in step order and stored in checkpoints, so
a resumed epoch sums the same way as an uninterrupted one. On the CPU each step's
loss is read at once (about a microsecond), so a non-finite loss stops the run
before its backward; on an accelerator each read is a sync that would stall the
kernel queue, so finished steps' values wait in ``pending`` as tensors and are read
in groups (``read_pending``: one sync for all of them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from blockzoo.checks import ConfigError, FileFormatError
from blockzoo.data.base import Data, TensorLoader
from blockzoo.io import mismatch, shapes_of
from blockzoo.train import ddp
from blockzoo.train.checkpoint import CheckpointWriter, check_run_checkpoint, load_checkpoint
from blockzoo.train.config import TrainConfig
from blockzoo.train.metrics import group_norms
from blockzoo.train.task import Objective

if TYPE_CHECKING:
    from blockzoo.train.hooks import Hook

__all__ = ["Diverged", "Run", "RunState", "finite", "jsonable", "resume_run", "save_run"]

log = logging.getLogger("blockzoo.train")


class Diverged(ArithmeticError):
    """A training loss that is NaN or infinite, at a 1-based step; the loop names the checkpoint."""

    def __init__(self, value: float, step: int) -> None:
        super().__init__(f"loss is {value} at step {step}")
        self.value, self.step = value, step


def finite(value: float, step: int) -> float:
    """``value`` (the loss of the 1-based ``step``) if it is finite; else raise ``Diverged``."""
    if not math.isfinite(value):
        raise Diverged(value, step)
    return value


@dataclass
class RunState:
    """What a run has done so far; all of it but ``lr`` and ``pending`` is in every checkpoint.

    Attributes:
        grad_sum: per-parameter gradient norms summed over this epoch's steps (``grad_stats``).
        norm_sum: the global gradient norm, then each top-level module's, summed over this
            epoch's steps (``grad_stats``; float64).
        step: optimizer steps taken.
        history: one row per finished epoch (the lines of ``metrics.csv``).
        grad_history: per epoch, each parameter's mean gradient norm.
        best_val: the best validation score so far (accuracy, or minus the loss).
        best_epoch: its 1-based epoch (0: none yet).
        loss_sum, correct, count: this epoch's training loss sum, right answers and samples.
        lr: the learning rate now set in the optimizer (a function of the step: not saved).
        pending: finished steps not yet added to the sums, as (mean loss, right, samples).
        grad_norm: the last step's global gradient norm (``grad_stats``; not saved).
    """

    grad_sum: torch.Tensor
    norm_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.float64))
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    grad_history: list[dict[str, float]] = field(default_factory=list)
    best_val: float | None = None
    best_epoch: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    count: int = 0
    lr: float | None = None
    pending: list[tuple[Any, Any, int]] = field(default_factory=list)
    grad_norm: float | None = None

    def read_pending(self) -> None:
        """Add the finished steps in ``pending`` to the epoch's sums, in step order.

        Raises:
            Diverged: a pending loss is not finite (the earliest one is named).
        """
        if not self.pending:
            return
        losses, rights = [p[0] for p in self.pending], [p[1] for p in self.pending]
        if isinstance(losses[0], torch.Tensor):  # one sync for all of them
            losses, rights = torch.stack(losses).tolist(), torch.stack(rights).tolist()
        first = self.step - len(self.pending) + 1  # the 1-based step of pending[0]
        for i, (v, r, (_, _, n)) in enumerate(zip(losses, rights, self.pending, strict=True)):
            self.loss_sum += finite(v, first + i) * n
            self.correct += r
            self.count += n
        self.pending.clear()

    def partial(self) -> torch.Tensor:
        """This epoch's sums as one float64 tensor: loss, right answers, samples."""
        return torch.tensor([self.loss_sum, self.correct, float(self.count)], dtype=torch.float64)

    def add_grad_norms(self, norms: torch.Tensor, index: torch.Tensor) -> None:
        """Add one step's per-parameter gradient norms (on the host) to the epoch's sums, with
        the global and per-module norms they make (``index``: each parameter's module)."""
        self.grad_sum += norms
        step = group_norms(norms, index, len(self.norm_sum) - 1)
        self.norm_sum += step
        self.grad_norm = step[0].item()

    def close_grad_norms(self, names: list[str], groups: list[str], steps: int) -> dict[str, float]:
        """End an epoch of ``steps`` steps' gradient sums: each parameter's mean norm goes to
        ``grad_history``; the mean global and per-module norms are returned as the epoch's
        ``grad_norm`` and ``grad_norm/<module>`` entries (its metrics.csv columns)."""
        n = max(1, steps)
        self.grad_history.append({k: (g / n).item() for k, g in zip(names, self.grad_sum, strict=True)})
        means = (self.norm_sum / n).tolist()
        row = {"grad_norm": means[0], **{f"grad_norm/{g}": v for g, v in zip(groups, means[1:], strict=True)}}
        self.grad_sum.zero_()
        self.norm_sum.zero_()
        return row

    def reset_sums(self) -> None:
        """Start a new epoch's sums."""
        self.loss_sum, self.correct, self.count = 0.0, 0.0, 0

    def keep_best(self, score: float, epoch: int, *, tie_loss: float | None = None) -> bool:
        """Record ``score`` (higher is better) of the 1-based ``epoch`` if it beats the best so
        far; with ``tie_loss``, an equal score with a lower val loss than the best epoch's
        (read from ``history``) beats it too. True if it did."""
        better = self.best_val is None or score > self.best_val
        if not better and tie_loss is not None and score == self.best_val and self.best_epoch:
            better = tie_loss < self.history[self.best_epoch - 1]["val_loss"]
        if better:
            self.best_val, self.best_epoch = score, epoch
        return better

    def to_checkpoint(self, epoch: int) -> dict[str, Any]:
        """The checkpoint entries of this state; ``epoch`` (the epochs finished) labels it.

        Only the sums are saved, so the pending steps must have been read (``read_pending``).
        """
        if self.pending:
            raise RuntimeError(f"{len(self.pending)} finished steps not yet in the sums: read_pending first")
        return dict(step=self.step, epoch=epoch, history=self.history, grad_history=self.grad_history,
                    best_val=self.best_val, best_epoch=self.best_epoch, partial=self.partial(),
                    grad_sum=self.grad_sum.clone(), norm_sum=self.norm_sum.clone())

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any]) -> RunState:
        """The state saved by ``to_checkpoint`` (``check_run_checkpoint`` has checked the types;
        a checkpoint older than ``norm_sum`` gets the one-entry default, which ``resume_run`` sizes)."""
        partial = ck["partial"]
        norm_sum = ck.get("norm_sum")
        extra = {"norm_sum": norm_sum.double()} if isinstance(norm_sum, torch.Tensor) else {}
        return cls(grad_sum=ck["grad_sum"].float(), **extra, step=ck["step"], history=list(ck["history"]),
                   grad_history=list(ck.get("grad_history", [])), best_val=ck["best_val"],
                   best_epoch=ck["best_epoch"], loss_sum=partial[0].item(), correct=partial[1].item(),
                   count=int(partial[2].item()))


@dataclass
class Run:
    """What one run trains with, built once by ``loop._setup``; the loop's functions read it."""

    cfg: TrainConfig
    data: Data
    obj: Objective
    model: nn.Module
    net: nn.Module  # the model as trained: wrapped for DDP and compiled where asked
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    loader: TensorLoader
    device: torch.device
    dist: ddp.Dist
    total: int  # steps
    per_epoch: int
    grad_names: list[str]  # the trained parameters (``grad_stats``)
    grad_groups: list[str]  # their top-level modules, in order (``grad_stats``)
    grad_index: torch.Tensor  # each parameter's index in grad_groups
    run_dir: Path | None
    meta: dict[str, Any]
    read_every: int  # steps between host reads of the loss
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)  # writes in the background
    hooks: list[Hook] = field(default_factory=list)  # rank 0's loggers

    @property
    def main(self) -> bool:
        return self.dist.main

    @property
    def monitor(self) -> str:
        """What picks the best epoch: ``--monitor``, else val_acc (classification) or val_loss."""
        return self.cfg.monitor or ("val_loss" if self.obj.task == "regression" else "val_acc")

    @property
    def last_pt(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "last.pt"

    @property
    def best_pt(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "best.pt"


def save_run(run: Run, state: RunState, path: Path, epoch: int, link: Path | None = None) -> None:
    """Save the run to ``path`` (then make ``link`` a copy of it) in the background; rank 0 only.

    ``resume_run`` reads it back: the model, the optimizer, ``state`` and the RNG.
    """
    if not run.main:
        return
    ck = dict(model=run.model.state_dict(), optimizer=run.opt.state_dict(), **state.to_checkpoint(epoch),
              rng=torch.get_rng_state(), config=run.cfg.to_dict(), meta=jsonable(run.meta),
              data_stats=dict(run.data.stats), task=run.data.task, output=run.obj.output,
              num_classes=run.data.num_classes, in_chans=run.data.in_chans)
    if run.device.type == "cuda":
        ck["cuda_rng"] = torch.cuda.get_rng_state(run.device)
    run.writer.save(path, ck, link=link)


def resume_run(run: Run) -> RunState:
    """The state saved in ``last.pt``, with the model, optimizer and RNG restored from it."""
    path = run.last_pt
    if path is None or not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    ck = check_run_checkpoint(load_checkpoint(path, map_location=run.device), path)
    _check_resume(ck, run.cfg, run.model, path)
    run.model.load_state_dict(ck["model"])
    try:
        run.opt.load_state_dict(ck["optimizer"])
    except (ValueError, KeyError) as e:
        raise FileFormatError(f"--resume: the optimizer state in {path} does not fit --optimizer "
                              f"{run.cfg.optimizer} ({e})") from None
    state = RunState.from_checkpoint(ck)
    if state.norm_sum.shape != (1 + len(run.grad_groups),):  # a checkpoint older than norm_sum
        state.norm_sum = torch.zeros(1 + len(run.grad_groups), dtype=torch.float64)
    torch.set_rng_state(ck["rng"].cpu())
    if run.device.type == "cuda" and "cuda_rng" in ck:
        torch.cuda.set_rng_state(ck["cuda_rng"].cpu(), run.device)
    if run.main:
        log.info("resumed from %s at step %d", path, state.step)
    return state


def _check_resume(ck: Mapping[str, Any], cfg: TrainConfig, model: nn.Module, path: Path) -> None:
    """Refuse a checkpoint of another model, optimizer or data before loading anything from it."""
    stored = ck["config"]
    for key in ("model", "data", "optimizer"):
        if stored.get(key) != getattr(cfg, key):
            raise ConfigError(f"--resume: {path} was trained with --{key} {stored.get(key)}; this run asks "
                              f"for --{key} {getattr(cfg, key)} (use --name for a new run)")
    problem = mismatch(shapes_of(model), shapes_of(ck["model"]),
                       f"--resume: {path} does not fit this run's model")
    if problem:
        raise FileFormatError(problem)


def jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only values a weights-only checkpoint and JSON can both hold."""
    ok = (str, int, float, bool, type(None))

    def conv(v: Any) -> Any:
        if isinstance(v, ok):
            return v
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        return str(v)

    return {str(k): conv(v) for k, v in d.items()}
