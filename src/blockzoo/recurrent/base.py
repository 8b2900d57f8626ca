r"""The shared base of the recurrent cells and layers, as torch.nn pairs ``RNNCellBase`` and
``RNNBase`` with thin subclasses: each family file (``elman.py``, ``lstm.py``, ``gru.py``,
``jordan.py``) holds its step maths, cell, layer and registrations.

Papers: Bidirectional Recurrent Neural Networks (Schuster, Paliwal), IEEE TSP 45(11),
1997; truncated BPTT: An Efficient Gradient-Based Algorithm for On-Line Training of
Recurrent Network Trajectories (Williams, Peng), Neural Computation 2(4), 1990.

``RNNBase`` holds a stack of layers and all the families share: parameters per layer
and direction, the input forms (a padded batch with optional per-sequence ``lengths``,
or a ``PackedSequence``), the state, dropout between layers, truncated BPTT. Two
implementations compute the same maths:

- native: where PyTorch has a fused kernel (Elman tanh/relu, LSTM without peepholes,
  GRU), the parameters keep ``nn.RNN``/``nn.LSTM``/``nn.GRU``'s layout and names
  (``weight_ih_l0``, ..., ``_reverse``) and ``torch.rnn_tanh``/``lstm``/``gru`` is
  called as those modules call it; padded batches with lengths are packed first.
- a time loop per layer and direction (the family's ``_run_direction``): peephole
  LSTM and Jordan, and every layer with ``fused=False`` or under ``torch.export`` with
  lengths (packing has data-dependent shapes). Lengths are honoured by masking: a
  sequence's state stops at its own last step (forward) or starts there (reverse).
  For the LSTM and Jordan in eager mode this is a scan of ``scan.py`` (hand-derived
  back-propagation through time, the one fast path), elsewhere the step under plain
  autograd (``loop.py``).

Letters: B batch, T time steps, F input features, H hidden size, L layers,
D directions (2 when bidirectional), O Jordan output size, N packed steps,
G gates (1 Elman, 4 LSTM, 3 GRU).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from blockzoo.checks import ConfigError, ShapeError, check_shape, require

__all__ = ["detach_state"]

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
# One layer and direction: its parameters by short name, and its state as a tuple of (B, H) parts.
Params = dict[str, torch.Tensor]
Parts = tuple[torch.Tensor, ...]


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


# --------------------------------------------------------------------------- cells


def check_step_input(x: torch.Tensor, name: str, f: int) -> int:
    """A cell's input (B, F); returns B."""
    return check_shape(x, "B F", name=name, F=f)["B"]


def check_step_state(h: torch.Tensor, name: str, b: int, size: int, arg: str) -> None:
    """A cell's state part ``arg`` (B, size)."""
    check_shape(h, "B H", name=name, arg=arg, B=b, H=size)


class RNNCellBase(nn.Module):
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


# --------------------------------------------------------------------------- layers


class RNNBase(nn.Module):
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

    def _run_direction(
        self, p: Params, x: torch.Tensor, state: Parts, mask: torch.Tensor | None, reverse: bool
    ) -> tuple[torch.Tensor, Parts]:
        """One direction of one layer over all steps: x (B, T, F) -> (output (B, T, H), final state).

        ``p``: the direction's parameters by short name; ``state``: its initial state
        parts, each (B, H); ``mask`` (B, T): False at padded steps; ``reverse``: run
        t = T-1 .. 0.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _run_direction")

    # -- parameters ------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as ``torch.nn.LSTM``."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -k, k)

    def _params(self, i: int) -> Params:
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
                raise ConfigError(f"{name}: lengths must be None for a PackedSequence input")
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
            out, new = self._run_layers(x, lens, hx)
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
        out, new = self._run_layers(x, lengths, hx)
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

    def _run_layers(
        self, x: torch.Tensor, lengths: torch.Tensor | None, hx: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Layer by layer, direction by direction, each family's time loop (``_run_direction``)."""
        t = x.shape[1]
        mask = None
        if lengths is not None:
            mask = torch.arange(t, device=x.device)[None, :] < lengths.to(x.device)[:, None]  # (B, T)
        finals: list[Parts] = []
        layer_in = x
        for k in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                i = k * self.num_directions + d
                o, st = self._run_direction(self._params(i), layer_in, tuple(h[i] for h in hx), mask, d == 1)
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


# Variable-length batches: validating the lengths and packing them read the lengths'
# values on the host, which torch.compile cannot trace into one graph.
LENGTHS_GRAPH_BREAK = {
    "fullgraph": "graph breaks where the lengths are validated and packed: both read the "
                 "lengths' values (data-dependent), so torch.compile runs with fullgraph=False"
}
