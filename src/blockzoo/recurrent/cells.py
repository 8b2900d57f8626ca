r"""Recurrent cells: one time step of Elman, Jordan, LSTM (with peepholes) and GRU.

Papers: Finding Structure in Time (Elman), Cognitive Science 14(2), 1990;
Serial Order: A Parallel Distributed Processing Approach (Jordan), ICS Report 8604,
1986; Long Short-Term Memory (Hochreiter, Schmidhuber), Neural Computation 9(8),
1997; Learning Precise Timing with LSTM Recurrent Networks (Gers, Schraudolph,
Schmidhuber), JMLR 3, 2002 (peepholes); Learning Phrase Representations using RNN
Encoder-Decoder for Statistical Machine Translation (Cho et al.), arXiv 1406.1078,
2014 (GRU).

The ``*_step`` functions here are the gate equations written once; the layers in
``layers.py`` call them inside their time loop (with the input projection
``W_ih x_t + b`` precomputed for all steps at once), and the cells call them for
one step. Where PyTorch has a fused kernel for the same maths (Elman, plain
LSTM, GRU) the cells call it (``torch.rnn_tanh_cell``, ``torch.lstm_cell``,
``torch.gru_cell``).

Letters: B batch, F input features, H hidden size, O output size (Jordan).
Gate order in stacked weights is PyTorch's: LSTM (i, f, g, o), GRU (r, z, n).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.act import LayerSpec, create_act
from blockzoo.checks import check_shape, require
from blockzoo.registry import Example, register, vectors

__all__ = [
    "ElmanCell",
    "GRUCell",
    "JordanCell",
    "LSTMCell",
    "elman_step",
    "gru_step",
    "jordan_step",
    "lstm_step",
    "peephole_lstm_cell",
]

_NONLIN = ("tanh", "relu")

# The example feeds one step from the zero state, so the recurrent weights get an exactly
# zero gradient there; tests/test_recurrent.py checks every gradient with a non-zero state.
_GRAD_EXEMPT = {"grad": "the recurrent weights multiply the zero initial state of a single-step "
                        "example, so their gradient is exactly zero; test_recurrent checks them "
                        "with a non-zero state"}


# --------------------------------------------------------------------------- step maths
# Each step takes gx = W_ih x_t + b_ih (precomputed for every t by the layers) and the
# previous state; w_hh_t is W_hh transposed (H, G*H), so h @ w_hh_t = (W_hh h)^T.


def elman_step(
    gx: torch.Tensor, h: torch.Tensor, w_hh_t: torch.Tensor, b_hh: torch.Tensor | None, relu: bool
) -> torch.Tensor:
    """h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act = tanh or relu."""
    pre = torch.addmm(gx if b_hh is None else gx + b_hh, h, w_hh_t)  # (B, H)
    return torch.relu(pre) if relu else torch.tanh(pre)


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


def gru_step(
    gx: torch.Tensor, h: torch.Tensor, w_hh_t: torch.Tensor, b_hh: torch.Tensor | None
) -> torch.Tensor:
    """One GRU step (reset applied after the recurrent matrix, as cuDNN and nn.GRU)."""
    gh = h @ w_hh_t if b_hh is None else torch.addmm(b_hh, h, w_hh_t)  # (B, 3H)
    xr, xz, xn = gx.chunk(3, dim=1)
    hr, hz, hn = gh.chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    # n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
    n = torch.tanh(torch.addcmul(xn, r, hn))
    # h_t = (1 - z_t) * n_t + z_t * h_{t-1} = n_t + z_t * (h_{t-1} - n_t)
    return torch.addcmul(n, z, h - n)


def jordan_step(
    gx: torch.Tensor,
    s: torch.Tensor,
    w_sh_t: torch.Tensor,
    w_ho: torch.Tensor,
    b_ho: torch.Tensor | None,
    act: nn.Module,
    out_act: nn.Module,
    decay: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Jordan step: returns the output y_t, the next state units and the hidden h_t."""
    # h_t = act(W_ih x_t + b_ih + W_sh s_t)
    h = act(torch.addmm(gx, s, w_sh_t))  # (B, H)
    # y_t = out_act(W_ho h_t + b_ho)
    y = out_act(F.linear(h, w_ho, b_ho))  # (B, O)
    # s_{t+1} = decay * s_t + y_t
    s_next = y + decay * s if decay else y
    return y, s_next, h


# --------------------------------------------------------------------------- cells


def _check_x(x: torch.Tensor, name: str, f: int) -> int:
    return check_shape(x, "B F", name=name, F=f)["B"]


def _check_h(h: torch.Tensor, name: str, b: int, size: int, arg: str) -> None:
    check_shape(h, "B H", name=name, arg=arg, B=b, H=size)


