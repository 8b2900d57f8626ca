r"""Jordan networks: the previous *output* is fed back through state units.

Papers: Serial Order: A Parallel Distributed Processing Approach (Jordan), ICS Report
8604, 1986; Bidirectional Recurrent Neural Networks (Schuster, Paliwal), IEEE TSP
45(11), 1997.

``jordan_step`` is the equations written once; ``JordanCell`` runs one step,
``JordanRNN`` a stack of layers: no fused kernel exists, so in eager mode the scan
of ``scan.py`` (hand-derived back-propagation through time) and elsewhere the
autograd time loop of ``loop.py`` over ``jordan_step``.

Letters: B batch, T time steps, F input features, H hidden size, O output size,
L layers, D directions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.act import LayerSpec, create_act
from blockzoo.checks import require
from blockzoo.recurrent._examples import CELL_GRAD_EXEMPT, cell_example, layer_example, state_dims
from blockzoo.recurrent.base import (
    LENGTHS_GRAPH_BREAK,
    Params,
    Parts,
    RNNBase,
    check_step_input,
    check_step_state,
)
from blockzoo.recurrent.loop import project, time_loop
from blockzoo.recurrent.scan import jordan_scan, jordan_scan_applies, scan_applies
from blockzoo.registry import register

__all__ = ["JordanCell", "JordanRNN", "jordan_step"]

_PAPER = dict(paper="Serial Order: A Parallel Distributed Processing Approach", arxiv="ICS Report 8604",
              year=1986)


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


@register(name="jordan_cell", family="recurrent", **_PAPER, input="vector",
          example=cell_example(output_size=(6, 2)), exempt=CELL_GRAD_EXEMPT)
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
        b = check_step_input(x, "JordanCell", self.input_size)
        if s is None:
            s = x.new_zeros(b, self.output_size)
        check_step_state(s, "JordanCell", b, self.output_size, "s")
        gx = F.linear(x, self.weight_ih, self.bias_ih)  # (B, H)
        y, s_next, _ = jordan_step(gx, s, self.weight_sh.t(), self.weight_ho, self.bias_ho,
                                   self.act, self.out_act, self.state_decay)
        return y, s_next

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, {self.output_size}, "
                f"state_decay={self.state_decay}, bias={self.bias}")


@register(name="jordan_rnn", family="recurrent", **_PAPER, input="sequence",
          example=layer_example(output_size=(6, 2)), out_batch_dims=state_dims(1), exempt=LENGTHS_GRAPH_BREAK)
class JordanRNN(RNNBase):
    r"""Jordan network layers: each layer feeds its previous *output* back.

    Jordan, "Serial Order: A Parallel Distributed Processing Approach", ICS Report
    8604, 1986.

    Equations per layer and direction (s: the state units, s_1 = initial state)::

        h_t     = act(W_ih x_t + b_ih + W_sh s_t)
        y_t     = out_act(W_ho h_t + b_ho)
        s_{t+1} = state_decay * s_t + y_t

    The layer's output at step t is y_t; its final state is s_{T+1} (at each
    sequence's own last step), which continues the sequence when passed back in.

    Args:
        input_size: F, features per step.
        hidden_size: H, hidden units per direction.
        num_layers: L, stacked layers (layer l+1 reads layer l's outputs y).
        output_size: O, output (fed-back) units per direction; default H.
        act_layer: hidden nonlinearity (default tanh).
        out_act_layer: output nonlinearity (default tanh).
        state_decay: the state units' self-connection in [0, 1); 0 feeds back y_{t-1}.
        bias: whether b_ih and b_ho exist.
        batch_first: input/output (B, T, F) if True (default), (T, B, F) if False.
        dropout: dropout on each layer's output except the last (training only).
        bidirectional: add a reverse-time direction; outputs are concatenated.
        tbptt: truncated BPTT chunk length (needs ``bidirectional=False``).

    Shape:
        - Input: (B, T, F) (or (T, B, F) without ``batch_first``), F = input_size;
          optional lengths (B,) in [1, T]; or a PackedSequence.
        - Optional initial state units: (L*D, B, O), L = num_layers, D = 2 if
          bidirectional else 1, O = output_size.
        - Output: (B, T, D*O) (zeros after each sequence's end) and the final state
          (L*D, B, O).

    Deviations: no fused kernel exists, so the scan of ``scan.py`` runs (input
    projections of all steps precomputed, back-propagation through time derived by
    hand) when act and out_act are among tanh, sigmoid, relu, identity and the
    registry's parameter-free elementwise activations; any other (PReLU, a custom
    module) runs the autograd time loop of ``loop.py``. Jordan's plan units are
    ordinary inputs.

    Example:
        >>> out, s = JordanRNN(8, 16, output_size=4)(torch.randn(3, 5, 8))
        >>> out.shape, s.shape
        (torch.Size([3, 5, 4]), torch.Size([1, 3, 4]))
    """

    mode = "jordan"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        output_size: int | None = None,
        act_layer: LayerSpec = "tanh",
        out_act_layer: LayerSpec = "tanh",
        state_decay: float = 0.0,
        device: Any = None,
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        require(0.0 <= state_decay < 1.0, f"JordanRNN: state_decay={state_decay} must be in [0, 1)")
        require(not kwargs.get("fused"), "JordanRNN: fused=True but no fused kernel computes it")
        self.state_decay = float(state_decay)
        self.output_size = output_size or hidden_size
        super().__init__(input_size, hidden_size, num_layers, device=device, dtype=dtype, **kwargs)
        fk = dict(device=device, dtype=dtype)
        self.act = create_act(act_layer, **fk)
        self.out_act = create_act(out_act_layer, **fk)

    def _output_features(self) -> int:
        return self.output_size

    def _native_ok(self) -> bool:
        return False

    def _param_shapes(self, layer_in: int) -> list[tuple[str, tuple[int, ...]]]:
        h, o = self.hidden_size, self.output_size
        return [("weight_ih", (h, layer_in)), ("weight_sh", (h, o)), ("bias_ih", (h,)),
                ("weight_ho", (o, h)), ("bias_ho", (o,))]

    def reset_parameters(self) -> None:
        """U(-1/sqrt(n_in), 1/sqrt(n_in)) for each map, n_in its fan-in."""
        for i in range(len(self._names)):
            p = self._params(i)
            for w, b in (("weight_ih", "bias_ih"), ("weight_sh", None), ("weight_ho", "bias_ho")):
                k = 1.0 / math.sqrt(p[w].shape[1])
                nn.init.uniform_(p[w], -k, k)
                if b in p:
                    nn.init.uniform_(p[b], -k, k)

    def _run_direction(
        self, p: Params, x: torch.Tensor, state: Parts, mask: torch.Tensor | None, reverse: bool
    ) -> tuple[torch.Tensor, Parts]:
        if scan_applies(x) and jordan_scan_applies(self.act, self.out_act):
            gx = F.linear(x.transpose(0, 1), p["weight_ih"], p.get("bias_ih"))  # (T, B, H), time-major
            out, s = jordan_scan(gx, *state, p["weight_sh"], p["weight_ho"], p.get("bias_ho"), mask, reverse,
                                 self.state_decay, self.act, self.out_act)
            return out, (s,)
        w_t, w_ho, b_ho = p["weight_sh"].t(), p["weight_ho"], p.get("bias_ho")

        def step(gx_t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, Parts]:
            y, s_next, _ = jordan_step(gx_t, s, w_t, w_ho, b_ho, self.act, self.out_act, self.state_decay)
            return y, (s_next,)

        return time_loop(step, project(p, x), state, mask, reverse)  # gx: T x (B, H)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, output_size={self.output_size}, state_decay={self.state_decay}"
