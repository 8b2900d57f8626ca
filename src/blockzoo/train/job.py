"""The jobs behind ``blockzoo train``, ``eval`` and ``predict``: config in, results out.

``prepare`` turns a config into (model, data in the model's input kind, meta),
checking before anything trains that the model exists, that its input kind and
shape fit the data, and that its output fits the task — each failure is one
``ValueError`` line. ``train`` then runs ``fit``; ``evaluate_checkpoint`` and
``predict`` rebuild a trained model from a checkpoint alone.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blockzoo.attach import reattach
from blockzoo.checks import BlockzooError, ConfigError, DataError, FileFormatError, ShapeError
from blockzoo.data.base import Data, load_data, view_tensor
from blockzoo.data.table_rows import encode_rows
from blockzoo.data.textfile import F32_MAX, cell_kind, read_rows
from blockzoo.io import BUILDER_ATTR, build_checked, import_target, mismatch, shapes_of
from blockzoo.registry import model_kwargs, spec
from blockzoo.train import finetune
from blockzoo.train.checkpoint import check_run_checkpoint, load_checkpoint
from blockzoo.train.config import TrainConfig
from blockzoo.train.loop import FitResult, evaluate, fit, resolve_device
from blockzoo.train.metrics import Outputs, class_names
from blockzoo.train.task import model_outputs, objective

__all__ = ["choose_model", "evaluate_checkpoint", "predict", "prepare", "train"]

log = logging.getLogger("blockzoo.train")


def is_import_target(name: str) -> bool:
    """``module:callable`` or ``path/to/file.py:callable``: a user's own model, not a registry name."""
    return ":" in name


def _callable_model(target: str) -> tuple[Callable[..., nn.Module], str, str | None]:
    """``module:callable`` or ``path/to/file.py:callable`` -> (builder, output kind, input kind or None).

    Imports user code: called only with a target the user named (command line or
    Python), never with one read from a file.
    """
    fn = import_target(target)
    return fn, getattr(fn, "output", "logits"), getattr(fn, "input", None)


@dataclass(frozen=True)
class _Conventions:
    """Which constructor arguments take the data's facts: width, size, vocabulary, classes."""

    width_arg: str | None
    size_arg: str | None
    ids_arg: str | None
    num_classes: bool


# A user's own builder has no registry entry: its arguments are found by name, as the
# README states (in_chans / in_features / input_size / vocab_size, num_classes,
# image_size / img_size / seq_len / max_len).
_USER_WIDTH_ARGS = ("in_chans", "in_features", "input_size", "vocab_size")
_USER_SIZE_ARGS = ("image_size", "img_size", "seq_len", "max_len")


def _conventions(name: str, fn: Callable[..., nn.Module] | None = None) -> _Conventions:
    """The registry's declaration for a registered model; the naming convention for a user's."""
    if not is_import_target(name):
        s = spec(name)
        return _Conventions(s.width_arg, s.size_arg, s.ids_arg, True)
    params = inspect.signature(fn).parameters if fn is not None else {}
    width = next((a for a in _USER_WIDTH_ARGS if a in params), None)
    return _Conventions(width, next((a for a in _USER_SIZE_ARGS if a in params), None),
                        "vocab_size" if "vocab_size" in params and width != "vocab_size" else None,
                        "num_classes" in params)


def _size_args(conv: _Conventions, data: Data) -> dict[str, Any]:
    """The size argument set from the data (a patch-based model accepts only its own size)."""
    shape = data.shape
    if conv.size_arg is None or data.input not in ("image", "sequence", "tokens"):
        return {}
    size = shape[0] if data.input != "image" else (shape[1] if shape[1] == shape[2] else (shape[1], shape[2]))
    return {conv.size_arg: size}


