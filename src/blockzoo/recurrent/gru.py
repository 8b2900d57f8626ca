r"""Gated recurrent units: the GRU cell and its stacked, bidirectional layer.

Paper: Learning Phrase Representations using RNN Encoder-Decoder for Statistical
Machine Translation (Cho et al.), arXiv 1406.1078, 2014.

``gru_step`` is the gate equations written once; ``GRUCell`` runs one step through
the fused ``torch.gru_cell``, ``GRU`` a stack of layers through ``torch.gru`` or,
with ``fused=False``, the autograd time loop of ``loop.py`` over ``gru_step``.

Letters: B batch, T time steps, F input features, H hidden size, L layers,
D directions. Gate order in stacked weights is PyTorch's (r, z, n).
"""

from __future__ import annotations

from typing import Any

import torch

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

__all__ = ["GRU", "GRUCell", "gru_step"]

_PAPER = dict(
    paper="Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine Translation",
    arxiv="1406.1078",
    year=2014,
)


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


@register(name="gru_cell", family="recurrent", **_PAPER, input="vector", example=cell_example(),
          exempt=CELL_GRAD_EXEMPT)
class GRUCell(RNNCellBase):
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
        b = check_step_input(x, "GRUCell", self.input_size)
        if h is None:
            h = self._zeros(x, self.hidden_size)
        check_step_state(h, "GRUCell", b, self.hidden_size, "h")
        return torch.gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


@register(name="gru", family="recurrent", **_PAPER, input="sequence", example=layer_example(),
          out_batch_dims=state_dims(1), exempt=LENGTHS_GRAPH_BREAK)
class GRU(RNNBase):
    r"""GRU layers, stacked and optionally bidirectional.

    Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for
    Statistical Machine Translation", arXiv 1406.1078, 2014.

    Equations per layer and direction::

        r_t = sigma(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z_t = sigma(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n_t = tanh (W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    Args:
        input_size: F, features per step.
        hidden_size: H, hidden units per direction.
        num_layers: L, stacked layers.
        bias: whether the biases exist.
        batch_first: input/output (B, T, F) if True (default), (T, B, F) if False.
        dropout: dropout on each layer's output except the last (training only).
        bidirectional: add a reverse-time direction; outputs are concatenated.
        tbptt: truncated BPTT: with gradients on, run chunks of this many steps and
            detach the state between them (needs ``bidirectional=False``).
        fused: use ``torch.gru`` (default).

    Shape:
        - Input: (B, T, F) with ``batch_first`` (default) else (T, B, F), F =
          input_size, any T; optional lengths (B,) in [1, T]; or a PackedSequence.
        - Optional initial state: (L*D, B, H), L = num_layers, D = 2 if bidirectional
          else 1, H = hidden_size.
        - Output: (B, T, D*H) (zeros after each sequence's end) or a PackedSequence,
          and the final state (L*D, B, H) at each sequence's true last step.
    Deviations: the reset gate multiplies (W_hn h + b_hn), after the matrix, as in
    cuDNN and ``torch.nn.GRU`` (Cho et al. reset h before it); ``batch_first``
    defaults to True and ``forward(input, lengths=None, state=None)`` takes lengths
    second.

    Example:
        >>> out, h = GRU(8, 16)(torch.randn(3, 5, 8))
        >>> out.shape, h.shape
        (torch.Size([3, 5, 16]), torch.Size([1, 3, 16]))
    """

    mode = "gru"
    gates = 3

    def _run_direction(
        self, p: Params, x: torch.Tensor, state: Parts, mask: torch.Tensor | None, reverse: bool
    ) -> tuple[torch.Tensor, Parts]:
        # b_hn sits inside r * (W_hn h + b_hn): b_hh is not folded into the projection
        w_t, b_hh = p["weight_hh"].t(), p.get("bias_hh")

        def step(gx_t: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, Parts]:
            h = gru_step(gx_t, h, w_t, b_hh)
            return h, (h,)

        return time_loop(step, project(p, x, fold_hh=False), state, mask, reverse)  # gx: T x (B, 3H)
