"""Sentences with labels from a CSV or TSV file: ``--data text:PATH[?encoder=bow|trigram|onehot]``.

Sentence classification, as in the tutorials' English-vs-Spanish lesson
(``bow_en_es``): rows of a text and its label under a header row naming the columns::

    text,label
    i like to drink water today,english
    yo creo que el agua es muy buena,spanish

The text is the column ``text`` (or ``--features NAME``: one column; else the first),
the label the column ``label`` (or ``--target NAME``; else the last). A ``.tsv`` file is
tab-separated. Labels are classes, named as the file spells them and sorted (a softmax
classifier, two classes too). Rows are shuffled with the run's seed as tables are: a
fixed 20% is test, ``val_fraction`` of the rest validation, each class in proportion
(stratified).

Words are the lower-cased runs of letters and digits (``\\w+``: any script, ``agua`` and
``niño`` alike; punctuation is dropped). They are encoded with the library's own word
encoders (``blockzoo.recurrent.encoders``), whose table is built from the **training
split only** (a word seen only in val/test is "other", as it will be at ``predict``):

- ``bow`` (default): word counts, one per training word plus one ``other`` count:
  a bag of words (Harris, "Distributional Structure", 1954), a vector (V + 1,);
  ``OneHotEncoder``'s 1-of-N vectors summed over the sentence.
- ``trigram``: letter-trigram counts of the words (``#agua#`` -> ``#ag, agu, gua, ua#``),
  one per training trigram plus ``other``: ``TrigramEncoder``'s word hashing summed over
  the sentence, the term vector of Huang et al., "Learning Deep Structured Semantic
  Models for Web Search using Clickthrough Data", CIKM 2013; a vector (K + 1,). Unseen
  words still share most of their trigrams with seen ones.
- ``onehot``: the sentence as a sequence of 1-of-N word ids (Elman, "Finding Structure
  in Time", 1990), padded with id 0 to the longest training sentence (longer ones are
  cut there); id i + 1 is training word i, id V + 1 ``other``. An embedding is a 1-of-N
  vector times a matrix, so a sequence model embeds the ids (``vocab_size = V + 2``).

Count vectors are not standardised (a zero stays "absent"). The encoding — the
encoder, its table, the text column and the padded length — is ``Data.stats["text"]``,
plain data (strings and numbers) stored in the run's checkpoint and in
``model.safetensors``' metadata; ``encode_sentences`` encodes new sentences with it at
``predict``.

Letters: B batch (sentences), V training words, K training trigrams, T words per sentence.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blockzoo.checks import ConfigError, DataError, FileFormatError
from blockzoo.data.base import Data, TensorData, parse_file_spec, register_file_loader, split_indices
from blockzoo.data.textfile import read_rows
from blockzoo.recurrent.encoders import OneHotEncoder, TrigramEncoder, letter_trigrams

__all__ = ["TEXT_ENCODERS", "check_encoding", "encode_sentences", "load_text", "read_sentences", "words"]

log = logging.getLogger("blockzoo.data")

TEXT_ENCODERS = ("bow", "trigram", "onehot")
_WORD = re.compile(r"\w+")
_MEMORY_LIMIT = 4 * 2**30  # bytes of dense float32 count vectors


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``: runs of letters and digits (``"¡Hola, Ana!"`` -> hola, ana)."""
    return _WORD.findall(text.lower())


def _parse_encoder(v: str) -> str:
    if v not in TEXT_ENCODERS:
        raise ConfigError(f"text data: encoder={v!r} must be {', '.join(TEXT_ENCODERS)}")
    return v


_OPTIONS = {"encoder": _parse_encoder}


# --------------------------------------------------------------------------- encoding


def _encoder(spec: Mapping[str, Any]) -> OneHotEncoder | TrigramEncoder:
    """The word encoder of a stored encoding: its table, in feature order."""
    keys = spec["keys"]
    return TrigramEncoder(keys) if spec["encoder"] == "trigram" else OneHotEncoder(keys)


def check_encoding(spec: Any, source: str) -> Mapping[str, Any]:
    """A stored text encoding, checked (a checkpoint is data from a user)."""
    ok = (isinstance(spec, Mapping) and spec.get("encoder") in TEXT_ENCODERS
          and isinstance(spec.get("keys"), list) and len(spec["keys"]) > 0
          and all(isinstance(k, str) for k in spec["keys"]) and isinstance(spec.get("column"), str))
    if ok and spec["encoder"] == "onehot":
        ok = isinstance(spec.get("length"), int) and spec["length"] >= 1
    if not ok:
        raise FileFormatError(f"{source}: data_stats 'text' is not a text encoding blockzoo wrote")
    return spec


