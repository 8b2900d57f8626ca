"""The plain multi-layer perceptron.

Paper: Learning representations by back-propagating errors (Rumelhart, Hinton,
Williams), Nature 323, 1986.

Letters: B batch, F features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo._fastcall import call
from blockzoo.act import LayerSpec, create_act, create_norm
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, register, vectors

__all__ = ["MLP"]


@register(
    name="mlp",
    family="mlp",
    paper="Learning representations by back-propagating errors",
    arxiv="Nature 323, 533-536",
    year=1986,
    input="vector",
    example=Example(
        config=dict(in_features=12, hidden_features=(16, 16), out_features=5),
        inputs=vectors("in_features"),
        out_shape=lambda shape, cfg: (*shape[:-1], cfg["out_features"] or shape[-1]),
        tiny=dict(in_features=4, hidden_features=(5,), out_features=3),
    ),
)
class MLP(nn.Module):
    r"""Multi-layer perceptron: affine maps with a nonlinearity between them.

    Rumelhart, Hinton & Williams, "Learning representations by back-propagating
    errors", Nature 1986.

    Equation, for hidden sizes ``h_1..h_L``::

        a_0 = x
        a_l = dropout(act(norm(W_l a_{l-1} + b_l)))     l = 1..L
        y   = W_{L+1} a_L + b_{L+1}

    With ``act_layer="identity"`` and no norm the whole MLP is one affine map.

    Args:
        in_features: F, the size of each input vector.
        hidden_features: the hidden layer sizes (an int for one layer; empty for
            none, which makes the MLP a single linear layer).
        out_features: the output size (default: ``in_features``).
        act_layer: activation by name (relu, prelu, sigmoid, tanh, gelu, silu, ...),
            class or factory.
        dropout: dropout probability after each hidden activation.
        norm_layer: optional normalisation after each hidden affine map
            (``"layernorm"``, ``"batchnorm1d"``, ...).
        bias: whether the affine maps have biases.

    Shape:
        - Input: (*, F) with at least one leading (batch) dim, F = in_features.
        - Output: (*, F_out), F_out = out_features.

    Example:
        >>> mlp = MLP(8, (32, 32), 3, act_layer="gelu")
        >>> mlp(torch.randn(4, 8)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | Sequence[int] = (),
        out_features: int | None = None,
        *,
        act_layer: LayerSpec = "relu",
        dropout: float = 0.0,
        norm_layer: LayerSpec = None,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        hidden = [hidden_features] if isinstance(hidden_features, int) else list(hidden_features)
        require(in_features > 0, f"MLP: in_features={in_features} must be positive")
        require(all(h > 0 for h in hidden), f"MLP: hidden_features={hidden} must be positive")
        require(0.0 <= dropout < 1.0, f"MLP: dropout={dropout} must be in [0, 1)")
        self.in_features = in_features
        self.out_features = out_features or in_features
        self.hidden_features = tuple(hidden)
        fk = dict(device=device, dtype=dtype)
        layers: list[nn.Module] = []
        prev = in_features
        for h in hidden:
            layers += [
                nn.Linear(prev, h, bias=bias, **fk),
                create_norm(norm_layer, h, **fk),
                create_act(act_layer, **fk),
                nn.Dropout(dropout),
            ]
            prev = h
        layers.append(nn.Linear(prev, self.out_features, bias=bias, **fk))
        self.layers = nn.Sequential(*layers)
        # decided once, not per call: BatchNorm1d reads dim 1 as features
        self._flatten_leading = any(isinstance(m, nn.BatchNorm1d) for m in self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[-1] != self.in_features:
            check_shape(x, "* B F", name="MLP", F=self.in_features)  # raises, naming the misfit
        if self._flatten_leading and x.dim() > 2:
            # BatchNorm1d reads dim 1 as features: flatten the leading dims.
            return self._run(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """``self.layers(x)`` without the per-call cost of the modules: the Sequential's own
        call is skipped, and each stock layer nobody hooks runs as its functional op
        (``blockzoo._fastcall.call``: an ``nn.Identity`` and a dropout that is off run as
        nothing, a ``nn.Linear`` as ``F.linear``; each module call skipped is ~1-2 us, a
        large part of a small MLP's eval time)."""
        seq = self.layers
        if seq._forward_hooks or seq._forward_pre_hooks:
            return seq(x)
        for m in seq._modules.values():
            x = call(m, x)
        return x

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, hidden_features={self.hidden_features}, "
            f"out_features={self.out_features}"
        )
