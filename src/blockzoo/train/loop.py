"""The training loop: setup, evaluate, schedule, loop — read top to bottom.

The tutorials' four steps (forward, loss, backward, optimizer step) with what a
real trainer adds around them: whole-tensor batches, a learning-rate schedule,
gradient clipping, evaluation every epoch, the best checkpoint kept, atomic
checkpoints and exact resume, a progress bar, per-layer gradient norms, mixed
precision, ``torch.compile`` and DDP.

``fit`` claims the run folder; ``_setup`` builds the ``Run`` (what training uses)
and the ``RunState`` (what it changes, new or resumed: ``state.py``); ``_train`` is
the loop — ``train_step`` per batch, ``end_epoch`` per epoch (validation, best,
checkpoint), the hooks (``hooks.py``: metrics.csv, the console, TensorBoard) after
each — and ``evaluate_best`` tests the best weights (``metrics.py``: per-class
precision/recall, F1, ROC AUC; MSE, MAE, R^2) and writes the run's outputs.

Resume is exact: the data order of epoch e depends only on (seed, e), the
schedule only on the step, and the checkpoint holds the model, the optimizer, the
RNG state and the partial epoch's sums — so a run stopped after k steps and
resumed ends with the same weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockzoo.checks import ConfigError
from blockzoo.data.base import Data, TensorData, is_file_data
from blockzoo.data.stream import make_loader
from blockzoo.export import compile as compile_module
from blockzoo.io import DATA_KEY, SAMPLE_SHAPE_KEY
from blockzoo.io import save as save_weights
from blockzoo.train import ddp, runlog
from blockzoo.train.checkpoint import load_checkpoint, save_checkpoint
from blockzoo.train.config import TrainConfig
from blockzoo.train.finetune import param_groups
from blockzoo.train.hooks import Console, Hook, MetricsFile, TensorBoard, summary_writer
from blockzoo.train.metrics import Outputs, class_names, grad_groups
from blockzoo.train.optim import build_optimizer, check_optimizer, check_schedule, lr_factor
from blockzoo.train.state import Diverged, Run, RunState, finite, jsonable, resume_run, save_run
from blockzoo.train.task import Objective, model_outputs, objective

__all__ = ["FitResult", "NonFiniteLossError", "evaluate", "fit", "resolve_device"]

log = logging.getLogger("blockzoo.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class FitResult:
    """What a run produced."""

    model: nn.Module
    history: list[dict[str, Any]]
    test: dict[str, Any]  # loss, acc and the final metrics of metrics.py on the test split
    best_epoch: int
    best_val: float | None
    steps: int
    seconds: float
    metric: str
    run_dir: Path | None = None
    stopped: bool = False  # by ``stop_after``
    interrupted: bool = False  # by Ctrl-C
    grad_history: list[dict[str, float]] = field(default_factory=list)
    data_name: str = ""
    baselines: dict[str, float] = field(default_factory=dict)
    model_name: str = ""  # the registered name or import target it was built from, if known
    monitor: str = "val_acc"  # what best_val and best_epoch are by
    val: dict[str, Any] = field(default_factory=dict)  # the best weights' final metrics on val


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``, ...; a clear error for the rest."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or another torch device"
                          ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available")
    return dev


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: TensorData,
    obj: Objective,
    *,
    batch_size: int | None = 256,
    device: torch.device | str = "cpu",
    dist: ddp.Dist | None = None,
    amp: str | None = None,
    channels_last: bool = False,
    collect: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy (classification) of ``model`` on ``split``, summed over ranks.

    ``collect(scores, targets)``, if given, sees each batch (this rank's share): the final
    metrics' ``metrics.Outputs`` keeps what it needs of them.
    """
    dist = dist or ddp.Dist()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count
    loader = make_loader(split, batch_size, rank=dist.rank, world_size=dist.world_size)
    for x, y, _ in loader.batches():
        if len(x) == 0:
            continue
        x, y = _to(x, device, channels_last), y.to(device)
        with _autocast(device, amp):
            out = model_outputs(model(x))
        sums[0] += obj.loss_sum(out, y).double()
        sums[1] += obj.correct(out, y).double()
        sums[2] += len(x)
        if collect is not None:
            collect(out, y)
    ddp.all_reduce_sum(sums, dist)
    model.train(was_training)
    n = max(1.0, sums[2].item())
    res = {"loss": sums[0].item() / n}
    if obj.task != "regression":
        res["acc"] = sums[1].item() / n
    return res


