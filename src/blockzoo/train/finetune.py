"""Fine-tuning as users do it: pretrained weights in, some parameters frozen, new blocks attached.

``blockzoo train --weights resnet18.pth --freeze 'conv1.*,bn1.*,layer1.*' --attention cbam
--head-lr 1e-3`` reads the checkpoint once (``read_weights``), builds the model with the
sizes it fixes (``weights_args``), then ``apply`` loads it (``blockzoo.weights``),
freezes the matching parameters, attaches the attention blocks (``blockzoo.attach``) and
records in the run's meta what a checkpoint needs to rebuild the same structure (the
attach calls) and which parameters are new (not loaded: a fresh head, the attached
blocks). ``param_groups`` gives those new parameters their own peak learning rate,
``head_lr``.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
from torch import nn

from blockzoo.attach import ATTACHED_ATTR, attach
from blockzoo.checks import ConfigError
from blockzoo.train.config import TrainConfig
from blockzoo.weights import layout_for, load_pretrained, pretrained_args, read_state_dict

__all__ = ["apply", "param_groups", "read_weights", "weights_args"]

log = logging.getLogger("blockzoo.train")

# What the data decides, not the checkpoint: the input channels and the number of classes.
_FROM_DATA = ("num_classes", "in_chans")


def _registered(cfg: TrainConfig, what: str) -> str:
    if cfg.model is None or ":" in cfg.model:
        raise ConfigError(f"{what} applies to registered models with a timm/torchvision layout, not "
                          f"{cfg.model!r}")
    return cfg.model


def read_weights(cfg: TrainConfig) -> dict[str, torch.Tensor] | None:
    """The tensors of ``cfg.weights`` (None without), read once for ``weights_args`` and ``apply``."""
    if not cfg.weights:
        return None
    _registered(cfg, "weights")
    return read_state_dict(cfg.weights)


def weights_args(cfg: TrainConfig, tensors: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The constructor arguments ``cfg.weights`` fixes (width, depth, patch and image size, ...).

    ``tensors``: the file's, from ``read_weights``; read here when not given.
    """
    if not cfg.weights:
        return {}
    name = _registered(cfg, "weights")
    args = pretrained_args(name, tensors if tensors is not None else read_state_dict(cfg.weights))
    return {k: v for k, v in args.items() if k not in _FROM_DATA}


def _freeze(model: nn.Module, patterns: str) -> int:
    """``requires_grad = False`` for parameters matching any glob; returns how many elements."""
    params = dict(model.named_parameters())
    frozen = 0
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        hits = [n for n in params if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            sample = ", ".join(list(params)[:6])
            raise ConfigError(f"freeze={pattern!r} matches no parameter (names look like: {sample}, ...)")
        for n in hits:
            if params[n].requires_grad:
                params[n].requires_grad_(False)
                frozen += params[n].numel()
    return frozen


def apply(model: nn.Module, cfg: TrainConfig, meta: MutableMapping[str, Any],
          sample_shape: tuple[int, ...], tensors: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Load ``cfg.weights``, freeze ``cfg.freeze``, attach ``cfg.attention``; record it all in ``meta``.

    ``tensors``: the weights file's, from ``read_weights`` (read here when not given).
    ``meta`` gains ``attached`` (the attach calls, for rebuilding the model from a
    checkpoint), ``sample_shape`` (the dry run's input) and ``new_params`` (names not
    loaded from the weights: they train at ``head_lr``).
    """
    if not (cfg.weights or cfg.freeze or cfg.attention):
        return model
    if cfg.weights:
        name = _registered(cfg, "weights")
        source = tensors if tensors is not None else cfg.weights
        report = load_pretrained(model, name, source, label=cfg.weights)
        loaded = set(report.loaded)
        log.info("weights: %d tensors from %s%s", len(report.loaded), cfg.weights,
                 f"; fresh: {', '.join(report.fresh)}" if report.fresh else "")
    else:
        loaded = set(model.state_dict())
    backbone = {id(p) for n, p in model.named_parameters() if n in loaded}
    if cfg.freeze:
        n = _freeze(model, cfg.freeze)
        log.info("froze %s parameters (%s)", f"{n:,}", cfg.freeze)
    if cfg.attention:
        after = cfg.attention_after
        if after is None:
            layout = layout_for(_registered(cfg, "attention without attention_after"))
            if layout.attach_after is None:
                raise ConfigError(f"attention={cfg.attention!r}: {cfg.model!r} has no default place for it; "
                                  "give attention_after (a glob over module names)")
            after = layout.attach_after
        model, where = attach(model, cfg.attention, after, example_input=torch.zeros(2, *sample_shape))
        log.info("attention: %s after %d modules (%s)", cfg.attention, len(where), after)
        meta["attached"] = getattr(model, ATTACHED_ATTR)
        meta["sample_shape"] = list(sample_shape)
    meta["new_params"] = [n for n, p in model.named_parameters() if id(p) not in backbone]
    return model


def param_groups(model: nn.Module, cfg: TrainConfig, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The optimizer's groups: trainable parameters at ``lr``; the new ones at ``head_lr`` if set.

    Each group keeps its peak rate as ``peak_lr``; the schedule scales it.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"freeze={cfg.freeze!r} leaves no parameter to train")
    new = set(meta.get("new_params", ())) if cfg.head_lr is not None else set()
    old = [p for n, p in params if n not in new]
    fresh = [p for n, p in params if n in new]
    groups = [{"params": old, "lr": cfg.lr, "peak_lr": cfg.lr}] if old else []
    if fresh:
        groups.append({"params": fresh, "lr": cfg.head_lr, "peak_lr": cfg.head_lr})
    return groups
