r"""Input layers for sequence models over words: embeddings, 1-of-N, letter trigrams.

Papers: Finding Structure in Time (Elman), 1990 — words as 1-of-N (localist)
vectors; Learning Deep Structured Semantic Models for Web Search using
Clickthrough Data (Huang et al.), CIKM 2013 — letter-trigram word hashing;
A Neural Probabilistic Language Model (Bengio et al.), JMLR 3, 2003 — learned word
embeddings.

- ``TokenEmbedding``: ids (B, T) -> vectors (B, T, E), the padding id maps to zeros
  and gets no gradient; ``lengths`` counts the non-padding ids.
- ``OneHotEncoder``: words -> 1-of-N vectors with an extra ``other`` dimension for
  out-of-vocabulary words.
- ``TrigramEncoder``: words -> counts of their letter trigrams, each word wrapped in
  ``#`` boundary marks (``bool`` -> ``#bo, boo, ool, ol#``), with an ``other``
  dimension for trigrams never seen when the encoder was built.

The two word encoders take a batch of sentences (lists of words) and return
``(x (B, T, V), lengths (B,))``, zero-padded, ready for ``model(x, lengths)``.

Letters: B batch, T words per sentence, E embedding size, V encoder dimensions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.registry import Example, register, token_ids

__all__ = ["OneHotEncoder", "TokenEmbedding", "TrigramEncoder", "letter_trigrams"]


@register(
    name="token_embedding",
    family="recurrent",
    paper="A Neural Probabilistic Language Model",
    arxiv="JMLR 3",
    year=2003,
    input="sequence",
    example=Example(
        config=dict(vocab_size=20, dim=8),
        inputs=token_ids("vocab_size"),
        size=(8,),
        out_shape=lambda s, cfg: (*s, cfg["dim"]),
        tiny=dict(vocab_size=6, dim=3),
    ),
)
class TokenEmbedding(nn.Module):
    r"""Token-id embedding front end with a padding index.

    Bengio et al., "A Neural Probabilistic Language Model", JMLR 3, 2003.

    Equation::

        e_t = E[id_t]        (E[padding_idx] = 0, and it receives no gradient)

    Args:
        vocab_size: V, the number of ids (the padding id included).
        dim: E, the embedding size.
        padding_idx: the id used for padding (None: no padding id).

    Shape:
        - Input: integer ids (B, T) in [0, V), V = vocab_size.
        - Output: (B, T, E), E = dim.

    Example:
        >>> emb = TokenEmbedding(100, 16)
        >>> ids = torch.tensor([[5, 7, 0], [3, 0, 0]])
        >>> emb(ids).shape, emb.lengths(ids).tolist()
        (torch.Size([2, 3, 16]), [2, 1])
    """

    def __init__(
        self, vocab_size: int, dim: int, *, padding_idx: int | None = 0, device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(vocab_size > 0 and dim > 0, f"TokenEmbedding: vocab_size={vocab_size}, dim={dim} must be > 0")
        require(padding_idx is None or 0 <= padding_idx < vocab_size,
                f"TokenEmbedding: padding_idx={padding_idx} not in [0, vocab_size={vocab_size})")
        self.vocab_size, self.dim, self.padding_idx = vocab_size, dim, padding_idx
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=padding_idx, device=device, dtype=dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_shape(ids, "B T", name="TokenEmbedding", arg="ids")
        if ids.is_floating_point() or ids.is_complex():
            raise ShapeError(f"TokenEmbedding: expected integer ids (B, T), got dtype {ids.dtype}")
        return self.embed(ids)  # (B, T, E)

    def lengths(self, ids: torch.Tensor) -> torch.Tensor:
        """Non-padding ids per row (padding assumed at the end), at least 1."""
        if self.padding_idx is None:
            return torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
        return (ids != self.padding_idx).sum(1).clamp(min=1)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, dim={self.dim}, padding_idx={self.padding_idx}"


def letter_trigrams(word: str) -> list[str]:
    """The letter trigrams of ``#word#``: ``letter_trigrams("bool") == ["#bo", "boo", "ool", "ol#"]``."""
    w = f"#{word}#"
    return [w[i : i + 3] for i in range(len(w) - 2)]


