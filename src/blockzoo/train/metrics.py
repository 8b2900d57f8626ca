"""A run's final metrics: what the best weights get right, class by class, or how far off they are.

    accuracy               right / N
    precision_k            TP_k / (TP_k + FP_k)       (0 where nothing was predicted k)
    recall_k               TP_k / (TP_k + FN_k)       (0 where no sample is k)
    F1_k                   2 P_k R_k / (P_k + R_k);   macro-F1 = mean of F1_k over the classes
                           that occur (as truth or prediction)
    confusion[i][j]        samples of true class i predicted as j
    ROC AUC (binary)       P(score of a random positive > score of a random negative), a tie
                           counting 1/2; from the positive class's score
    MSE, MAE               mean (y - ŷ)^2, mean |y - ŷ| over every target value
    R^2                    1 - sum (y - ŷ)^2 / sum (y - mean y)^2, per target, then averaged

The numbers come from scikit-learn's ``sklearn.metrics`` (the reference
implementations, exact in float64), fed by ``Outputs``: the loop's ``evaluate``
hands it each batch's scores, and it keeps only what the metrics need (the
predicted class and, for a binary task, the positive class's score; a regression's
values). The positive score is the logit (or log-probability) itself, not its
sigmoid: AUC depends only on the order of the scores, and a float32 sigmoid rounds
large logits to 1.0, turning distinct scores into ties.

Per-step targets (a tagger, y (B, T)) keep their accuracy only.

``grad_groups`` and ``group_norms``: the global gradient norm and each top-level
module's, from the per-parameter norms ``grad_stats`` measures anyway (the norm of
a group is the root of its parameters' squared norms: no second pass over the
gradients).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from blockzoo.train.task import Objective

__all__ = ["Outputs", "class_names", "classification_metrics", "grad_groups", "group_norms",
           "regression_metrics"]


def _num(v: Any) -> float | None:
    """A float for JSON: None for NaN or infinity (undefined)."""
    v = float(v)
    return v if math.isfinite(v) else None


def class_names(classes: Sequence[str] | None, task: str, num_classes: int) -> list[str]:
    """The data's class names; else the class indices as text (a binary task: "0", "1")."""
    if classes:
        return [str(c) for c in classes]
    return [str(i) for i in range(2 if task == "binary" else num_classes)]


def classification_metrics(truth: np.ndarray, pred: np.ndarray, classes: Sequence[str],
                           score: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix; with
    ``score`` (binary: the positive class's score) the ROC AUC.

    Args:
        truth, pred: (N,) class indices in [0, len(classes)).
        classes: the class names, in index order.
        score: (N,) scores of class 1, any increasing function of its probability.

    Returns:
        ``acc``, ``macro_f1``, ``per_class`` (one dict per class, in class order: ``class``,
        ``precision``, ``recall``, ``f1``, ``support``), ``confusion`` (rows: truth, columns:
        prediction), ``classes``, and ``roc_auc`` when ``score`` is given (None if the
        samples hold one class only: AUC is undefined).
    """
    from sklearn import metrics as skm

    labels = list(range(len(classes)))
    p, r, f, s = skm.precision_recall_fscore_support(truth, pred, labels=labels, zero_division=0.0)
    res: dict[str, Any] = {
        "acc": float(skm.accuracy_score(truth, pred)),
        "macro_f1": float(skm.f1_score(truth, pred, average="macro", zero_division=0.0)),
    }
    if score is not None:
        both = len(np.unique(truth)) == 2
        res["roc_auc"] = float(skm.roc_auc_score(truth, score)) if both else None
    res["per_class"] = [dict(zip(("class", "precision", "recall", "f1", "support"),
                                 (name, float(pi), float(ri), float(fi), int(si)), strict=True))
                        for name, pi, ri, fi, si in zip(classes, p, r, f, s, strict=True)]
    res["confusion"] = skm.confusion_matrix(truth, pred, labels=labels).tolist()
    res["classes"] = list(classes)
    return res


def regression_metrics(target: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """MSE, MAE and R^2 of ``pred`` against ``target``, both (N, K); R^2 is averaged over the
    K targets, and None where a target is constant (its R^2 is undefined)."""
    from sklearn import metrics as skm

    target, pred = np.asarray(target, np.float64), np.asarray(pred, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant target: R^2 undefined, None below
        r2 = skm.r2_score(target, pred, multioutput="raw_values", force_finite=False)
    return {"mse": float(skm.mean_squared_error(target, pred)),
            "mae": float(skm.mean_absolute_error(target, pred)),
            "r2": _num(np.mean(r2)) if len(target) > 1 else None}


class Outputs:
    """What the metrics need of each evaluated batch (``evaluate(..., collect=Outputs(obj))``).

    Kept on the batch's device until ``metrics`` reads them all at once (one transfer).
    """

    def __init__(self, obj: Objective) -> None:
        self.obj = obj
        self.parts: list[tuple[torch.Tensor, ...]] = []
        self.per_step = False  # per-step targets: accuracy only

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> None:
        obj, out = self.obj, out.detach().float()
        if obj.task == "regression":
            self.parts.append((y.reshape(len(y), -1).float(), out.reshape(len(out), -1)))
        elif obj.task == "binary":
            truth = (y.reshape(-1) > 0.5).long()
            if obj.output == "log_probs":  # (B, 2): log p_0, log p_1
                self.parts.append((truth, out.argmax(-1), out[:, 1]))
            else:  # (B, 1) logit of class 1: the loss's rule, class 1 where z > 0
                z = out.reshape(-1)
                self.parts.append((truth, (z > 0).long(), z))
        elif out.dim() == 2 and y.dim() == 1:  # (B, K) scores, (B,) labels
            self.parts.append((y, out.argmax(1)))
        else:
            self.per_step = True

    def metrics(self, classes: Sequence[str]) -> dict[str, Any]:
        """The metrics of every batch seen; {} for per-step targets or no samples."""
        if self.per_step or not self.parts:
            return {}
        cols = [torch.cat(c).cpu().numpy() for c in zip(*self.parts, strict=True)]
        if self.obj.task == "regression":
            return regression_metrics(*cols)
        return classification_metrics(cols[0], cols[1], classes, cols[2] if len(cols) == 3 else None)


def grad_groups(names: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """The top-level modules of the parameters ``names`` (``features.0.weight`` -> ``features``),
    in order of first appearance, and each parameter's group index."""
    groups: dict[str, int] = {}
    index = [groups.setdefault(n.split(".", 1)[0], len(groups)) for n in names]
    return list(groups), torch.tensor(index, dtype=torch.long)


def group_norms(norms: torch.Tensor, index: torch.Tensor, groups: int) -> torch.Tensor:
    """(1 + groups,): the global L2 norm of the gradients whose per-parameter norms are ``norms``,
    then each group's: sqrt(sum of its parameters' squared norms)."""
    sq = norms.double().square()
    per = torch.zeros(groups, dtype=torch.float64).index_add_(0, index, sq)
    return torch.cat([sq.sum().reshape(1), per]).sqrt()