def _model_kwargs(conv: _Conventions, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments: the stored ``model_args`` with the data's width and classes."""
    args, c = dict(meta.get("model_args", {})), meta["in_chans"]
    if meta.get("ids") and conv.ids_arg:
        # token ids: the vocabulary is the input size; the real-feature width is None
        args.setdefault(conv.ids_arg, c)
        if conv.width_arg:
            args.setdefault(conv.width_arg, None)
    elif conv.width_arg:
        args[conv.width_arg] = c
    if conv.num_classes:
        args["num_classes"] = meta["num_outputs"]
    return args


def _reattach(meta: Mapping[str, Any], source: str) -> Callable[[nn.Module], nn.Module] | None:
    """The run's attention blocks (``--attention``), attached again to a rebuilt model; None if none."""
    if not meta.get("attached"):
        return None
    shape = meta.get("sample_shape")
    if not (isinstance(shape, list) and all(isinstance(v, int) and v > 0 for v in shape)):
        raise FileFormatError(f"{source}: checkpoint meta 'sample_shape' must be a list of sizes, "
                              f"got {shape!r}")

    def adjust(model: nn.Module) -> nn.Module:
        return reattach(model, meta["attached"], example_input=torch.zeros(2, *shape), source=source)

    return adjust


def build_model(meta: Mapping[str, Any], *, builder: str | Callable[..., nn.Module] | None = None,
                shapes: Mapping[str, tuple[int, ...]] | None = None, source: str = "model") -> nn.Module:
    """Construct the model described by ``meta`` (name, args, outputs, in_chans, ids).

    A registered name is built from its registry entry; with ``shapes`` (a file's
    tensor shapes, when ``meta`` comes from a file) only after the config is checked
    against them on the meta device. A user's model (``module:callable``) is built
    only from ``builder``, which the user gives: a file's metadata never causes an
    import. ``builder`` may be the same target string or the callable itself.
    """
    name = meta["model"]
    if not isinstance(name, str):
        raise FileFormatError(f"{source}: the stored model name must be a string, got {type(name).__name__}")
    if not is_import_target(name):
        if builder is not None and builder != name:
            raise ConfigError(f"{source} holds a {name!r} model; you asked for {builder!r}")
        kwargs = _model_kwargs(_conventions(name), meta)
        adjust = _reattach(meta, source)
        try:
            if shapes is not None:
                return build_checked(name, kwargs, shapes, source, adjust=adjust)
            model = spec(name).build(**kwargs)
            return adjust(model) if adjust else model
        except TypeError as e:
            raise ConfigError(f"model {name!r}: bad arguments ({e})") from None
    if builder is None:
        raise ConfigError(
            f"{source} was trained with your own model {name!r}; blockzoo never imports code named by "
            f"a file: pass the builder yourself (blockzoo ... --model {name}, or builder= in Python)")
    if isinstance(builder, str):
        if builder != name:
            raise ConfigError(f"{source} was trained with model {name!r}; you passed --model {builder!r}")
        fn = _callable_model(builder)[0]
    else:
        fn = builder
    kwargs = _model_kwargs(_conventions(name, fn), meta)
    try:
        model = fn(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model {name!r}: bad arguments ({e})") from None
    setattr(model, BUILDER_ATTR, (name, kwargs))  # recorded by blockzoo.save, never imported from
    if shapes is not None:
        problem = mismatch(shapes_of(model), shapes, f"{source} does not fit the model {name!r} builds")
        if problem:
            raise FileFormatError(problem)
    return model


def _table_options(cfg: TrainConfig) -> dict[str, Any]:
    """The options of a table (``csv:``/``tsv:`` data); a registered data set refuses those set."""
    return dict(target=cfg.target, features=cfg.features, task=cfg.task, fill_missing=cfg.fill_missing)


def _load(cfg: TrainConfig) -> Data:
    return load_data(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, data_dir=cfg.data_dir,
                     quick=cfg.quick, file_options=_table_options(cfg))


def prepare(cfg: TrainConfig, native: Data | None = None) -> tuple[nn.Module, Data, dict[str, Any]]:
    """Load the data (unless given), build the model and check they fit; one clear error if not."""
    if cfg.model is None:
        raise ConfigError("prepare: no model named (blockzoo.train.train chooses one from the data)")
    if is_import_target(cfg.model):
        fn, output, kind = _callable_model(cfg.model)
        conv, wants_ids = _conventions(cfg.model, fn), None
    else:
        s = spec(cfg.model)  # unknown names list close matches
        if s.family != "model":
            model_kwargs(cfg.model)  # raises the "is a <family> block, not a model" error
        output, kind, conv = s.output, s.input, _conventions(cfg.model)
        # a sequence model embeds ids if its width is a vocabulary, or may (ids_arg beside
        # a feature width: either); None = either
        wants_ids = None if conv.ids_arg else (kind == "sequence" and conv.width_arg == "vocab_size")
    native = native or _load(cfg)
    kind = kind or native.input
    try:
        data = native.view(kind)
    except ValueError as e:
        raise ConfigError(f"model {cfg.model!r} takes {kind} input, which data {cfg.data!r} cannot give: "
                         f"{e}") from None
    if wants_ids is not None and wants_ids != data.ids:
        has = "integer token ids" if data.ids else "real-valued features"
        raise ConfigError(f"model {cfg.model!r} {'embeds token ids' if wants_ids else 'takes real features'}"
                         f" but data {cfg.data!r} holds {has}")
    obj = objective(data.task, output, data.num_classes)
    # the sizes a checkpoint fixes beat the data's (a ViT keeps its 224 grid and resizes it);
    # its tensors are read once, for those sizes and for loading
    weights = finetune.read_weights(cfg)
    model_args = {**_size_args(conv, data), **finetune.weights_args(cfg, weights), **cfg.model_args}
    meta = dict(model=cfg.model, model_args=model_args, output=obj.output, ids=data.ids,
                num_outputs=obj.num_outputs, in_chans=data.in_chans, input=data.input,
                native_input=native.input, native_shape=list(native.shape),
                classes=list(native.classes) if native.classes else None, task=data.task)
    torch.manual_seed(cfg.seed)
    model = build_model(meta, builder=cfg.model if is_import_target(cfg.model) else None)
    model = finetune.apply(model, cfg, meta, tuple(data.shape), weights)
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
        raise ConfigError(f"model {cfg.model!r} does not fit data {cfg.data!r} "
                         f"(input {tuple(x.shape)}): {first}") from None
    finally:
        model.train(was)
    steps = tuple(data.val.y.shape[1:]) if data.task == "classification" else ()
    want = (len(x), *steps, k)  # per-step targets (B, T) need scores (B, T, K)
    if tuple(out.shape) != want:
        raise ConfigError(f"model {cfg.model!r} gives output {tuple(out.shape)} for input {tuple(x.shape)}; "
                         f"data {cfg.data!r} ({data.task}) needs {want}")


def choose_model(native: Data) -> tuple[str, str]:
    """The registered model ``blockzoo train`` uses for ``native`` when none is named, and why."""
    if native.name == "mnist1d":
        return "mnist1d_cnn", "blockzoo's default for MNIST-1D"
    text = native.stats.get("text")
    if isinstance(text, Mapping):  # ``text:`` data: sentences, encoded as the run asked
        if native.ids:
            return "gru_classifier", (f"sentences as word ids ({native.in_chans} with padding and other, "
                                      f"up to {native.shape[0]} words): a GRU classifier over learned word "
                                      "embeddings")
        what = "letter-trigram" if text.get("encoder") == "trigram" else "bag-of-words"
        return "tabular_mlp", (f"sentences as {what} count vectors ({native.in_chans} features): an MLP with "
                               "two hidden layers of 64")
    per_step = native.task == "classification" and native.train.y.dim() > 1
    if native.ids or native.input in ("sequence", "tokens"):
        kind = "tagger" if per_step else "classifier"
        what = "token ids" if native.ids else f"{native.input}s of features"
        return f"gru_{kind}", f"{what}: a GRU {kind}"
    if native.input == "image":
        return "cifar_cnn", "images: the three-conv CIFAR CNN (any image size)"
    return "tabular_mlp", "feature vectors: an MLP with two hidden layers of 64"


def train(cfg: TrainConfig | Mapping[str, Any]) -> FitResult:
    """``blockzoo train``: prepare, then ``fit`` into ``runs/<name>/``.

    With no model named, one that fits the data's input kind is chosen and logged.
    """
    cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
    native = None
    if cfg.model is None:
        native = _load(cfg)
        name, why = choose_model(native)
        log.info("model: %s (%s); name another with --model", name, why)
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "model": name})
    model, data, meta = prepare(cfg, native=native)
    run_dir = Path(cfg.runs_dir) / cfg.run_name
    return fit(model, data, cfg, output=meta["output"], run_dir=run_dir, meta=meta)


