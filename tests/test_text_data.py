"""Sentences (``--data text:PATH``): the tutorials' English/Spanish sentences as a CSV are
encoded with the library's word encoders (vocabulary from the training split only),
trained on well above chance, stored with the run as plain data, and predicted on from
raw sentences with class names."""

import csv
import json
import logging
from pathlib import Path

import pytest
import torch

from blockzoo.checks import ConfigError, DataError
from blockzoo.cli import main
from blockzoo.data import load_data
from blockzoo.data.base import split_indices
from blockzoo.data.generated import en_es_sentences
from blockzoo.data.text import encode_sentences, words
from blockzoo.io import DATA_KEY, read_metadata
from blockzoo.registry import UnknownNameError
from blockzoo.train import evaluate_checkpoint, predict, train

LANGS = ("english", "spanish")
ONLY = ["solo0", "solo1", "solo2", "solo3", "solo4", "solo5"]  # one row each: some miss the training split


def labels_of(rows: list[tuple[str, str]]) -> torch.Tensor:
    """Each row's class index (sorted label names), as the loader numbers them."""
    return torch.tensor([LANGS.index(label) for _, label in rows])


def write_en_es(path: Path, n: int = 300, *, sep: str = ",") -> list[tuple[str, str]]:
    """The lesson's sentences (``bow_en_es``'s generator) as ``text,label`` rows, with a few
    capitals and punctuation, and six rows that each hold a word no other row has."""
    sentences, labels = en_es_sentences(n, seed=0)
    rows = [(" ".join(s), LANGS[y]) for s, y in zip(sentences, labels.tolist(), strict=True)]
    rows[0] = (rows[0][0].capitalize() + ", ok?", rows[0][1])
    for i, w in enumerate(ONLY):
        rows[10 + i] = (rows[10 + i][0] + " " + w, rows[10 + i][1])
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, delimiter=sep)
        out.writerow(["text", "label"])
        out.writerows(rows)
    return rows


