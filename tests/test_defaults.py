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


def test_accuracy_ties_are_broken_by_the_lower_val_loss() -> None:
    import torch

    from blockzoo.train.state import RunState

    state = RunState(grad_sum=torch.zeros(0))
    for epoch, (acc, loss) in enumerate([(0.5, 1.0), (0.9, 0.8), (0.9, 0.6), (0.9, 0.7)], 1):
        state.history.append({"epoch": epoch, "val_acc": acc, "val_loss": loss})
        state.keep_best(acc, epoch, tie_loss=loss)
    assert (state.best_val, state.best_epoch) == (0.9, 3)


@pytest.mark.parametrize("monitor", ["val_loss", "val_acc", None])
def test_monitor_picks_the_best_epoch_by_its_metric(tmp_path: Path, monitor: str | None) -> None:
    from blockzoo.train import train

    cfg = dict(data="mnist1d", quick=True, epochs=4, quiet=True, plots=False, runs_dir=str(tmp_path),
               name="m", lr=0.05)
    res = train({**cfg, "monitor": monitor})
    hist = res.history
    if monitor == "val_loss":
        want = min(range(len(hist)), key=lambda i: hist[i]["val_loss"]) + 1
    else:  # by accuracy, ties to the lower loss (the first such epoch if both tie)
        want = min(range(len(hist)), key=lambda i: (-hist[i]["val_acc"], hist[i]["val_loss"], i)) + 1
    assert res.best_epoch == want and res.monitor == (monitor or "val_acc")


def test_monitor_val_acc_on_regression_is_refused(tmp_path: Path) -> None:
    from blockzoo.train import train

    with pytest.raises(ConfigError, match="regression run has no accuracy"):
        train(dict(data="line", model="tabular_mlp", quick=True, epochs=1, quiet=True, plots=False,
                   runs_dir=str(tmp_path), monitor="val_acc"))


def test_config_json_replays_a_run_and_flags_override_it(tmp_path: Path) -> None:
    from blockzoo.train import train

    train(dict(data="blobs", quick=True, epochs=2, quiet=True, plots=False, runs_dir=str(tmp_path),
                       name="a", seed=3, lr=0.01))
    config = tmp_path / "a" / "config.json"
    assert main(["train", "--config", str(config), "--name", "b", "--quiet", "--no-plots"]) == 0
    replay = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (replay["model"], replay["seed"], replay["lr"], replay["epochs"]) == ("tabular_mlp", 3, 0.01, 2)
    # the same run again: the same weights, bit for bit
    again = torch_load_weights(tmp_path / "b" / "last.pt")
    assert all((again[k] == v).all() for k, v in torch_load_weights(tmp_path / "a" / "last.pt").items())
    # a flag on the command line wins over the file
    assert main(["train", "--config", str(config), "--name", "c", "--epochs", "1", "--quiet",
                 "--no-plots"]) == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["epochs"] == 1


def torch_load_weights(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)["model"]


def test_config_file_naming_a_users_model_is_refused(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": "os:system", "model_args": {"command": "touch pwned"}}))
    assert main(["train", "--config", str(cfg), "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "names your own model 'os:system'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists() and not any(p.is_dir() for p in tmp_path.iterdir())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
