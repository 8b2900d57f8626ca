r"""Recurrent layers: stacked, bidirectional, variable-length Elman, Jordan, LSTM, GRU.

Papers: Finding Structure in Time (Elman), 1990; Serial Order (Jordan), ICS Report
8604, 1986; Long Short-Term Memory (Hochreiter, Schmidhuber), 1997; Learning
Precise Timing with LSTM Recurrent Networks (Gers, Schraudolph, Schmidhuber), JMLR
3, 2002; Learning Phrase Representations using RNN Encoder-Decoder (Cho et al.),
arXiv 1406.1078, 2014; Bidirectional Recurrent Neural Networks (Schuster, Paliwal),
IEEE TSP 45(11), 1997; truncated back-propagation through time: An Efficient
Gradient-Based Algorithm for On-Line Training of Recurrent Network Trajectories
(Williams, Peng), Neural Computation 2(4), 1990.

Every layer takes a padded batch with optional per-sequence ``lengths`` or a
``PackedSequence``, an optional initial state, and returns ``(output, state)``.
Two implementations compute the same maths:

- native: where PyTorch has a fused kernel for the configuration (Elman tanh/relu,
  LSTM without peepholes, GRU), the parameters are held in ``nn.RNN``/``nn.LSTM``/
  ``nn.GRU``'s layout and names (``weight_ih_l0``, ..., ``_reverse``) and
  ``torch.rnn_tanh``/``torch.lstm``/``torch.gru`` is called, exactly as those modules
  do; padded batches with lengths are packed first.
- loop: peephole LSTM and Jordan (and, with ``fused=False`` or under ``torch.export``
  with lengths, every layer, since packing has data-dependent shapes): the input
  projection ``W_ih x_t + b`` of all steps is one matrix product, then a loop over
  time; lengths are honoured by masking, so a sequence's state stops at its own
  last step (forward) or starts there (reverse direction). For the LSTM (peepholes
  or not) and Jordan, in eager mode, the loop is a scan of ``scan.py``: one autograd
  Function per layer and direction, its backward back-propagation through time
  derived by hand from the equations (no per-step autograd nodes). Elsewhere (the
  Elman and GRU loops; any loop under ``torch.compile``/``torch.export`` tracing or
  autocast; Jordan with an activation ``scan.py`` cannot differentiate, such as
  PReLU) the step of ``cells.py`` runs under plain autograd.

Letters: B batch, T time steps, F input features, H hidden size, L layers,
D directions (2 when bidirectional), O Jordan output size, N packed steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from blockzoo.act import LayerSpec, create_act
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.recurrent.cells import elman_step, gru_step, jordan_step, lstm_step
from blockzoo.recurrent.scan import jordan_scan, jordan_scan_applies, lstm_scan, scan_applies
from blockzoo.registry import Example, register, sequence

__all__ = ["GRU", "LSTM", "ElmanRNN", "JordanRNN", "detach_state", "peephole_lstm"]

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def detach_state(state: Any) -> Any:
    """Detach a layer's state (a tensor or a tuple of them): cut the graph between chunks.

    For streams processed chunk by chunk: ``out, state = rnn(chunk, state=state)``
    then ``state = detach_state(state)`` before the next chunk.
    """
    if isinstance(state, torch.Tensor):
        return state.detach()
    return tuple(detach_state(s) for s in state)


def _exporting() -> bool:
    return bool(torch.compiler.is_exporting())


class _RecurrentLayer(nn.Module):
    """Shared machinery: parameters per layer/direction, input forms, state, TBPTT."""

    mode = ""  # "rnn_tanh", "rnn_relu", "lstm", "gru", "jordan"
    gates = 1
    state_parts = 1  # tensors per state (2 for the LSTM's (h, c))

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0.0,
        bidirectional: bool = False,
        tbptt: int | None = None,
        fused: bool | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        require(input_size > 0, f"{name}: input_size={input_size} must be positive")
        require(hidden_size > 0, f"{name}: hidden_size={hidden_size} must be positive")
        require(num_layers >= 1, f"{name}: num_layers={num_layers} must be >= 1")
        require(0.0 <= dropout < 1.0, f"{name}: dropout={dropout} must be in [0, 1)")
        require(tbptt is None or tbptt >= 1, f"{name}: tbptt={tbptt} must be None or >= 1")
        require(tbptt is None or not bidirectional,
                f"{name}: tbptt={tbptt} needs bidirectional=False (the reverse pass sees the future)")
        native_ok = self._native_ok()
        require(not (fused and not native_ok),
                f"{name}: fused=True but PyTorch has no fused kernel for this configuration")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.tbptt = tbptt
        self.fused = native_ok if fused is None else fused
        self.out_size = self._output_features()  # per direction: H, or O for Jordan
        self.num_directions = 2 if bidirectional else 1
        fk = dict(device=device, dtype=dtype)
        self._names: list[list[str]] = []
        for k in range(num_layers):
            layer_in = input_size if k == 0 else self.out_size * self.num_directions
            for d in range(self.num_directions):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                names = []
                for pname, shape in self._param_shapes(layer_in):
                    if pname.startswith("bias") and not bias:
                        continue
                    self.register_parameter(pname + sfx, nn.Parameter(torch.empty(*shape, **fk)))
                    names.append(pname + sfx)
                self._names.append(names)
        self.reset_parameters()

    # -- per-mode facts, overridden ------------------------------------------------
    def _output_features(self) -> int:
        """Features per step and direction of the output and the state: H (Jordan: O)."""
        return self.hidden_size

    def _native_ok(self) -> bool:
        return self.mode in ("rnn_tanh", "rnn_relu", "lstm", "gru")

    def _param_shapes(self, layer_in: int) -> list[tuple[str, tuple[int, ...]]]:
        g, h = self.gates * self.hidden_size, self.hidden_size
        return [("weight_ih", (g, layer_in)), ("weight_hh", (g, h)), ("bias_ih", (g,)), ("bias_hh", (g,))]

    def _scan(
        self, p: dict[str, torch.Tensor], x: torch.Tensor, state: tuple[torch.Tensor, ...],
        mask: torch.Tensor | None, reverse: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        raise NotImplementedError(f"{type(self).__name__} must implement _scan (one direction of one layer)")

    # -- parameters ------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as ``torch.nn.LSTM``."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -k, k)

    def _params(self, i: int) -> dict[str, torch.Tensor]:
        """Layer/direction i's parameters by their short name (``weight_ih``, ...)."""
        return {n.rsplit("_l", 1)[0]: getattr(self, n) for n in self._names[i]}

    def _flat_weights(self) -> list[torch.Tensor]:
        """nn.RNN's flat order: per layer, per direction, w_ih, w_hh, b_ih, b_hh."""
        return [getattr(self, n) for names in self._names for n in names
                if n.split("_l")[0] in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    # -- input forms -------------------------------------------------------------------
    def forward(
        self,
        input: torch.Tensor | PackedSequence,
        lengths: torch.Tensor | None = None,
        state: State | None = None,
    ) -> tuple[torch.Tensor | PackedSequence, State]:
        """Run the layer.

        Args:
            input: (B, T, F) when ``batch_first`` else (T, B, F), zero-padded after each
                sequence's end when ``lengths`` is given; or a ``PackedSequence``.
            lengths: (B,) integer lengths in [1, T] of the padded sequences.
            state: initial state, (L*D, B, H) (a pair (h, c) for the LSTM); zeros if None.

        Returns:
            ``(output, state)``: output in the input's form with D*H features per step
            (zeros at padded steps), state at each sequence's true last step.
        """
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError(f"{name}: lengths must be None for a PackedSequence input")
            check_shape(input.data, "N F", name=name, F=self.input_size)
            batch = int(input.batch_sizes[0])
            ref = input.data
        else:
            pattern = "B T F" if self.batch_first else "T B F"
            dims = check_shape(input, pattern, name=name, F=self.input_size)
            batch, ref = dims["B"], input
            if lengths is not None:
                lengths = self._check_lengths(lengths, batch, dims["T"])
        hx = self._check_state(state, batch, ref)
        if self.tbptt is not None and torch.is_grad_enabled():
            out, new = self._forward_tbptt(input, lengths, hx)
        else:
            out, new = self._forward_once(input, lengths, hx)
        return out, self._public_state(new)

    def _check_lengths(self, lengths: torch.Tensor, batch: int, t: int) -> torch.Tensor:
        name = type(self).__name__
        if not isinstance(lengths, torch.Tensor):
            lengths = torch.as_tensor(lengths)
        check_shape(lengths, "B", name=name, arg="lengths", B=batch)
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise ShapeError(f"{name}: expected integer lengths, got dtype {lengths.dtype}")
        if not _exporting() and (bool((lengths < 1).any()) or bool((lengths > t).any())):
            raise ShapeError(f"{name}: lengths must lie in [1, T={t}], got {lengths.tolist()}")
        return lengths

    def _check_state(self, state: State | None, batch: int, ref: torch.Tensor) -> list[torch.Tensor]:
        """The state as a list of ``state_parts`` tensors (L*D, B, H)."""
        name = type(self).__name__
        ld = self.num_layers * self.num_directions
        if state is None:
            z = ref.new_zeros(ld, batch, self.out_size)
            return [z] * self.state_parts
        parts = [state] if isinstance(state, torch.Tensor) else list(state)
        if len(parts) != self.state_parts:
            raise ShapeError(f"{name}: expected a state of {self.state_parts} tensor(s), got {len(parts)}")
        for s in parts:
            check_shape(s, "LD B H", name=name, arg="state", LD=ld, B=batch, H=self.out_size)
        return parts

    def _public_state(self, parts: list[torch.Tensor]) -> State:
        return parts[0] if self.state_parts == 1 else (parts[0], parts[1])

    # -- one pass over the whole input ------------------------------------------------
    def _forward_once(
        self, input: torch.Tensor | PackedSequence, lengths: torch.Tensor | None, hx: list[torch.Tensor]
    ) -> tuple[torch.Tensor | PackedSequence, list[torch.Tensor]]:
        if isinstance(input, PackedSequence):
            if self.fused:
                return self._native_packed(input, hx)
            # Loop on the padded form (original batch order), then pack as the input was.
            x, lens = pad_packed_sequence(input, batch_first=True)  # (B, T, F)
            out, new = self._loop(x, lens, hx)
            return _repack(out, input), new
        if self.fused and (lengths is None or not _exporting()):
            if lengths is None:
                return self._native(input, None, hx)
            packed = pack_padded_sequence(input, lengths.cpu(), batch_first=self.batch_first,
                                          enforce_sorted=False)
            out, new = self._native_packed(packed, hx)
            padded, _ = pad_packed_sequence(out, batch_first=self.batch_first, total_length=input.shape[
                1 if self.batch_first else 0])
            return padded, new
        x = input if self.batch_first else input.transpose(0, 1)  # (B, T, F)
        out, new = self._loop(x, lengths, hx)
        return (out if self.batch_first else out.transpose(0, 1)), new

    def _native(
        self, x: torch.Tensor, batch_sizes: torch.Tensor | None, hx: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fn = {"rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu, "lstm": torch.lstm,
              "gru": torch.gru}[self.mode]
        h = hx if self.mode == "lstm" else hx[0]
        args = (h, self._flat_weights(), self.bias, self.num_layers, self.dropout, self.training,
                self.bidirectional)
        if batch_sizes is None:
            res = fn(x, *args, self.batch_first)
        else:
            res = fn(x, batch_sizes, *args)
        return res[0], list(res[1:])

    def _native_packed(
        self, input: PackedSequence, hx: list[torch.Tensor]
    ) -> tuple[PackedSequence, list[torch.Tensor]]:
        if input.sorted_indices is not None:
            # The state is given in the original batch order; the kernel wants it sorted.
            hx = [h.index_select(1, input.sorted_indices) for h in hx]
        data, new = self._native(input.data, input.batch_sizes, hx)
        if input.unsorted_indices is not None:
            new = [h.index_select(1, input.unsorted_indices) for h in new]
        out = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        return out, new

    def _loop(
        self, x: torch.Tensor, lengths: torch.Tensor | None, hx: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Layer by layer, direction by direction, the step of ``cells.py`` over time."""
        t = x.shape[1]
        mask = None
        if lengths is not None:
            mask = torch.arange(t, device=x.device)[None, :] < lengths.to(x.device)[:, None]  # (B, T)
        finals: list[tuple[torch.Tensor, ...]] = []
        layer_in = x
        for k in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                i = k * self.num_directions + d
                o, st = self._scan(self._params(i), layer_in, tuple(h[i] for h in hx), mask, d == 1)
                outs.append(o)
                finals.append(st)
            layer_in = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (B, T, D*H)
            if k < self.num_layers - 1 and self.dropout and self.training:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
        new = [torch.stack([f[j] for f in finals]) for j in range(self.state_parts)]  # (L*D, B, H)
        return layer_in, new

    # -- truncated back-propagation through time --------------------------------------
    def _forward_tbptt(
        self, input: torch.Tensor | PackedSequence, lengths: torch.Tensor | None, hx: list[torch.Tensor]
    ) -> tuple[torch.Tensor | PackedSequence, list[torch.Tensor]]:
        """Chunks of ``tbptt`` steps; the state is carried on and detached between chunks."""
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            x, lengths = pad_packed_sequence(packed, batch_first=True)  # (B, T, F)
        else:
            x = input if self.batch_first else input.transpose(0, 1)  # (B, T, F)
        t, k = x.shape[1], int(self.tbptt or 1)
        outs = []
        for s in range(0, t, k):
            chunk = x[:, s : s + k]  # (B, k, F)
            if lengths is None:
                out, hx = self._forward_batch_first(chunk, None, hx)
            else:
                left = (lengths.to(x.device) - s).clamp(0, chunk.shape[1])  # steps of this chunk
                live = left > 0  # (B,)
                out, new = self._forward_batch_first(chunk, left.clamp(min=1), hx)
                # A finished sequence keeps its state and emits zeros.
                hx = [torch.where(live[None, :, None], n, h) for n, h in zip(new, hx, strict=True)]
                out = out * live[:, None, None].to(out.dtype)
            outs.append(out)
            if s + k < t:  # cut the graph between chunks; the final state keeps its last chunk's
                hx = [h.detach() for h in hx]
        out = torch.cat(outs, dim=1)  # (B, T, H)
        if packed is not None:
            return _repack(out, packed), hx
        return (out if self.batch_first else out.transpose(0, 1)), hx

    def _forward_batch_first(
        self, x: torch.Tensor, lengths: torch.Tensor | None, hx: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.batch_first:
            out, new = self._forward_once(x, lengths, hx)
            return out, new  # type: ignore[return-value]
        out, new = self._forward_once(x.transpose(0, 1), lengths, hx)
        return out.transpose(0, 1), new  # type: ignore[union-attr]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        s += f", batch_first={self.batch_first}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.tbptt:
            s += f", tbptt={self.tbptt}"
        return s + f", fused={self.fused}"


def _repack(out: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """Pack a padded (B, T, H) output with the batch order and sizes of ``like``."""
    if like.sorted_indices is not None:
        out = out.index_select(0, like.sorted_indices)  # (B, T, H) sorted by length
    lens = _lengths_sorted(like.batch_sizes)
    data = pack_padded_sequence(out, lens, batch_first=True, enforce_sorted=True).data  # (N, H)
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def _lengths_sorted(batch_sizes: torch.Tensor) -> torch.Tensor:
    """Lengths in sorted (descending) order from a packed sequence's batch sizes."""
    b = int(batch_sizes[0])
    return (batch_sizes[None, :] > torch.arange(b)[:, None]).sum(1)  # (B,)


def _seq_out(shape: Any, cfg: Any) -> tuple[int, ...]:
    d = 2 if cfg.get("bidirectional") else 1
    return (shape[0], shape[1], d * (cfg.get("output_size") or cfg["hidden_size"]))


def _state_dims(n_state: int) -> tuple[int, ...]:
    return (0, *([1] * n_state))


def _mask_step(
    m: torch.Tensor | None, new: tuple[torch.Tensor, ...], old: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """Keep the old state where the step is padding (m False)."""
    if m is None:
        return new
    return tuple(torch.where(m, n, o) for n, o in zip(new, old, strict=True))


def _time_order(t: int, reverse: bool) -> range:
    return range(t - 1, -1, -1) if reverse else range(t)


def _stack_out(outs: list[torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
    out = torch.stack(outs, dim=1)  # (B, T, H)
    return out if mask is None else out * mask[..., None].to(out.dtype)


def _project(p: dict[str, torch.Tensor], x: torch.Tensor, *, fold_hh: bool = True) -> list[torch.Tensor]:
    """Step inputs W_ih x_t + b_ih (+ b_hh when ``fold_hh``), one matrix product for all steps.

    ``unbind`` into T tensors (B, G*H) (not ``gx[:, t]``, whose backward writes T
    full-size zero tensors).
    """
    b = _sum_bias(p.get("bias_ih"), p.get("bias_hh")) if fold_hh else p.get("bias_ih")
    return list(F.linear(x, p["weight_ih"], b).unbind(1))  # T x (B, G*H)


def _sum_bias(b_ih: torch.Tensor | None, b_hh: torch.Tensor | None) -> torch.Tensor | None:
    return b_ih if b_ih is None or b_hh is None else b_ih + b_hh


def _masks(mask: torch.Tensor | None, t: int) -> list[torch.Tensor | None]:
    return [None] * t if mask is None else list(mask[..., None].unbind(1))  # T x (B, 1)



# Variable-length batches: validating the lengths and packing them read the lengths'
# values on the host, which torch.compile cannot trace into one graph.
LENGTHS_GRAPH_BREAK = {
    "fullgraph": "graph breaks where the lengths are validated and packed: both read the "
                 "lengths' values (data-dependent), so torch.compile runs with fullgraph=False"
}

@register(
    name="elman_rnn",
    family="recurrent",
    paper="Finding Structure in Time",
    arxiv="Cognitive Science 14(2)",
    year=1990,
    input="sequence",
    example=Example(
        config=dict(input_size=8, hidden_size=12, num_layers=2, bidirectional=True),
        inputs=sequence("input_size", lengths=True),
        size=(8,),
        out_shape=_seq_out,
        tiny=dict(input_size=3, hidden_size=4),
    ),
    out_batch_dims=_state_dims(1),
    exempt=LENGTHS_GRAPH_BREAK,
)
class ElmanRNN(_RecurrentLayer):
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
        require(nonlinearity in ("tanh", "relu"),
                f"ElmanRNN: nonlinearity={nonlinearity!r} not in ('tanh', 'relu')")
        self.mode = f"rnn_{nonlinearity}"
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def _scan(self, p, x, state, mask, reverse):  # type: ignore[no-untyped-def]
        gx, w_t = _project(p, x), p["weight_hh"].t()  # T x (B, H)
        ms, relu = _masks(mask, x.shape[1]), self.mode == "rnn_relu"  # T x (B, 1)
        (h,) = state
        outs: list[torch.Tensor] = [h] * x.shape[1]
        for t in _time_order(x.shape[1], reverse):
            new = elman_step(gx[t], h, w_t, None, relu)
            outs[t] = new
            (h,) = _mask_step(ms[t], (new,), (h,))
        return _stack_out(outs, mask), (h,)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}"


@register(
    name="lstm",
    family="recurrent",
    paper="Long Short-Term Memory",
    arxiv="Neural Computation 9(8)",
    year=1997,
    input="sequence",
    example=Example(
        config=dict(input_size=8, hidden_size=12, num_layers=2, bidirectional=True),
        inputs=sequence("input_size", lengths=True),
        size=(8,),
        out_shape=_seq_out,
        tiny=dict(input_size=3, hidden_size=4),
    ),
    out_batch_dims=_state_dims(2),
    exempt=LENGTHS_GRAPH_BREAK,
)
class LSTM(_RecurrentLayer):
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

    def _scan(self, p, x, state, mask, reverse):  # type: ignore[no-untyped-def]
        if scan_applies(x):
            b = _sum_bias(p.get("bias_ih"), p.get("bias_hh"))
            gx = F.linear(x.transpose(0, 1), p["weight_ih"], b)  # (T, B, 4H), time-major
            return lstm_scan(gx, *state, p["weight_hh"], p.get("weight_peep"), mask, reverse)
        gx, w_t = _project(p, x), p["weight_hh"].t()  # T x (B, 4H)
        ms, peep = _masks(mask, x.shape[1]), p.get("weight_peep")  # T x (B, 1)
        h, c = state
        outs: list[torch.Tensor] = [h] * x.shape[1]
        for t in _time_order(x.shape[1], reverse):
            new = lstm_step(gx[t], h, c, w_t, None, peep)
            outs[t] = new[0]
            h, c = _mask_step(ms[t], new, (h, c))
        return _stack_out(outs, mask), (h, c)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", peephole=True" if self.peephole else "")


@register(
    name="peephole_lstm",
    family="recurrent",
    paper="Learning Precise Timing with LSTM Recurrent Networks",
    arxiv="JMLR 3",
    year=2002,
    input="sequence",
    example=Example(
        config=dict(input_size=8, hidden_size=12, num_layers=2, bidirectional=True),
        inputs=sequence("input_size", lengths=True),
        size=(8,),
        out_shape=_seq_out,
        tiny=dict(input_size=3, hidden_size=4),
    ),
    out_batch_dims=_state_dims(2),
    exempt=LENGTHS_GRAPH_BREAK,
)
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


@register(
    name="gru",
    family="recurrent",
    paper="Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine Translation",
    arxiv="1406.1078",
    year=2014,
    input="sequence",
    example=Example(
        config=dict(input_size=8, hidden_size=12, num_layers=2, bidirectional=True),
        inputs=sequence("input_size", lengths=True),
        size=(8,),
        out_shape=_seq_out,
        tiny=dict(input_size=3, hidden_size=4),
    ),
    out_batch_dims=_state_dims(1),
    exempt=LENGTHS_GRAPH_BREAK,
)
class GRU(_RecurrentLayer):
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

    def _scan(self, p, x, state, mask, reverse):  # type: ignore[no-untyped-def]
        # b_hn sits inside r * (W_hn h + b_hn): b_hh is not folded into the projection
        gx, w_t = _project(p, x, fold_hh=False), p["weight_hh"].t()  # T x (B, 3H)
        ms, b_hh = _masks(mask, x.shape[1]), p.get("bias_hh")  # T x (B, 1)
        (h,) = state
        outs: list[torch.Tensor] = [h] * x.shape[1]
        for t in _time_order(x.shape[1], reverse):
            new = gru_step(gx[t], h, w_t, b_hh)
            outs[t] = new
            (h,) = _mask_step(ms[t], (new,), (h,))
        return _stack_out(outs, mask), (h,)


@register(
    name="jordan_rnn",
    family="recurrent",
    paper="Serial Order: A Parallel Distributed Processing Approach",
    arxiv="ICS Report 8604",
    year=1986,
    input="sequence",
    example=Example(
        config=dict(input_size=8, hidden_size=12, num_layers=2, bidirectional=True, output_size=6),
        inputs=sequence("input_size", lengths=True),
        size=(8,),
        out_shape=_seq_out,
        tiny=dict(input_size=3, hidden_size=4, output_size=2),
    ),
    out_batch_dims=_state_dims(1),
    exempt=LENGTHS_GRAPH_BREAK,
)
class JordanRNN(_RecurrentLayer):
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
    module) runs the step of ``cells.py`` under autograd. Jordan's plan units are
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

    def _scan(self, p, x, state, mask, reverse):  # type: ignore[no-untyped-def]
        if scan_applies(x) and jordan_scan_applies(self.act, self.out_act):
            gx = F.linear(x.transpose(0, 1), p["weight_ih"], p.get("bias_ih"))  # (T, B, H), time-major
            out, s = jordan_scan(gx, *state, p["weight_sh"], p["weight_ho"], p.get("bias_ho"), mask, reverse,
                                 self.state_decay, self.act, self.out_act)
            return out, (s,)
        gx, w_t = _project(p, x), p["weight_sh"].t()  # T x (B, H)
        ms, w_ho, b_ho = _masks(mask, x.shape[1]), p["weight_ho"], p.get("bias_ho")  # T x (B, 1)
        (s,) = state
        outs: list[torch.Tensor] = [s] * x.shape[1]
        for t in _time_order(x.shape[1], reverse):
            y, s_next, _ = jordan_step(gx[t], s, w_t, w_ho, b_ho, self.act, self.out_act, self.state_decay)
            outs[t] = y
            (s,) = _mask_step(ms[t], (s_next,), (s,))
        return _stack_out(outs, mask), (s,)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, output_size={self.output_size}, state_decay={self.state_decay}"
