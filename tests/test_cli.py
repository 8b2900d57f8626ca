"""The blockzoo command: list, info, errors as one line with exit code 2."""

import json
import os
import subprocess
import sys

import pytest
import torch

import blockzoo
from blockzoo.cli import main


def test_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in blockzoo.list_blocks():
        assert name in out
    assert out.splitlines()[0].split() == ["name", "family", "paper", "year", "params"]


def test_list_json_filters_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--family", "model", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(blockzoo.list_blocks(family="model"))
    mlp_free = next(r for r in rows if r["name"] == "softmax_regression")
    assert mlp_free["params"] == 10 * 4 + 4


def test_info_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "mlp"]) == 0
    out = capsys.readouterr().out
    assert "Learning representations by back-propagating errors" in out
    assert "params:  565" in out  # 12*16+16 + 16*16+16 + 16*5+5
    # FLOPs of one forward at batch 1: 2 * (12*16 + 16*16 + 16*5)
    assert "FLOPs:   1,056" in out
    assert "output:  (1, 5)" in out


def test_unknown_name_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("blockzoo: error: unknown block or model 'nope'")


def test_close_matches_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "softmax_regresion"]) == 2
    assert "did you mean softmax_regression" in capsys.readouterr().err


def test_bad_threads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--threads", "0", "list"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_python_m_and_version() -> None:
    r = subprocess.run([sys.executable, "-m", "blockzoo", "--version"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == f"blockzoo {blockzoo.__version__}"
    r = subprocess.run([sys.executable, "-m", "blockzoo", "info", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_export_onnx_from_checkpoint(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from blockzoo.export import run_onnx

    model = blockzoo.create("mlp", in_features=12, out_features=3)
    ckpt = blockzoo.save(model, tmp_path / "mlp.safetensors")
    out = tmp_path / "mlp.onnx"
    assert main(["export", str(ckpt), "--out", str(out), "--batch", "4"]) == 0
    assert "max |diff|" in capsys.readouterr().out
    x = blockzoo.spec("mlp").make_input(batch=4)
    (got,) = run_onnx(out, x)
    torch.testing.assert_close(got, model(*x).detach(), rtol=1e-4, atol=1e-5)


def test_export_torch_program(tmp_path) -> None:
    out = tmp_path / "se.pt2"
    assert main(["export", "se", "--format", "torch-export", "--out", str(out), "--dynamic-batch"]) == 0
    program = torch.export.load(str(out)).module()
    ref = blockzoo.spec("se").build_example()  # what `export se` builds
    ref.load_state_dict(program.state_dict())
    x = torch.randn(3, 16, 8, 8)  # another batch than the export's example
    torch.testing.assert_close(program(x), ref(x))


def test_export_missing_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "runs/nope/best.safetensors", "--out", "x.onnx"]) == 2
    assert "no checkpoint at runs/nope/best.safetensors" in capsys.readouterr().err


@pytest.mark.slow
def test_info_resnet18_at_224_matches_paper_and_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    """ResNet-18 at 224x224, 1000 classes: 11.69M params, 1.8 G MACs (paper), and the
    same totals as `blockzoo shapes`."""
    assert main(["info", "resnet18", "--size", "224", "224"]) == 0
    out = capsys.readouterr().out
    assert "params:  11,689,512" in out
    flops = int(out.split("FLOPs:")[1].split()[0].replace(",", ""))
    assert abs(flops / 2 - 1.8e9) / 1.8e9 < 0.02
    assert main(["shapes", "resnet18", "--input", "1,3,224,224"]) == 0
    total = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("TOTAL")).split()
    assert total[1:] == ["11689512", str(flops)]


# ---------------------------------------------------------------- the torch-free parser (issue 15)
#
# `blockzoo --help`, `--version` and `blockzoo COMMAND --help` must answer without importing
# torch (seconds of a user's time on every call). The parser is built from torch-free modules;
# a command module imports the library inside its handler. These tests are the guard: a CLI
# module that imports torch (or numpy, matplotlib, the registry, ...) at its top fails here.

HEAVY = ("torch", "numpy", "matplotlib")

# Run in a fresh interpreter: import every CLI module (and what the parser reads), then ask every
# command for its help, noting after each step which heavy modules have appeared and, for each,
# the line of blockzoo that first imported it. Prints JSON.
_HELP_PROBE = r"""
import argparse, contextlib, importlib, io, json, pkgutil, sys, traceback
HEAVY = %r
first = {}
class Watch:  # a finder that only watches: the first import of a heavy module notes its importer
    def find_spec(self, name, path=None, target=None):
        if name in HEAVY and name not in first:
            here = [f for f in traceback.extract_stack() if "blockzoo" in f.filename]
            first[name] = f"{here[-1].filename}:{here[-1].lineno}" if here else "?"
sys.meta_path.insert(0, Watch())
def heavy():
    return {m: first.get(m, "?") for m in HEAVY if m in sys.modules}
import blockzoo.cli
for mod in ["blockzoo.errors", "blockzoo.vocab", "blockzoo.train.config"] + [
        m.name for m in pkgutil.walk_packages(blockzoo.cli.__path__, "blockzoo.cli.")]:
    importlib.import_module(mod)
report = {"modules": sorted(sys.modules), "imported": heavy(), "helps": {}}
from blockzoo.cli import build_parser, main
def commands(parser, prefix):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield [*prefix, name]
                yield from commands(sub, [*prefix, name])
for argv in [["--version"], ["--help"]] + [[*c, "--help"] for c in commands(build_parser(), [])]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    report["helps"][" ".join(argv)] = dict(code=code, out=out.getvalue(), heavy=heavy())
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def help_probe() -> dict:
    env = {**os.environ, "COLUMNS": "100"}
    r = subprocess.run([sys.executable, "-c", _HELP_PROBE % (HEAVY,)], capture_output=True, text=True,
                       env=env, check=True)
    return json.loads(r.stdout)


def test_cli_modules_import_no_torch(help_probe: dict) -> None:
    """No CLI module (nor what the parser reads: errors, vocab, TrainConfig) imports torch,
    numpy or matplotlib at import time; the line that does is named."""
    mods = help_probe["modules"]
    assert {"blockzoo.cli.training", "blockzoo.cli.deploy", "blockzoo.train.config"} <= set(mods)
    assert not help_probe["imported"], f"imported at a CLI module's top: {help_probe['imported']}"
    # nor the library behind the commands: the registry, the rooms, the engine
    assert not [m for m in mods if m.startswith(("blockzoo.registry", "blockzoo.attention",
                                                 "blockzoo.bench", "blockzoo.train.loop"))]


def test_every_help_answers_without_torch(help_probe: dict) -> None:
    helps = help_probe["helps"]
    for cmd in ("list", "info", "shapes", "plot", "plot attention", "data", "bench", "arena", "export",
                "train", "eval", "predict", "reproduce"):
        assert f"{cmd} --help" in helps, f"{cmd} --help was not probed"
    for argv, h in helps.items():
        assert h["code"] == 0, argv
        assert not h["heavy"], f"`blockzoo {argv}` imported {h['heavy']}"


def test_help_without_torch_is_the_real_help(help_probe: dict, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """What the torch-free process printed is what the parser prints with everything loaded
    (in this process torch and every room are imported), option for option."""
    monkeypatch.setenv("COLUMNS", "100")
    for argv, h in help_probe["helps"].items():
        assert main(argv.split()) == 0
        assert h["out"] == capsys.readouterr().out, argv
    assert h["out"]  # not empty
    helps = help_probe["helps"]
    assert helps["--version"]["out"].strip() == f"blockzoo {blockzoo.__version__}"
    train = helps["train --help"]["out"]
    for option in ("--lr", "--optimizer", "--model-arg KEY=VALUE", "--batch-size N|full", "--no-plots",
                   "--amp {bf16,fp16}", "--fill-missing", "(default adamw)"):
        assert option in train, option
    assert "--family {attention,mlp,rep,conv,recurrent,model}" in helps["list --help"]["out"]
    assert "see: blockzoo list" in helps["info --help"]["out"]


def test_import_blockzoo_is_lazy_and_whole() -> None:
    """`import blockzoo` loads no torch; the first public name loads every room, after which the
    package is what the eager import made it: every public name bound, every entry registered."""
    code = r"""
import sys
import blockzoo
assert "torch" not in sys.modules, "import blockzoo imported torch"
import torch
block = blockzoo.create("mlp", in_features=8, out_features=2)
assert block(torch.randn(3, 8)).shape == (3, 2)
from blockzoo import create_model, attention, reparameterize
from blockzoo.weights import create_model as weights_create_model
assert create_model is weights_create_model  # the registry's, plus weights=
assert attention is sys.modules["blockzoo.attention"]
missing = [n for n in blockzoo.__all__ if n not in vars(blockzoo)]
assert not missing, missing
print(len(blockzoo.list_blocks()))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == len(blockzoo.list_blocks())


def test_registry_lookup_from_any_module_sees_every_entry() -> None:
    """With the root lazy, the registry imports the rooms itself before a lookup: a process that
    never touches `blockzoo.<name>` still finds every built-in entry, and a user's entry that
    clashes with a built-in name is refused where it is registered."""
    code = r"""
import json
from blockzoo.registry import Example, list_blocks, register, spec, vectors
names = list_blocks()
assert spec("se").family == "attention"
try:
    register(name="mlp", family="mlp", paper="x", arxiv="", year=2000, input="vector",
             example=Example(config={}, inputs=vectors("in_features")))(lambda in_features=1: None)
except ValueError as e:
    clash = str(e)
print(json.dumps(dict(names=names, clash=clash)))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    builtin = [n for n in blockzoo.list_blocks()
               if blockzoo.spec(n).builder.__module__.startswith("blockzoo.")]
    assert got["names"] == builtin
    assert "'mlp' is already registered by blockzoo.mlp" in got["clash"]


def test_reproduce_mnist1d_writes_the_table_and_figure(tmp_path, capsys) -> None:
    """A tiny budget (5 steps, 1 seed): the four paper models, their rows, the files."""
    out = tmp_path / "rep"
    assert main(["reproduce", "mnist1d", "--seeds", "1", "--steps", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "paper" in text and "measured here" in text
    md = (out / "mnist1d.md").read_text().splitlines()
    assert md[0].startswith("| model | paper_name | paper | ours | diff |")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in md[2:]}
    assert set(rows) == {"mnist1d_paper_logistic", "mnist1d_paper_mlp", "mnist1d_paper_cnn",
                         "mnist1d_paper_gru"}
    assert rows["mnist1d_paper_cnn"][2] == "94%" and rows["mnist1d_paper_gru"][7] == "5134"
    for cells in rows.values():
        mean, std = cells[3].rstrip("%").split(" ± ")
        assert 0 <= float(mean) <= 100 and float(std) == 0.0  # one seed: no spread
    runs = json.loads((out / "mnist1d.json").read_text())
    assert [len(r["accs"]) for r in runs] == [1, 1, 1, 1]
    csv_head = (out / "mnist1d.csv").read_text().splitlines()[0]
    assert csv_head == "model,paper_name,paper,ours,diff,peak,seeds,params,train_s"
    assert (out / "mnist1d.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["reproduce", "mnist1d", "--models", "cifar_cnn", "--steps", "1", "--out", str(out)]) == 2
    assert "not the paper's models" in capsys.readouterr().err