class _WordEncoder(nn.Module):
    """Sentences (lists of words) -> zero-padded (B, T, V) float tensor and lengths (B,)."""

    def __init__(self, keys: Sequence[str], *, lowercase: bool) -> None:
        super().__init__()
        keys = list(dict.fromkeys(keys))
        require(len(keys) > 0, f"{type(self).__name__}: needs at least one entry")
        self.keys = keys
        self.lowercase = lowercase
        self.index = {k: i for i, k in enumerate(keys)}
        self.other = len(keys)  # the extra dimension for anything unknown
        self.num_features = len(keys) + 1

    def _norm(self, word: str) -> str:
        return word.lower() if self.lowercase else word

    def _features(self, word: str) -> list[int]:
        raise NotImplementedError(f"{type(self).__name__} must implement _features (word -> feature ids)")

    def forward(
        self, sentences: Sequence[Sequence[str]], *, device: Any = None, dtype: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        name = type(self).__name__
        if isinstance(sentences, str) or not all(not isinstance(s, str) for s in sentences):
            raise ShapeError(f"{name}: expected a batch of sentences (lists of words), got a string")
        if len(sentences) == 0 or any(len(s) == 0 for s in sentences):
            raise ShapeError(f"{name}: every sentence needs at least one word")
        lengths = torch.tensor([len(s) for s in sentences])
        x = torch.zeros(len(sentences), int(lengths.max()), self.num_features, dtype=dtype)
        rows, cols, feats = [], [], []
        for b, sent in enumerate(sentences):
            for t, word in enumerate(sent):
                for f in self._features(word):
                    rows.append(b)
                    cols.append(t)
                    feats.append(f)
        x.index_put_((torch.tensor(rows), torch.tensor(cols), torch.tensor(feats)),
                     torch.ones(len(rows), dtype=x.dtype), accumulate=True)  # counts
        return x.to(device), lengths.to(device)

    def extra_repr(self) -> str:
        return f"entries={len(self.keys)}, num_features={self.num_features}, lowercase={self.lowercase}"


class OneHotEncoder(_WordEncoder):
    r"""1-of-N word encoder with an extra ``other`` dimension for unknown words.

    Elman, "Finding Structure in Time", Cognitive Science 1990 (localist word
    vectors).

    Equation, for a vocabulary w_0..w_{N-1}::

        x(word)_i = 1 if word == w_i (i < N);  x(word)_N = 1 if word is not in it

    Args:
        vocab: the N known words (duplicates dropped, order kept).
        lowercase: compare words lower-cased.

    Shape:
        - Input: B sentences (lists of words), the longest T words.
        - Output: (x (B, T, N + 1), lengths (B,)); rows after a sentence's end are 0.

    Example:
        >>> enc = OneHotEncoder(["book", "a", "flight"])
        >>> x, lengths = enc([["book", "a", "taxi"]])
        >>> x[0].argmax(-1).tolist()
        [0, 1, 3]
    """

    def __init__(self, vocab: Iterable[str], *, lowercase: bool = True) -> None:
        words = [w.lower() if lowercase else w for w in vocab]
        super().__init__(words, lowercase=lowercase)

    def _features(self, word: str) -> list[int]:
        return [self.index.get(self._norm(word), self.other)]


class TrigramEncoder(_WordEncoder):
    r"""Letter-trigram word hashing: a word becomes the counts of its letter trigrams.

    Huang et al., "Learning Deep Structured Semantic Models for Web Search using
    Clickthrough Data", CIKM 2013.

    Equation::

        x(word)_j = number of times trigram j occurs in "#" + word + "#"
        (bool -> #bo, boo, ool, ol#); trigrams not in the table count in x_K

    Args:
        trigrams: the K known trigrams (build them from words with ``from_words``).
        lowercase: lower-case words first (as the paper does).

    Shape:
        - Input: B sentences (lists of words), the longest T words.
        - Output: (x (B, T, K + 1), lengths (B,)); rows after a sentence's end are 0.

    Deviations: the paper's table holds every trigram of a large corpus (about
    30k); here it holds those of the words given, plus one ``other`` dimension, so
    unseen words still get a (partly shared) representation.

    Example:
        >>> enc = TrigramEncoder.from_words(["bool", "boot"])
        >>> x, _ = enc([["bool"]])
        >>> sorted(k for k, v in zip(enc.keys, x[0, 0]) if v)
        ['#bo', 'boo', 'ol#', 'ool']
    """

    def __init__(self, trigrams: Iterable[str], *, lowercase: bool = True) -> None:
        super().__init__(list(trigrams), lowercase=lowercase)

    @classmethod
    def from_words(cls, words: Iterable[str], *, lowercase: bool = True) -> TrigramEncoder:
        """An encoder whose table holds every trigram of ``words`` (sorted)."""
        grams = {g for w in words for g in letter_trigrams(w.lower() if lowercase else w)}
        return cls(sorted(grams), lowercase=lowercase)

    def _features(self, word: str) -> list[int]:
        return [self.index.get(g, self.other) for g in letter_trigrams(self._norm(word))]
