"""The jobs behind ``blockzoo train``, ``eval`` and ``predict``: config in, results out.

``prepare`` turns a config into (model, data in the model's input kind, meta),
checking before anything trains that the model exists, that its input kind and
shape fit the data, and that its output fits the task — each failure is one
``ValueError`` line. ``train`` then runs ``fit``; ``evaluate_checkpoint`` and
``predict`` rebuild a trained model from a checkpoint alone.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blockzoo.checks import ShapeError
from blockzoo.data.base import Data, load_data, view_tensor
from blockzoo.registry import _input_arg, create_model, spec
from blockzoo.train.checkpoint import load_checkpoint
from blockzoo.train.config import TrainConfig
from blockzoo.train.loop import FitResult, evaluate, fit, resolve_device
from blockzoo.train.task import model_outputs, objective

__all__ = ["evaluate_checkpoint", "predict", "prepare", "train"]


def _callable_model(target: str) -> tuple[Callable[..., nn.Module], str, str | None]:
    """``module:callable`` -> (builder, output kind, input kind or None)."""
    mod_name, _, attr = target.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model {target!r}: cannot import {attr!r} from {mod_name!r} ({e})") from None
    return fn, getattr(fn, "output", "logits"), getattr(fn, "input", None)


# Constructor arguments that fix the input size, filled from the data when the user does
# not give them (a patch-based image model accepts only the size it was built for).
_SIZE_ARGS = {"image": ("image_size", "img_size"), "sequence": ("seq_len", "max_len"),
              "tokens": ("seq_len", "num_tokens", "max_len")}


def _builder(name: str) -> Callable[..., nn.Module]:
    return _callable_model(name)[0] if ":" in name else spec(name).builder


def _size_args(builder: Callable[..., nn.Module], data: Data) -> dict[str, Any]:
    params = inspect.signature(builder).parameters
    shape = data.shape
    size: Any = None
    if data.input == "image":
        size = shape[1] if shape[1] == shape[2] else (shape[1], shape[2])
    elif data.input in ("sequence", "tokens"):
        size = shape[0]
    return {a: size for a in _SIZE_ARGS.get(data.input, ()) if a in params}


def build_model(meta: Mapping[str, Any]) -> nn.Module:
    """Construct the model described by ``meta`` (name, args, outputs, in_chans, ids)."""
    name, args = meta["model"], dict(meta.get("model_args", {}))
    k, c = meta["num_outputs"], meta["in_chans"]
    fn = _builder(name)
    params = inspect.signature(fn).parameters
    if meta.get("ids") and "vocab_size" in params:
        # token ids: the vocabulary is the input size; a model that also takes real
        # features (input_size=...) is told it gets none
        args.setdefault("vocab_size", c)
        arg = _input_arg(fn)
        if arg != "vocab_size" and arg in params:
            args.setdefault(arg, None)
        c_arg: dict[str, Any] = {}
    else:
        c_arg = {"in_chans": c}
    try:
        if ":" in name:
            if "num_classes" in params:
                args.setdefault("num_classes", k)
            arg = _input_arg(fn)
            if arg in params and c_arg:
                args.setdefault(arg, c)
            return fn(**args)
        return create_model(name, num_classes=k, **c_arg, **args)
    except TypeError as e:
        raise ValueError(f"model {name!r}: bad arguments ({e})") from None


def prepare(cfg: TrainConfig) -> tuple[nn.Module, Data, dict[str, Any]]:
    """Load the data, build the model and check they fit; one clear error if not."""
    if ":" in cfg.model:
        _, output, kind = _callable_model(cfg.model)
        wants_ids = None
    else:
        s = spec(cfg.model)  # unknown names list close matches
        if s.family != "model":
            create_model(cfg.model)  # raises the "is a <family> block, not a model" error
        output, kind = s.output, s.input
        params = inspect.signature(s.builder).parameters
        # a sequence model embeds ids if its input is vocab_size, or may (vocab_size
        # beside input_size: either); None = either
        wants_ids = None if "vocab_size" in params and _input_arg(s.builder) != "vocab_size" else (
            kind == "sequence" and _input_arg(s.builder) == "vocab_size")
    native = load_data(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, data_dir=cfg.data_dir,
                       quick=cfg.quick)
    kind = kind or native.input
    try:
        data = native.view(kind)
    except ValueError as e:
        raise ValueError(f"model {cfg.model!r} takes {kind} input, which data {cfg.data!r} cannot give: "
                         f"{e}") from None
    if wants_ids is not None and wants_ids != data.ids:
        has = "integer token ids" if data.ids else "real-valued features"
        raise ValueError(f"model {cfg.model!r} {'embeds token ids' if wants_ids else 'takes real features'}"
                         f" but data {cfg.data!r} holds {has}")
    obj = objective(data.task, output, data.num_classes)
    model_args = {**_size_args(_builder(cfg.model), data), **cfg.model_args}
    meta = dict(model=cfg.model, model_args=model_args, output=obj.output, ids=data.ids,
                num_outputs=obj.num_outputs, in_chans=data.in_chans, input=data.input,
                native_input=native.input, native_shape=list(native.shape),
                classes=list(native.classes) if native.classes else None, task=data.task)
    torch.manual_seed(cfg.seed)
    model = build_model(meta)
    _dry_run(model, data, obj.num_outputs, cfg)
    return model, data, meta


def _dry_run(model: nn.Module, data: Data, k: int, cfg: TrainConfig) -> None:
    """Feed two validation samples; turn any failure into one config-error line."""
    x = data.val.x[:2]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model_outputs(model(x))
    except (ShapeError, RuntimeError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model {cfg.model!r} does not fit data {cfg.data!r} "
                         f"(input {tuple(x.shape)}): {first}") from None
    finally:
        model.train(was)
    steps = tuple(data.val.y.shape[1:]) if data.task == "classification" else ()
    want = (len(x), *steps, k)  # per-step targets (B, T) need scores (B, T, K)
    if tuple(out.shape) != want:
        raise ValueError(f"model {cfg.model!r} gives output {tuple(out.shape)} for input {tuple(x.shape)}; "
                         f"data {cfg.data!r} ({data.task}) needs {want}")


def train(cfg: TrainConfig | Mapping[str, Any]) -> FitResult:
    """``blockzoo train``: prepare, then ``fit`` into ``runs/<name>/``."""
    cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
    model, data, meta = prepare(cfg)
    run_dir = Path(cfg.runs_dir) / cfg.run_name
    return fit(model, data, cfg, output=meta["output"], run_dir=run_dir, meta=meta)


def load_trained(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model stored in a checkpoint, in eval mode, and the checkpoint dict."""
    ck = load_checkpoint(path)
    model = build_model(ck["meta"])
    model.load_state_dict(ck["model"])
    return model.eval(), ck


