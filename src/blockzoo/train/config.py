"""The training configuration: one typed dataclass; unknown keys are rejected.

The defaults are the recipe of ``blockzoo train`` with no arguments: the MNIST-1D
CNN on the bundled MNIST-1D data, AdamW with a linear warm-up and cosine decay.

This module imports no torch at import time (``blockzoo train --help`` reads the
fields and the docstring's ``Args:`` without it): what needs torch is imported when a
config is checked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockzoo.errors import ConfigError, unknown_name

__all__ = ["DEFAULT_EPOCHS", "MIN_FILE_STEPS", "TrainConfig", "default_epochs"]

# The default budget: 25 epochs is the MNIST-1D recipe (3,600 training samples at batch 64:
# 1,425 steps). A table of 150 rows gets 2 steps an epoch, so 25 epochs would be 50 steps,
# far from trained (iris: 81% test accuracy at 50 steps, 97% at 500); a user's own file
# therefore trains for at least MIN_FILE_STEPS steps (measurements: README, "Your own data").
DEFAULT_EPOCHS = 25
MIN_FILE_STEPS = 500


def default_epochs(per_epoch: int, file_data: bool) -> int:
    """The epochs of the default budget: ``DEFAULT_EPOCHS``, or for a user's own file the fewest
    epochs of at least ``MIN_FILE_STEPS`` optimizer steps when that is more (never above
    ``MIN_FILE_STEPS`` epochs, since an epoch is at least one step)."""
    if per_epoch < 1:
        raise ConfigError(f"default_epochs: per_epoch={per_epoch} must be >= 1")
    if not file_data:
        return DEFAULT_EPOCHS
    return max(DEFAULT_EPOCHS, math.ceil(MIN_FILE_STEPS / per_epoch))

# A run folder name: one path component, no hidden or parent folder.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


@dataclass
class TrainConfig:
    """Everything a run needs; ``config.json`` in the run directory is this, as JSON.

    Every option is checked at construction (type and range), so a nonsense value fails
    in one line before any data is loaded or memory allocated.

    Args:
        model: a registered model name (``blockzoo list --family model``) or
            ``module:callable`` (your own builder, importable from the working directory);
            None picks one that fits the data's input kind (MNIST-1D: the MNIST-1D CNN;
            vectors: tabular_mlp; images: cifar_cnn; sequences and token ids: a GRU
            classifier or tagger) and says which.
        model_args: extra keyword arguments for the model's constructor.
        data: a registered data set (``blockzoo data``), ``csv:PATH`` (a table), ``text:PATH``
            (sentences and labels; ``text:PATH?encoder=bow|trigram|onehot``) or ``folder:PATH``
            (a folder of class folders of images; ``folder:PATH?size=HxW&augment=none``).
        data_dir: where file-backed data sets are looked for / downloaded.
        val_fraction: training share held out for validation (where no split exists), in (0, 1).
        quick: the data set's small version (tests, examples).
        epochs: passes over the training split (ignored when ``steps`` is set). Default
            (None): 25 epochs (the MNIST-1D recipe), raised for your own files (``csv:``,
            ``tsv:``, ``text:``, ``folder:``) to the fewest epochs of at least 500 optimizer
            steps, so that a small table trains as far as a large one (a training split of
            more than 1,216 rows keeps 25 at batch 64); the run log says which, and
            ``config.json`` records the epochs chosen.
        steps: total optimisation steps (overrides ``epochs``).
        batch_size: global batch size; ``None`` is the whole split (full-batch gradient
            descent), 1 is pure stochastic gradient descent.
        eval_batch_size: batch size of the validation and test passes; default twice
            ``batch_size`` (no activations are kept for a backward pass), the whole
            split under full-batch descent. On the CPU moderate batches are faster
            than one huge one (the activations stay in cache).
        optimizer: sgd, adam, adamw or rmsprop.
        lr: peak learning rate.
        momentum, nesterov: for sgd (momentum also for rmsprop); momentum in [0, 1).
        weight_decay: L2 penalty (sgd, adam, rmsprop) or decoupled decay (adamw).
        schedule: constant, step, cosine or linear (decay to 0).
        warmup: linear warm-up length: a fraction of all steps (< 1) or a step count.
        step_size, gamma: step decay multiplies the rate by ``gamma`` every ``step_size``
            steps (default: a third of the run).
        clip_grad: clip the global gradient norm to this value.
        seed: seeds the model's initialisation, the data order, dropout and splits;
            0 to 2**32 - 1.
        name: run name (``runs/<name>/``); default ``<model>_<data>``.
        runs_dir: parent of run directories.
        monitor: the validation metric that picks best.pt (and the weights tested):
            ``val_acc`` (ties broken by the lower val loss) or ``val_loss``; None is
            val_acc for classification, val_loss for regression.
        resume: continue from ``runs/<name>/last.pt``.
        overwrite: replace an existing run of the same name (it stays whole until the
            new run has written its first checkpoint); without it, or ``resume``, an
            existing run folder is refused.
        quiet: no progress bar and no per-epoch lines.
        grad_stats: log gradient norms (measured after ``clip_grad``): each parameter's mean
            per epoch (``grad_stats.csv``, ``grad_flow.png``), and the global and each top-level
            module's mean (metrics.csv columns ``grad_norm``, ``grad_norm/<module>``; with
            ``tensorboard`` also the global norm of every step).
        tensorboard: write TensorBoard scalars (loss, accuracy, learning rate, gradient norms
            with ``grad_stats``) to ``runs/<name>/tensorboard/``; needs the ``tensorboard``
            package (``pip install 'blockzoo[tensorboard]'``).
        device: auto (CUDA when present), cpu, cuda, cuda:1, ...
        amp: autocast dtype, ``bf16`` or ``fp16`` (``None``: off).
        compile: wrap the model with ``blockzoo.compile`` (torch.compile, inductor).
        channels_last: channels-last memory format (conv nets on images).
        stop_after: stop (saving ``last.pt``) after this many steps, as if killed;
            for tests of ``resume``.
        plots: draw ``curves.png``, ``confusion.png`` (classification) and ``grad_flow.png``
            (``grad_stats``).
        target: a table's (``csv:``/``tsv:`` data) target column: a header name or a 0-based
            index; default the last column (``text:`` data: its label column, default ``label``).
        features: a table's feature columns, comma-separated header names or 0-based indices;
            default every column but the target (``text:`` data: its one text column, default
            ``text``).
        task: classification or regression; default from a table's target (text or 2 to 50
            distinct integers: classification, else regression).
        fill_missing: missing cells (empty, NA, NaN, ?) of a table: mean or median (of the
            training split; a text column's most frequent category) or drop the row; default
            an error naming the row and column.
        weights: a pretrained checkpoint in timm's or torchvision's layout (``.pth``, ``.bin`` or
            ``.safetensors``) loaded into the model before training (``blockzoo.weights``); the
            sizes it fixes are read from it; another number of classes gets a fresh head.
        freeze: parameters kept fixed: comma-separated globs over the model's parameter names
            (``conv1.*,bn1.*,layer1.*``), matched before ``attention`` adds blocks; a glob that
            matches nothing is an error.
        head_lr: peak learning rate of the new parameters (those not loaded from ``weights``: a
            fresh head and the ``attention`` blocks); the rest trains at ``lr``.
        attention: a registered image-attention block (cbam, se, eca, ...) attached into the
            model before training (``blockzoo.attach``).
        attention_after: where ``attention`` goes: a glob over module names; default the
            residual branches of the models with a weights layout (ResNets: ``layer*.*.bn2``,
            bottleneck ResNets ``layer*.*.bn3``, ConvMixer ``blocks.*.bn2``).
    """

    model: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    data: str = "mnist1d"
    data_dir: str = "data"
    val_fraction: float = 0.1
    quick: bool = False
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = 64
    eval_batch_size: int | None = None
    optimizer: str = "adamw"
    lr: float = 3e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup: float = 0.05
    step_size: int | None = None
    gamma: float = 0.1
    clip_grad: float | None = None
    seed: int = 0
    name: str | None = None
    runs_dir: str = "runs"
    monitor: str | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    grad_stats: bool = False
    tensorboard: bool = False
    device: str = "auto"
    amp: str | None = None
    compile: bool = False
    channels_last: bool = False
    stop_after: int | None = None
    plots: bool = True
    target: str | None = None
    features: str | None = None
    task: str | None = None
    fill_missing: str | None = None
    # fine-tuning (issue 17): pretrained weights, frozen parameters, new blocks
    weights: str | None = None
    freeze: str | None = None
    head_lr: float | None = None
    attention: str | None = None
    attention_after: str | None = None

    def __post_init__(self) -> None:
        """Refuse a nonsense option before anything is loaded or allocated.

        One ``ConfigError`` (a ``ValueError``) line names the option, its value and what is allowed. Numpy
        scalars are turned into Python numbers so that ``config.json`` can hold them.
        """
        import torch  # here, not at the top: the CLI's parser reads this class without torch

        from blockzoo.train.optim import OPTIMIZERS, SCHEDULES
        for name in ("data", "data_dir", "optimizer", "schedule", "runs_dir", "device"):
            _check_str(self, name)
        _check_str(self, "model", none="to choose from the data")
        _check_str(self, "name", none="for <model>_<data>")
        if self.name is not None and not _SAFE_NAME.fullmatch(self.name):
            raise ConfigError(f"name={self.name!r} must be a folder name of letters, digits, '_', '-' and "
                              "'.' (not starting with '.'), e.g. mlp_iris")
        for name in ("quick", "nesterov", "resume", "quiet", "grad_stats", "tensorboard", "compile",
                     "channels_last", "plots"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be True or False")
        if not isinstance(self.model_args, dict) or not all(isinstance(k, str) for k in self.model_args):
            raise ConfigError(f"model_args={self.model_args!r} must be a dict with str keys")

        _check_int(self, "epochs", 1, none="for the default budget")
        _check_int(self, "steps", 1, none="to train for epochs")
        _check_int(self, "batch_size", 1, none="for full batch")
        _check_int(self, "eval_batch_size", 1, none="for twice batch_size")
        _check_int(self, "step_size", 1, none="for a third of the run")
        _check_int(self, "stop_after", 1, none="to run to the end")
        # Negative seeds are aliases (torch wraps -1 to 2**64 - 1) and the loader seeds epoch
        # e with seed * 100_003 + e, which torch refuses past 2**64 - 1: one portable range.
        _check_int(self, "seed", 0, high=_MAX_SEED)

        _check_real(self, "val_fraction", "in (0, 1)", lambda v: 0 < v < 1)  # split_train_val's range
        _check_real(self, "lr", "> 0", lambda v: v > 0)
        # torch takes any momentum >= 0, but at m = 1 the velocity never forgets a gradient
        # (SGD on x**2 / 2 swings at its starting amplitude for ever) and at m > 1 it diverges.
        _check_real(self, "momentum", "in [0, 1)", lambda v: 0 <= v < 1)
        _check_real(self, "weight_decay", ">= 0", lambda v: v >= 0)
        _check_real(self, "warmup", ">= 0: a fraction of the steps (< 1) or a whole step count",
                    lambda v: v >= 0 and (v < 1 or v == int(v)))
        _check_real(self, "gamma", "> 0", lambda v: v > 0)
        _check_real(self, "clip_grad", "> 0", lambda v: v > 0, none="for no clipping")

        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule not in SCHEDULES:
            raise unknown_name("schedule", self.schedule, SCHEDULES)
        if self.nesterov and self.optimizer != "sgd":
            raise ConfigError(f"nesterov applies to sgd only, not {self.optimizer}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError(f"nesterov=True needs momentum > 0, got momentum={self.momentum}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ConfigError(f"amp={self.amp!r} must be bf16, fp16 or None")
        if self.monitor not in (None, "val_acc", "val_loss"):
            raise ConfigError(f"monitor={self.monitor!r} must be val_acc, val_loss or None (by the task)")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ConfigError(f"device={self.device!r}: expected auto, cpu, cuda, cuda:N or another "
                                 "torch device string") from None
        if isinstance(self.target, numbers.Integral) and not isinstance(self.target, bool):
            self.target = str(int(self.target))  # a 0-based column index, as the command line spells it
        _check_str(self, "target", none="for the last column")
        _check_str(self, "features", none="for every column but the target")
        for name, allowed in (("task", ("classification", "regression")),
                              ("fill_missing", ("mean", "median", "drop"))):
            _check_str(self, name, none="for the default")
            if getattr(self, name) not in (None, *allowed):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be {' or '.join(allowed)} "
                                  "(or None for the default)")

        self._check_finetune()

    def _check_finetune(self) -> None:
        """The fine-tuning options: types, and the combinations that mean something."""
        for name in ("weights", "freeze", "attention", "attention_after"):
            _check_str(self, name, none="for none")
        _check_real(self, "head_lr", "> 0", lambda v: v > 0, none="for lr")
        if self.head_lr is not None and not (self.weights or self.attention):
            raise ConfigError(f"head_lr={self.head_lr} sets the rate of new parameters (a fresh head, "
                              "attached blocks): give weights or attention")
        if self.attention_after is not None and self.attention is None:
            raise ConfigError(f"attention_after={self.attention_after!r} says where attention goes; "
                              "give attention (e.g. cbam)")
        if self.freeze is not None and not [p for p in self.freeze.split(",") if p.strip()]:
            raise ConfigError(f"freeze={self.freeze!r}: give comma-separated globs over parameter names")

    def settle_epochs(self, per_epoch: int, n_train: int, file_data: bool) -> tuple[TrainConfig, str | None]:
        """This config with ``epochs`` set where it is None (the default budget), and a line saying
        why when the budget is not the plain default.

        ``per_epoch``: optimizer steps per epoch; ``n_train``: training rows (for the message);
        ``file_data``: the data is the user's own file (``csv:``, ``text:``, ...), which gets
        ``default_epochs``'s floor of steps. Given ``epochs`` or ``steps`` are kept as they are.
        """
        if self.epochs is not None or self.steps is not None:
            return self, None
        epochs = default_epochs(per_epoch, file_data)
        why = None
        if epochs != DEFAULT_EPOCHS:
            why = (f"budget: {DEFAULT_EPOCHS} epochs would be {DEFAULT_EPOCHS * per_epoch} optimizer steps "
                   f"on {n_train} training rows ({per_epoch} per epoch); training {epochs} epochs "
                   f"({epochs * per_epoch} steps), the fewest of at least {MIN_FILE_STEPS} steps that "
                   "your own data gets (--epochs or --steps choose another)")
        return dataclasses.replace(self, epochs=epochs), why

    @property
    def eval_batch(self) -> int | None:
        """The evaluation batch size in effect (``None``: the whole split)."""
        if self.eval_batch_size is not None:
            return self.eval_batch_size
        return None if self.batch_size is None else 2 * self.batch_size

    @property
    def run_name(self) -> str:
        """``name``, or ``<model>_<data>`` made a safe folder name (``csv:data/iris.csv``: ``csv_iris``)."""
        if self.name:
            return self.name
        prefix, sep, path = self.data.partition(":")
        data = f"{prefix}_{Path(path).stem}" if sep else self.data
        model = (self.model or "auto").rpartition(":")[2]  # a user's builder: its callable's name
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}_{data}").lstrip(".") or "run"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping; an unknown key raises, naming close matches."""
        known = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in known:
                raise unknown_name("training option", k, known)
        return cls(**dict(d))

    @classmethod
    def from_file(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """A config file with ``overrides`` (the command line's options) on top.

        JSON (a run's ``config.json`` replays that run; the run-record entries beside the
        options are skipped) or TOML (``[train]`` table or top level). The file is data:
        a model it names as ``module:callable`` is refused unless the command line names
        the same one, since rebuilding it would import code.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file {str(path)!r}")
        try:
            if path.suffix == ".toml":
                try:
                    import tomllib
                except ImportError:  # Python 3.10
                    raise ConfigError(f"config file {path}: TOML needs Python 3.11+; use JSON") from None
                raw: Any = tomllib.loads(path.read_text())
                raw = raw.get("train", raw)
            else:
                raw = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError and TOMLDecodeError
            kind = "TOML" if path.suffix == ".toml" else "JSON"
            raise ConfigError(f"config file {path}: not valid {kind} ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: expected an object of options, got {type(raw).__name__}")
        options = {k: v for k, v in raw.items() if k not in RUN_RECORD_KEYS}
        given = dict(overrides or {})
        model = options.get("model")
        if isinstance(model, str) and ":" in model and "model" not in given:
            raise ConfigError(f"config file {path} names your own model {model!r}; blockzoo never imports "
                              f"code named by a file: pass --model {model} yourself")
        return cls.from_dict({**options, **given})


# What a run's config.json holds beside the options: the run's record, skipped on replay.
RUN_RECORD_KEYS = ("data_info", "output", "ids", "num_outputs", "in_chans", "input", "native_input",
                   "native_shape", "classes", "task", "attached", "sample_shape", "new_params")

_MAX_SEED = 2**32 - 1


def _none_note(none: str | None) -> str:
    return f" (or None {none})" if none else ""


def _check_str(cfg: TrainConfig, name: str, *, none: str | None = None) -> None:
    value = getattr(cfg, name)
    if not (isinstance(value, str) or (value is None and none)):
        raise ConfigError(f"{name}={value!r} must be a str{_none_note(none)}")


def _check_int(cfg: TrainConfig, name: str, low: int, *, high: int | None = None,
               none: str | None = None) -> None:
    """An int (not a bool, not a float) in [low, high], or None where ``none`` says what it means."""
    value = getattr(cfg, name)
    if value is None and none:
        return
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name}={value!r} must be an int {allowed}{_none_note(none)}")
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name}={value!r} must be {allowed}{_none_note(none)}")
    setattr(cfg, name, int(value))


def _check_real(cfg: TrainConfig, name: str, allowed: str, ok: Callable[[float], bool], *,
                none: str | None = None) -> None:
    """A finite real number (int or float, not a bool) for which ``ok`` holds, or None where allowed."""
    value = getattr(cfg, name)
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number {allowed}{_none_note(none)}")
    if not ok(value):
        raise ConfigError(f"{name}={value!r} must be {allowed}{_none_note(none)}")
    if type(value) not in (int, float):
        setattr(cfg, name, float(value))