def load_trained(path: str | Path, *, builder: str | Callable[..., nn.Module] | None = None,
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """The model stored in a checkpoint, in eval mode, and the checkpoint dict.

    ``builder``: the user's own model (``module:callable`` or the callable) when the run
    trained one; never taken from the file.
    """
    ck = check_run_checkpoint(load_checkpoint(path), path)
    meta = ck["meta"]
    for key, kind in (("model", str), ("num_outputs", int), ("in_chans", int), ("input", str),
                      ("native_input", str), ("native_shape", list), ("task", str)):
        if not isinstance(meta.get(key), kind):
            raise FileFormatError(f"{path}: checkpoint meta {key!r} is missing or not {kind.__name__}")
    if not isinstance(meta.get("model_args", {}), dict):
        raise FileFormatError(f"{path}: checkpoint meta 'model_args' must be a mapping")
    shapes = shapes_of(ck["model"])
    model = build_model(meta, builder=builder, shapes=shapes, source=str(path))
    model.load_state_dict(ck["model"])
    return model.eval(), ck


def evaluate_checkpoint(path: str | Path, split: str = "test", *, device: str = "auto",
                        data_dir: str | None = None,
                        builder: str | Callable[..., nn.Module] | None = None) -> dict[str, Any]:
    """Rebuild the run's data and model from a checkpoint and measure ``split``: loss, accuracy
    and the final metrics of ``metrics.py`` (per class under the data's class names).

    The data must still give samples of the shape (and classes) stored at training
    time: a CSV that has since lost a column is refused, not silently mis-read.
    """
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split {split!r} must be train, val or test")
    model, ck = load_trained(path, builder=builder)
    meta = ck["meta"]
    try:
        cfg = TrainConfig.from_dict(ck["config"])
    except (TypeError, ValueError) as e:
        raise FileFormatError(f"{path}: the stored training config is not valid ({e})") from None
    native = load_data(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction,
                       data_dir=data_dir or cfg.data_dir, quick=cfg.quick, file_options=_table_options(cfg))
    if list(native.shape) != list(meta["native_shape"]) or native.num_classes != ck.get("num_classes"):
        raise DataError(
            f"data {cfg.data!r} now gives samples of shape {tuple(native.shape)} with "
            f"{native.num_classes} outputs; {path} was trained on {tuple(meta['native_shape'])} with "
            f"{ck.get('num_classes')}: the data changed since training")
    data = native.view(meta["input"])
    obj = objective(data.task, ck["output"], data.num_classes)
    dev = resolve_device(device)
    model.to(dev)
    keep = Outputs(obj)
    res: dict[str, Any] = evaluate(model, getattr(data, split), obj, batch_size=cfg.eval_batch, device=dev,
                                   collect=keep)
    res.update(keep.metrics(class_names(native.classes, data.task, data.num_classes)))
    return {"split": split, **res, "data": data.name, "model": meta["model"],
            "epoch": ck["epoch"], "step": ck["step"], "stored_test": ck.get("test")}


def _csv_rows(path: Path) -> np.ndarray:
    """A CSV of numbers, one sample per row (a header line is skipped); errors name row and column."""
    source = f"input file {path}"
    rows, lines = read_rows(path, ",", source)
    if rows and any(cell_kind(c) == 2 for c in rows[0]):
        rows, lines = rows[1:], lines[1:]  # header
    if not rows:
        raise DataError(f"{source} holds no data rows (one sample per row)")
    width = len(rows[0])
    for line, r in zip(lines, rows, strict=True):
        if len(r) != width:
            raise DataError(f"{source}, row {line}: {len(r)} values, the first data row has {width}")
    try:
        table = np.asarray(rows, dtype=np.float64)
    except ValueError:
        cells = ((i, j) for i, r in enumerate(rows) for j, c in enumerate(r) if cell_kind(c) != 0)
        i, j = next(cells, (0, 0))
        raise DataError(f"{source}, row {lines[i]}, column {j + 1}: {rows[i][j]!r} is not a number") from None
    bad = ~(np.abs(table) <= F32_MAX)  # NaN, inf and what float32 cannot hold
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"{source}, row {lines[i]}, column {j + 1}: {rows[i][j]!r} is not a finite float32 "
                        "number")
    return table.astype(np.float32)


