"""Defaults a PyTorch user expects: a model that fits the data, safe run folders, options anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockzoo.checks import ConfigError
from blockzoo.cli import main
from blockzoo.data import load_data
from blockzoo.train import TrainConfig
from blockzoo.train.job import choose_model


@pytest.mark.parametrize("data, model", [
    ("mnist1d", "mnist1d_cnn"),  # the paper-beating default stays MNIST-1D's
    ("blobs", "tabular_mlp"),  # vectors: an MLP, not the MNIST-1D CNN across the columns
    ("line", "tabular_mlp"),
    ("digits", "cifar_cnn"),
    ("adding", "gru_classifier"),
    ("copy_memory", "gru_tagger"),  # a target per step
])
def test_model_chosen_from_the_data(data: str, model: str) -> None:
    name, why = choose_model(load_data(data, quick=True))
    assert name == model and why


def test_train_without_model_says_which_it_chose(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level("INFO", logger="blockzoo")
    assert main(["train", "--data", "blobs", "--quick", "--epochs", "2", "--no-plots",
                 "--runs-dir", str(tmp_path)]) == 0
    assert "model: tabular_mlp (feature vectors" in caplog.text
    run = tmp_path / "tabular_mlp_blobs"
    assert json.loads((run / "config.json").read_text())["model"] == "tabular_mlp"
    assert "tabular_mlp" in capsys.readouterr().out  # the report names the model trained
    # eval and predict need nothing more
    assert main(["eval", "--checkpoint", str(run / "best.pt")]) == 0


@pytest.mark.parametrize("data, model, folder", [
    ("csv:some/dir/breast_cancer.csv", "logistic_regression", "logistic_regression_csv_breast_cancer"),
    ("mnist1d", "my_nets.models:build", "build_mnist1d"),
    ("csv:we ird/na me!.csv", "tabular_mlp", "tabular_mlp_csv_na_me_"),
])
def test_run_folder_names_are_safe(data: str, model: str, folder: str) -> None:
    assert TrainConfig(data=data, model=model).run_name == folder


@pytest.mark.parametrize("name", ["../elsewhere", ".hidden", "a/b", "", "x y"])
def test_unsafe_run_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="must be a folder name"):
        TrainConfig(name=name)


def test_global_options_after_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "mlp", "--threads", "1", "-v"]) == 0
    assert main(["--threads", "1", "info", "mlp"]) == 0
    assert main(["list", "--threads", "0"]) == 2
    assert "--threads: expected an integer >= 1" in capsys.readouterr().err


USER_NET = """from torch import nn


def build(input_size=1, num_classes=10, width=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(40 * input_size, width), nn.ReLU(),
                         nn.Linear(width, num_classes))
"""


def test_users_own_model_from_a_file_path_end_to_end(tmp_path: Path) -> None:
    import torch

    import blockzoo
    from blockzoo.checks import FileFormatError

    net = tmp_path / "user_net.py"
    net.write_text(USER_NET)
    target = f"{net}:build"
    runs = tmp_path / "runs"
    assert main(["train", "--model", target, "--model-arg", "width=8", "--quick", "--epochs", "1",
                 "--quiet", "--no-plots", "--runs-dir", str(runs), "--name", "u"]) == 0
    weights = runs / "u" / "model.safetensors"
    # the weights file records the builder and its arguments, but never imports it by itself
    with pytest.raises(FileFormatError, match=r"your own model .*user_net.py:build.*builder="):
        blockzoo.load(weights)
    with pytest.raises(ConfigError, match="you passed 'other:build'"):
        blockzoo.load(weights, builder="other:build")
    model = blockzoo.load(weights, builder=target)
    assert model[1].out_features == 8  # width=8, as trained
    x = torch.randn(3, 40, 1)
    ck = torch.load(runs / "u" / "best.pt", weights_only=True)
    model.eval()
    again = blockzoo.train.job.load_trained(runs / "u" / "best.pt", builder=target)[0]
    assert torch.equal(model(x), again(x))
    assert ck["meta"]["model"] == target
    # export: the same builder named again
    out = tmp_path / "u.onnx"
    assert main(["export", str(weights), "--model", target, "--out", str(out), "--batch", "2"]) == 0
    assert out.stat().st_size > 0
    rows = blockzoo.train.predict(runs / "u" / "best.pt", x.numpy(), builder=target)
    assert [r["index"] for r in rows] == [0, 1, 2]


def test_save_of_an_unregistered_model_says_how_to_load_it(tmp_path: Path) -> None:
    import torch
    from torch import nn

    import blockzoo

    with pytest.warns(UserWarning, match=r"weights only; load them with blockzoo.load_weights\(Linear"):
        path = blockzoo.save(nn.Linear(3, 2), tmp_path / "lin.safetensors")
    with pytest.raises(ValueError, match=r"use blockzoo\.load_weights"):
        blockzoo.load(path)
    lin = blockzoo.load_weights(nn.Linear(3, 2), path)
    assert lin.weight.shape == torch.Size([2, 3])
