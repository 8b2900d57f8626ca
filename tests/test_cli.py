"""The blockzoo command: list, info, errors as one line with exit code 2."""

import json
import subprocess
import sys

import pytest

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
