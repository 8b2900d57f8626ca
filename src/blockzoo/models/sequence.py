r"""Sequence models: recurrent classifiers (many-to-one) and taggers (many-to-many).

Papers: Long Short-Term Memory (Hochreiter, Schmidhuber), Neural Computation 9(8),
1997; Learning Phrase Representations using RNN Encoder-Decoder (Cho et al.), arXiv
1406.1078, 2014; Finding Structure in Time (Elman), 1990; Bidirectional Recurrent
Neural Networks (Schuster, Paliwal), IEEE TSP 45(11), 1997 (the tagger);
Investigation of Recurrent-Neural-Network Architectures and Learning Methods for
Spoken Language Understanding (Mesnil et al.), Interspeech 2013 (slot filling).

Both models take either features (B, T, F) (``input_size``) or token ids (B, T)
(``vocab_size``, through ``TokenEmbedding`` with a padding id), plus optional
lengths (B,); ``blockzoo.create_model(name, num_classes=K, in_chans=F)`` sets F, and
``create_model(name, num_classes=K, input_size=None, vocab_size=V)`` builds the
token-id version (the registered example config holds an ``input_size``).

Letters: B batch, T time steps, F features, V vocabulary, E embedding size,
H hidden size, D directions, K classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.recurrent import GRU, LSTM, ElmanRNN, JordanRNN
from blockzoo.recurrent.base import LENGTHS_GRAPH_BREAK
from blockzoo.recurrent.encoders import TokenEmbedding
from blockzoo.registry import Example, register, sequence

__all__ = [
    "RNNClassifier",
    "RNNTagger",
    "gru_classifier",
    "gru_tagger",
    "lstm_classifier",
    "lstm_tagger",
    "rnn_classifier",
]

# The recurrent layer of each ``cell`` name.
CELLS: dict[str, Callable[..., nn.Module]] = {
    "lstm": LSTM,
    "peephole_lstm": lambda *a, **k: LSTM(*a, peephole=True, **k),
    "gru": GRU,
    "rnn": ElmanRNN,
    "rnn_relu": lambda *a, **k: ElmanRNN(*a, nonlinearity="relu", **k),
    "jordan": JordanRNN,
}


class _SequenceModel(nn.Module):
    """Input front end (features or embedded ids), the recurrent stack and a linear head.

    The two models differ only in what the head reads (final state or every step)
    and in their default ``bidirectional``.
    """

    default_bidirectional = False  # what ``bidirectional=None`` means for this model

    def __init__(
        self,
        input_size: int | None = None,
        num_classes: int = 2,
        *,
        vocab_size: int | None = None,
        embed_dim: int = 32,
        padding_idx: int | None = 0,
        cell: str = "lstm",
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool | None = None,
        dropout: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        require((input_size is None) != (vocab_size is None),
                f"{name}: give exactly one of input_size={input_size} (features) "
                f"and vocab_size={vocab_size} (token ids)")
        require(num_classes >= 1, f"{name}: num_classes={num_classes} must be >= 1")
        require(cell in CELLS, f"{name}: cell={cell!r} not in {sorted(CELLS)}")
        if bidirectional is None:
            bidirectional = self.default_bidirectional
        fk = dict(device=device, dtype=dtype)
        self.input_size, self.vocab_size, self.num_classes, self.cell = (
            input_size, vocab_size, num_classes, cell)
        if vocab_size is not None:
            self.embed: TokenEmbedding | None = TokenEmbedding(
                vocab_size, embed_dim, padding_idx=padding_idx, **fk)
            rnn_in = embed_dim
        else:
            self.embed = None
            rnn_in = int(input_size or 0)
        self.rnn = CELLS[cell](rnn_in, hidden_size, num_layers, bidirectional=bidirectional,
                               dropout=dropout, **fk)
        self.num_directions = 2 if bidirectional else 1
        self.features = self.num_directions * getattr(self.rnn, "out_size", hidden_size)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.features, num_classes, **fk)

    def _encode(
        self, x: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """Run the recurrent stack: (outputs (B, T, D*H), final state, lengths)."""
        name = type(self).__name__
        if self.embed is not None:
            check_shape(x, "B T", name=name, arg="token ids")
            if x.is_floating_point():
                raise ShapeError(f"{name}: expected integer token ids (B, T), got dtype {x.dtype}")
            if lengths is None and self.embed.padding_idx is not None:
                lengths = self.embed.lengths(x)
            x = self.embed(x)  # (B, T, E)
        else:
            check_shape(x, "B T F", name=name, F=self.input_size)
        out, state = self.rnn(x, lengths)
        return out, state, lengths

    def extra_repr(self) -> str:
        src = f"vocab_size={self.vocab_size}" if self.vocab_size else f"input_size={self.input_size}"
        return f"{src}, num_classes={self.num_classes}, cell={self.cell!r}"


def _classes(shape: Any, cfg: Any) -> tuple[int, int]:
    return (shape[0], cfg["num_classes"])


_CLS_EXAMPLE = dict(input_size=6, num_classes=3, hidden_size=12, num_layers=1, bidirectional=True)


class RNNClassifier(_SequenceModel):
    r"""Many-to-one recurrent model: the final state of the top layer -> class scores.

    Hochreiter & Schmidhuber 1997 (LSTM), Cho et al. 2014 (GRU), Elman 1990 (RNN),
    Schuster & Paliwal 1997 (bidirectional).

    Equation::

        (y_1..y_T), h_T = RNN(x_1..x_T)              h_T: each sequence's true last step
        z = [h_T(forward), h_1(reverse)]             top layer, D directions
        logits = W dropout(z) + b

    Args:
        input_size: F, features per step (or None with ``vocab_size``).
        num_classes: K, outputs (1 for a regression such as the adding problem).
        vocab_size: V, for token-id input (embedded, ``padding_idx`` -> lengths).
        embed_dim: E, the embedding size for token ids.
        padding_idx: the padding id; lengths are counted from it when not given.
        cell: ``"lstm"``, ``"peephole_lstm"``, ``"gru"``, ``"rnn"``, ``"rnn_relu"``
            or ``"jordan"``.
        hidden_size: H per direction; num_layers: L; bidirectional: D = 2 (None, the
            default: one direction).
        dropout: between recurrent layers and before the head.

    Shape:
        - Input: (B, T, F), F = input_size, or ids (B, T) < V = vocab_size; optional
          lengths (B,) in [1, T].
        - Output: (B, K) logits, K = num_classes.

    Example:
        >>> model = RNNClassifier(6, 3, hidden_size=16)
        >>> model(torch.randn(2, 9, 6), torch.tensor([9, 4])).shape
        torch.Size([2, 3])
    """

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        _, state, _ = self._encode(x, lengths)
        h = state[0] if isinstance(state, tuple) else state  # (L*D, B, H)
        z = h[-self.num_directions :].transpose(0, 1).reshape(h.shape[1], -1)  # (B, D*H)
        return self.head(self.drop(z))  # (B, K)


class RNNTagger(_SequenceModel):
    r"""Many-to-many recurrent model: one label per step (slot filling, tagging).

    Mesnil et al., "Investigation of Recurrent-Neural-Network Architectures and
    Learning Methods for Spoken Language Understanding", Interspeech 2013;
    bidirectional: Schuster & Paliwal 1997.

    Equation::

        (y_1..y_T) = BiRNN(x_1..x_T)       y_t = [h_t(forward), h_t(reverse)]
        logits_t = W dropout(y_t) + b

    Args:
        input_size: F, features per step (or None with ``vocab_size``).
        num_classes: K, tags.
        vocab_size: V, for token-id input (embedded, ``padding_idx`` -> lengths).
        embed_dim: E, the embedding size for token ids.
        padding_idx: the padding id; lengths are counted from it when not given.
        cell: ``"lstm"``, ``"peephole_lstm"``, ``"gru"``, ``"rnn"``, ``"rnn_relu"``
            or ``"jordan"``.
        hidden_size: H per direction; num_layers: L; bidirectional: D = 2 (None, the
            default: both directions).
        dropout: between recurrent layers and before the head.

    Shape:
        - Input: (B, T, F), F = input_size, or ids (B, T) < V = vocab_size; optional
          lengths (B,) in [1, T].
        - Output: (B, T, K) logits, K = num_classes (padded steps see zero features:
          mask them out of the loss).

    Example:
        >>> tagger = RNNTagger(vocab_size=50, num_classes=5)
        >>> tagger(torch.tensor([[4, 9, 2, 0]])).shape
        torch.Size([1, 4, 5])
    """

    default_bidirectional = True

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        out, _, _ = self._encode(x, lengths)  # (B, T, D*H)
        return self.head(self.drop(out))  # (B, T, K)


def _model_doc(cls: type, cell: str, what: str) -> str:
    return f"""{what}: ``{cls.__name__}(..., cell="{cell}")``.

    See ``{cls.__name__}`` for the equations.

    Args:
        input_size: F, features per step (or None with ``vocab_size=V`` for token ids).
        num_classes: K, outputs.
        **kwargs: the other arguments of ``{cls.__name__}`` (vocab_size, embed_dim,
            padding_idx, hidden_size, num_layers, bidirectional, dropout, device, dtype).

    Shape:
        - Input: (B, T, F), F = input_size, or ids (B, T); optional lengths (B,).
        - Output: {"(B, K)" if cls is RNNClassifier else "(B, T, K)"} logits, K = num_classes.
    """


def _entry(name: str, cls: type, cell: str, paper: str, arxiv: str, year: int, what: str) -> Callable:
    def build(input_size: int | None = None, num_classes: int = 2, *, vocab_size: int | None = None,
              **kwargs: Any) -> nn.Module:
        return cls(input_size, num_classes, vocab_size=vocab_size, cell=cell, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = _model_doc(cls, cell, what)
    out = _classes if cls is RNNClassifier else (lambda s, cfg: (s[0], s[1], cfg["num_classes"]))
    return register(
        name=name, family="model", paper=paper, arxiv=arxiv, year=year, input="sequence",
        output="logits",
        example=Example(config=_CLS_EXAMPLE, inputs=sequence("input_size", lengths=True), size=(8,),
                        out_shape=out, tiny=dict(input_size=3, hidden_size=4, num_layers=1)),
        exempt=LENGTHS_GRAPH_BREAK, ids_arg="vocab_size",
    )(build)


_LSTM = ("Long Short-Term Memory", "Neural Computation 9(8)", 1997)
_GRU = ("Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine Translation",
        "1406.1078", 2014)
_RNN = ("Finding Structure in Time", "Cognitive Science 14(2)", 1990)
_SLU = ("Investigation of Recurrent-Neural-Network Architectures and Learning Methods for Spoken "
        "Language Understanding", "Interspeech 2013", 2013)

lstm_classifier = _entry("lstm_classifier", RNNClassifier, "lstm", *_LSTM, "LSTM sequence classifier")
gru_classifier = _entry("gru_classifier", RNNClassifier, "gru", *_GRU, "GRU sequence classifier")
rnn_classifier = _entry("rnn_classifier", RNNClassifier, "rnn", *_RNN, "Elman RNN sequence classifier")
lstm_tagger = _entry("lstm_tagger", RNNTagger, "lstm", *_SLU, "Bidirectional LSTM tagger (many-to-many)")
gru_tagger = _entry("gru_tagger", RNNTagger, "gru", *_SLU, "Bidirectional GRU tagger (many-to-many)")
