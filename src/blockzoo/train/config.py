"""The training configuration: one typed dataclass; unknown keys are rejected.

The defaults are the recipe of ``blockzoo train`` with no arguments: the MNIST-1D
CNN on the bundled MNIST-1D data, AdamW with a linear warm-up and cosine decay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from blockzoo.registry import unknown_name

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Everything a run needs; ``config.json`` in the run directory is this, as JSON.

    Args:
        model: a registered model name or ``module:callable``.
        model_args: extra keyword arguments for the model's constructor.
        data: a registered data set or ``csv:PATH``.
        data_dir: where file-backed data sets are looked for / downloaded.
        val_fraction: training share held out for validation (where no split exists).
        quick: the data set's small version (tests, examples).
        epochs: passes over the training split (ignored when ``steps`` is set).
        steps: total optimisation steps (overrides ``epochs``).
        batch_size: global batch size; ``None`` is the whole split (full-batch gradient
            descent), 1 is pure stochastic gradient descent.
        eval_batch_size: batch size of the validation and test passes; default twice
            ``batch_size`` (no activations are kept for a backward pass), the whole
            split under full-batch descent. On the CPU moderate batches are faster
            than one huge one (the activations stay in cache).
        optimizer: sgd, adam, adamw or rmsprop.
        lr: peak learning rate.
        momentum, nesterov: for sgd (momentum also for rmsprop).
        weight_decay: L2 penalty (sgd, adam, rmsprop) or decoupled decay (adamw).
        schedule: constant, step, cosine or linear (decay to 0).
        warmup: linear warm-up length: a fraction of all steps (< 1) or a step count.
        step_size, gamma: step decay multiplies the rate by ``gamma`` every ``step_size``
            steps (default: a third of the run).
        clip_grad: clip the global gradient norm to this value.
        seed: seeds the model's initialisation, the data order, dropout and splits.
        name: run name (``runs/<name>/``); default ``<model>_<data>``.
        runs_dir: parent of run directories.
        resume: continue from ``runs/<name>/last.pt``.
        overwrite: replace an existing run of the same name (it stays whole until the
            new run has written its first checkpoint); without it, or ``resume``, an
            existing run folder is refused.
        quiet: no progress bar and no per-epoch lines.
        grad_stats: log per-layer gradient norms each epoch (``grad_flow.png``).
        device: auto (CUDA when present), cpu, cuda, cuda:1, ...
        amp: autocast dtype, ``bf16`` or ``fp16`` (``None``: off).
        compile: wrap the model with ``torch.compile``.
        channels_last: channels-last memory format (conv nets on images).
        stop_after: stop (saving ``last.pt``) after this many steps, as if killed;
            for tests of ``resume``.
        plots: draw ``curves.png`` (and ``grad_flow.png``).
    """

    model: str = "mnist1d_cnn"
    model_args: dict[str, Any] = field(default_factory=dict)
    data: str = "mnist1d"
    data_dir: str = "data"
    val_fraction: float = 0.1
    quick: bool = False
    epochs: int = 25
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
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    grad_stats: bool = False
    device: str = "auto"
    amp: str | None = None
    compile: bool = False
    channels_last: bool = False
    stop_after: int | None = None
    plots: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1 (or None for full batch)")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size={self.eval_batch_size} must be >= 1 (or None)")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be positive")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp={self.amp!r} must be bf16, fp16 or None")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be >= 0")

    @property
    def eval_batch(self) -> int | None:
        """The evaluation batch size in effect (``None``: the whole split)."""
        if self.eval_batch_size is not None:
            return self.eval_batch_size
        return None if self.batch_size is None else 2 * self.batch_size

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.model}_{self.data}".replace(":", "_").replace("/", "_")

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