def encode_sentences(sentences: Sequence[Sequence[str]], spec: Mapping[str, Any], *,
                     source: str = "checkpoint") -> torch.Tensor:
    """Sentences (lists of words) encoded with a stored encoding (``Data.stats["text"]``).

    Returns (B, V + 1) float32 counts (``bow``, ``trigram``: each word's features from the
    encoder's ``_features`` hook, summed) or (B, T) int64 ids (``onehot``, 0 = padding).
    """
    spec = check_encoding(spec, source)
    enc = _encoder(spec)
    # the encoders' per-word hook: feature ids of a word (1-of-N: one; trigrams: one per trigram)
    feats = [[enc._features(w) for w in sent] for sent in sentences]
    if spec["encoder"] == "onehot":
        length = spec["length"]
        ids = torch.zeros(len(sentences), length, dtype=torch.int64)  # (B, T), 0 = padding
        for b, sent in enumerate(feats):
            row = [f[0] + 1 for f in sent[:length]]
            ids[b, :len(row)] = torch.tensor(row, dtype=torch.int64)
        return ids
    width = enc.num_features
    if len(sentences) * width * 4 > _MEMORY_LIMIT:
        raise DataError(f"{source}: {len(sentences)} sentences x {width} {spec['encoder']} features take "
                        f"{len(sentences) * width * 4 / 2**30:.1f} GiB as dense counts; use "
                        "encoder=onehot (word ids, a sequence model)")
    rows = [b for b, sent in enumerate(feats) for f in sent for _ in f]
    cols = [c for sent in feats for f in sent for c in f]
    counts = torch.zeros(len(sentences), width)  # (B, V + 1)
    counts.index_put_((torch.tensor(rows, dtype=torch.int64), torch.tensor(cols, dtype=torch.int64)),
                      torch.ones(len(rows)), accumulate=True)
    return counts


def _table(train: Sequence[Sequence[str]], encoder: str) -> list[str]:
    """The encoder's table from the training sentences: their words, or their words' trigrams (sorted)."""
    vocab = sorted({w for sent in train for w in sent})
    if encoder != "trigram":
        return vocab
    return sorted({g for w in vocab for g in letter_trigrams(w)})


# --------------------------------------------------------------------------- reading


def _column(spec: str | int | None, header: list[str], default: str, fallback: int, option: str,
            source: str) -> int:
    """A column by header name or 0-based index; by default ``default``'s column, else ``fallback``."""
    if spec is None:
        return header.index(default) if default in header else fallback
    s = str(spec).strip()
    if s in header:
        return header.index(s)
    if s.isdigit() and int(s) < len(header):
        return int(s)
    raise DataError(f"{source}: {option} {s!r}: no such column (columns: {', '.join(header)})")


def _where(line: int, j: int, header: list[str]) -> str:
    return f"row {line}, column {j + 1} ({header[j]!r})"


def read_sentences(path: Path, spec: Mapping[str, Any], source: str | None = None
                   ) -> tuple[list[str], list[list[str]]]:
    """New sentences for ``predict``: (texts, their words).

    A ``.csv``/``.tsv`` file with a header holding the run's text column (other columns,
    the label too, may be there) or of one column; any other file holds one sentence per
    line (blank lines skipped). A sentence without a word is an error naming its row.
    """
    source = source or f"input file {path}"
    if not path.is_file():
        raise FileNotFoundError(f"no input file {str(path)!r}")
    if path.suffix in (".csv", ".tsv"):
        rows, lines = read_rows(path, "\t" if path.suffix == ".tsv" else ",", source)
        first = [c.strip() for c in rows[0]] if rows else []
        if spec["column"] in first:
            j = first.index(spec["column"])
            rows, lines = rows[1:], lines[1:]
        elif rows and all(len(r) == 1 for r in rows):
            j = 0
        else:
            raise DataError(f"{source}: its header has no column {spec['column']!r} (the text column the "
                            "run was trained on); give one, or one sentence per row")
        texts = []
        for r, line in zip(rows, lines, strict=True):
            if len(r) <= j:
                raise DataError(f"{source}, row {line}: {len(r)} cells, no column {j + 1} "
                                f"({spec['column']!r})")
            texts.append((r[j], int(line)))
    else:
        try:
            raw = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise DataError(f"{source} is not UTF-8 text (byte {e.start}: {e.reason})") from None
        texts = [(t, i + 1) for i, t in enumerate(raw.splitlines()) if t.strip()]
    if not texts:
        raise DataError(f"{source} holds no sentences (one per line, or a CSV column {spec['column']!r})")
    out = []
    for text, line in texts:
        ws = words(text)
        if not ws:
            raise DataError(f"{source}, row {line}: {text.strip()!r} holds no words")
        out.append(ws)
    return [t.strip() for t, _ in texts], out


