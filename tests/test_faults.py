"""Faults as a user meets them: hostile files, broken files, full disks, two runs at once.

Every case asserts what the user sees (exit 2 and one line naming the file and the
problem, no traceback), that nothing was imported or executed, and that the files
of an earlier run are byte-identical afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import blockzoo
from blockzoo.checks import FileFormatError
from blockzoo.cli import main
from blockzoo.train import checkpoint as ckpt_mod
from blockzoo.train import runlog
from blockzoo.train.checkpoint import load_checkpoint, save_checkpoint

TRAIN = ["train", "--quick", "--epochs", "1", "--quiet", "--no-plots"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err.strip()


def one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit 2, one stderr line starting with blockzoo's prefix, holding every needle."""
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("blockzoo"), err
    for n in needles:
        assert n in err, (n, err)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished quick MNIST-1D run: runs/base/ with last.pt, best.pt, model.safetensors."""
    runs = tmp_path_factory.mktemp("runs")
    assert main([*TRAIN, "--runs-dir", str(runs), "--name", "base"]) == 0
    return runs / "base"


def _hostile_checkpoint(trained: Path, path: Path, **meta: object) -> Path:
    ck = load_checkpoint(trained / "last.pt")
    ck["meta"] = {**ck["meta"], **meta}
    save_checkpoint(path, {k: v for k, v in ck.items() if k != "format"})
    return path


# --------------------------------------------------------------------------- no one in


def test_checkpoint_naming_os_system_runs_nothing(trained: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    evil = _hostile_checkpoint(trained, tmp_path / "evil.pt", model="os:system",
                               model_args={"command": f"touch {marker}"})
    # plain dicts and strings: it passes torch.load(weights_only=True)
    assert load_checkpoint(evil)["meta"]["model"] == "os:system"
    for cmd in (["eval", "--checkpoint", str(evil)],
                ["predict", "--checkpoint", str(evil), "--input", str(tmp_path / "x.npy")]):
        np.save(tmp_path / "x.npy", np.zeros((2, 40), dtype=np.float32))
        code, _, err = run_cli(cmd, capsys)
        one_line_error(code, err, str(evil), "never imports code named by a file", "--model os:system")
        assert not marker.exists()


def test_checkpoint_naming_a_module_imports_nothing(trained: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "bz_evil_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef build(**kw):\n    raise SystemExit(9)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    evil = _hostile_checkpoint(trained, tmp_path / "evil.pt", model="bz_evil_mod:build")
    code, _, err = run_cli(["eval", "--checkpoint", str(evil)], capsys)
    one_line_error(code, err, "never imports code named by a file")
    assert "bz_evil_mod" not in sys.modules and not marker.exists()
    # the user naming another target than the file's is refused before any import
    code, _, err = run_cli(["eval", "--checkpoint", str(evil), "--model", "other_mod:build"], capsys)
    one_line_error(code, err, "was trained with model 'bz_evil_mod:build'", "'other_mod:build'")
    assert "other_mod" not in sys.modules


def test_users_own_model_is_rebuilt_from_the_target_the_user_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bz_user_net.py").write_text(
        "from torch import nn\n\n"
        "def build(input_size=1, num_classes=10, width=16):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(40 * input_size, width), nn.ReLU(),\n"
        "                         nn.Linear(width, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    runs = tmp_path / "runs"
    assert main([*TRAIN, "--runs-dir", str(runs), "--name", "u", "--model", "bz_user_net:build",
                 "--model-arg", "width=8"]) == 0
    ckpt = str(runs / "u" / "best.pt")
    code, _, err = run_cli(["eval", "--checkpoint", ckpt], capsys)
    one_line_error(code, err, "--model bz_user_net:build")
    code, out, err = run_cli(["eval", "--checkpoint", ckpt, "--model", "bz_user_net:build"], capsys)
    assert code == 0 and "bz_user_net:build" in out, err
    np.save(tmp_path / "x.npy", np.zeros((3, 40), dtype=np.float32))
    code, out, err = run_cli(["predict", "--checkpoint", ckpt, "--input", str(tmp_path / "x.npy"),
                              "--model", "bz_user_net:build"], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 4, err


def test_safetensors_metadata_selects_only_registered_entries(tmp_path: Path) -> None:
    model = blockzoo.create("mlp", in_features=8, out_features=2)
    good = blockzoo.save(model, tmp_path / "m.safetensors")
    with safe_open(str(good), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for name in ("os", "os:system", "subprocess.run"):
        save_file(tensors, tmp_path / "evil.safetensors", metadata={**meta, "blockzoo.name": name})
        with pytest.raises(blockzoo.UnknownNameError, match="unknown block or model"):
            blockzoo.load(tmp_path / "evil.safetensors")


@pytest.mark.parametrize("config", [
    {"in_features": 10**7, "hidden_features": [10**6], "out_features": 10**6},  # 10^13 weights
    {"in_features": 8, "hidden_features": [16] * 10**6, "out_features": 2},  # a million layers
])
def test_load_refuses_huge_metadata_before_allocating(tmp_path: Path, config: dict) -> None:
    model = blockzoo.create("mlp", in_features=8, out_features=2)
    good = blockzoo.save(model, tmp_path / "m.safetensors")
    with safe_open(str(good), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, tmp_path / "huge.safetensors",
              metadata={**meta, "blockzoo.config": json.dumps(config)})
    with pytest.raises(FileFormatError, match="more parameters than the file holds"):
        blockzoo.load(tmp_path / "huge.safetensors")


def test_checkpoint_with_huge_model_args_is_refused(trained: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    huge = _hostile_checkpoint(trained, tmp_path / "huge.pt", model_args={"width": 10**7})
    code, _, err = run_cli(["eval", "--checkpoint", str(huge)], capsys)
    one_line_error(code, err, str(huge), "more parameters than the file holds")


# --------------------------------------------------------------------------- broken files


def _corrupt_variants(good: bytes) -> dict[str, bytes]:
    return {"empty": b"", "1KB": good[:1024], "truncated": good[: len(good) // 2],
            "text": b"this is not a checkpoint\n" * 4, "30KB": good[:30000]}


@pytest.mark.parametrize("variant", ["empty", "1KB", "truncated", "text", "30KB"])
def test_broken_checkpoint_is_one_line(trained: Path, tmp_path: Path, variant: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"{variant}.pt"
    path.write_bytes(_corrupt_variants((trained / "last.pt").read_bytes())[variant])
    code, _, err = run_cli(["eval", "--checkpoint", str(path)], capsys)
    one_line_error(code, err, str(path), "not a readable checkpoint")


class _Payload:
    def __reduce__(self):  # what an attacker's pickle does on load
        return (os.system, ("echo pwned",))


def test_pickle_checkpoint_is_refused_without_wrong_advice(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pickle.pt"
    torch.save({"format": ckpt_mod.FORMAT, "x": _Payload()}, path)
    code, out, err = run_cli(["eval", "--checkpoint", str(path)], capsys)
    one_line_error(code, err, str(path), "refused", "never runs code from a file")
    assert "weights_only=False" not in err and "pwned" not in out


@pytest.mark.parametrize("variant", ["empty", "1KB", "truncated", "text"])
def test_broken_safetensors_is_one_line(trained: Path, tmp_path: Path, variant: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"{variant}.safetensors"
    path.write_bytes(_corrupt_variants((trained / "model.safetensors").read_bytes())[variant])
    code, _, err = run_cli(["export", str(path), "--out", str(tmp_path / "m.onnx")], capsys)
    one_line_error(code, err, str(path), "not a readable safetensors file")
    with pytest.raises(FileFormatError):
        blockzoo.load(path)


def test_wrong_model_checkpoint_is_one_line(trained: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    ck = load_checkpoint(trained / "last.pt")
    first = next(iter(ck["model"]))
    ck["model"][first] = torch.zeros(3, 3)
    path = tmp_path / "wrong.pt"
    save_checkpoint(path, {k: v for k, v in ck.items() if k != "format"})
    code, _, err = run_cli(["eval", "--checkpoint", str(path)], capsys)
    one_line_error(code, err, str(path), "shape mismatch", first)


def test_resume_with_another_model_is_one_line(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(trained)
    code, _, err = run_cli([*TRAIN, "--runs-dir", str(trained.parent), "--name", "base", "--resume",
                            "--model", "gru_classifier"], capsys)
    one_line_error(code, err, "was trained with --model mnist1d_cnn", "gru_classifier")
    assert snapshot(trained) == before


@pytest.mark.parametrize("text, needle", [
    ("", "holds no data rows"),
    ("a,b,c\n", "holds no data rows"),
    ("1,2\n1,2,3\n", "row 2: 3 values"),
    ("1,2\n3,x\n", "row 2, column 2: 'x' is not a number"),
    ("1,2\n3,1e400\n", "row 2, column 2: '1e400' is not a finite float32 number"),
])
def test_predict_on_bad_csv_is_one_line(trained: Path, tmp_path: Path, text: str, needle: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "in.csv"
    path.write_text(text)
    code, _, err = run_cli(["predict", "--checkpoint", str(trained / "last.pt"), "--input", str(path)],
                           capsys)
    one_line_error(code, err, str(path), needle)


def test_predict_on_empty_or_broken_npz_is_one_line(trained: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"\x93NUMPY garbage")
    for path, needle in ((empty, "holds no arrays"), (broken, "not a readable NumPy file")):
        code, _, err = run_cli(["predict", "--checkpoint", str(trained / "last.pt"), "--input",
                                str(path)], capsys)
        one_line_error(code, err, str(path), needle)


def test_predict_takes_one_sample_per_csv_row(trained: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "six.csv"
    np.savetxt(path, rng.normal(size=(6, 40)), delimiter=",")
    code, out, err = run_cli(["predict", "--checkpoint", str(trained / "last.pt"), "--input", str(path)],
                             capsys)
    assert code == 0, err
    assert out.strip().splitlines()[0] == "index,prediction,confidence"
    assert len(out.strip().splitlines()) == 7
    # a .npy is batch-first (6 samples), or one sample when its shape is one sample's
    np.save(tmp_path / "six.npy", rng.normal(size=(6, 40, 1)).astype(np.float32))
    np.save(tmp_path / "one.npy", rng.normal(size=(40, 1)).astype(np.float32))
    assert len(blockzoo.train.predict(trained / "last.pt", tmp_path / "six.npy")) == 6
    assert len(blockzoo.train.predict(trained / "last.pt", tmp_path / "one.npy")) == 1


def test_eval_refuses_a_csv_that_lost_a_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    y = (x[:, 0] > 0).astype(int)
    csv = tmp_path / "t.csv"
    np.savetxt(csv, np.c_[x, y], delimiter=",", fmt="%.5f")
    assert main(["train", "--data", f"csv:{csv}", "--model", "logistic_regression", "--epochs", "1",
                 "--quiet", "--no-plots", "--runs-dir", str(tmp_path / "runs"), "--name", "t"]) == 0
    np.savetxt(csv, np.c_[x[:, 1:], y], delimiter=",", fmt="%.5f")
    code, _, err = run_cli(["eval", "--checkpoint", str(tmp_path / "runs" / "t" / "last.pt")], capsys)
    one_line_error(code, err, "samples of shape (3,)", "trained on (4,)", "the data changed")


def test_cli_usage_errors_are_one_line(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, needle in ((["train", "--bogus"], "unrecognized arguments: --bogus"),
                         (["info", "mlp", "--size", "-3"], "--size: expected an integer >= 1, got -3"),
                         (["eval", "--checkpoint", str(trained / "last.pt"), "--device", "bogus"],
                          "device 'bogus'")):
        code, _, err = run_cli(args, capsys)
        one_line_error(code, err, needle)


def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # `blockzoo info mlp | head -1`: the reader is gone before anything is written
    proc = subprocess.Popen([sys.executable, "-m", "blockzoo", "info", "mlp"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == "", err


# --------------------------------------------------------------------------- nothing lost


def test_existing_run_name_is_refused_and_kept(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(trained)
    code, _, err = run_cli([*TRAIN, "--runs-dir", str(trained.parent), "--name", "base"], capsys)
    one_line_error(code, err, "already holds a run", "--overwrite", "--resume")
    assert snapshot(trained) == before


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name, data in snapshot(src).items():
        (dst / name).write_bytes(data)
    return dst


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(
        trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy_run(trained, tmp_path / "runs" / "r")
    before = snapshot(run)
    # the new run fails before its first checkpoint: the old run is untouched, no staging left
    code, _, err = run_cli([*TRAIN, "--runs-dir", str(run.parent), "--name", "r", "--overwrite",
                            "--model", "mnist1d_cnn", "--model-arg", "width=-4"], capsys)
    assert code == 2, err
    assert snapshot(run) == before
    assert sorted(p.name for p in run.parent.iterdir()) == ["r"]
    # a new run that diverges at step 1 never wrote a checkpoint either
    code, _, err = run_cli([*TRAIN, "--runs-dir", str(run.parent), "--name", "r", "--overwrite",
                            "--lr", "1e30", "--optimizer", "sgd"], capsys)
    assert code == 2 and "loss is" in err, err
    assert snapshot(run) == before
    # a run that finishes replaces it whole
    code, _, err = run_cli([*TRAIN, "--runs-dir", str(run.parent), "--name", "r", "--overwrite",
                            "--seed", "7"], capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["seed"] == 7
    assert snapshot(run) != before and sorted(p.name for p in run.parent.iterdir()) == ["r"]


def test_second_run_of_the_same_name_is_refused_while_the_first_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with runlog.RunFolder(tmp_path / "same"):
        code, _, err = run_cli([*TRAIN, "--runs-dir", str(tmp_path), "--name", "same"], capsys)
        one_line_error(code, err, "is in use by another blockzoo run", f"pid {os.getpid()}")
    # once the first has finished, the name is free again
    assert main([*TRAIN, "--runs-dir", str(tmp_path), "--name", "same"]) == 0


def test_run_files_have_unique_temp_names(tmp_path: Path) -> None:
    # two writers of one folder: with a fixed temp name one renames the other's file away
    errors: list[BaseException] = []

    def write(tag: int) -> None:
        try:
            for i in range(150):
                runlog.write_config(tmp_path, {"tag": tag, "i": i}, {})
                runlog.write_metrics(tmp_path, [{"epoch": i, "tag": tag}])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.csv"]


def _resumable(trained: Path, tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    assert main([*TRAIN, "--runs-dir", str(runs), "--name", "s", "--stop-after", "5"]) == 0
    return runs / "s"


@pytest.mark.parametrize("fault", [errno.ENOSPC, errno.EROFS])
def test_full_disk_or_read_only_folder_is_one_line_and_keeps_the_checkpoint(
        trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    run = _resumable(trained, tmp_path)
    before = snapshot(run)
    real_fdopen = os.fdopen

    class HalfWritten:
        """A file that takes half the bytes and then reports the fault (mid-file)."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2])
            raise OSError(fault, os.strerror(fault), "last.pt")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd: int, mode: str = "r", *a, **k):  # the checkpoint writer opens "wb"
        f = real_fdopen(fd, mode, *a, **k)
        return HalfWritten(f) if "b" in mode else f

    monkeypatch.setattr(ckpt_mod.os, "fdopen", fdopen)
    code, _, err = run_cli([*TRAIN, "--runs-dir", str(run.parent), "--name", "s", "--resume"], capsys)
    one_line_error(code, err, os.strerror(fault))
    monkeypatch.undo()
    after = snapshot(run)
    assert after["last.pt"] == before["last.pt"]  # the previous checkpoint, whole
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    load_checkpoint(run / "last.pt")