def evaluate_checkpoint(path: str | Path, split: str = "test", *, device: str = "auto",
                        data_dir: str | None = None) -> dict[str, Any]:
    """Rebuild the run's data and model from a checkpoint and measure ``split``."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split {split!r} must be train, val or test")
    model, ck = load_trained(path)
    cfg = TrainConfig.from_dict(ck["config"])
    data = load_data(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction,
                     data_dir=data_dir or cfg.data_dir, quick=cfg.quick).view(ck["meta"]["input"])
    obj = objective(data.task, ck["output"], data.num_classes)
    dev = resolve_device(device)
    model.to(dev)
    res = evaluate(model, getattr(data, split), obj, batch_size=cfg.eval_batch, device=dev)
    return {"split": split, **res, "data": data.name, "model": ck["meta"]["model"],
            "epoch": ck["epoch"], "step": ck["step"], "stored_test": ck.get("test")}


def _read_inputs(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"no input file {str(path)!r}")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return f["x"] if "x" in f.files else f[f.files[0]]
    if path.suffix in (".csv", ".txt"):
        text = path.read_text().strip().splitlines()
        rows = [r for r in text if r.strip()]
        try:
            float(rows[0].split(",")[0])
        except ValueError:
            rows = rows[1:]  # header
        return np.asarray([[float(v) for v in r.split(",")] for r in rows], dtype=np.float32)
    raise ValueError(f"input file {path}: use .npy, .npz or .csv (one sample per row)")


def predict(checkpoint: str | Path, inputs: str | Path | np.ndarray) -> list[dict[str, Any]]:
    """Run a trained checkpoint on new inputs (the data set's native layout, one per row).

    Inputs are in the data set's own scale before standardisation (e.g. pixels in
    [0, 1] for MNIST, raw feature values for a CSV) and may be flattened per sample;
    the training statistics stored in the checkpoint are applied here. Returns one dict per sample: prediction
    (class name or value) and confidence.
    """
    model, ck = load_trained(checkpoint)
    meta = ck["meta"]
    arr = _read_inputs(Path(inputs)) if not isinstance(inputs, np.ndarray) else inputs
    shape = tuple(meta["native_shape"])
    x = torch.as_tensor(np.asarray(arr, dtype=np.float32))
    if x.dim() == len(shape):  # one sample without a batch dim
        x = x.unsqueeze(0)
    if tuple(x.shape[1:]) != shape:
        if x[0].numel() != int(np.prod(shape)):
            raise ValueError(f"inputs of shape {tuple(x.shape)} do not match the model's samples {shape}")
        x = x.reshape(len(x), *shape)
    stats = ck.get("data_stats") or {}
    if "mean" in stats:
        x = (x - stats["mean"]) / stats["std"]
    x = view_tensor(x, meta["native_input"], meta["input"])
    obj = objective(meta["task"], ck["output"], ck["num_classes"])
    with torch.no_grad():
        pred, conf = obj.predict(model_outputs(model(x)))
    classes = meta.get("classes")
    out = []
    for i in range(len(x)):
        if obj.task == "regression":
            value: Any = [round(v, 6) for v in pred[i].tolist()]
            out.append({"index": i, "prediction": value[0] if len(value) == 1 else value})
        else:
            c = int(pred[i])
            out.append({"index": i, "prediction": classes[c] if classes else c,
                        "confidence": round(float(conf[i]), 4)})
    return out