def _read_text_file(path: Path, target: str | int | None, features: str | None, source: str
                    ) -> tuple[list[list[str]], list[str], np.ndarray, str, str]:
    """(the words of each row, each row's label, line numbers, text column name, label column name)."""
    rows, lines = read_rows(path, "\t" if path.suffix == ".tsv" else ",", source)
    if len(rows) < 2:
        raise DataError(f"{source}: needs a header row (text,label) and at least 4 data rows, got "
                        f"{max(0, len(rows) - 1)}")
    header = [c.strip() for c in rows[0]]
    if len(header) < 2:
        raise DataError(f"{source}: the header {rows[0]} names {len(header)} column; text data needs a "
                        "text and a label column (is the delimiter right? .tsv files are tab-separated)")
    if features is not None and "," in str(features):
        raise DataError(f"{source}: --features {features!r}: text data takes one text column")
    t = _column(target, header, "label", len(header) - 1, "--target", source)
    j = _column(features, header, "text", 0 if t != 0 else 1, "--features", source)
    if j == t:
        raise DataError(f"{source}: the text column and the label column are both {header[t]!r}")
    rows, lines = rows[1:], lines[1:]
    for r, line in zip(rows, lines, strict=True):
        if len(r) != len(header):
            raise DataError(f"{source}: row {line} has {len(r)} cells, the header {len(header)} (a "
                            "delimiter inside the text? quote the text: \"a, b\",label)")
    texts, labels = [r[j] for r in rows], [r[t].strip() for r in rows]
    sentences = []
    for text, label, line in zip(texts, labels, lines, strict=True):
        ws = words(text)
        if not ws:
            what = "is empty" if not text.strip() else f"holds no words ({text.strip()!r})"
            raise DataError(f"{source}: {_where(line, j, header)} {what}: every row needs a sentence")
        if not label:
            raise DataError(f"{source}: {_where(line, t, header)} is empty: every row needs a label")
        sentences.append(ws)
    if len(sentences) < 4:
        raise DataError(f"{source}: needs at least 4 data rows, got {len(sentences)}")
    return sentences, labels, lines, header[j], header[t]


@register_file_loader("text")
def load_text(spec: str | Path, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
              target: str | int | None = None, features: str | None = None) -> Data:
    """Load ``PATH[?encoder=bow|trigram|onehot]``: sentences and labels (see the module doc).

    Args:
        spec: the file (a header row, then one sentence and its label per row) and options.
        target: the label column, a header name or 0-based index; default ``label``, else
            the last column.
        features: the text column (one); default ``text``, else the first column.

    Errors name the file, the row (its line number; the header is line 1) and the column.
    """
    path, opts = parse_file_spec(str(spec), _OPTIONS, "text")
    encoder = opts.get("encoder", "bow")
    source = f"text data {path}"
    if not path.is_file():
        raise FileNotFoundError(f"text data: no such file {str(path)!r}")
    sentences, labels, _, text_col, label_col = _read_text_file(path, target, features, source)
    classes = tuple(sorted(set(labels)))
    if len(classes) < 2:
        raise DataError(f"{source}: the label column ({label_col!r}) holds one value ({classes[0]!r}) for "
                        "every row; a classifier needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[lab] for lab in labels], dtype=torch.int64)
    tr, va, te = split_indices(len(y), seed, val_fraction, test_fraction, y)  # stratified
    train = [sentences[i] for i in tr.tolist()]
    table = _table(train, encoder)
    enc_spec: dict[str, Any] = {"encoder": encoder, "keys": table, "column": text_col}
    if encoder == "onehot":
        enc_spec["length"] = max(map(len, train))
    x = encode_sentences(sentences, enc_spec, source=source)
    ids = encoder == "onehot"
    width = len(table) + 2 if ids else x.shape[1]  # ids: padding, the words, other
    counts = np.bincount(y.numpy(), minlength=len(classes))
    shown = ", ".join(f"{c} {n}" for c, n in zip(classes, counts, strict=True))
    what = (f"{len(table)} training words as ids (padded to {enc_spec['length']} words; vocabulary "
            f"{width} with padding and other)" if ids else
            f"{len(table)} training {'trigrams' if encoder == 'trigram' else 'words'} + other -> {width} "
            "counts")
    log.info("%s: %d sentences (column %r), labels %r -> %d classes (%s); encoder %s: %s "
             "(encoder=bow|trigram|onehot choose another)", source, len(y), text_col, label_col,
             len(classes), shown, encoder, what)
    stats = {"text": enc_spec}
    return Data(f"text:{spec}", TensorData(x[tr], y[tr]), TensorData(x[va], y[va]), TensorData(x[te], y[te]),
                input="sequence" if ids else "vector", task="classification", num_classes=len(classes),
                in_chans=width, ids=ids, classes=classes, stats=stats,
                about=f"sentences from {path}")