class _Cell(nn.Module):
    """Holds W_ih (G*H, F), W_hh (G*H, H) and their biases, named as nn.RNNCell does."""

    gates = 1

    def __init__(
        self, input_size: int, hidden_size: int, *, bias: bool, device: Any, dtype: Any
    ) -> None:
        super().__init__()
        name = type(self).__name__
        require(input_size > 0, f"{name}: input_size={input_size} must be positive")
        require(hidden_size > 0, f"{name}: hidden_size={hidden_size} must be positive")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        fk = dict(device=device, dtype=dtype)
        g = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(g, input_size, **fk))
        self.weight_hh = nn.Parameter(torch.empty(g, hidden_size, **fk))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(g, **fk))
            self.bias_hh = nn.Parameter(torch.empty(g, **fk))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)

    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as PyTorch's cells."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -k, k)

    def _zeros(self, x: torch.Tensor, size: int) -> torch.Tensor:
        return x.new_zeros(x.shape[0], size)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"


@register(
    name="elman_cell",
    family="recurrent",
    paper="Finding Structure in Time",
    arxiv="Cognitive Science 14(2)",
    year=1990,
    input="vector",
    exempt=_GRAD_EXEMPT,
    example=Example(
        config=dict(input_size=8, hidden_size=12),
        inputs=vectors("input_size"),
        out_shape=lambda s, cfg: (s[0], cfg["hidden_size"]),
        tiny=dict(input_size=3, hidden_size=4),
    ),
)
class ElmanCell(_Cell):
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
        b = _check_x(x, "ElmanCell", self.input_size)
        if h is None:
            h = self._zeros(x, self.hidden_size)
        _check_h(h, "ElmanCell", b, self.hidden_size, "h")
        fn = torch.rnn_tanh_cell if self.nonlinearity == "tanh" else torch.rnn_relu_cell
        return fn(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}"


def _lstm_out(shape: Any, cfg: Any) -> tuple[int, int]:
    return (shape[0], cfg["hidden_size"])