def _read_inputs(path: Path, table: Any = None, checkpoint: str = "") -> tuple[np.ndarray, bool]:
    """The file's array and whether it is one sample per row (CSV) rather than batch-first.

    ``table``: the run's stored table encoding (a ``csv:``/``tsv:`` run), which reads a
    CSV/TSV's columns by name and encodes its text as in training.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no input file {str(path)!r}")
    if table is not None and path.suffix in (".csv", ".txt", ".tsv"):
        return encode_rows(path, table, checkpoint=checkpoint), True
    if path.suffix in (".csv", ".txt"):
        return _csv_rows(path), True
    if path.suffix not in (".npy", ".npz"):
        raise ConfigError(f"input file {path}: use .npy, .npz or .csv (one sample per row)")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), False
        with np.load(path, allow_pickle=False) as f:
            if not f.files:
                raise DataError(f"input file {path} holds no arrays")
            return f["x"] if "x" in f.files else f[f.files[0]], False
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, BlockzooError) or (isinstance(e, OSError) and e.errno is not None):
            raise
        raise FileFormatError(f"input file {path} is not a readable NumPy file ({e})") from None


def _as_samples(arr: np.ndarray, shape: tuple[int, ...], rows: bool, source: str) -> torch.Tensor:
    """A batch (N, *shape): rows are flattened samples; an array is batch-first unless it is one sample."""
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{source}: expected numbers, got an array of {arr.dtype}")
    with np.errstate(over="ignore"):
        x = torch.as_tensor(np.asarray(arr, dtype=np.float32))
    if not torch.isfinite(x).all():
        where = tuple(int(v) for v in torch.nonzero(~torch.isfinite(x))[0])
        raise DataError(f"{source}: a value at index {where} is not a finite float32 number")
    n = int(np.prod(shape))
    if rows:
        if x.shape[1] != n:
            raise DataError(f"{source}: rows of {x.shape[1]} values; the model's samples are {shape}, "
                            f"{n} values per row")
        return x.reshape(len(x), *shape)
    if tuple(x.shape) == shape or (x.dim() == 1 and x.numel() == n):
        return x.reshape(1, *shape)
    if x.dim() >= 2 and len(x) and x[0].numel() == n:
        return x.reshape(len(x), *shape)
    raise DataError(f"{source}: inputs of shape {tuple(x.shape)} are neither one sample {shape} nor a batch "
                    f"(N, {', '.join(map(str, shape))}) of them (flattened per sample is fine)")


def _samples(inputs: str | Path | np.ndarray, stats: Any, shape: tuple[int, ...], meta: Mapping[str, Any],
             checkpoint: str) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Numbers, table rows or images as the model's standardised samples, and what names each row."""
    from blockzoo.data.folder import image_inputs, read_images  # only here: job.py's imports are shared

    files = None if isinstance(inputs, np.ndarray) else image_inputs(Path(inputs))
    if isinstance(inputs, np.ndarray):
        arr, rows, source = inputs, False, "inputs"
    elif files is not None:
        if meta["native_input"] != "image":
            raise ConfigError(f"{inputs} holds images; {checkpoint} was trained on "
                              f"{meta['native_input']} data")
        arr, rows, source = read_images([f for _, f in files], shape).numpy(), False, f"images {inputs}"
    else:
        table = stats.get("table") if isinstance(stats, Mapping) else None
        arr, rows = _read_inputs(Path(inputs), table, checkpoint)
        source = f"input file {inputs}"
    x = _as_samples(arr, shape, rows, source)
    if len(x) == 0:
        raise DataError(f"{source} holds no samples")
    if "mean" in stats:
        mean, std = stats["mean"], stats.get("std")
        if not (isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)):
            raise FileFormatError(f"{checkpoint}: data_stats mean/std must be tensors")
        try:
            x = (x - mean) / std
        except RuntimeError:
            raise FileFormatError(f"{checkpoint}: data_stats of shape {tuple(mean.shape)} do not fit "
                                  f"samples {shape}") from None
    return x, [{"file": f[0]} for f in files] if files is not None else [{} for _ in range(len(x))]


