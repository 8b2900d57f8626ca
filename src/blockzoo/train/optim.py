"""Optimizers by name and learning-rate schedules as pure functions of the step.

Optimizers: SGD (Robbins & Monro 1951; momentum, Polyak 1964; Nesterov 1983),
Adam (Kingma & Ba, arXiv 1412.6980), AdamW (Loshchilov & Hutter, arXiv
1711.05101), RMSprop (Tieleman & Hinton 2012) — PyTorch's own implementations.

Schedules (factor multiplying the peak rate at step s of S, warm-up length w):
    warm-up:  s < w:  (s + 1) / w
    constant: 1
    step:     gamma ** floor(s / step_size)
    cosine:   0.5 * (1 + cos(pi * (s - w) / (S - w)))   (SGDR, arXiv 1608.03983)
    linear:   1 - (s - w) / (S - w)
A schedule is a function of the step alone, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from blockzoo.checks import ConfigError
from blockzoo.registry import unknown_name

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "check_optimizer", "check_schedule", "lr_factor"]

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "linear")


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """PyTorch's optimizer ``name`` over ``params``; unknown names list close matches."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay)
    if nesterov:
        raise ConfigError(f"nesterov applies to sgd only, not {name}")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise unknown_name("optimizer", name, OPTIMIZERS)


def check_optimizer(name: str, nesterov: bool = False) -> None:
    """The errors ``build_optimizer`` would raise, before anything is built or written."""
    if name not in OPTIMIZERS:
        raise unknown_name("optimizer", name, OPTIMIZERS)
    if nesterov and name != "sgd":
        raise ConfigError(f"nesterov applies to sgd only, not {name}")


def check_schedule(name: str) -> None:
    if name not in SCHEDULES:
        raise unknown_name("schedule", name, SCHEDULES)


def lr_factor(
    schedule: str,
    step: int,
    total: int,
    *,
    warmup: float = 0.0,
    step_size: int | None = None,
    gamma: float = 0.1,
) -> float:
    """The multiplier of the peak learning rate at ``step`` (0-based) of ``total`` steps."""
    check_schedule(schedule)
    warm = round(warmup * total) if warmup < 1 else int(warmup)
    warm = min(warm, total - 1) if total > 1 else 0
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        size = step_size or max(1, total // 3)
        return gamma ** (step // size)
    t = (step - warm) / max(1, total - warm)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return max(0.0, 1.0 - t)  # linear
