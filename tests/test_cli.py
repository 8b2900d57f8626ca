"""The blockzoo command: list, info, errors as one line with exit code 2."""

import json
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
