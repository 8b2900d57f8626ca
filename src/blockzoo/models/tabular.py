"""A multi-layer perceptron for feature vectors: ``blockzoo train``'s model for tables.

Rumelhart, Hinton & Williams, "Learning representations by back-propagating
errors", Nature 323, 1986. The catalogue's ``MLP`` block registered as a model: a
vector in, class scores (or regressed values) out.

Letters: B batch, F features, K outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from blockzoo.act import LayerSpec
from blockzoo.inputs import vectors
from blockzoo.mlp.mlp import MLP
from blockzoo.registry import Example, register

__all__ = ["tabular_mlp"]


@register(
    name="tabular_mlp",
    family="model",
    paper="Learning representations by back-propagating errors",
    arxiv="Nature 323, 533-536",
    year=1986,
    input="vector",
    output="logits",
    example=Example(config=dict(in_features=10, num_classes=3, hidden_features=(16,)),
                    inputs=vectors("in_features"), out_shape=lambda s, cfg: (s[0], cfg["num_classes"]),
                    tiny=dict(in_features=3, num_classes=2, hidden_features=(4,))),
)
def tabular_mlp(in_features: int, num_classes: int = 2, *, hidden_features: int | Sequence[int] = (64, 64),
                act_layer: LayerSpec = "relu", dropout: float = 0.0, norm_layer: LayerSpec = None,
                device: Any = None, dtype: Any = None) -> MLP:
    r"""An MLP classifier (or regressor) for feature vectors: rows of a table.

    Rumelhart, Hinton & Williams, Nature 1986.

    Equation::

        h_0 = x;   h_i = dropout(act(norm(W_i h_{i-1} + b_i)))   i = 1 .. L
        scores = W_{L+1} h_L + b_{L+1}

    Args:
        in_features: F, the number of features.
        num_classes: K, the outputs (classes; 1 for a binary task or one regressed value).
        hidden_features: the hidden widths (default two layers of 64).
        act_layer, dropout, norm_layer: as ``blockzoo.mlp.MLP``.

    Shape:
        - Input: (B, F), F = in_features.
        - Output: (B, K) scores, K = num_classes.

    Example:
        >>> model = tabular_mlp(4, 3)
        >>> model(torch.randn(5, 4)).shape
        torch.Size([5, 3])
    """
    return MLP(in_features, hidden_features, num_classes, act_layer=act_layer, dropout=dropout,
               norm_layer=norm_layer, device=device, dtype=dtype)