def _sentences(inputs: str | Path | Sequence[str], text: Any, checkpoint: str
               ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """A text run's inputs: sentences (a list in Python, a file one per line, or a CSV/TSV with the
    text column) encoded with the run's stored encoding; each row names its ``text``."""
    from blockzoo.data.text import check_encoding, encode_sentences, read_sentences, words

    text = check_encoding(text, checkpoint)
    if isinstance(inputs, (str, Path)):
        texts, sentences = read_sentences(Path(inputs), text)
    else:
        texts = [str(t).strip() for t in inputs]
        sentences = [words(t) for t in texts]
        empty = next((i for i, w in enumerate(sentences) if not w), None)
        if empty is not None:
            raise DataError(f"sentence {empty} ({texts[empty]!r}) holds no words")
    if not sentences:
        raise DataError("no sentences to predict")
    return encode_sentences(sentences, text, source=checkpoint), [{"text": t} for t in texts]


def predict(checkpoint: str | Path, inputs: str | Path | np.ndarray | Sequence[str], *,
            builder: str | Callable[..., nn.Module] | None = None) -> list[dict[str, Any]]:
    """Run a trained checkpoint on new inputs (the data set's native layout).

    A CSV holds one sample per row (flattened); on a run of a table (``csv:``/``tsv:``)
    it may hold the training file's columns (by header name, the target too) and text,
    encoded with the categories stored in the run. A ``.npy``/``.npz`` array (or an array
    given in Python) is a batch along its first axis, unless its shape is one sample's.
    An image file (``.png``, ``.jpg``, ...) or a folder of them (an image model) is
    decoded as the training images were (scaled, centre-cropped, in [0, 1]); each row
    then names its ``file``. A run of sentences (``text:`` data) takes raw sentences: a
    text file of one per line, a CSV/TSV with the training file's text column, or (in
    Python) a list of strings, encoded with the vocabulary stored in the run; each row
    then names its ``text``.
    Inputs are in the data set's own scale before standardisation (e.g. pixels in
    [0, 1] for MNIST, raw feature values for a CSV); the training statistics stored in
    the checkpoint are applied here. Returns one dict per sample: prediction (class
    name or value) and confidence.
    """
    model, ck = load_trained(checkpoint, builder=builder)
    meta = ck["meta"]
    shape = tuple(meta["native_shape"])
    stats = ck.get("data_stats") or {}
    text = stats.get("text") if isinstance(stats, Mapping) else None
    if text is not None and not isinstance(inputs, np.ndarray):
        x, names = _sentences(inputs, text, str(checkpoint))
    else:
        if not isinstance(inputs, (np.ndarray, str, Path)):
            raise ConfigError(f"inputs: a list of sentences needs a run trained on text: data; {checkpoint} "
                              f"was trained on {meta['native_input']} data")
        x, names = _samples(inputs, stats, shape, meta, str(checkpoint))
    x = view_tensor(x, meta["native_input"], meta["input"])
    obj = objective(meta["task"], ck["output"], ck["num_classes"])
    with torch.no_grad():
        pred, conf = obj.predict(model_outputs(model(x)))
    classes = meta.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) < ck["num_classes"]):
        raise FileFormatError(f"{checkpoint}: meta 'classes' must list {ck['num_classes']} class names")
    out = []
    for i, named in enumerate(names):
        if obj.task == "regression":
            value: Any = [round(v, 6) for v in pred[i].tolist()]
            out.append({"index": i, **named, "prediction": value[0] if len(value) == 1 else value})
        else:
            c = int(pred[i])
            out.append({"index": i, **named, "prediction": classes[c] if classes else c,
                        "confidence": round(float(conf[i]), 4)})
    return out
