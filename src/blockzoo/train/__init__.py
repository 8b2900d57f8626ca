"""The training engine: config, optimizers and schedules, loop, checkpoints, run logs, DDP.

``fit(model, data, ...)`` trains any module on a ``Data`` bundle; ``train(config)``
is the ``blockzoo train`` job (data and model by name, checked before training).

The names below are imported on first use (PEP 562), each from its module: the
command line's parser reads ``TrainConfig`` (``blockzoo.train.config``, torch-free)
without importing the engine, and so without torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from blockzoo.train.checkpoint import load_checkpoint, save_checkpoint
    from blockzoo.train.config import TrainConfig
    from blockzoo.train.job import evaluate_checkpoint, predict, prepare, train
    from blockzoo.train.loop import FitResult, NonFiniteLossError, evaluate, fit
    from blockzoo.train.optim import OPTIMIZERS, SCHEDULES, build_optimizer, lr_factor
    from blockzoo.train.task import Objective, objective

# Each public name and the module (of this package) that defines it.
_EXPORTS = {
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "TrainConfig": "config",
    "evaluate_checkpoint": "job", "predict": "job", "prepare": "job", "train": "job",
    "FitResult": "loop", "NonFiniteLossError": "loop", "evaluate": "loop", "fit": "loop",
    "OPTIMIZERS": "optim", "SCHEDULES": "optim", "build_optimizer": "optim", "lr_factor": "optim",
    "Objective": "task", "objective": "task",
}

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "FitResult",
    "NonFiniteLossError",
    "Objective",
    "TrainConfig",
    "build_optimizer",
    "evaluate",
    "evaluate_checkpoint",
    "fit",
    "load_checkpoint",
    "lr_factor",
    "objective",
    "predict",
    "prepare",
    "save_checkpoint",
    "train",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and bind the name here; a submodule's
    name (``blockzoo.train.loop``) imports that submodule, as the eager import did."""
    module = _EXPORTS.get(name)
    if module is None:
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")  # binds itself here
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
