r"""Elman networks: the simple recurrent cell and its stacked, bidirectional layer.

Papers: Finding Structure in Time (Elman), Cognitive Science 14(2), 1990;
Bidirectional Recurrent Neural Networks (Schuster, Paliwal), IEEE TSP 45(11), 1997.

``elman_step`` is the equation written once; ``ElmanCell`` runs one step through the
fused ``torch.rnn_tanh_cell``/``rnn_relu_cell``, ``ElmanRNN`` a stack of layers
through ``torch.rnn_tanh``/``rnn_relu`` or, with ``fused=False``, the autograd time
loop of ``loop.py`` over ``elman_step``.

Letters: B batch, T time steps, F input features, H hidden size, L layers,
D directions.
"""

from __future__ import annotations

from typing import Any

import torch

from blockzoo.checks import require
from blockzoo.recurrent._examples import CELL_GRAD_EXEMPT, cell_example, layer_example, state_dims
from blockzoo.recurrent.base import (
    LENGTHS_GRAPH_BREAK,
    Params,
    Parts,
    RNNBase,
    RNNCellBase,
    check_step_input,
    check_step_state,
)
from blockzoo.recurrent.loop import project, time_loop
from blockzoo.registry import register

__all__ = ["ElmanCell", "ElmanRNN", "elman_step"]

_PAPER = dict(paper="Finding Structure in Time", arxiv="Cognitive Science 14(2)", year=1990)
_NONLIN = ("tanh", "relu")


def elman_step(
    gx: torch.Tensor, h: torch.Tensor, w_hh_t: torch.Tensor, b_hh: torch.Tensor | None, relu: bool
) -> torch.Tensor:
    """h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act = tanh or relu."""
    pre = torch.addmm(gx if b_hh is None else gx + b_hh, h, w_hh_t)  # (B, H)
    return torch.relu(pre) if relu else torch.tanh(pre)


@register(name="elman_cell", family="recurrent", **_PAPER, input="vector", example=cell_example(),
          exempt=CELL_GRAD_EXEMPT)
class ElmanCell(RNNCellBase):
    r"""Elman (simple recurrent) cell: the hidden state is fed back as context.

    Elman, "Finding Structure in Time", Cognitive Science 14(2), 1990.

    Equation::

        h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)        act = tanh or relu

    Args:
        input_size: F, features of each input vector.
        hidden_size: H, the hidden (context) size.
        nonlinearity: ``"tanh"`` (default) or ``"relu"``.
        bias: whether b_ih and b_hh exist.

    Shape:
        - Input: x (B, F), F = input_size; optional h (B, H), H = hidden_size
          (zeros when omitted).
        - Output: h_t (B, H).

    Deviations: Elman's context units copy h_{t-1} and feed it through learned
    weights, which is this equation; the two biases (b_ih, b_hh) are redundant but
    kept so that weights load from and to ``torch.nn.RNNCell``. The fused
    ``torch.rnn_tanh_cell`` / ``rnn_relu_cell`` computes it.

    Example:
        >>> cell = ElmanCell(8, 16)
        >>> cell(torch.randn(2, 8)).shape
        torch.Size([2, 16])
    """

    gates = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        nonlinearity: str = "tanh",
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        require(nonlinearity in _NONLIN, f"ElmanCell: nonlinearity={nonlinearity!r} not in {_NONLIN}")
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity
        self.reset_parameters()

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        b = check_step_input(x, "ElmanCell", self.input_size)
        if h is None:
            h = self._zeros(x, self.hidden_size)
        check_step_state(h, "ElmanCell", b, self.hidden_size, "h")
        fn = torch.rnn_tanh_cell if self.nonlinearity == "tanh" else torch.rnn_relu_cell
        return fn(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}"


@register(name="elman_rnn", family="recurrent", **_PAPER, input="sequence", example=layer_example(),
          out_batch_dims=state_dims(1), exempt=LENGTHS_GRAPH_BREAK)
class ElmanRNN(RNNBase):
    r"""Elman network: stacked simple recurrent layers, optionally bidirectional.

    Elman, "Finding Structure in Time", Cognitive Science 1990; bidirectional as in
    Schuster & Paliwal, IEEE TSP 1997.

    Equation, layer l, direction forward (the reverse direction runs t = T..1)::

        h_t^l = act(W_ih^l x_t^l + b_ih^l + W_hh^l h_{t-1}^l + b_hh^l)     act = tanh | relu
        x_t^{l+1} = dropout([h_t^l(forward), h_t^l(reverse)])

    Args:
        input_size: F, features per step.
        hidden_size: H, hidden units per direction.
        num_layers: L, stacked layers.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        bias: whether the biases exist.
        batch_first: input/output (B, T, F) if True (default), (T, B, F) if False.
        dropout: dropout on each layer's output except the last (training only).
        bidirectional: add a reverse-time direction; outputs are concatenated.
        tbptt: truncated BPTT: with gradients on, run chunks of this many steps and
            detach the state between them (needs ``bidirectional=False``).
        fused: use the native kernel (``torch.rnn_tanh``/``rnn_relu``); default yes.

    Shape:
        - Input: (B, T, F) with ``batch_first`` (default) else (T, B, F), F =
          input_size, any T; optional lengths (B,) in [1, T]; or a PackedSequence.
        - Optional initial state: (L*D, B, H), L = num_layers, D = 2 if bidirectional
          else 1, H = hidden_size.
        - Output: (B, T, D*H) (zeros after each sequence's end) or a PackedSequence,
          and the final state (L*D, B, H) at each sequence's true last step.
    Deviations: ``batch_first`` defaults to True (the zoo's (B, T, F)) and
    ``forward(input, lengths=None, state=None)`` takes lengths second (the initial
    state by keyword); otherwise the parameters, names and numbers are those of
    ``torch.nn.RNN``.

    Example:
        >>> rnn = ElmanRNN(8, 16, 2, bidirectional=True)
        >>> out, h = rnn(torch.randn(3, 5, 8), torch.tensor([5, 2, 4]))
        >>> out.shape, h.shape
        (torch.Size([3, 5, 32]), torch.Size([4, 3, 16]))
    """

    gates = 1

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, *, nonlinearity: str = "tanh",
        **kwargs: Any,
    ) -> None:
        require(nonlinearity in _NONLIN, f"ElmanRNN: nonlinearity={nonlinearity!r} not in {_NONLIN}")
        self.mode = f"rnn_{nonlinearity}"
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def _run_direction(
        self, p: Params, x: torch.Tensor, state: Parts, mask: torch.Tensor | None, reverse: bool
    ) -> tuple[torch.Tensor, Parts]:
        w_t, relu = p["weight_hh"].t(), self.nonlinearity == "relu"

        def step(gx_t: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, Parts]:
            h = elman_step(gx_t, h, w_t, None, relu)
            return h, (h,)

        return time_loop(step, project(p, x), state, mask, reverse)  # gx: T x (B, H)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}"
