"""Nonsense is refused before anything is allocated (issue 22): the training options'
types and ranges.

Every error is one ``ValueError`` line naming the option, its value and what is allowed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from blockzoo.cli import main
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
        ("model", None, "model=None must be a str"),
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
