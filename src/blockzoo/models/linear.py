"""Linear classifiers: softmax regression, logistic regression, bag-of-words.

Papers: The Regression Analysis of Binary Sequences (Cox), J. R. Stat. Soc. B
20(2), 1958 — logistic regression and, with a softmax over K classes, its
multinomial form; Distributional Structure (Harris), Word 10(2-3), 1954 — the
bag-of-words representation.

Letters: B batch, F features, V vocabulary size, K classes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, register, vectors

__all__ = ["BowClassifier", "LogisticRegression", "SoftmaxRegression"]


def _classes(shape: Any, cfg: Any) -> tuple[int, int]:
    return (shape[0], cfg["num_classes"])


@register(
    name="softmax_regression",
    family="model",
    paper="The Regression Analysis of Binary Sequences",
    arxiv="J. R. Stat. Soc. B 20(2)",
    year=1958,
    input="vector",
    output="log_probs",
    example=Example(
        config=dict(in_features=10, num_classes=4),
        inputs=vectors("in_features"),
        out_shape=_classes,
    ),
)
class SoftmaxRegression(nn.Module):
    r"""Softmax (multinomial logistic) regression: one affine map and a softmax.

    Cox, "The Regression Analysis of Binary Sequences", 1958 (multinomial form).

    Equation::

        log p(y = k | x) = (W x + b)_k - log sum_j exp((W x + b)_j)

    Args:
        in_features: F, the size of each input vector.
        num_classes: K, the number of classes.
        bias: whether the affine map has a bias.

    Shape:
        - Input: (B, F), F = in_features.
        - Output: (B, K) log-probabilities, K = num_classes; each row's exp sums to 1.

    Example:
        >>> model = SoftmaxRegression(10, 3)
        >>> model(torch.randn(2, 10)).exp().sum(-1)
        tensor([1.0000, 1.0000], grad_fn=<SumBackward1>)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(num_classes >= 2, f"SoftmaxRegression: num_classes={num_classes} must be >= 2")
        self.in_features = in_features
        self.num_classes = num_classes
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B F", name="SoftmaxRegression", F=self.in_features)
        # log softmax(W x + b)
        return F.log_softmax(self.linear(x), dim=-1)


@register(
    name="logistic_regression",
    family="model",
    paper="The Regression Analysis of Binary Sequences",
    arxiv="J. R. Stat. Soc. B 20(2)",
    year=1958,
    input="vector",
    output="logits",
    example=Example(
        config=dict(in_features=10, num_classes=1),
        inputs=vectors("in_features"),
        out_shape=_classes,
    ),
)
class LogisticRegression(nn.Module):
    r"""Logistic regression: one affine map and a sigmoid per output.

    Cox, "The Regression Analysis of Binary Sequences", 1958.

    Equation::

        p(y = 1 | x) = sigmoid(w^T x + b) = 1 / (1 + exp(-(w^T x + b)))

    ``forward`` returns the logit ``w^T x + b``: the sigmoid is folded into the
    loss (``BCEWithLogitsLoss``), which is exact and avoids ``log(0)``.
    ``predict_proba`` applies the sigmoid.

    Args:
        in_features: F, the size of each input vector.
        num_classes: number of independent binary outputs (1 for a binary task).
        bias: whether the affine map has a bias.

    Shape:
        - Input: (B, F), F = in_features.
        - Output: (B, K) logits, K = num_classes.

    Example:
        >>> model = LogisticRegression(10)
        >>> model.predict_proba(torch.randn(2, 10)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 1,
        *,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(num_classes >= 1, f"LogisticRegression: num_classes={num_classes} must be >= 1")
        self.in_features = in_features
        self.num_classes = num_classes
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B F", name="LogisticRegression", F=self.in_features)
        return self.linear(x)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """p(y = 1 | x) = sigmoid(w^T x + b)."""
        return torch.sigmoid(self(x))


@register(
    name="bow_classifier",
    family="model",
    paper="Distributional Structure",
    arxiv="Word 10(2-3)",
    year=1954,
    input="vector",
    output="log_probs",
    example=Example(
        config=dict(vocab_size=26, num_classes=2),
        inputs=vectors("vocab_size", nonnegative=True),
        out_shape=_classes,
    ),
)
class BowClassifier(nn.Module):
    r"""Bag-of-words classifier: word counts -> log-probabilities over labels.

    Harris, "Distributional Structure", 1954 (the bag-of-words representation);
    the classifier is softmax regression over the counts.

    Equation, for a sentence with word-count vector ``x`` (x_v = count of word v)::

        log p(y | x) = log softmax(W x + b)

    Args:
        vocab_size: V, the vocabulary size (length of the count vector).
        num_classes: K, the number of labels.
        bias: whether the affine map has a bias.

    Shape:
        - Input: (B, V) non-negative word counts, V = vocab_size.
        - Output: (B, K) log-probabilities, K = num_classes.

    Example:
        >>> model = BowClassifier(vocab_size=26, num_classes=2)
        >>> model(torch.zeros(1, 26)).exp().sum().item()
        1.0
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.linear = nn.Linear(vocab_size, num_classes, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B V", name="BowClassifier", V=self.vocab_size)
        return F.log_softmax(self.linear(x), dim=-1)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, num_classes={self.num_classes}"
