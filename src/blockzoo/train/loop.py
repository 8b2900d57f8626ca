"""The training loop: setup, evaluate, schedule, loop — read top to bottom.

The tutorials' four steps (forward, loss, backward, optimizer step) with what a
real trainer adds around them: whole-tensor batches, a learning-rate schedule,
gradient clipping, evaluation every epoch, the best checkpoint kept, atomic
checkpoints and exact resume, a progress bar, per-layer gradient norms, mixed
precision, ``torch.compile`` and DDP.

Resume is exact: the data order of epoch e depends only on (seed, e), the
schedule only on the step, and the checkpoint holds the model, the optimizer, the
RNG state and the partial epoch's sums — so a run stopped after k steps and
resumed ends with the same weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockzoo.checks import ConfigError, FileFormatError
from blockzoo.data.base import Data, TensorData, TensorLoader
from blockzoo.io import mismatch
from blockzoo.io import save as save_weights
from blockzoo.train import ddp, runlog
from blockzoo.train.checkpoint import (
    CheckpointWriter,
    check_run_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from blockzoo.train.config import TrainConfig
from blockzoo.train.optim import build_optimizer, check_optimizer, check_schedule, lr_factor
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
    test: dict[str, float]
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
) -> dict[str, float]:
    """Mean loss and accuracy (classification) of ``model`` on ``split``, summed over ranks."""
    dist = dist or ddp.Dist()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count
    loader = TensorLoader(split, batch_size, rank=dist.rank, world_size=dist.world_size)
    for x, y, _ in loader.batches():
        if len(x) == 0:
            continue
        x, y = _to(x, device, channels_last), y.to(device)
        with _autocast(device, amp):
            out = model_outputs(model(x))
        sums[0] += obj.loss_sum(out, y).double()
        sums[1] += obj.correct(out, y).double()
        sums[2] += len(x)
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
    """``fit`` after the config is settled and the run folder claimed."""
    obj = objective(data.task, output, data.num_classes)

    # ------------------------------------------------------------------ setup
    device = resolve_device(cfg.device)
    dist = ddp.setup(device)
    main = dist.main
    torch.manual_seed(cfg.seed)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" and device.type == "cuda" else None
    loader = TensorLoader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                          rank=dist.rank, world_size=dist.world_size)
    per_epoch = len(loader)
    total = cfg.steps or cfg.epochs * per_epoch
    epochs = math.ceil(total / per_epoch)
    grad_names = [n for n, p in model.named_parameters() if p.requires_grad]

    step, history, grad_history = 0, [], []
    best_val: float | None = None
    best_epoch = 0
    # This epoch's training loss sum, correct count and sample count: host floats added
    # in step order and stored in checkpoints, so a resumed epoch sums the same way. On
    # the CPU each step's loss is read at once (about a microsecond), so a non-finite
    # loss stops the run before its backward; on an accelerator each read is a sync that
    # would stall the kernel queue, so finished steps' values wait in `pending` as
    # tensors and are read every `read_every` steps.
    run_loss, run_correct, run_count = 0.0, 0.0, 0
    read_every = _read_every(device)
    pending: list[tuple[Any, Any, int]] = []  # per finished step: (mean loss, right, samples)
    lr: float | None = None

    def sums_now() -> torch.Tensor:
        return torch.tensor([run_loss, run_correct, float(run_count)], dtype=torch.float64)

    def check_finite(value: float, at_step: int) -> None:
        if not math.isfinite(value):
            writer.wait(raise_error=False)  # the checkpoint in flight, if any, is the last good one
            where = f"last good checkpoint: {last_pt}" if last_pt and last_pt.exists() else (
                "no checkpoint written yet")
            raise NonFiniteLossError(
                f"loss is {value} at step {at_step} (epoch {(at_step - 1) // per_epoch + 1}); "
                f"{where}; try a lower --lr (now {cfg.lr:g}) or --clip-grad")

    def read_pending() -> None:
        """Add the finished steps in ``pending`` to the epoch's sums (in step order)."""
        nonlocal run_loss, run_correct, run_count
        if not pending:
            return
        losses, rights = [p[0] for p in pending], [p[1] for p in pending]
        if isinstance(losses[0], torch.Tensor):  # one sync for all of them
            losses, rights = torch.stack(losses).tolist(), torch.stack(rights).tolist()
        first = step - len(pending) + 1  # the 1-based step of pending[0]
        for i, (v, r, (_, _, n)) in enumerate(zip(losses, rights, pending, strict=True)):
            check_finite(v, first + i)
            run_loss += v * n
            run_correct += r
            run_count += n
        pending.clear()

    grad_sum = torch.zeros(len(grad_names))
    last_pt = run_dir / "last.pt" if run_dir else None
    best_pt = run_dir / "best.pt" if run_dir else None
    if cfg.resume:
        if last_pt is None or not last_pt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_pt}")
        ck = check_run_checkpoint(load_checkpoint(last_pt, map_location=device), last_pt)
        _check_resume(ck, cfg, model, last_pt)
        model.load_state_dict(ck["model"])
        try:
            opt.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError) as e:
            raise FileFormatError(f"--resume: the optimizer state in {last_pt} does not fit --optimizer "
                                  f"{cfg.optimizer} ({e})") from None
        step, history, grad_history = ck["step"], list(ck["history"]), list(ck.get("grad_history", []))
        best_val, best_epoch = ck["best_val"], ck["best_epoch"]
        run_loss, run_correct = ck["partial"][0].item(), ck["partial"][1].item()
        run_count = int(ck["partial"][2].item())
        grad_sum = ck["grad_sum"].float()
        torch.set_rng_state(ck["rng"].cpu())
        if device.type == "cuda" and "cuda_rng" in ck:
            torch.cuda.set_rng_state(ck["cuda_rng"].cpu(), device)
        if main:
            log.info("resumed from %s at step %d", last_pt, step)

    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    meta = dict(meta or {})
    if run_dir is not None and main:
        runlog.write_config(run_dir, cfg.to_dict(), {"data_info": data.describe(), **_jsonable(meta)})

    writer = CheckpointWriter()  # serialises now, writes and fsyncs while training goes on

    def checkpoint(path: Path, epoch: int, link: Path | None = None) -> None:
        """Save the run's state to ``path`` (then make ``link`` a copy of it), in the background."""
        if not main:
            return
        ck = dict(model=model.state_dict(), optimizer=opt.state_dict(), step=step, epoch=epoch,
                  history=history, grad_history=grad_history, best_val=best_val,
                  best_epoch=best_epoch, partial=sums_now(), grad_sum=grad_sum.clone(),
                  rng=torch.get_rng_state(), config=cfg.to_dict(), meta=_jsonable(meta),
                  data_stats=dict(data.stats), task=data.task, output=obj.output,
                  num_classes=data.num_classes, in_chans=data.in_chans)
        if device.type == "cuda":
            ck["cuda_rng"] = torch.cuda.get_rng_state(device)
        writer.save(path, ck, link=link)

    show_bar = main and not cfg.quiet and sys.stderr.isatty()
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, leave=False)
    if main and not cfg.quiet:
        n_params = sum(p.numel() for p in model.parameters())
        log.info("training %s params on %s: %d epochs x %d steps, %s on %s%s", f"{n_params:,}",
                 data.describe(), epochs, per_epoch, cfg.optimizer, device,
                 f", {dist.world_size} processes" if dist.enabled else "")

    # ------------------------------------------------------------------ loop
    t0 = time.perf_counter()
    stopped = interrupted = False
    try:
        while step < total:
            epoch = step // per_epoch
            loader.set_epoch(epoch)
            model.train()

            for x, y, n_global in loader.batches(start=step - epoch * per_epoch):
                if step >= total:
                    break
                if x.device != device or cfg.channels_last:
                    x, y = _to(x, device, cfg.channels_last), y.to(device, non_blocking=True)
                new_lr = cfg.lr * lr_factor(cfg.schedule, step, total, warmup=cfg.warmup,
                                            step_size=cfg.step_size, gamma=cfg.gamma)
                if new_lr != lr:
                    lr = new_lr
                    for g in opt.param_groups:
                        g["lr"] = lr
                # forward, loss (this rank's mean, times its share of the global batch:
                # exact under DDP, where gradients are averaged over ranks), backward, step
                with _autocast(device, cfg.amp):
                    out = model_outputs(net(x))
                # (a rank's share of a last global batch smaller than the world is empty: its
                # loss is the empty sum, 0, still in the graph for DDP's gradient all-reduce)
                loss = obj.loss(out, y) if len(x) else obj.loss_sum(out, y)
                with torch.no_grad():
                    right = obj.correct(out, y)
                if read_every == 1:
                    value = loss.item()
                    check_finite(value, step + 1)
                    stat = (value, right.item(), len(x))
                else:
                    stat = (loss.detach(), right, len(x))
                scale = len(x) * dist.world_size / n_global
                if scale != 1.0:
                    loss = loss * scale
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                if cfg.grad_stats:
                    grad_sum += _grad_norms(model, grad_names).cpu()
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                step += 1
                pending.append(stat)
                if len(pending) >= read_every:
                    read_pending()
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0 or step == total:
                        read_pending()
                        live = {"loss": f"{run_loss / max(1, run_count):.4f}"}
                        if obj.task != "regression":
                            live["acc"] = f"{run_correct / max(1, run_count):.3f}"
                        bar.set_postfix(epoch=epoch + 1, **live)
                if _stop(cfg, step, total) and step % per_epoch:
                    stopped = True
                    break
            if stopped:
                break
            # ------------------------------------------------ end of epoch: evaluate, keep best
            read_pending()
            sums = ddp.all_reduce_sum(sums_now().to(device), dist).cpu()
            train = {"loss": sums[0].item() / sums[2].item(), "acc": sums[1].item() / sums[2].item()}
            val = evaluate(model, data.val, obj, batch_size=cfg.eval_batch, device=device, dist=dist,
                           amp=cfg.amp, channels_last=cfg.channels_last)
            row = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": train["loss"],
                   "val_loss": val["loss"]}
            if obj.task != "regression":
                row.update(train_acc=train["acc"], val_acc=val["acc"])
            row["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(row)
            if cfg.grad_stats:
                grad_history.append({n: (g / per_epoch).item() for n, g in zip(grad_names, grad_sum,
                                                                               strict=True)})
                grad_sum.zero_()
            run_loss, run_correct, run_count = 0.0, 0.0, 0
            score = val["acc"] if obj.task != "regression" else -val["loss"]
            improved = best_val is None or score > best_val
            if improved:
                best_val, best_epoch = score, epoch + 1
            if last_pt is not None and main:
                # best.pt: this epoch's last.pt, linked rather than written twice
                checkpoint(last_pt, epoch + 1, link=best_pt if improved else None)
            if run_dir is not None and main:
                runlog.write_metrics(run_dir, history)
            if main and not cfg.quiet:
                msg = (f"epoch {epoch + 1}/{epochs}  train loss {train['loss']:.4f}  "
                       f"val loss {val['loss']:.4f}")
                if obj.task != "regression":
                    msg += f"  val acc {val['acc']:.4f}"
                (bar.write if bar is not None else log.info)(msg)
            if _stop(cfg, step, total):
                stopped = True
                break
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        writer.wait(raise_error=False)  # leave the files whole before the error propagates
        raise
    finally:
        if bar is not None:
            bar.close()
    writer.wait()
    seconds = time.perf_counter() - t0
    if stopped or interrupted:
        read_pending()  # the finished steps' sums belong in the checkpoint
    if (stopped or interrupted) and last_pt is not None:
        checkpoint(last_pt, step // per_epoch)
        writer.wait()
        if main:
            log.warning("%s at step %d; saved %s (continue with --resume)",
                        "interrupted" if interrupted else "stopped", step, last_pt)

    # ------------------------------------------------------------------ test the best weights
    test: dict[str, float] = {}
    if not (stopped or interrupted):
        ddp.barrier(dist)  # rank 0 has written best.pt
        if best_pt is not None and best_pt.exists():
            model.load_state_dict(load_checkpoint(best_pt, map_location=device)["model"])
        test = evaluate(model, data.test, obj, batch_size=cfg.eval_batch, device=device, dist=dist,
                        amp=cfg.amp, channels_last=cfg.channels_last)
        if run_dir is not None and main:
            if best_pt is not None and best_pt.exists():
                ck = load_checkpoint(best_pt)
                ck["test"] = test
                save_checkpoint(best_pt, {k: v for k, v in ck.items() if k != "format"})
            # The deployable weights: safetensors with the registry name and config,
            # so blockzoo.load / blockzoo export rebuild the model with no user code.
            save_weights(getattr(model, "module", model), run_dir / "model.safetensors")
            if cfg.plots and history:
                title = f"{meta.get('model', type(model).__name__)} on {data.name}"
                runlog.plot_curves(run_dir, history, "acc" if obj.task != "regression" else "mse", title)
                if grad_history:
                    runlog.write_grad_stats(run_dir, grad_history)
                    runlog.plot_grad_flow(run_dir, grad_history, f"gradient flow: {title}")
    return FitResult(model=model, history=history, test=test, best_epoch=best_epoch,
                     best_val=best_val if obj.task != "regression" or best_val is None else -best_val,
                     steps=step, seconds=seconds, metric=data.metric, run_dir=run_dir,
                     stopped=stopped, interrupted=interrupted, grad_history=grad_history,
                     data_name=data.name, baselines=dict(data.baselines))


def _check_resume(ck: Mapping[str, Any], cfg: TrainConfig, model: nn.Module, path: Path) -> None:
    """Refuse a checkpoint of another model, optimizer or data before loading anything from it."""
    stored = ck["config"]
    for key in ("model", "data", "optimizer"):
        if stored.get(key) != getattr(cfg, key):
            raise ConfigError(f"--resume: {path} was trained with --{key} {stored.get(key)}; this run asks "
                              f"for --{key} {getattr(cfg, key)} (use --name for a new run)")
    problem = mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()},
                       {k: tuple(v.shape) for k, v in ck["model"].items()},
                       f"--resume: {path} does not fit this run's model")
    if problem:
        raise FileFormatError(problem)


def _stop(cfg: TrainConfig, step: int, total: int) -> bool:
    """``stop_after`` reached (as if the run were killed there), before the natural end."""
    return cfg.stop_after is not None and cfg.stop_after <= step < total


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
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
