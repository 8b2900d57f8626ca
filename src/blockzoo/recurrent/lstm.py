r"""Long short-term memory: the LSTM cell (peepholes optional) and its stacked layer.

Papers: Long Short-Term Memory (Hochreiter, Schmidhuber), Neural Computation 9(8),
1997; Learning to Forget: Continual Prediction with LSTM (Gers, Schmidhuber,
Cummins), Neural Computation 12(10), 2000 (the forget gate); Learning Precise Timing
with LSTM Recurrent Networks (Gers, Schraudolph, Schmidhuber), JMLR 3, 2002
(peepholes); Bidirectional Recurrent Neural Networks (Schuster, Paliwal), IEEE TSP
45(11), 1997.

``lstm_step`` is the gate equations written once. ``LSTMCell`` runs one step
(``torch.lstm_cell`` without peepholes); ``LSTM`` a stack of layers through
``torch.lstm`` or, with peepholes or ``fused=False``, the scan of ``scan.py``
(hand-derived back-propagation through time) in eager mode and the autograd time
loop of ``loop.py`` over ``lstm_step`` elsewhere.

Letters: B batch, T time steps, F input features, H hidden size, L layers,
D directions. Gate order in stacked weights is PyTorch's (i, f, g, o).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
from blockzoo.recurrent.loop import project, sum_bias, time_loop
from blockzoo.recurrent.scan import lstm_scan, scan_applies
from blockzoo.registry import register

__all__ = ["LSTM", "LSTMCell", "lstm_step", "peephole_lstm", "peephole_lstm_cell"]

_PAPER = dict(paper="Long Short-Term Memory", arxiv="Neural Computation 9(8)", year=1997)
_PEEPHOLE_PAPER = dict(paper="Learning Precise Timing with LSTM Recurrent Networks", arxiv="JMLR 3",
                       year=2002)


def lstm_step(
    gx: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    w_hh_t: torch.Tensor,
    b_hh: torch.Tensor | None,
    w_peep: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step; with ``w_peep`` (3, H) = (w_ci, w_cf, w_co) the gates also see c."""
    gates = torch.addmm(gx if b_hh is None else gx + b_hh, h, w_hh_t)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=1)  # each (B, H)
    if w_peep is not None:
        # i_t = sigmoid(... + w_ci * c_{t-1});  f_t = sigmoid(... + w_cf * c_{t-1})
        i = torch.addcmul(i, w_peep[0], c)
        f = torch.addcmul(f, w_peep[1], c)
    # c_t = f_t * c_{t-1} + i_t * tanh(g_t)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if w_peep is not None:
        # o_t = sigmoid(... + w_co * c_t)   (the output gate peeks at the new cell)
        o = torch.addcmul(o, w_peep[2], c)
    # h_t = o_t * tanh(c_t)
    return torch.sigmoid(o) * torch.tanh(c), c


@register(name="lstm_cell", family="recurrent", **_PAPER, input="vector", example=cell_example(),
          exempt=CELL_GRAD_EXEMPT)