def test_trains_on_english_spanish_and_predicts_class_names(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "en_es.csv"
    rows = write_en_es(path)
    with caplog.at_level(logging.INFO, logger="blockzoo"):
        res = train(dict(data=f"text:{path}", epochs=8, batch_size=16, lr=3e-3, runs_dir=str(tmp_path),
                         name="lang", quiet=True, plots=False))
    assert "tabular_mlp (sentences as bag-of-words count vectors" in caplog.text  # chosen, and why
    assert "2 classes (english" in caplog.text
    assert res.test["acc"] >= 0.9, res.test  # 60 test sentences; chance is about 0.5
    data = load_data(f"text:{path}")
    assert data.classes == LANGS and data.input == "vector" and not data.ids
    # the vocabulary is the training split's words only (val/test words are "other")
    tr, _, _ = split_indices(len(rows), 0, 0.1, 0.2, labels_of(rows))  # stratified, as the loader
    train_words = {w for i in tr.tolist() for w in words(rows[i][0])}
    keys = data.stats["text"]["keys"]
    assert keys == sorted(train_words) and data.shape == (len(keys) + 1,)
    assert 0 < sum(w in keys for w in ONLY) < len(ONLY)
    # bag of words: x[b, i] counts keys[i] in sentence b, the last column the unknown words
    for b, i in enumerate(tr[:20].tolist()):
        ws = words(rows[i][0])
        want = [ws.count(k) for k in keys] + [sum(w not in keys for w in ws)]
        assert data.train.x[b].tolist() == want
    # stored with the run as plain data: the checkpoint and model.safetensors' metadata
    best = tmp_path / "lang" / "best.pt"
    facts = json.loads(read_metadata(tmp_path / "lang" / "model.safetensors")[DATA_KEY])
    assert facts == {"classes": list(LANGS), "text": {"encoder": "bow", "keys": keys, "column": "text"}}
    assert evaluate_checkpoint(best)["acc"] == pytest.approx(res.test["acc"])
    # predict from raw sentences: one per line, a CSV with the text column, a Python list
    new = ["I like to drink water today.", "yo creo que el agua es muy buena", "¡Dame pan, amigo!",
           "where is my friend"]
    lines = "\n".join(new[:2]) + "\n\n" + "\n".join(new[2:]) + "\n"  # a blank line is skipped
    (tmp_path / "new.txt").write_text(lines, encoding="utf-8")
    with open(tmp_path / "new.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["id", "text"], *[[k, s] for k, s in enumerate(new)]])
    by_line = predict(best, tmp_path / "new.txt")
    assert [r["text"] for r in by_line] == new
    assert [r["prediction"] for r in by_line] == ["english", "spanish", "spanish", "english"]
    assert predict(best, tmp_path / "new.csv") == by_line == predict(best, new)
    with torch.no_grad():
        x = encode_sentences([words(s) for s in new], data.stats["text"])
        want = [LANGS[i] for i in res.model(x).argmax(-1).tolist()]
    assert [r["prediction"] for r in by_line] == want
    assert main(["predict", "--checkpoint", str(best), "--input", str(tmp_path / "new.txt")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "index,text,prediction,confidence" and out[2].split(",")[2] == "spanish"


@pytest.mark.parametrize("encoder", ["trigram", "onehot"])
def test_trigram_and_onehot_encoders(tmp_path: Path, encoder: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "en_es.tsv"
    rows = write_en_es(path, 240, sep="\t")
    spec = f"text:{path}?encoder={encoder}"
    data = load_data(spec)
    tr, _, _ = split_indices(len(rows), 0, 0.1, 0.2, labels_of(rows))  # stratified, as the loader
    train_words = sorted({w for i in tr.tolist() for w in words(rows[i][0])})
    keys = data.stats["text"]["keys"]
    first = words(rows[tr[0].item()][0])
    if encoder == "trigram":  # counts of the words' letter trigrams (#word#), the training split's
        assert keys == sorted({f"#{w}#"[k:k + 3] for w in train_words for k in range(len(w))})
        x = data.train.x[0]
        grams = [f"#{w}#"[k:k + 3] for w in first for k in range(len(w))]
        assert x[keys.index("#ag")] == sum(g == "#ag" for g in grams) and x.sum() == len(grams)
    else:  # word ids: 1 + the word's place in the training vocabulary, 0 after the sentence
        assert keys == train_words and data.ids and data.input == "sequence"
        assert data.in_chans == len(keys) + 2 and data.shape == (8,)  # sentences of 3-8 words
        assert data.train.x[0].tolist() == [keys.index(w) + 1 for w in first] + [0] * (8 - len(first))
        cut = encode_sentences([["agua"] * 12, ["nunca"]], data.stats["text"])
        assert cut.tolist() == [[keys.index("agua") + 1] * 8, [len(keys) + 1] + [0] * 7]
    with caplog.at_level(logging.INFO, logger="blockzoo"):
        res = train(dict(data=spec, epochs=6, batch_size=16, runs_dir=str(tmp_path), name=encoder,
                         quiet=True, plots=False))
    model = "gru_classifier" if encoder == "onehot" else "tabular_mlp"
    assert f"model: {model}" in caplog.text
    assert res.test["acc"] >= 0.85, res.test  # 48 test sentences
    rows_out = predict(tmp_path / encoder / "best.pt", ["yo creo que el agua es muy buena"])
    assert rows_out[0]["prediction"] == "spanish"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _load(path: Path, content: str, **options: str):
    return load_data(f"text:{_write(path, content)}", file_options=options or None)


def test_errors_name_file_row_and_column(tmp_path: Path) -> None:
    body = "i like water,english\nyo creo que,spanish\n" * 3
    good = "text,label\n" + body
    with pytest.raises(DataError, match=r"a\.csv: row 8, column 1 \('text'\) is empty: every row needs a"):
        _load(tmp_path / "a.csv", good + ",english\n" + body)
    with pytest.raises(DataError, match=r"row 2, column 2 \('label'\) is empty: every row needs a label"):
        _load(tmp_path / "b.csv", "text,label\nhola amigo,\n" + body)
    with pytest.raises(DataError, match=r"row 2, column 1 \('text'\) holds no words \('!!!'\)"):
        _load(tmp_path / "c.csv", "text,label\n!!!,english\n" + body)
    (tmp_path / "d.csv").write_bytes(b"text,label\nla ni\xf1a,spanish\n")
    with pytest.raises(DataError, match=r"text data .*d\.csv is not UTF-8 text \(byte 16"):
        load_data(f"text:{tmp_path / 'd.csv'}")
    with pytest.raises(DataError, match=r"row 3 has 3 cells, the header 2 \(a delimiter inside the text"):
        _load(tmp_path / "e.csv", "text,label\nhola,spanish\nhi, you,english\n")
    with pytest.raises(DataError, match="holds one value \\('english'\\) for every row"):
        _load(tmp_path / "f.csv", "text,label\n" + "i like water,english\n" * 5)
    with pytest.raises(DataError, match="--target 'lang': no such column \\(columns: text, label\\)"):
        _load(tmp_path / "g.csv", good, target="lang")
    # the text and label columns by name; other columns are ignored
    d = _load(tmp_path / "h.csv", "lang,id,words\n" + "english,1,i like water\nspanish,2,yo creo que\n" * 3,
              target="lang", features="words")
    assert d.stats["text"]["column"] == "words" and d.classes == ("english", "spanish")
    assert set(d.stats["text"]["keys"]) <= {"i", "like", "water", "yo", "creo", "que"}  # not ids, labels
    with pytest.raises(ConfigError, match="encoder='glove' must be bow, trigram, onehot"):
        load_data(f"text:{tmp_path / 'g.csv'}?encoder=glove")
    with pytest.raises(UnknownNameError, match="text data option"):
        load_data(f"text:{tmp_path / 'g.csv'}?size=3")
    with pytest.raises(ConfigError, match="--fill-missing applies to csv:PATH or tsv:PATH, not to data"):
        load_data(f"text:{tmp_path / 'g.csv'}", file_options={"fill_missing": "mean"})
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_data(f"text:{tmp_path / 'missing.csv'}")


def test_predict_errors_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "en_es.csv"
    write_en_es(path, 120)
    train(dict(data=f"text:{path}", epochs=1, runs_dir=str(tmp_path), name="r", quiet=True, plots=False))
    best = tmp_path / "r" / "best.pt"
    with pytest.raises(DataError, match=r"new\.txt, row 2: '\?\?' holds no words"):
        predict(best, _write(tmp_path / "new.txt", "hola amigo\n??\n"))
    with pytest.raises(DataError, match="its header has no column 'text'"):
        predict(best, _write(tmp_path / "new.csv", "words,id\nhola amigo,1\n"))
    (tmp_path / "bad.txt").write_bytes(b"la ni\xf1a\n")
    with pytest.raises(DataError, match=r"bad\.txt is not UTF-8 text"):
        predict(best, tmp_path / "bad.txt")
    assert main(["predict", "--checkpoint", str(best), "--input", str(tmp_path / "bad.txt")]) == 2


def test_the_readme_example_file_is_the_lessons_sentences() -> None:
    """``examples/en_es.csv`` (README's ``text:`` example) holds ``bow_en_es``'s 400 sentences (seed 0)."""
    with open(Path(__file__).parents[1] / "examples" / "en_es.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    sentences, labels = en_es_sentences(400, seed=0)
    assert rows[0] == ["text", "label"]
    assert rows[1:] == [[" ".join(s), LANGS[y]] for s, y in zip(sentences, labels.tolist(), strict=True)]
