"""The training engine: config, optimizers and schedules, loop, checkpoints, run logs, DDP.

``fit(model, data, ...)`` trains any module on a ``Data`` bundle; ``train(config)``
is the ``blockzoo train`` job (data and model by name, checked before training).
"""

from blockzoo.train.checkpoint import load_checkpoint, save_checkpoint
from blockzoo.train.config import TrainConfig
from blockzoo.train.job import evaluate_checkpoint, predict, prepare, train
from blockzoo.train.loop import FitResult, NonFiniteLossError, evaluate, fit
from blockzoo.train.optim import OPTIMIZERS, SCHEDULES, build_optimizer, lr_factor
from blockzoo.train.task import Objective, objective

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