# --------------------------------------------------------------------------- fuzzed files

_FUZZ = settings(max_examples=50, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _mutate(good: bytes, cut: int, flip: int, value: int, mode: str) -> bytes:
    if mode == "cut":
        return good[: cut % (len(good) + 1)]
    i = flip % len(good)
    return good[:i] + bytes([value]) + good[i + 1:]


@_FUZZ
@given(cut=st.integers(0, 10**6), flip=st.integers(0, 10**6), value=st.integers(0, 255),
       mode=st.sampled_from(["cut", "flip"]))
def test_fuzzed_checkpoint_never_tracebacks(trained: Path, tmp_path: Path, cut: int, flip: int, value: int,
                                            mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fuzz.pt"
    path.write_bytes(_mutate((trained / "best.pt").read_bytes(), cut, flip, value, mode))
    code, _, err = run_cli(["eval", "--checkpoint", str(path), "--split", "val"], capsys)
    if code != 0:
        one_line_error(code, err)


@_FUZZ
@given(cut=st.integers(0, 10**6), flip=st.integers(0, 10**6), value=st.integers(0, 255),
       mode=st.sampled_from(["cut", "flip"]))
def test_fuzzed_safetensors_never_tracebacks(trained: Path, tmp_path: Path, cut: int, flip: int,
                                             value: int, mode: str) -> None:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(_mutate((trained / "model.safetensors").read_bytes(), cut, flip, value, mode))
    try:
        blockzoo.load(path)
    except (FileFormatError, blockzoo.UnknownNameError):
        pass


@_FUZZ
@given(text=st.text(alphabet="0123456789.,-e\nnaif x", max_size=400))
def test_fuzzed_predict_csv_never_tracebacks(trained: Path, tmp_path: Path, text: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_text(text)
    code, _, err = run_cli(["predict", "--checkpoint", str(trained / "last.pt"), "--input", str(path)],
                           capsys)
    if code != 0:
        one_line_error(code, err)


def test_predict_on_a_non_utf8_csv_is_one_line(trained: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("1,2\n3,\xe9\n".encode("latin-1"))
    code, _, err = run_cli(["predict", "--checkpoint", str(trained / "last.pt"), "--input", str(path)],
                           capsys)
    one_line_error(code, err, str(path), "is not UTF-8 text")