def _read_every(device: torch.device) -> int:
    """Steps between host reads of the training loss: 1 on the CPU, 16 where a read syncs."""
    return 1 if device.type == "cpu" else 16


def _evaluate(run: Run, split: TensorData, *, dist: ddp.Dist | None = None,
              collect: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> dict[str, float]:
    cfg = run.cfg
    return evaluate(run.model, split, run.obj, batch_size=cfg.eval_batch, device=run.device,
                    dist=dist or run.dist, amp=cfg.amp, channels_last=cfg.channels_last, collect=collect)


def _grad_norms(model: nn.Module, names: list[str]) -> torch.Tensor:
    params = dict(model.named_parameters())
    grads = [params[n].grad for n in names]
    return torch.stack([g.detach().float().norm() if g is not None else torch.zeros(()) for g in grads])


def fit(
    model: nn.Module,
    data: Data,
    config: TrainConfig | Mapping[str, Any] | None = None,
    *,
    output: str = "logits",
    run_dir: str | Path | None = None,
    meta: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> FitResult:
    """Train ``model`` on ``data`` and test its best-on-validation weights.

    Args:
        model: any module mapping a batch of ``data``'s inputs to scores/values.
        data: the data set, already in the model's input kind (``Data.view``).
        config: a ``TrainConfig`` (or dict); ``overrides`` update it (``epochs=5``).
        output: the model's output kind: ``logits``, ``log_probs`` or ``regression``;
            with the data's task it picks the loss.
        run_dir: where ``config.json``, ``metrics.csv``, checkpoints and figures go;
            ``None`` keeps everything in memory (no checkpoints, so no ``resume``).
        meta: extra facts stored in checkpoints (how to rebuild the model).

    Returns:
        A ``FitResult``; ``result.model`` holds the best validation weights.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (names the step and last checkpoint).
    """
    # ------------------------------------------------------------------ config
    if isinstance(config, TrainConfig):
        cfg = TrainConfig.from_dict({**config.to_dict(), **overrides})
    else:
        cfg = TrainConfig.from_dict({**dict(config or {}), **overrides})
    check_schedule(cfg.schedule)
    check_optimizer(cfg.optimizer, cfg.nesterov)
    if cfg.tensorboard:
        if run_dir is None:
            raise ConfigError("tensorboard=True writes into the run folder: give fit a run_dir")
        summary_writer()  # the package is there, before anything trains
    if run_dir is None:
        return _fit(model, data, cfg, output, None, meta)
    # the run folder: locked for this run; an existing run is replaced only by --overwrite,
    # and only once the new run has a checkpoint
    folder = runlog.RunFolder(run_dir, resume=cfg.resume, overwrite=cfg.overwrite,
                              main=int(os.environ.get("RANK", "0")) == 0)
    with folder:
        try:
            result = _fit(model, data, cfg, output, folder.work, meta)
        except NonFiniteLossError as e:
            folder.finish()
            raise NonFiniteLossError(folder.final(str(e))) from None
        except BaseException:
            folder.finish()
            raise
        folder.finish()
    result.run_dir = folder.path
    return result


def _fit(model: nn.Module, data: Data, cfg: TrainConfig, output: str, run_dir: Path | None,
         meta: Mapping[str, Any] | None) -> FitResult:
    """``fit`` after the config is settled and the run folder claimed: setup, loop, test."""
    run, state = _setup(model, data, cfg, output, run_dir, meta)
    try:
        stopped, interrupted, seconds = _train(run, state)
    except Diverged as e:
        raise _non_finite(run, e) from None
    test, val = ({}, {}) if stopped or interrupted else evaluate_best(run, state)
    best_val = state.best_val
    return FitResult(model=model, history=state.history, test=test, val=val, best_epoch=state.best_epoch,
                     best_val=best_val if run.monitor == "val_acc" or best_val is None else -best_val,
                     steps=state.step, seconds=seconds, metric=data.metric, run_dir=run_dir,
                     stopped=stopped, interrupted=interrupted, grad_history=state.grad_history,
                     data_name=data.name, baselines=dict(data.baselines),
                     model_name=str((meta or {}).get("model") or cfg.model or ""), monitor=run.monitor)


def _setup(model: nn.Module, data: Data, cfg: TrainConfig, output: str, run_dir: Path | None,
           meta: Mapping[str, Any] | None) -> tuple[Run, RunState]:
    """Everything before the first step: device, DDP, optimizer, loader, the (resumed) state, hooks."""
    obj = objective(data.task, output, data.num_classes)
    if cfg.monitor == "val_acc" and obj.task == "regression":
        raise ConfigError("monitor='val_acc': a regression run has no accuracy; use val_loss")
    device = ddp.rank_device(resolve_device(cfg.device))
    dist = ddp.setup(device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optimizer, param_groups(model, cfg, meta or {}), lr=cfg.lr,
                          momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" and device.type == "cuda" else None
    loader = make_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, rank=dist.rank,
                         world_size=dist.world_size, augment=data.augment)
    per_epoch = len(loader)
    # the default budget (epochs=None) is settled here, where the steps per epoch are known, and
    # written to config.json as the epochs chosen, so that replaying the run is exact
    cfg, budget = cfg.settle_epochs(per_epoch, len(data.train), is_file_data(data.name))
    if budget and dist.main and not cfg.quiet:
        log.info(budget)
    grad_names = [n for n, p in model.named_parameters() if p.requires_grad]
    groups, group_index = grad_groups(grad_names)
    run = Run(cfg=cfg, data=data, obj=obj, model=model, net=model, opt=opt, scaler=scaler, loader=loader,
              device=device, dist=dist, total=cfg.steps or cfg.epochs * per_epoch, per_epoch=per_epoch,
              grad_names=grad_names, grad_groups=groups, grad_index=group_index,
              run_dir=run_dir, meta=dict(meta or {}), read_every=_read_every(device))
    # resume before DDP wraps the model: DDP starts every rank from rank 0's weights
    state = resume_run(run) if cfg.resume else RunState(
        grad_sum=torch.zeros(len(grad_names)), norm_sum=torch.zeros(1 + len(groups), dtype=torch.float64))
    if dist.enabled:
        run.net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # inductor, fullgraph where the registry says the model is one graph
        run.net = compile_module(run.net)
    if run_dir is not None and run.main:
        runlog.write_config(run_dir, cfg.to_dict(), {"data_info": data.describe(), **jsonable(run.meta)})
    epochs = math.ceil(run.total / per_epoch)
    run.hooks = _hooks(run, epochs)
    for hook in run.hooks:
        hook.on_start(state)
    if run.main and not cfg.quiet:
        n_params = sum(p.numel() for p in model.parameters())
        log.info("training %s params on %s: %d epochs x %d steps, %s on %s%s", f"{n_params:,}",
                 data.describe(), epochs, per_epoch, cfg.optimizer, device,
                 f", {dist.world_size} processes" if dist.enabled else "")
    return run, state


def _hooks(run: Run, epochs: int) -> list[Hook]:
    """Rank 0's loggers, called in this order: ``metrics.csv``, TensorBoard, the console."""
    if not run.main:
        return []
    hooks: list[Hook] = []
    if run.run_dir is not None:
        hooks.append(MetricsFile(run.run_dir))
        if run.cfg.tensorboard:
            hooks.append(TensorBoard(run.run_dir))
    if not run.cfg.quiet:
        hooks.append(Console(total=run.total, epochs=epochs, per_epoch=run.per_epoch,
                             classify=run.obj.task != "regression", bar=sys.stderr.isatty()))
    return hooks


def _train(run: Run, state: RunState) -> tuple[bool, bool, float]:
    """The loop: epochs of ``train_step``, each closed by ``end_epoch``, until the last step,
    ``stop_after`` or Ctrl-C; a stopped or interrupted run then saves ``last.pt``.

    Returns:
        ``(stopped, interrupted, seconds)``: seconds from the first step to the loop's end.
    """
    cfg, total, per_epoch = run.cfg, run.total, run.per_epoch
    t0 = time.perf_counter()
    stopped = interrupted = False
    try:
        while state.step < total and not stopped:
            epoch = state.step // per_epoch
            run.loader.set_epoch(epoch)
            run.model.train()
            for x, y, n_global in run.loader.batches(start=state.step - epoch * per_epoch):
                if state.step >= total:
                    break
                train_step(run, state, x, y, n_global)
                for hook in run.hooks:
                    hook.on_step(state)
                if _stop(cfg, state.step, total) and state.step % per_epoch:
                    stopped = True  # mid-epoch: no evaluation, as if the run were killed here
                    break
            if not stopped:
                end_epoch(run, state, epoch, t0)
                stopped = _stop(cfg, state.step, total)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        run.writer.wait(raise_error=False)  # leave the files whole before the error propagates
        raise
    finally:
        for hook in run.hooks:
            hook.close()
    run.writer.wait()
    seconds = time.perf_counter() - t0
    if stopped or interrupted:
        state.read_pending()  # the finished steps' sums belong in the checkpoint
    if (stopped or interrupted) and run.last_pt is not None:
        save_run(run, state, run.last_pt, state.step // per_epoch)
        run.writer.wait()
        if run.main:
            log.warning("%s at step %d; saved %s (continue with --resume)",
                        "interrupted" if interrupted else "stopped", state.step, run.last_pt)
    return stopped, interrupted, seconds


def train_step(run: Run, state: RunState, x: torch.Tensor, y: torch.Tensor, n_global: int) -> None:
    """One optimizer step on this rank's share ``x, y`` of a global batch of ``n_global`` samples."""
    cfg, device, opt, obj = run.cfg, run.device, run.opt, run.obj
    if x.device != device or cfg.channels_last:
        x, y = _to(x, device, cfg.channels_last), y.to(device, non_blocking=True)
    factor = lr_factor(cfg.schedule, state.step, run.total, warmup=cfg.warmup,
                       step_size=cfg.step_size, gamma=cfg.gamma)
    lr = cfg.lr * factor
    if lr != state.lr:
        state.lr = lr
        for g in opt.param_groups:  # each group's own peak (head_lr for new parameters) scaled
            g["lr"] = g.get("peak_lr", cfg.lr) * factor
    # forward, loss (this rank's mean, times its share of the global batch: exact under
    # DDP, where gradients are averaged over ranks), backward, step
    with _autocast(device, cfg.amp):
        out = model_outputs(run.net(x))
    # (a rank's share of a last global batch smaller than the world is empty: its loss is
    # the empty sum, 0, still in the graph for DDP's gradient all-reduce)
    loss = obj.loss(out, y) if len(x) else obj.loss_sum(out, y)
    with torch.no_grad():
        right = obj.correct(out, y)
    if run.read_every == 1:  # read now: a non-finite loss stops the run before its backward
        stat = (finite(loss.item(), state.step + 1), right.item(), len(x))
    else:
        stat = (loss.detach(), right, len(x))
    scale = len(x) * run.dist.world_size / n_global
    if scale != 1.0:
        loss = loss * scale
    opt.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(opt)
    else:
        loss.backward()
    if cfg.clip_grad:
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
    if cfg.grad_stats:
        state.add_grad_norms(_grad_norms(run.model, run.grad_names).cpu(), run.grad_index)
    if run.scaler is not None:
        run.scaler.step(opt)
        run.scaler.update()
    else:
        opt.step()
    state.step += 1
    state.pending.append(stat)
    if len(state.pending) >= run.read_every:
        state.read_pending()


def end_epoch(run: Run, state: RunState, epoch: int, t0: float) -> None:
    """Close the 0-based ``epoch``: its row (train sums over ranks, validation), the best so far,
    ``last.pt`` (``best.pt`` a copy of it if it is the best), then the hooks."""
    state.read_pending()
    sums = ddp.all_reduce_sum(state.partial().to(run.device), run.dist).cpu()
    train = {"loss": sums[0].item() / sums[2].item(), "acc": sums[1].item() / sums[2].item()}
    val = _evaluate(run, run.data.val)
    row = {"epoch": epoch + 1, "step": state.step, "lr": state.lr, "train_loss": train["loss"],
           "val_loss": val["loss"]}
    classify = run.obj.task != "regression"
    if classify:
        row.update(train_acc=train["acc"], val_acc=val["acc"])
    if run.cfg.grad_stats:  # the epoch's mean norms; its steps: fewer than per_epoch at a --steps end
        steps = state.step - epoch * run.per_epoch
        row.update(state.close_grad_norms(run.grad_names, run.grad_groups, steps))
    row["seconds"] = round(time.perf_counter() - t0, 3)
    state.history.append(row)
    state.reset_sums()
    if run.monitor == "val_acc":
        improved = state.keep_best(val["acc"], epoch + 1, tie_loss=val["loss"])
    else:
        improved = state.keep_best(-val["loss"], epoch + 1)
    if run.last_pt is not None and run.main:
        # best.pt: this epoch's last.pt, linked rather than written twice
        save_run(run, state, run.last_pt, epoch + 1, link=run.best_pt if improved else None)
    for hook in run.hooks:
        hook.on_epoch(state)


def _final(run: Run, split: TensorData) -> dict[str, Any]:
    """Loss, accuracy and the final metrics (``metrics.py``) of the model on ``split``.

    One pass; under DDP the ranks sum loss and accuracy as every epoch, and rank 0 then
    computes the metrics alone in a pass over the whole split (they need every sample).
    """
    keep = Outputs(run.obj)
    res: dict[str, Any] = _evaluate(run, split, collect=None if run.dist.enabled else keep)
    if run.main:
        if run.dist.enabled:
            _evaluate(run, split, dist=ddp.Dist(), collect=keep)
        res.update(keep.metrics(class_names(run.data.classes, run.obj.task, run.data.num_classes)))
    return res


def evaluate_best(run: Run, state: RunState) -> tuple[dict[str, Any], dict[str, Any]]:
    """Test the best-on-validation weights (``best.pt``) on the test and validation splits,
    then write the run's outputs: the test metrics into ``best.pt``, both splits' in
    ``metrics.json``, the deployable ``model.safetensors``, the figures.

    Returns:
        ``(test, val)``: loss, accuracy and the final metrics of each split (rank 0; the
        other ranks get loss and accuracy).
    """
    best_pt, run_dir = run.best_pt, run.run_dir
    ddp.barrier(run.dist)  # rank 0 has written best.pt
    if best_pt is not None and best_pt.exists():
        run.model.load_state_dict(load_checkpoint(best_pt, map_location=run.device)["model"])
    test, val = _final(run, run.data.test), _final(run, run.data.val)
    if run_dir is None or not run.main:
        return test, val
    runlog.write_final_metrics(run_dir, {"test": test, "val": val})
    if best_pt is not None and best_pt.exists():
        ck = load_checkpoint(best_pt)
        ck["test"] = test
        save_checkpoint(best_pt, {k: v for k, v in ck.items() if k != "format"})
    # The deployable weights: safetensors with the registry name and config,
    # so blockzoo.load / blockzoo export rebuild the model with no user code.
    with warnings.catch_warnings():  # a Python user's own module: weights only, as they expect
        warnings.simplefilter("ignore", UserWarning)
        save_weights(getattr(run.model, "module", run.model), run_dir / "model.safetensors",
                     metadata={SAMPLE_SHAPE_KEY: json.dumps(list(run.data.shape)),
                               DATA_KEY: json.dumps(jsonable(run.data.facts()))})
    if run.cfg.plots and state.history:
        title = f"{run.meta.get('model', type(run.model).__name__)} on {run.data.name}"
        metric = "acc" if run.obj.task != "regression" else "mse"
        runlog.plot_curves(run_dir, state.history, metric, title)
        if state.grad_history:
            runlog.write_grad_stats(run_dir, state.grad_history)
            runlog.plot_grad_flow(run_dir, state.grad_history, f"gradient flow: {title}")
        if "confusion" in test:
            from blockzoo.viz.confusion import plot_confusion

            plot_confusion(test["confusion"], test["classes"], run_dir / "confusion.png",
                           title=f"test confusion matrix: {title}")
    return test, val


def _non_finite(run: Run, e: Diverged) -> NonFiniteLossError:
    """The error a user sees for a diverged loss: its step and epoch, the last good checkpoint."""
    run.writer.wait(raise_error=False)  # the checkpoint in flight, if any, is the last good one
    last = run.last_pt
    where = f"last good checkpoint: {last}" if last and last.exists() else "no checkpoint written yet"
    return NonFiniteLossError(
        f"loss is {e.value} at step {e.step} (epoch {(e.step - 1) // run.per_epoch + 1}); "
        f"{where}; try a lower --lr (now {run.cfg.lr:g}) or --clip-grad")


def _stop(cfg: TrainConfig, step: int, total: int) -> bool:
    """``stop_after`` reached (as if the run were killed there), before the natural end."""
    return cfg.stop_after is not None and cfg.stop_after <= step < total
