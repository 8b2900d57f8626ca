"""Tables as a new user brings them: scikit-learn's iris, wine and breast-cancer saved as CSV.

Issue 16: string labels were refused (``non-numeric value ... 'setosa'``) and a label
in the first column silently became a regression on the last column. The tables
here are generated look-alikes (separable, so a few epochs must learn them).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from blockzoo.checks import ConfigError, DataError
from blockzoo.cli import main
from blockzoo.data import load_data
from blockzoo.train import TrainConfig, evaluate_checkpoint, predict
from blockzoo.train.checkpoint import load_checkpoint
from blockzoo.train.job import load_trained

SPECIES = ("setosa", "versicolor", "virginica")
IRIS_COLS = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def iris(path: Path, n: int = 300, seed: int = 0, sep: str = ",") -> tuple[Path, np.ndarray, list[str]]:
    """species first, then four separable measurements; returns (path, features, species)."""
    g = np.random.default_rng(seed)
    k = np.arange(n) % 3
    x = g.normal(0, 0.3, (n, 4)) + np.c_[5 + k, 3 + 0.5 * k, 1.5 + 2 * k, 0.2 + 0.9 * k]
    names = [SPECIES[i] for i in k]
    lines = [sep.join(("species", *IRIS_COLS))]
    lines += [sep.join([s, *(f"{v:.3f}" for v in r)]) for s, r in zip(names, x, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path, x, names


def wine(path: Path, n: int = 120) -> Path:
    """13 numbers, a text column ``region`` that decides the class, integer cultivar 1-3 last."""
    g = np.random.default_rng(1)
    k = np.arange(n) % 3
    x = g.normal(0, 1, (n, 13)) + k[:, None] * 0.2
    region = np.array(["north", "south", "east"])[k]
    lines = [",".join([*(f"f{i}" for i in range(13)), "region", "cultivar"])]
    lines += [",".join([*(f"{v:.4f}" for v in r), reg, str(c + 1)])
              for r, reg, c in zip(x, region, k, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def cancer(path: Path, n: int = 100, holes: dict[tuple[int, int], str] | None = None) -> Path:
    """``diagnosis`` M/B first, three numbers; ``holes`` {(data row, column): cell} blanks some cells."""
    g = np.random.default_rng(2)
    m = np.arange(n) % 2 == 0
    x = g.normal(0, 1, (n, 3)) + np.where(m, 3.0, 0.0)[:, None]
    rows = [["M" if mi else "B", *(f"{v:.4f}" for v in r)] for mi, r in zip(m, x, strict=True)]
    for (i, j), cell in (holes or {}).items():
        rows[i][j] = cell
    path.write_text("diagnosis,radius,texture,area\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return path


def train_cli(data: str, runs: Path, *extra: str) -> Path:
    assert main(["train", "--data", data, "--epochs", "3", "--batch-size", "8", "--quiet", "--no-plots",
                 "--runs-dir", str(runs), "--name", "t", *extra]) == 0
    return runs / "t"


# --------------------------------------------------------------------------- the issue


def test_iris_string_labels_first_column_train_and_predict_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, x, names = iris(tmp_path / "iris.csv")
    run = train_cli(f"csv:{path}", tmp_path / "runs", "--target", "species")
    res = evaluate_checkpoint(run / "best.pt")
    assert res["acc"] > 0.8  # chance is 1/3
    ck = load_checkpoint(run / "best.pt")
    assert ck["meta"]["classes"] == list(SPECIES) and ck["task"] == "classification"
    # rows with a header in another order, the target column present (and ignored)
    pick = [0, 1, 2, 100, 101, 299]
    lines = ["petal_width,species,sepal_length,petal_length,sepal_width"]
    lines += [f"{x[i, 3]},?,{x[i, 0]},{x[i, 2]},{x[i, 1]}" for i in pick]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run / "best.pt"), "--input", str(tmp_path / "rows.csv")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "index,prediction,confidence"
    got = [line.split(",")[1] for line in out[1:]]
    assert got == [names[i] for i in pick]
    # no header: the feature columns in order; or every column of the training file
    np.savetxt(tmp_path / "plain.csv", x[pick], delimiter=",")
    assert [r["prediction"] for r in predict(run / "best.pt", tmp_path / "plain.csv")] == got
    full = "\n".join(",".join(["x", *map(str, x[i])]) for i in pick)
    (tmp_path / "full.csv").write_text(full + "\n")
    assert [r["prediction"] for r in predict(run / "best.pt", tmp_path / "full.csv")] == got


def test_the_default_target_is_the_last_column_and_one_line_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, _, _ = iris(tmp_path / "iris.csv")
    with caplog.at_level(logging.INFO, logger="blockzoo"):
        d = load_data(f"csv:{path}")
    # once silent: the species became a feature and the last column a regression target
    assert d.task == "regression"
    lines = [r.getMessage() for r in caplog.records if "target" in r.getMessage()]
    assert len(lines) == 1
    assert "target last, 'petal_width' -> regression" in lines[0]
    assert "3 numeric (sepal_length, sepal_width, petal_length, standardised)" in lines[0]
    assert "1 categorical (species: 3 categories, one-hot) -> 6 inputs" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="blockzoo"):
        d = load_data(f"csv:{path}", file_options={"target": "0"})  # a 0-based index
    assert d.task == "classification" and d.classes == SPECIES
    assert "target 'species' -> classification, 3 classes (setosa, versicolor, virginica)" in caplog.text


def test_wine_categorical_feature_is_one_hot_from_the_training_split(tmp_path: Path) -> None:
    d = load_data(f"csv:{wine(tmp_path / 'wine.csv')}")
    assert d.task == "classification" and d.classes == ("1", "2", "3")
    assert d.in_chans == 13 + 3
    table = d.stats["table"]
    spec = table["features"][13]
    assert spec == {"index": 13, "name": "region", "kind": "category",
                    "categories": ["east", "north", "south"], "fill": None}
    onehot = torch.cat([d.train.x, d.val.x, d.test.x])[:, 13:]
    assert set(onehot.flatten().tolist()) == {0.0, 1.0} and (onehot.sum(1) == 1).all()  # not standardised
    assert (d.stats["mean"][13:] == 0).all() and (d.stats["std"][13:] == 1).all()
    assert d.train.x[:, :13].mean(0).abs().max() < 1e-5  # numbers standardised on the training split


def test_a_category_unseen_in_training_encodes_as_zeros(tmp_path: Path) -> None:
    path = wine(tmp_path / "wine.csv")
    lines = path.read_text().splitlines()
    d0 = load_data(f"csv:{path}")
    # the test split is fixed by the row count: give one test row a region no other row has
    raw_test = d0.test.x[0, :13] * d0.stats["std"][:13] + d0.stats["mean"][:13]
    i = 1 + min(range(len(lines) - 1), key=lambda r: float(
        np.abs(np.array(lines[r + 1].split(",")[:13], float) - raw_test.numpy()).max()))
    cells = lines[i].split(",")
    cells[13] = "west"
    lines[i] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    d = load_data(f"csv:{path}")
    assert d.stats["table"]["features"][13]["categories"] == ["east", "north", "south"]
    assert d.test.x[0, 13:].tolist() == [0.0, 0.0, 0.0]


def test_a_wine_run_predicts_from_rows_with_text(tmp_path: Path) -> None:
    path = wine(tmp_path / "wine.csv")
    run = train_cli(f"csv:{path}", tmp_path / "runs", "--target", "cultivar")
    header, *rows = path.read_text().splitlines()
    body = [r.rsplit(",", 1)[0] for r in rows[:6]]  # no target column
    (tmp_path / "in.csv").write_text("\n".join([header.rsplit(",", 1)[0], *body]) + "\n")
    want = [r["prediction"] for r in predict(run / "best.pt", tmp_path / "in.csv")]
    assert set(want) <= {"1", "2", "3"} and len(want) == 6
    # an unseen region is all zeros, the same as giving a region column of zeros
    head = header.rsplit(",", 1)[0]
    (tmp_path / "west.csv").write_text("\n".join([head, body[0].rsplit(",", 1)[0] + ",west"]))
    assert len(predict(run / "best.pt", tmp_path / "west.csv")) == 1
    (tmp_path / "bad.csv").write_text("\n".join([head, body[0].replace(",", ",x", 1)]))
    bad = tmp_path / "bad.csv"
    with pytest.raises(DataError, match=re.escape(f"input file {bad}, row 2, column 2 ('f1'): 'x")):
        predict(run / "best.pt", tmp_path / "bad.csv")
    (tmp_path / "short.csv").write_text("f0,f1,region\n1,2,east\n")
    with pytest.raises(DataError, match=re.escape("its header has no column 'f2', 'f3'")):
        predict(run / "best.pt", tmp_path / "short.csv")


def _rows(out: str, after: str) -> dict[str, list[str]]:
    """The rows of the printed table under the line ``after``, by their first cell."""
    lines = out.split(after + "\n", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return {line.split()[0]: line.split()[1:] for line in lines}


def test_breast_cancer_run_prints_f1_and_roc_auc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = cancer(tmp_path / "c.csv")
    capsys.readouterr()
    run = train_cli(f"csv:{path}", tmp_path / "runs", "--target", "diagnosis", "--epochs", "1",
                    "--lr", "1e-3")
    out = capsys.readouterr().out
    test = json.loads((run / "metrics.json").read_text())["test"]
    items = dict(line.split("  ", 1) for line in out.split("\n\n", 1)[0].splitlines()[2:])
    assert items["test macro-F1"].strip() == f"{test['macro_f1']:.3f}"
    assert items["test ROC AUC"].strip() == f"{test['roc_auc']:.3f}"
    # the AUC of the positive class (M, the second name in sorted order) from the model's logits:
    # the fraction of (M, B) pairs in which M scores higher, ties counting 1/2
    model, _ = load_trained(run / "best.pt")
    data = load_data(f"csv:{path}", file_options={"target": "diagnosis"})
    assert data.classes == ("B", "M")
    with torch.no_grad():
        z = model(data.test.x)[:, 0].double()
    pos, neg = z[data.test.y[:, 0] == 1], z[data.test.y[:, 0] == 0]
    pairs = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    assert test["roc_auc"] == pytest.approx(pairs.mean().item(), abs=1e-12)
    rows = _rows(out, "test split, per class:")
    assert list(rows) == ["B", "M"]
    support = [int((data.test.y == k).sum()) for k in (0, 1)]
    assert [int(r[-1]) for r in rows.values()] == support


def test_iris_run_prints_precision_and_recall_per_species(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _, _ = iris(tmp_path / "iris.csv")
    capsys.readouterr()
    run = train_cli(f"csv:{path}", tmp_path / "runs", "--target", "species", "--epochs", "1")
    out = capsys.readouterr().out
    rows = _rows(out, "test split, per class:")
    assert list(rows) == list(SPECIES)
    cm = np.array(json.loads((run / "metrics.json").read_text())["test"]["confusion"])
    for k, name in enumerate(SPECIES):
        precision, recall, _, support = rows[name]
        # precision_k = C[k][k] / (predicted k), recall_k = C[k][k] / (true k)
        want_p = cm[k, k] / cm[:, k].sum() if cm[:, k].sum() else 0.0
        assert precision == f"{want_p:.3f}" and recall == f"{cm[k, k] / cm[k].sum():.3f}"
        assert int(support) == cm[k].sum()
    # eval prints the same table from the checkpoint
    assert main(["eval", "--checkpoint", str(run / "best.pt")]) == 0
    assert _rows(capsys.readouterr().out, "test split, per class:") == rows


# --------------------------------------------------------------------------- missing cells


def test_a_missing_cell_is_an_error_naming_file_row_and_column(tmp_path: Path) -> None:
    path = cancer(tmp_path / "c.csv", holes={(4, 2): "", (9, 1): "NA"})
    msg = (f"csv data {path}: row 6, column 3 ('texture') is empty; every cell must be a finite number (a "
           "missing value: fill it in, or pass --fill-missing mean, median or drop)")
    with pytest.raises(DataError, match=re.escape(msg)):
        load_data(f"csv:{path}")
    path = cancer(tmp_path / "t.csv", holes={(7, 0): "NA"})
    with pytest.raises(DataError, match=re.escape("row 9, column 1 ('diagnosis') holds 'NA': the target is "
                                                  "missing, and a row without a target cannot train; fill it "
                                                  "in, or pass --fill-missing drop")):
        load_data(f"csv:{path}", file_options={"target": "diagnosis", "fill_missing": "mean"})
    path = wine(tmp_path / "w.csv")
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(",north,", ",,").replace(",south,", ",,").replace(",east,", ",,")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape("row 4, column 14 ('region') is empty, a missing value: "
                                                  "fill it in, or pass --fill-missing mean, median or drop")):
        load_data(f"csv:{path}")


@pytest.mark.parametrize("how", ["mean", "median"])
def test_fill_missing_uses_the_training_split(tmp_path: Path, how: str) -> None:
    holes = {(i, 1): "" for i in range(0, 100, 7)}
    path = cancer(tmp_path / "c.csv", holes=holes)
    d = load_data(f"csv:{path}", file_options={"target": "diagnosis", "fill_missing": how})
    fill = d.stats["table"]["features"][0]["fill"]
    raw = (d.train.x * d.stats["std"] + d.stats["mean"]).double().numpy()  # radius, texture, area
    cells = [ln.split(",") for ln in path.read_text().splitlines()[1:]]
    texture = np.array([float(c[2]) for c in cells])
    row = np.abs(raw[:, 1:2] - texture[None]).argmin(1)  # each training row's line in the file
    hole = np.array([cells[i][1] == "" for i in row])
    assert 0 < hole.sum() < len(hole)  # some training rows had a hole
    assert np.allclose(raw[hole, 0], fill, atol=1e-4)
    known = raw[~hole, 0]
    assert fill == pytest.approx(np.mean(known) if how == "mean" else np.median(known), abs=1e-4)
    every = np.array([ln.split(",")[1] for ln in path.read_text().splitlines()[1:]])
    every = every[every != ""].astype(float)  # the known cells of all splits give another value
    assert fill != pytest.approx(np.mean(every) if how == "mean" else np.median(every), abs=1e-4)
    assert torch.isfinite(d.train.x).all()


def test_fill_missing_drop_and_text_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = cancer(tmp_path / "c.csv", holes={(3, 2): "?", (5, 0): ""})
    with caplog.at_level(logging.INFO, logger="blockzoo"):
        d = load_data(f"csv:{path}", file_options={"fill_missing": "drop"})
    assert len(d.train) + len(d.val) + len(d.test) == 98
    assert "dropped 2 rows with missing cells" in caplog.text
    path = wine(tmp_path / "w.csv")
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace(",north,", ",NA,").replace(",south,", ",NA,").replace(",east,", ",NA,")
    path.write_text("\n".join(lines) + "\n")
    d = load_data(f"csv:{path}", file_options={"fill_missing": "median"})
    spec = d.stats["table"]["features"][13]
    assert spec["fill"] in spec["categories"]  # the training split's most frequent region
    x = torch.cat([d.train.x, d.val.x, d.test.x])
    assert (x[:, 13:].sum(1) == 1).all()


def test_a_filled_run_fills_missing_cells_at_predict(tmp_path: Path) -> None:
    path = cancer(tmp_path / "c.csv", holes={(3, 2): ""})
    run = train_cli(f"csv:{path}", tmp_path / "runs", "--target", "diagnosis", "--fill-missing", "mean")
    (tmp_path / "in.csv").write_text("radius,texture,area\n3,,3\n0,0,0\n")
    assert [r["prediction"] for r in predict(run / "best.pt", tmp_path / "in.csv")] == ["M", "B"]
    run2 = train_cli(f"csv:{cancer(tmp_path / 'full.csv')}", tmp_path / "runs2", "--target", "diagnosis")
    with pytest.raises(DataError, match=re.escape("row 2, column 2 ('texture') is empty: a missing value "
                                                  "(the run was trained without --fill-missing mean or "
                                                  "median)")):
        predict(run2 / "best.pt", tmp_path / "in.csv")


# --------------------------------------------------------------------------- choosing columns and task


def test_features_select_columns_by_name_or_index(tmp_path: Path) -> None:
    path, _, _ = iris(tmp_path / "iris.csv")
    d = load_data(f"csv:{path}", file_options={"target": "species", "features": "petal_length,4"})
    assert d.in_chans == 2
    assert [s["name"] for s in d.stats["table"]["features"]] == ["petal_length", "petal_width"]


def test_task_override(tmp_path: Path) -> None:
    d = load_data(f"csv:{wine(tmp_path / 'w.csv')}", file_options={"task": "regression"})
    assert d.task == "regression" and d.classes is None
    path, _, _ = iris(tmp_path / "iris.csv")
    lines = ["a,b,y"] + [f"{i},{i % 5},{(i % 3) * 0.5}" for i in range(30)]
    (tmp_path / "f.csv").write_text("\n".join(lines) + "\n")
    assert load_data(f"csv:{tmp_path / 'f.csv'}").task == "regression"
    d = load_data(f"csv:{tmp_path / 'f.csv'}", file_options={"task": "classification"})
    assert d.task == "classification" and d.classes == ("0", "0.5", "1")
    with pytest.raises(DataError, match=re.escape("--task regression needs numbers, but the target "
                                                  "('species') holds text ('setosa')")):
        load_data(f"csv:{path}", file_options={"target": "species", "task": "regression"})


def test_column_errors_name_the_file_and_the_columns(tmp_path: Path) -> None:
    path, _, _ = iris(tmp_path / "iris.csv")
    cases = [
        ({"target": "specis"},
         f"csv data {path}: --target 'specis': no such column; did you mean 'species'?"),
        ({"target": "5"}, f"csv data {path}: --target 5: the file has 5 columns (indices 0 to 4)"),
        ({"target": "species", "features": "species,sepal_length"},
         "--features names the target column ('species'); a feature cannot be the target"),
        ({"features": "sepal_length,,petal_length"}, "--features 'sepal_length,,petal_length': expected "
                                                     "comma-separated column names or 0-based indices"),
    ]
    for opts, msg in cases:
        with pytest.raises(DataError, match=re.escape(msg)):
            load_data(f"csv:{path}", file_options=opts)
    (tmp_path / "nohead.csv").write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(DataError, match=re.escape("--target 'species' names a column, but the file has no "
                                                  "header row")):
        load_data(f"csv:{tmp_path / 'nohead.csv'}", file_options={"target": "species"})
    d = load_data(f"csv:{tmp_path / 'nohead.csv'}", file_options={"target": "0"})
    assert d.classes == SPECIES and d.stats["table"]["header"] is None


def test_a_word_among_numbers_is_named_not_taken_for_a_category(tmp_path: Path) -> None:
    path = cancer(tmp_path / "c.csv", holes={(6, 3): "12,5"})  # a decimal comma: 5 cells in that row
    with pytest.raises(DataError, match=re.escape("rows must all have the same number of columns: row 8 has "
                                                  "5, the others 4")):
        load_data(f"csv:{path}")
    path = cancer(tmp_path / "d.csv", holes={(6, 3): "twelve"})
    with pytest.raises(DataError, match=re.escape("row 8, column 4 ('area') holds 'twelve'; every cell must "
                                                  "be a finite number in a column of numbers")):
        load_data(f"csv:{path}")


def test_tsv_tables(tmp_path: Path) -> None:
    path, x, names = iris(tmp_path / "iris.tsv", sep="\t")
    run = train_cli(f"tsv:{path}", tmp_path / "runs", "--target", "species")
    assert evaluate_checkpoint(run / "best.pt")["acc"] > 0.8
    np.savetxt(tmp_path / "in.tsv", x[:3], delimiter="\t")
    assert [r["prediction"] for r in predict(run / "best.pt", tmp_path / "in.tsv")] == names[:3]


def test_table_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("fill_missing='zero' must be mean or median or drop")):
        TrainConfig(data="csv:x.csv", fill_missing="zero")
    with pytest.raises(ConfigError, match=re.escape("task='binary' must be classification or regression")):
        TrainConfig(task="binary")
    assert TrainConfig(target=0).target == "0"
    with pytest.raises(ConfigError, match=re.escape("--target applies to csv:PATH or text:PATH or tsv:PATH, "
                                                    "not to data "
                                                    "'digits'")):
        load_data("digits", file_options={"target": "3"})
    with pytest.raises(ConfigError, match=re.escape("--target applies to csv:PATH or text:PATH or tsv:PATH, "
                                                    "not to data "
                                                    "'folder:imgs'")):  # an image folder has no columns
        load_data("folder:imgs", file_options={"target": "3"})


def test_the_stored_encoding_is_plain_data(tmp_path: Path) -> None:
    run = train_cli(f"csv:{wine(tmp_path / 'w.csv')}", tmp_path / "runs")
    ck = torch.load(run / "last.pt", weights_only=True)

    def plain(v: object) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (str, int, float, torch.Tensor))

    assert plain(ck["data_stats"])
    assert ck["data_stats"]["table"]["target"] == {"index": 14, "name": "cultivar"}