@register(
    name="lstm_cell",
    family="recurrent",
    paper="Long Short-Term Memory",
    arxiv="Neural Computation 9(8)",
    year=1997,
    input="vector",
    exempt=_GRAD_EXEMPT,
    example=Example(
        config=dict(input_size=8, hidden_size=12),
        inputs=vectors("input_size"),
        out_shape=_lstm_out,
        tiny=dict(input_size=3, hidden_size=4),
    ),
)
class LSTMCell(_Cell):
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
        b = _check_x(x, name, self.input_size)
        if state is None:
            h = c = self._zeros(x, self.hidden_size)
        else:
            h, c = state
        _check_h(h, name, b, self.hidden_size, "h")
        _check_h(c, name, b, self.hidden_size, "c")
        if not self.peephole:
            return torch.lstm_cell(x, (h, c), self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        gx = F.linear(x, self.weight_ih, self.bias_ih)  # (B, 4H)
        return lstm_step(gx, h, c, self.weight_hh.t(), self.bias_hh, self.weight_peep)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, peephole={self.peephole}"


@register(
    name="peephole_lstm_cell",
    family="recurrent",
    paper="Learning Precise Timing with LSTM Recurrent Networks",
    arxiv="JMLR 3",
    year=2002,
    input="vector",
    exempt=_GRAD_EXEMPT,
    example=Example(
        config=dict(input_size=8, hidden_size=12),
        inputs=vectors("input_size"),
        out_shape=_lstm_out,
        tiny=dict(input_size=3, hidden_size=4),
    ),
)
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


@register(
    name="gru_cell",
    family="recurrent",
    paper="Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine Translation",
    arxiv="1406.1078",
    year=2014,
    input="vector",
    exempt=_GRAD_EXEMPT,
    example=Example(
        config=dict(input_size=8, hidden_size=12),
        inputs=vectors("input_size"),
        out_shape=lambda s, cfg: (s[0], cfg["hidden_size"]),
        tiny=dict(input_size=3, hidden_size=4),
    ),
)
class GRUCell(_Cell):
    r"""Gated recurrent unit: reset and update gates, no separate cell state.

    Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for
    Statistical Machine Translation", arXiv 1406.1078, 2014.

    Equations::

        r_t = sigma(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)           reset gate
        z_t = sigma(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)           update gate
        n_t = tanh (W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))   candidate
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    Args:
        input_size: F, features of each input vector.
        hidden_size: H, the hidden size.
        bias: whether b_ih and b_hh exist.

    Shape:
        - Input: x (B, F), F = input_size; optional h (B, H), H = hidden_size.
        - Output: h_t (B, H).

    Deviations: Cho et al. reset the state before the recurrent matrix,
    n_t = tanh(W x_t + U (r_t * h_{t-1})); this cell resets after it,
    r_t * (U h_{t-1} + b), the variant of cuDNN and ``torch.nn.GRUCell`` (weights
    load from it; the fused ``torch.gru_cell`` computes it).

    Example:
        >>> GRUCell(8, 16)(torch.randn(2, 8)).shape
        torch.Size([2, 16])
    """

    gates = 3

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.reset_parameters()

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        b = _check_x(x, "GRUCell", self.input_size)
        if h is None:
            h = self._zeros(x, self.hidden_size)
        _check_h(h, "GRUCell", b, self.hidden_size, "h")
        return torch.gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


@register(
    name="jordan_cell",
    family="recurrent",
    paper="Serial Order: A Parallel Distributed Processing Approach",
    arxiv="ICS Report 8604",
    year=1986,
    input="vector",
    exempt=_GRAD_EXEMPT,
    example=Example(
        config=dict(input_size=8, hidden_size=12, output_size=6),
        inputs=vectors("input_size"),
        out_shape=lambda s, cfg: (s[0], cfg["output_size"]),
        tiny=dict(input_size=3, hidden_size=4, output_size=2),
    ),
)
class JordanCell(nn.Module):
    r"""Jordan cell: the previous *output* (through state units) is fed back, not h.

    Jordan, "Serial Order: A Parallel Distributed Processing Approach", ICS Report
    8604, 1986.

    Equations (s_t: the state units, s_1 = 0 unless given)::

        h_t     = act(W_ih x_t + b_ih + W_sh s_t)
        y_t     = out_act(W_ho h_t + b_ho)
        s_{t+1} = decay * s_t + y_t

    Args:
        input_size: F, features of each input vector.
        hidden_size: H, the hidden units.
        output_size: O, the output units fed back (default: H).
        act_layer: hidden nonlinearity (default tanh; Jordan used the logistic).
        out_act_layer: output nonlinearity (default tanh, which keeps the fed-back
            state bounded).
        state_decay: the state units' self-connection mu in [0, 1); 0 feeds back
            exactly y_{t-1}, the common simplified Jordan network.
        bias: whether b_ih and b_ho exist.

    Shape:
        - Input: x (B, F), F = input_size; optional state units s (B, O),
          O = output_size (zeros when omitted).
        - Output: (y_t (B, O), s_{t+1} (B, O)).

    Deviations: Jordan's "plan" units are ordinary inputs here (part of x_t), and
    the self-connection is a fixed hyper-parameter, as in the report.

    Example:
        >>> y, s = JordanCell(8, 16, 4)(torch.randn(2, 8))
        >>> y.shape, s.shape
        (torch.Size([2, 4]), torch.Size([2, 4]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int | None = None,
        *,
        act_layer: LayerSpec = "tanh",
        out_act_layer: LayerSpec = "tanh",
        state_decay: float = 0.0,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        out = output_size or hidden_size
        require(min(input_size, hidden_size, out) > 0,
                f"JordanCell: sizes ({input_size}, {hidden_size}, {out}) must be positive")
        require(0.0 <= state_decay < 1.0, f"JordanCell: state_decay={state_decay} must be in [0, 1)")
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, out
        self.state_decay = float(state_decay)
        self.bias = bias
        fk = dict(device=device, dtype=dtype)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **fk))
        self.weight_sh = nn.Parameter(torch.empty(hidden_size, out, **fk))
        self.weight_ho = nn.Parameter(torch.empty(out, hidden_size, **fk))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(hidden_size, **fk))
            self.bias_ho = nn.Parameter(torch.empty(out, **fk))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_ho", None)
        self.act = create_act(act_layer, **fk)
        self.out_act = create_act(out_act_layer, **fk)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(n_in), 1/sqrt(n_in)) per map, n_in its fan-in."""
        for w, b in ((self.weight_ih, self.bias_ih), (self.weight_sh, None), (self.weight_ho, self.bias_ho)):
            k = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -k, k)
            if b is not None:
                nn.init.uniform_(b, -k, k)

    def forward(
        self, x: torch.Tensor, s: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = _check_x(x, "JordanCell", self.input_size)
        if s is None:
            s = x.new_zeros(b, self.output_size)
        _check_h(s, "JordanCell", b, self.output_size, "s")
        gx = F.linear(x, self.weight_ih, self.bias_ih)  # (B, H)
        y, s_next, _ = jordan_step(gx, s, self.weight_sh.t(), self.weight_ho, self.bias_ho,
                                   self.act, self.out_act, self.state_decay)
        return y, s_next

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, {self.output_size}, "
                f"state_decay={self.state_decay}, bias={self.bias}")
