"""Nonsense is refused before anything is allocated (issue 22): the training options'
types and ranges, and the labels and cells of a CSV file.

Every error is one ``ValueError`` line naming the option or the file's row and column.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from blockzoo.cli import main
from blockzoo.data import load_data
from blockzoo.train import TrainConfig

NAN, INF = float("nan"), float("inf")

# --------------------------------------------------------------------------- TrainConfig


@pytest.mark.parametrize(
    "option, value, message",
    [
        # the three observed in the issue
        ("clip_grad", -1.0, "clip_grad=-1.0 must be > 0 (or None for no clipping)"),
        ("gamma", -1, "gamma=-1 must be > 0"),
        ("stop_after", -1, "stop_after=-1 must be >= 1 (or None to run to the end)"),
        # zero is not "off" in disguise: None is
        ("clip_grad", 0.0, "clip_grad=0.0 must be > 0 (or None for no clipping)"),
        ("step_size", 0, "step_size=0 must be >= 1 (or None for a third of the run)"),
        ("stop_after", 0, "stop_after=0 must be >= 1"),
        ("steps", 0, "steps=0 must be >= 1 (or None to train for epochs)"),
        ("eval_batch_size", 0, "eval_batch_size=0 must be >= 1 (or None for twice batch_size)"),
        ("epochs", 0, "epochs=0 must be >= 1"),
        ("gamma", 0.0, "gamma=0.0 must be > 0"),
        # split_train_val refuses 0 and 1, so the config does too, before the data is loaded
        ("val_fraction", 0.0, "val_fraction=0.0 must be in (0, 1)"),
        ("val_fraction", 1.0, "val_fraction=1.0 must be in (0, 1)"),
        ("val_fraction", -0.1, "val_fraction=-0.1 must be in (0, 1)"),
        ("lr", 0.0, "lr=0.0 must be > 0"),
        ("lr", NAN, "lr=nan must be a finite number > 0"),
        ("lr", INF, "lr=inf must be a finite number > 0"),
        ("momentum", -0.1, "momentum=-0.1 must be in [0, 1)"),
        ("momentum", 1.0, "momentum=1.0 must be in [0, 1)"),
        ("momentum", NAN, "momentum=nan must be a finite number in [0, 1)"),
        ("weight_decay", -0.01, "weight_decay=-0.01 must be >= 0"),
        ("weight_decay", INF, "weight_decay=inf must be a finite number >= 0"),
        ("warmup", -0.5, "warmup=-0.5 must be >= 0: a fraction of the steps"),
        ("warmup", 2.5, "warmup=2.5 must be >= 0: a fraction of the steps (< 1) or a whole step count"),
        ("warmup", NAN, "warmup=nan must be a finite number >= 0"),
        ("clip_grad", INF, "clip_grad=inf must be a finite number > 0"),
        ("seed", -1, "seed=-1 must be in [0, 4294967295]"),
        ("seed", 2**32, "seed=4294967296 must be in [0, 4294967295]"),
        # types: a float or a bool where an int is wanted, text where a number is
        ("epochs", 2.5, "epochs=2.5 must be an int >= 1"),
        ("epochs", 3.0, "epochs=3.0 must be an int >= 1"),
        ("epochs", True, "epochs=True must be an int >= 1"),
        ("batch_size", 8.0, "batch_size=8.0 must be an int >= 1 (or None for full batch)"),
        ("seed", 1.5, "seed=1.5 must be an int in [0, 4294967295]"),
        ("lr", "0.1", "lr='0.1' must be a finite number > 0"),
        ("lr", True, "lr=True must be a finite number > 0"),
        ("quick", "no", "quick='no' must be True or False"),
        ("plots", 1, "plots=1 must be True or False"),
        ("nesterov", None, "nesterov=None must be True or False"),
        ("model", 3, "model=3 must be a str (or None to choose from the data)"),
        ("name", 3, "name=3 must be a str (or None for <model>_<data>)"),
        ("model_args", [("width", 8)], "model_args=[('width', 8)] must be a dict with str keys"),
        ("model_args", {1: 2}, "model_args={1: 2} must be a dict with str keys"),
        # device: anything torch.device cannot parse
        ("device", "bogus",
         "device='bogus': expected auto, cpu, cuda, cuda:N or another torch device string"),
        ("device", "cuda:-1", "device='cuda:-1': expected auto"),
        ("device", "", "device='': expected auto"),
        ("device", 0, "device=0 must be a str"),
        # names are checked when the config is made, not after the model is built
        ("optimizer", "adamx", "unknown optimizer 'adamx'; did you mean adam"),
        ("schedule", "cosin", "unknown schedule 'cosin'; did you mean cosine"),
    ],
)
def test_config_refuses_a_bad_value_naming_option_value_and_range(option: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        TrainConfig(**{option: value})
    assert len(str(info.value).splitlines()) == 1


def test_nesterov_needs_sgd_with_momentum() -> None:
    with pytest.raises(ValueError, match="nesterov applies to sgd only, not adamw"):
        TrainConfig(nesterov=True)
    with pytest.raises(ValueError, match=re.escape("nesterov=True needs momentum > 0, got momentum=0.0")):
        TrainConfig(optimizer="sgd", momentum=0.0, nesterov=True)
    assert TrainConfig(optimizer="sgd", nesterov=True).nesterov


@pytest.mark.parametrize(
    "options",
    [
        {},  # the defaults
        dict(steps=1, batch_size=None, eval_batch_size=None, step_size=None, stop_after=None,
             clip_grad=None, name=None, amp=None),
        dict(epochs=1, batch_size=1, eval_batch_size=1, step_size=1, stop_after=1, seed=0),
        dict(seed=2**32 - 1, val_fraction=0.999, lr=10.0, momentum=0.0, weight_decay=0.0, gamma=2.0),
        dict(warmup=0.0), dict(warmup=0.999), dict(warmup=1), dict(warmup=100.0),  # fraction or steps
        dict(clip_grad=1e-6, lr=1),  # an int where a float is wanted is fine
        dict(optimizer="sgd", momentum=0.99, nesterov=True),
        dict(device="cpu"), dict(device="cuda"), dict(device="cuda:1"), dict(device="cpu:0"),
        dict(device="meta"), dict(model_args={"width": 8, "hidden": [4, 4]}),
    ],
)
def test_config_accepts_the_edges_of_every_range(options: dict) -> None:
    cfg = TrainConfig(**options)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_numpy_numbers_become_python_numbers() -> None:
    # from a numpy sweep (np.arange, np.linspace): still valid, and config.json can hold them
    cfg = TrainConfig(epochs=np.int64(3), seed=np.int32(7), lr=np.float32(0.5), momentum=np.float64(0.5))
    assert type(cfg.epochs) is int and type(cfg.seed) is int and type(cfg.lr) is float
    assert json.loads(json.dumps(cfg.to_dict()))["epochs"] == 3
    with pytest.raises(ValueError, match=r"lr=.*nan.* must be a finite number > 0"):
        TrainConfig(lr=np.float32("nan"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clip-grad", "-1"], "clip_grad=-1.0 must be > 0 (or None for no clipping)"),
        (["--gamma", "-1"], "gamma=-1.0 must be > 0"),
        (["--stop-after", "-1"], "stop_after=-1 must be >= 1"),
        (["--lr", "nan"], "lr=nan must be a finite number > 0"),
        (["--device", "bogus"], "device='bogus': expected auto, cpu, cuda, cuda:N"),
        (["--seed", "-3"], "seed=-3 must be in [0, 4294967295]"),
    ],
)
def test_cli_refuses_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["train", *args, "--quick", "--runs-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- CSV labels


def _write(path: Path, rows: list[list], header: str | None = None) -> Path:
    lines = [header] if header else []
    lines += [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _table(labels: list, n: int = 40, seed: int = 0) -> list[list]:
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 2)).round(4)
    return [[*x[i].tolist(), labels[i % len(labels)]] for i in range(n)]


def test_classes_are_label_values_not_max_plus_one(tmp_path: Path) -> None:
    # once: 100,000,001 classes (a 51 GB allocation); now 4 classes named by their values
    path = _write(tmp_path / "big.csv", _table([0, 1, 2, 100000000]))
    start = time.perf_counter()
    d = load_data(f"csv:{path}")
    assert time.perf_counter() - start < 5
    assert d.task == "classification" and d.num_classes == 4
    assert d.classes == ("0", "1", "2", "100000000")
    ys = torch.cat([d.train.y, d.val.y, d.test.y])
    assert ys.dtype == torch.int64 and sorted(ys.unique().tolist()) == [0, 1, 2, 3]


def test_negative_integer_labels_are_classes(tmp_path: Path) -> None:
    # once: silently a regression
    path = _write(tmp_path / "neg.csv", _table([-1, 0, 1]), header="a,b,label")
    d = load_data(f"csv:{path}")
    assert d.task == "classification" and d.num_classes == 3
    assert d.classes == ("-1", "0", "1")
    # row i holds label [-1, 0, 1][i % 3]: each index maps back to its row's value
    table = _table([-1, 0, 1])
    raw = d.test.x * d.stats["std"] + d.stats["mean"]
    for x, y in zip(raw, d.test.y, strict=True):
        row = min(table, key=lambda r: abs(r[0] - float(x[0])) + abs(r[1] - float(x[1])))
        assert d.classes[int(y)] == str(row[2])


def test_binary_classes_print_as_the_file_spells_them(tmp_path: Path) -> None:
    d = load_data(f"csv:{_write(tmp_path / 'b.csv', _table([3, 7]))}")
    assert d.task == "binary" and d.num_classes == 1 and d.classes == ("3", "7")
    assert set(torch.cat([d.train.y, d.val.y, d.test.y]).flatten().tolist()) == {0.0, 1.0}


def test_many_integers_or_fractions_are_still_regression(tmp_path: Path) -> None:
    d = load_data(f"csv:{_write(tmp_path / 'many.csv', _table(list(range(51)), n=102))}")
    assert d.task == "regression" and d.classes is None
    d = load_data(f"csv:{_write(tmp_path / 'frac.csv', _table([0.5, 1.5]))}")
    assert d.task == "regression"


def test_one_label_value_is_refused_naming_file_and_column(tmp_path: Path) -> None:
    # once: trained silently to "100 %"
    path = _write(tmp_path / "one.csv", _table([3]), header="a,b,name")
    msg = (f"csv data {path}: the label column (last, 'name') holds one value (3) for every row; "
           "a classifier needs at least two")
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_data(f"csv:{path}")
    path = _write(tmp_path / "one_nohead.csv", _table([3]))
    with pytest.raises(ValueError, match=re.escape("the label column (last, column 3) holds one value (3)")):
        load_data(f"csv:{path}")
    path = _write(tmp_path / "one_frac.csv", _table([0.25]))
    with pytest.raises(ValueError, match=re.escape("holds one value (0.25) for every row; there is nothing")):
        load_data(f"csv:{path}")


@pytest.mark.parametrize(
    "cell, what",
    [("nan", "holds 'nan'"), ("inf", "holds 'inf'"), ("-inf", "holds '-inf'"), ("", "is empty"),
     ("1e400", "holds '1e400'"), ("abc", "holds 'abc'")],
)
@pytest.mark.parametrize("header", [None, "a,b,label"])
def test_a_cell_that_is_not_a_finite_number_is_named_by_row_and_column(
    tmp_path: Path, cell: str, what: str, header: str | None
) -> None:
    # once: nan/inf loaded, and training stopped later with "try a lower --lr"
    rows = [[str(v) for v in r] for r in _table([0, 1])]
    rows[4][1] = cell  # the 5th data row, 2nd column: file line 5, or 6 under a header
    path = _write(tmp_path / "bad.csv", rows, header=header)
    line, column = (6, "column 2 ('b')") if header else (5, "column 2")
    msg = f"csv data {path}: row {line}, {column} {what}; every cell must be a finite number"
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_data(f"csv:{path}")


def test_bad_label_cell_and_blank_lines_keep_the_file_line(tmp_path: Path) -> None:
    rows = [[str(v) for v in r] for r in _table([0, 1])]
    rows[2][2] = "nan"
    text = "x,y,target\n\n" + "\n".join(",".join(r) for r in rows) + "\n"
    (tmp_path / "gap.csv").write_text(text)  # line 2 is blank, so data row 3 is file line 5
    with pytest.raises(ValueError, match=re.escape("row 5, column 3 ('target') holds 'nan'")):
        load_data(f"csv:{tmp_path / 'gap.csv'}")


def test_a_first_row_with_an_empty_cell_is_data_not_a_header(tmp_path: Path) -> None:
    # once: taken for a header and silently dropped
    rows = [[str(v) for v in r] for r in _table([0, 1])]
    rows[0][0] = ""
    path = _write(tmp_path / "first.csv", rows)
    with pytest.raises(ValueError, match=re.escape("row 1, column 1 is empty")):
        load_data(f"csv:{path}")


def test_predict_prints_the_original_label_values(tmp_path: Path) -> None:
    # predict maps the model's class index k back to classes[k]: the value in the file
    from blockzoo.train import predict, train

    path = _write(tmp_path / "neg.csv", _table([-1, 0, 1], n=60))
    res = train(dict(model="softmax_regression", data=f"csv:{path}", epochs=2, batch_size=8,
                     runs_dir=str(tmp_path), name="neg", quiet=True, plots=False))
    data = load_data(f"csv:{path}")
    raw = data.test.x * data.stats["std"] + data.stats["mean"]
    np.save(tmp_path / "x.npy", raw.numpy())
    got = [r["prediction"] for r in predict(tmp_path / "neg" / "best.pt", tmp_path / "x.npy")]
    with torch.no_grad():
        want = res.model(data.test.x).argmax(-1)
    assert got == [("-1", "0", "1")[k] for k in want.tolist()]