class LSTMCell(RNNCellBase):
    r"""LSTM cell: input, forget and output gates around an additive cell state.

    Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 1997; the
    forget gate from Gers, Schmidhuber & Cummins 2000; peepholes from Gers,
    Schraudolph & Schmidhuber, "Learning Precise Timing with LSTM Recurrent
    Networks", JMLR 3, 2002.

    Equations (sigma = logistic sigmoid, * = elementwise; the w_c* terms only with
    ``peephole=True``)::

        i_t = sigma(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi + w_ci * c_{t-1})
        f_t = sigma(W_if x_t + b_if + W_hf h_{t-1} + b_hf + w_cf * c_{t-1})
        g_t = tanh (W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        c_t = f_t * c_{t-1} + i_t * g_t
        o_t = sigma(W_io x_t + b_io + W_ho h_{t-1} + b_ho + w_co * c_t)
        h_t = o_t * tanh(c_t)

    Args:
        input_size: F, features of each input vector.
        hidden_size: H, the hidden and cell size.
        peephole: add the diagonal peephole weights w_ci, w_cf, w_co
            (``weight_peep`` of shape (3, H)).
        bias: whether b_ih and b_hh exist.

    Shape:
        - Input: x (B, F), F = input_size; optional state (h, c), each (B, H),
          H = hidden_size (zeros when omitted).
        - Output: (h_t, c_t), each (B, H).

    Deviations: the 1997 LSTM had no forget gate (f_t = 1); like every modern LSTM
    (and ``torch.nn.LSTMCell``, whose weight layout this follows, gates i, f, g, o)
    this one has it. Without peepholes the fused ``torch.lstm_cell`` computes it.

    Example:
        >>> cell = LSTMCell(8, 16, peephole=True)
        >>> h, c = cell(torch.randn(2, 8))
        >>> h.shape, c.shape
        (torch.Size([2, 16]), torch.Size([2, 16]))
    """

    gates = 4

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        peephole: bool = False,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.peephole = peephole
        if peephole:
            self.weight_peep = nn.Parameter(torch.empty(3, hidden_size, device=device, dtype=dtype))
        else:
            self.register_parameter("weight_peep", None)
        self.reset_parameters()

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        name = type(self).__name__
        b = check_step_input(x, name, self.input_size)
        if state is None:
            h = c = self._zeros(x, self.hidden_size)
        else:
            h, c = state
        check_step_state(h, name, b, self.hidden_size, "h")
        check_step_state(c, name, b, self.hidden_size, "c")
        if not self.peephole:
            return torch.lstm_cell(x, (h, c), self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        gx = F.linear(x, self.weight_ih, self.bias_ih)  # (B, 4H)
        return lstm_step(gx, h, c, self.weight_hh.t(), self.bias_hh, self.weight_peep)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, peephole={self.peephole}"


@register(name="peephole_lstm_cell", family="recurrent", **_PEEPHOLE_PAPER, input="vector",
          example=cell_example(), exempt=CELL_GRAD_EXEMPT)
def peephole_lstm_cell(input_size: int, hidden_size: int, **kwargs: Any) -> LSTMCell:
    r"""Peephole LSTM cell: ``LSTMCell(..., peephole=True)``, gates see the cell state.

    Gers, Schraudolph & Schmidhuber, "Learning Precise Timing with LSTM Recurrent
    Networks", JMLR 3, 2002.

    Equations: those of ``LSTMCell`` with the peephole terms::

        i_t = sigma(W_i [x_t, h_{t-1}] + b_i + w_ci * c_{t-1})
        f_t = sigma(W_f [x_t, h_{t-1}] + b_f + w_cf * c_{t-1})
        c_t = f_t * c_{t-1} + i_t * tanh(W_g [x_t, h_{t-1}] + b_g)
        o_t = sigma(W_o [x_t, h_{t-1}] + b_o + w_co * c_t)
        h_t = o_t * tanh(c_t)

    Args:
        input_size: F, features of each input vector.
        hidden_size: H, the hidden and cell size.
        **kwargs: the other keyword arguments of ``LSTMCell`` (bias, device, dtype).

    Shape:
        - Input: x (B, F), F = input_size; optional (h, c), each (B, H), H = hidden_size.
        - Output: (h_t, c_t), each (B, H).

    Example:
        >>> h, c = peephole_lstm_cell(8, 16)(torch.randn(2, 8))
    """
    return LSTMCell(input_size, hidden_size, peephole=True, **kwargs)


@register(name="lstm", family="recurrent", **_PAPER, input="sequence", example=layer_example(),
          out_batch_dims=state_dims(2), exempt=LENGTHS_GRAPH_BREAK)
class LSTM(RNNBase):
    r"""LSTM layers, stacked and optionally bidirectional, with optional peepholes.

    Hochreiter & Schmidhuber, "Long Short-Term Memory", 1997 (forget gate: Gers et
    al. 2000; peepholes: Gers, Schraudolph & Schmidhuber, JMLR 3, 2002).

    Equations per layer and direction (w_c* only with ``peephole=True``)::

        i_t = sigma(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi + w_ci * c_{t-1})
        f_t = sigma(W_if x_t + b_if + W_hf h_{t-1} + b_hf + w_cf * c_{t-1})
        g_t = tanh (W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        c_t = f_t * c_{t-1} + i_t * g_t
        o_t = sigma(W_io x_t + b_io + W_ho h_{t-1} + b_ho + w_co * c_t)
        h_t = o_t * tanh(c_t)

    Args:
        input_size: F, features per step.
        hidden_size: H, hidden (and cell) units per direction.
        num_layers: L, stacked layers.
        peephole: the diagonal peephole weights ``weight_peep_l{k}`` (3, H) =
            (w_ci, w_cf, w_co); computed by the scan of ``scan.py`` (no fused
            kernel has them).
        bias: whether the biases exist.
        batch_first: input/output (B, T, F) if True (default), (T, B, F) if False.
        dropout: dropout on each layer's output except the last (training only).
        bidirectional: add a reverse-time direction; outputs are concatenated.
        tbptt: truncated BPTT: with gradients on, run chunks of this many steps and
            detach the state between them (needs ``bidirectional=False``).
        fused: use ``torch.lstm`` (default when ``peephole=False``).

    Shape:
        - Input: (B, T, F) with ``batch_first`` (default) else (T, B, F), F =
          input_size, any T; optional lengths (B,) in [1, T]; or a PackedSequence.
        - Optional initial state: (h_0, c_0), each (L*D, B, H), L = num_layers,
          D = 2 if bidirectional else 1, H = hidden_size.
        - Output: (B, T, D*H) (zeros after each sequence's end) or a PackedSequence,
          and the final state (h_n, c_n), each (L*D, B, H), at each sequence's true
          last step.
    Deviations: ``batch_first`` defaults to True and ``forward(input, lengths=None,
    state=None)`` takes lengths second; the forget gate is present (the 1997 paper
    had none). Otherwise names and numbers are those of ``torch.nn.LSTM`` (gate
    order i, f, g, o). With peepholes the scan of ``scan.py`` runs; it stays slower
    than ``nn.LSTM`` mostly because its matrix products go one by one through
    ``mm`` rather than through a fused RNN kernel (benchmarks/recurrent.py; numbers
    in docs/benchmarks.md).

    Example:
        >>> lstm = LSTM(8, 16, 2, bidirectional=True)
        >>> out, (h, c) = lstm(torch.randn(3, 5, 8), torch.tensor([5, 2, 4]))
        >>> out.shape, h.shape
        (torch.Size([3, 5, 32]), torch.Size([4, 3, 16]))
    """

    mode = "lstm"
    gates = 4
    state_parts = 2

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, *, peephole: bool = False,
        **kwargs: Any,
    ) -> None:
        self.peephole = peephole
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def _native_ok(self) -> bool:
        return not self.peephole

    def _param_shapes(self, layer_in: int) -> list[tuple[str, tuple[int, ...]]]:
        shapes = super()._param_shapes(layer_in)
        return [*shapes, ("weight_peep", (3, self.hidden_size))] if self.peephole else shapes

    def _run_direction(
        self, p: Params, x: torch.Tensor, state: Parts, mask: torch.Tensor | None, reverse: bool
    ) -> tuple[torch.Tensor, Parts]:
        if scan_applies(x):
            b = sum_bias(p.get("bias_ih"), p.get("bias_hh"))
            gx = F.linear(x.transpose(0, 1), p["weight_ih"], b)  # (T, B, 4H), time-major
            return lstm_scan(gx, *state, p["weight_hh"], p.get("weight_peep"), mask, reverse)
        w_t, peep = p["weight_hh"].t(), p.get("weight_peep")

        def step(gx_t: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, Parts]:
            h, c = lstm_step(gx_t, h, c, w_t, None, peep)
            return h, (h, c)

        return time_loop(step, project(p, x), state, mask, reverse)  # gx: T x (B, 4H)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", peephole=True" if self.peephole else "")


