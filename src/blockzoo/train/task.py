"""Losses and metrics chosen from the data's task and the model's output kind.

    classification, logits     cross-entropy        -log softmax(z)_y
    classification, log_probs  negative log-lik.    -z_y
    binary, logits (B, 1)      BCE with logits      -[y log s(z) + (1-y) log(1-s(z))]
    binary, log_probs (B, 2)   negative log-lik.    -z_y
    regression (B, K)          mean squared error   mean_k (z_k - y_k)^2

Per-step targets (y (B, T), output (B, T, K), e.g. copy memory) take the mean over
the T steps of each sample, and accuracy counts each sample's fraction of right steps.

``loss`` is the batch mean the training step backpropagates (scaled by the rank's
share of the global batch under DDP, so the gradients sum to the global mean);
``loss_sum`` is the sum over the batch that evaluation adds up across batches and ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blockzoo.checks import ConfigError

__all__ = ["Objective", "model_outputs", "objective"]

OUTPUT_KINDS = ("logits", "log_probs", "regression")


@dataclass(frozen=True)
class Objective:
    """The loss and metric of one (task, model output) pair."""

    task: str
    output: str
    num_outputs: int  # the model's output width K

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss averaged over the batch (per-sample loss averaged over targets): ``loss_sum / B``.

        One reduction inside the loss kernel, the form the training step backpropagates.
        """
        return self._loss(out, y, "mean")

    def loss_sum(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss summed over the batch (per-sample loss averaged over targets)."""
        return self._loss(out, y, "sum")

    def _loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
        # Per sample the loss is the mean over its targets, so a "sum" divides by the
        # targets per sample ("mean" already averages over every target of the batch).
        out = out.float()
        if self.task == "regression":
            loss = F.mse_loss(out, y.reshape(out.shape), reduction=reduction)
            per = math.prod(out.shape[1:])  # values per sample
        elif self.task == "binary" and self.output != "log_probs":
            loss = F.binary_cross_entropy_with_logits(out, y.reshape(out.shape), reduction=reduction)
            per = math.prod(out.shape[1:])
        else:
            fn = F.nll_loss if self.output == "log_probs" else F.cross_entropy
            if out.dim() == 2 and y.dim() == 1 and y.dtype == torch.long:  # (B, K), (B,): as they are
                return fn(out, y, reduction=reduction)
            loss = fn(out.reshape(-1, out.shape[-1]), y.reshape(-1).long(), reduction=reduction)  # (B*T, K)
            per = math.prod(out.shape[1:-1])  # T for per-step targets (B, T)
        return loss / per if reduction == "sum" and per != 1 else loss

    def correct(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Right predictions in the batch (per-step targets: each sample's right fraction)."""
        if self.task == "regression":
            return torch.zeros((), device=out.device)
        if self.task == "binary" and self.output != "log_probs":
            return ((out.reshape(-1) > 0) == (y.reshape(-1) > 0.5)).sum()
        if out.dim() == 2 and y.dim() == 1:  # (B, K) scores, (B,) labels: the common case
            return (out.argmax(1) == y).sum()
        hit = out.argmax(-1) == y.reshape(out.shape[:-1]).long()  # (B,) or (B, T)
        return hit.reshape(len(hit), -1).float().mean(1).sum()

    def predict(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, confidence): class and its probability, or the regressed values."""
        out = out.float()
        if self.task == "regression":
            return out, torch.ones(len(out))
        if self.task == "binary" and self.output != "log_probs":
            p = torch.sigmoid(out.reshape(-1))
            return (p > 0.5).long(), torch.where(p > 0.5, p, 1 - p)
        probs = out.exp() if self.output == "log_probs" else out.softmax(-1)
        conf, cls = probs.max(-1)
        return cls, conf


def objective(task: str, output: str, num_classes: int) -> Objective:
    """The objective for data ``task`` and a model whose spec says ``output``.

    ``output`` "tensor" (a generic block) counts as logits. A regression model on a
    classification task, or a log-probability model on regression, is a config error.
    """
    output = "logits" if output == "tensor" else output
    if output not in OUTPUT_KINDS:
        raise ConfigError(f"model output kind {output!r} not in {OUTPUT_KINDS}")
    if task == "regression":
        if output == "log_probs":
            raise ConfigError("a model that outputs log-probabilities cannot fit a regression task")
        return Objective(task, "regression", num_classes)
    if output == "regression":
        raise ConfigError(f"a regression model cannot fit a {task} task (it outputs no class scores)")
    if task == "binary":
        return Objective(task, output, 2 if output == "log_probs" else 1)
    return Objective(task, output, num_classes)


def model_outputs(out: object) -> torch.Tensor:
    """The prediction tensor of a forward's result (the first tensor of a tuple/list)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ConfigError(f"the model returned {type(out).__name__}, not a tensor of scores")