@register(name="peephole_lstm", family="recurrent", **_PEEPHOLE_PAPER, input="sequence",
          example=layer_example(), out_batch_dims=state_dims(2), exempt=LENGTHS_GRAPH_BREAK)
def peephole_lstm(input_size: int, hidden_size: int, num_layers: int = 1, **kwargs: Any) -> LSTM:
    r"""Peephole LSTM layers: ``LSTM(..., peephole=True)``, the gates see the cell state.

    Gers, Schraudolph & Schmidhuber, "Learning Precise Timing with LSTM Recurrent
    Networks", JMLR 3, 2002.

    Equations: ``LSTM``'s with the peephole terms w_ci * c_{t-1} (input gate),
    w_cf * c_{t-1} (forget gate) and w_co * c_t (output gate)::

        c_t = sigma(f + w_cf * c_{t-1}) * c_{t-1} + sigma(i + w_ci * c_{t-1}) * tanh(g)
        h_t = sigma(o + w_co * c_t) * tanh(c_t)

    Args:
        input_size: F, features per step.
        hidden_size: H, hidden (and cell) units per direction.
        num_layers: L, stacked layers.
        **kwargs: ``LSTM``'s keyword arguments (bias, batch_first, dropout,
            bidirectional, tbptt, device, dtype).

    Shape:
        - Input: (B, T, F), F = input_size, optional lengths (B,), or a PackedSequence.
        - Output: (B, T, D*H) and (h, c), each (L*D, B, H); L = num_layers,
          D = 2 if bidirectional else 1, H = hidden_size.

    Example:
        >>> out, (h, c) = peephole_lstm(8, 16)(torch.randn(3, 5, 8))
    """
    return LSTM(input_size, hidden_size, num_layers, peephole=True, **kwargs)
