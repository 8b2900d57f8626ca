"""The training engine: schedules, losses, atomic weights-only checkpoints, exact resume,
DDP equal to one process, config errors as one line, the run directory, eval and predict."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blockzoo
from blockzoo.checks import FileFormatError, ShapeError, check_shape
from blockzoo.cli import main
from blockzoo.data import load_data
from blockzoo.registry import Example, UnknownNameError, images, register, sequence, spec, unregister
from blockzoo.train import (
    NonFiniteLossError,
    TrainConfig,
    evaluate_checkpoint,
    fit,
    load_checkpoint,
    lr_factor,
    objective,
    predict,
    save_checkpoint,
    train,
)
from blockzoo.train import checkpoint as ckpt_mod

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(quiet=True, plots=False)


# --------------------------------------------------------------------------- schedules, losses


def test_lr_schedules() -> None:
    # warm-up rises linearly to the peak, then cosine falls to 0 at the end
    assert [lr_factor("cosine", s, 100, warmup=4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor("cosine", 4, 100, warmup=4) == 1.0
    assert abs(lr_factor("cosine", 52, 100, warmup=4) - 0.5) < 1e-12
    assert lr_factor("cosine", 99, 100) < 1e-3
    assert lr_factor("linear", 50, 100) == 0.5
    assert lr_factor("constant", 77, 100) == 1.0
    assert [lr_factor("step", s, 90, step_size=30, gamma=0.1) for s in (0, 29, 30, 60)] == [
        1.0, 1.0, 0.1, pytest.approx(0.01)]
    assert lr_factor("cosine", 0, 100, warmup=0.1) == 0.1  # fraction of the run: 10 steps
    with pytest.raises(UnknownNameError, match="did you mean cosine"):
        lr_factor("cosin", 0, 10)


def test_losses_follow_task_and_output() -> None:
    z = torch.randn(6, 4)
    y = torch.randint(0, 4, (6,))
    ce = objective("classification", "logits", 4)
    nll = objective("classification", "log_probs", 4)
    assert torch.allclose(ce.loss_sum(z, y), nll.loss_sum(z.log_softmax(-1), y))
    assert torch.allclose(ce.loss_sum(z, y), F.cross_entropy(z, y, reduction="sum"))
    b = objective("binary", "logits", 1)
    zb, yb = torch.randn(5, 1), torch.randint(0, 2, (5, 1)).float()
    p = torch.sigmoid(zb)
    manual = -(yb * p.log() + (1 - yb) * (1 - p).log()).sum()
    assert torch.allclose(b.loss_sum(zb, yb), manual, atol=1e-5) and b.num_outputs == 1
    assert objective("binary", "log_probs", 1).num_outputs == 2
    r = objective("regression", "regression", 2)
    zr, yr = torch.randn(3, 2), torch.randn(3, 2)
    assert torch.allclose(r.loss_sum(zr, yr), ((zr - yr) ** 2).mean(1).sum())
    with pytest.raises(ValueError, match="regression model cannot fit"):
        objective("classification", "regression", 3)
    with pytest.raises(ValueError, match="cannot fit a regression task"):
        objective("regression", "log_probs", 1)


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(UnknownNameError, match="did you mean epochs"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    ck = load_checkpoint(path)
    assert ck["step"] == 1 and torch.equal(ck["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_checkpoint_writer_background_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the state is taken when save() is called, whatever happens to the tensors after
    writer = ckpt_mod.CheckpointWriter()
    w = torch.ones(3)
    writer.save(tmp_path / "last.pt", {"step": 1, "w": w}, link=tmp_path / "best.pt")
    w.zero_()
    writer.wait()
    for name in ("last.pt", "best.pt"):
        assert torch.equal(load_checkpoint(tmp_path / name)["w"], torch.ones(3))
    # a failed write in the thread is raised by wait(); the previous file stays whole
    monkeypatch.setattr(ckpt_mod.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    writer.save(tmp_path / "last.pt", {"step": 2, "w": w})
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    writer.wait()  # reported once
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temp file left


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_checkpoint_loads_weights_only(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"format": ckpt_mod.FORMAT, "x": _Payload()}, evil)
    with pytest.raises(FileFormatError, match="refused: it holds pickled objects") as err:
        load_checkpoint(evil)
    assert "weights_only=False" not in str(err.value)  # torch's advice, wrong for such a file
    other = tmp_path / "other.pt"
    torch.save({"w": torch.ones(1)}, other)
    with pytest.raises(ValueError, match="not a blockzoo checkpoint"):
        load_checkpoint(other)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")


# --------------------------------------------------------------------------- resume


def _dropout_mlp() -> nn.Module:
    torch.manual_seed(0)
    return blockzoo.create("mlp", in_features=64, hidden_features=(16,), out_features=10, dropout=0.3)


@pytest.mark.parametrize("stop", [7, 10, 23])  # mid-epoch, on an epoch boundary, in epoch 3
def test_resume_equals_uninterrupted(tmp_path: Path, stop: int) -> None:
    data = load_data("digits", quick=True).view("vector")  # 300 train -> 10 steps per epoch
    cfg = dict(epochs=3, batch_size=30, optimizer="adam", **FAST)
    full = fit(_dropout_mlp(), data, cfg, run_dir=tmp_path / "a")
    part = fit(_dropout_mlp(), data, cfg, run_dir=tmp_path / "b", stop_after=stop)
    assert part.stopped and part.steps == stop and not part.test
    resumed = fit(_dropout_mlp(), data, cfg, run_dir=tmp_path / "b", resume=True)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 30
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history]
    assert full.test == resumed.test


def test_checkpoint_entries_round_trip_through_the_run_state(tmp_path: Path) -> None:
    # the entries a run's checkpoint holds (older checkpoints must keep loading), and the
    # run state reads back from them exactly what it wrote
    from blockzoo.train.state import RunState

    data = load_data("blobs", quick=True)
    fit(nn.Linear(2, 1), data, epochs=2, batch_size=8, run_dir=tmp_path, stop_after=11, grad_stats=True,
        **FAST)
    ck = load_checkpoint(tmp_path / "last.pt")
    assert set(ck) == {"format", "model", "optimizer", "step", "epoch", "history", "grad_history",
                       "best_val", "best_epoch", "partial", "grad_sum", "norm_sum", "rng", "config",
                       "meta", "data_stats", "task", "output", "num_classes", "in_chans"}
    assert ck["step"] == 11 and ck["epoch"] == 1 and ck["partial"][2].item() > 0  # mid-epoch sums
    state = RunState.from_checkpoint(ck)
    again = state.to_checkpoint(ck["epoch"])
    for k, v in again.items():
        assert torch.equal(v, ck[k]) if isinstance(v, torch.Tensor) else v == ck[k], k
    assert again["partial"].dtype == torch.float64 and again["grad_sum"].dtype == torch.float32
    assert again["norm_sum"].dtype == torch.float64
    assert again["norm_sum"].shape == (3,)  # the global norm, then the modules weight and bias
    old = RunState.from_checkpoint({k: v for k, v in ck.items() if k != "norm_sum"})  # before norm_sum
    assert old.norm_sum.tolist() == [0.0] and old.grad_sum.tolist() == state.grad_sum.tolist()
    state.pending.append((0.5, 1.0, 8))  # a step not yet in the sums would be lost on resume
    with pytest.raises(RuntimeError, match="read_pending first"):
        state.to_checkpoint(1)


def test_same_seed_same_metrics_other_seed_not() -> None:
    data = load_data("blobs", quick=True)

    def run(seed: int):
        torch.manual_seed(seed)  # the model's initialisation
        return fit(nn.Linear(2, 1), data, epochs=2, batch_size=8, seed=seed, **FAST)

    runs = [run(s) for s in (1, 1, 2)]
    h = [[(r["train_loss"], r["val_loss"]) for r in run.history] for run in runs]
    assert h[0] == h[1] and h[0] != h[2]


def test_interrupt_saves_and_resume_is_possible(tmp_path: Path) -> None:
    class Stopper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 1)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 5 and self.training:
                raise KeyboardInterrupt
            return self.lin(x)

    data = load_data("blobs", quick=True)
    r = fit(Stopper(), data, epochs=2, batch_size=8, run_dir=tmp_path, **FAST)
    assert r.interrupted and r.steps == 4
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4


def test_non_finite_loss_names_the_step() -> None:
    data = load_data("line", quick=True)
    with pytest.raises(NonFiniteLossError, match=r"at step \d+ \(epoch 1\).*--lr"):
        fit(nn.Linear(1, 1), data, output="regression", optimizer="sgd", lr=1e12, momentum=0.0,
            schedule="constant", warmup=0, batch_size=4, epochs=3, **FAST)


@pytest.mark.parametrize("read_every", [1, 4])
def test_deferred_loss_reads_same_sums_and_step(read_every: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # read_every 4 is the accelerator path (losses read in groups, no sync per step), run on
    # the CPU: the epoch sums equal the per-step reads', and a non-finite loss names its step.
    from blockzoo.train import loop

    data = load_data("line", quick=True)
    kw = dict(output="regression", optimizer="sgd", momentum=0.0, schedule="constant", warmup=0,
              batch_size=4, **FAST)
    torch.manual_seed(0)
    ref = fit(nn.Linear(1, 1), data, epochs=2, lr=0.01, **kw).history
    monkeypatch.setattr(loop, "_read_every", lambda device: read_every)
    torch.manual_seed(0)
    got = fit(nn.Linear(1, 1), data, epochs=2, lr=0.01, **kw).history
    assert [r["train_loss"] for r in got] == [r["train_loss"] for r in ref]
    steps = []
    for _ in range(2):
        torch.manual_seed(0)
        with pytest.raises(NonFiniteLossError, match=r"at step (\d+) ") as err:
            fit(nn.Linear(1, 1), data, epochs=3, lr=1e12, **kw)
        steps.append(int(re.search(r"at step (\d+) ", str(err.value)).group(1)))
        monkeypatch.setattr(loop, "_read_every", lambda device: 1)
    assert steps[0] == steps[1] > 1


def test_full_batch_and_pure_sgd() -> None:
    data = load_data("blobs", quick=True)
    assert fit(nn.Linear(2, 1), data, epochs=3, batch_size=None, **FAST).steps == 3
    assert fit(nn.Linear(2, 1), data, epochs=1, batch_size=1, **FAST).steps == len(data.train)


# --------------------------------------------------------------------------- the job, run dir, eval, predict


def test_run_directory_eval_and_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = train(dict(model="softmax_regression", data="digits", quick=True, epochs=3, batch_size=32,
                     runs_dir=str(tmp_path), name="r", grad_stats=True, quiet=True))
    run = tmp_path / "r"
    for f in ("config.json", "metrics.csv", "last.pt", "best.pt", "curves.png", "grad_flow.png",
              "grad_stats.csv"):
        assert (run / f).stat().st_size > 0, f
    assert json.loads((run / "config.json").read_text())["model"] == "softmax_regression"
    assert len((run / "metrics.csv").read_text().splitlines()) == 4
    assert len(res.grad_history) == 3 and all(v > 0 for v in res.grad_history[0].values())
    # eval reproduces the test metric of the best checkpoint exactly
    ev = evaluate_checkpoint(run / "best.pt")
    assert ev["acc"] == res.test["acc"] == ev["stored_test"]["acc"]
    assert main(["eval", "--checkpoint", str(run / "best.pt")]) == 0
    assert f"{100 * res.test['acc']:.1f}%" in capsys.readouterr().out
    # predict on raw test images, as a file, agrees with the model's argmax
    data = load_data("digits", quick=True)
    np.save(tmp_path / "x.npy", data.test.x.numpy())
    rows = predict(run / "best.pt", tmp_path / "x.npy")
    with torch.no_grad():
        want = res.model(data.test.x.flatten(1)).argmax(-1)
    assert [int(r["prediction"]) for r in rows] == want.tolist()
    assert main(["predict", "--checkpoint", str(run / "best.pt"), "--input", str(tmp_path / "x.npy")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "index,prediction,confidence"


def test_predict_applies_training_standardisation(tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    x = g.normal(50, 10, (80, 3))
    rows = np.c_[x, (x[:, 1] > 50).astype(int)]
    (tmp_path / "t.csv").write_text("\n".join(",".join(f"{v:.9g}" for v in r) for r in rows) + "\n")
    res = train(dict(model="logistic_regression", data=f"csv:{tmp_path / 't.csv'}", epochs=2,
                     batch_size=8, runs_dir=str(tmp_path), name="c", quiet=True, plots=False))
    data = load_data(f"csv:{tmp_path / 't.csv'}")
    raw = data.test.x * data.stats["std"] + data.stats["mean"]
    np.savetxt(tmp_path / "in.csv", raw.numpy(), delimiter=",")
    got = [r["prediction"] for r in predict(tmp_path / "c" / "best.pt", tmp_path / "in.csv")]
    with torch.no_grad():
        want = (res.model(data.test.x)[:, 0] > 0).long()
    assert [data.classes.index(c) for c in got] == want.tolist()


def test_cli_default_job_prints_paper_baselines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--quick", "--epochs", "1", "--runs-dir", str(tmp_path), "--quiet",
                 "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "arXiv 2011.14439" in out
    assert any(line.startswith("mnist1d_cnn (this run)") and line.endswith("measured here")
               for line in out.splitlines())
    for name, acc in (("logistic regression", "32.0%"), ("MLP", "68.0%"), ("CNN", "94.0%"),
                      ("GRU", "91.0%"), ("human", "96.0%")):
        # the paper's figures are labelled as the paper's, not as measured here
        assert any(line.startswith(name) and line.split()[-2:] == [acc, "paper"]
                   for line in out.splitlines()), name
    assert "blockzoo reproduce mnist1d" in out


# --------------------------------------------------------------------------- config errors


@pytest.fixture
def odd_models():
    """A throw-away image model and a sequence model that needs exactly T = 10."""

    @register(name="tmp_image_net", family="model", paper="-", arxiv="-", year=2000, input="image",
              output="logits", example=Example(config=dict(in_chans=1, num_classes=2),
                                               inputs=images("in_chans"), size=(8, 8)))
    class ImageNet(nn.Module):
        def __init__(self, in_chans: int = 1, num_classes: int = 2) -> None:
            super().__init__()
            self.fc = nn.Linear(in_chans, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.mean((2, 3)))

    @register(name="tmp_t10_net", family="model", paper="-", arxiv="-", year=2000, input="sequence",
              output="logits", example=Example(config=dict(input_size=1, num_classes=2),
                                               inputs=sequence("input_size"), size=(10,)))
    class T10Net(nn.Module):
        def __init__(self, input_size: int = 1, num_classes: int = 2) -> None:
            super().__init__()
            self.fc = nn.Linear(10 * input_size, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            check_shape(x, "B T F", name="T10Net", T=10)
            return self.fc(x.flatten(1))

    yield
    unregister("tmp_image_net")
    unregister("tmp_t10_net")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "mnist1d_cn"], "unknown block or model 'mnist1d_cn'; did you mean mnist1d_cnn"),
        (["--data", "mnist1"], "unknown data set 'mnist1'; did you mean mnist1d"),
        (["--optimizer", "adamx"], "unknown optimizer 'adamx'; did you mean adam"),
        (["--schedule", "cosin"], "unknown schedule 'cosin'; did you mean cosine"),
        (["--model", "mlp"], "'mlp' is a mlp block, not a model"),
        (["--model", "tmp_image_net"], "takes image input, which data 'mnist1d' cannot give"),
        (["--model", "tmp_t10_net"], "does not fit data 'mnist1d' (input (2, 40, 1)): T10Net"),
        (["--model", "softmax_regression", "--data", "line"], "cannot fit a regression task"),
        (["--model", "nomodule:thing"], "cannot import 'thing' from 'nomodule'"),
    ],
)
def test_config_errors_are_one_line_before_training(
    odd_models, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["train", *args, "--quick", "--runs-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_shape_error_type_is_kept_for_the_dry_run() -> None:
    # the dry run relies on blocks raising ShapeError (a ValueError) for misfits
    assert issubclass(ShapeError, ValueError)


# --------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path: Path) -> None:
    # 300 training images in batches of 23: the last global batch has 1 image, so rank 1's
    # share of it is empty (its loss is the empty sum; both ranks still step together)
    common = ["train", "--model", "softmax_regression", "--data", "digits", "--quick", "--epochs", "2",
              "--batch-size", "23", "--optimizer", "sgd", "--lr", "0.2", "--runs-dir", str(tmp_path),
              "--quiet", "--no-plots"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "blockzoo", *common, "--name", "two"]
    # torchrun picks free ports for its rendezvous and workers by probing; on a busy shared
    # machine that probe can race, so one retry; a second failure shows torchrun's stderr.
    # The retry replaces whatever a failed first attempt left in the run folder, and both
    # attempts' stderr is shown if the second fails too.
    errors = []
    for attempt in range(2):
        r = subprocess.run([*cmd, *(["--overwrite"] if attempt else [])], env=env,
                           capture_output=True, text=True, timeout=240)
        if r.returncode == 0:
            break
        errors.append(r.stderr[-3000:])
    assert r.returncode == 0, "torchrun failed twice:\n" + "\n----- retry -----\n".join(errors)
    assert main([*common, "--name", "one"]) == 0
    a, b = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert a["step"] == b["step"] > 0
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5), k
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert ra["val_acc"] == rb["val_acc"]
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-5
    # the final metrics: rank 0 measures the whole split (the per-class numbers need every sample)
    ma, mb = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    for split in ("test", "val"):
        assert ma[split]["confusion"] == mb[split]["confusion"] and ma[split]["acc"] == mb[split]["acc"]
        assert sum(map(sum, mb[split]["confusion"])) == len(getattr(load_data("digits", quick=True), split))


# --------------------------------------------------------------------------- sequence benchmarks


def test_adding_problem_reports_mse_against_the_trivial_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("blockzoo.data.sequence_tasks")
    assert main(["train", "--data", "adding", "--quick", "--epochs", "2", "--runs-dir", str(tmp_path),
                 "--quiet", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "test MSE" in out and "predict 1 (trivial)" in out and "0.1667" in out


def test_per_step_targets_with_a_token_model(tmp_path: Path) -> None:
    pytest.importorskip("blockzoo.data.sequence_tasks")

    @register(name="tmp_step_tagger", family="model", paper="-", arxiv="-", year=2000, input="sequence",
              output="logits", example=Example(config=dict(vocab_size=10, num_classes=10),
                                               inputs=blockzoo.registry.token_ids("vocab_size"), size=(5,)))
    class Tagger(nn.Module):
        def __init__(self, vocab_size: int = 10, num_classes: int = 10) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab_size, 8)
            self.out = nn.Linear(8, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.emb(x))  # (B, T, K): one score vector per step

    try:
        res = train(dict(model="tmp_step_tagger", data="copy_memory", quick=True, epochs=2,
                         runs_dir=str(tmp_path), quiet=True, plots=False))
        assert res.metric == "loss" and 0 < res.test["acc"] <= 1 and res.test["loss"] > 0
        # a per-step model cannot see the symbols it must recall: no better than the blanks
        data = load_data("copy_memory", quick=True)
        assert res.test["acc"] <= (data.test.y == 0).float().mean().item() + 1e-6
    finally:
        unregister("tmp_step_tagger")


# --------------------------------------------------------------------------- options


def test_progress_off_without_tty_and_epoch_lines_logged(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data = load_data("blobs", quick=True)
    with caplog.at_level("INFO", logger="blockzoo"):
        fit(nn.Linear(2, 1), data, epochs=2, batch_size=8, plots=False)
    err = capsys.readouterr().err
    assert "step/s" not in err and "it/s" not in err  # no tqdm bar on a non-TTY
    assert sum("epoch " in r.getMessage() for r in caplog.records) == 2
    caplog.clear()
    with caplog.at_level("INFO", logger="blockzoo"):
        fit(nn.Linear(2, 1), data, epochs=2, batch_size=8, quiet=True, plots=False)
    assert not caplog.records


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # the console hook's bar: one update per step, the running loss/acc every 10 steps and at
    # the end, the epoch lines written through the bar, closed when the loop ends
    import tqdm

    calls: list[tuple] = []

    class FakeBar:
        def __init__(self, **kw) -> None:
            calls.append(("init", kw["total"], kw["initial"]))

        def update(self, n: int) -> None:
            calls.append(("update", n))

        def set_postfix(self, **kw) -> None:
            calls.append(("postfix", kw["epoch"], sorted(kw)))

        def write(self, msg: str) -> None:
            calls.append(("write", msg.split("  ")[0]))

        def close(self) -> None:
            calls.append(("close",))

    monkeypatch.setattr(tqdm, "tqdm", FakeBar)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    data = load_data("blobs", quick=True)  # 58 training samples: 15 steps per epoch
    fit(nn.Linear(2, 1), data, epochs=2, batch_size=4, plots=False)
    assert calls[0] == ("init", 30, 0) and calls[-1] == ("close",)
    assert sum(c[0] == "update" for c in calls) == 30
    assert [c[1] for c in calls if c[0] == "postfix"] == [1, 2, 2]  # steps 10, 20, 30
    assert all(c[2] == ["acc", "epoch", "loss"] for c in calls if c[0] == "postfix")
    assert [c[1] for c in calls if c[0] == "write"] == ["epoch 1/2", "epoch 2/2"]


def test_bf16_autocast_and_channels_last_run() -> None:
    class TinyConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).relu().mean((2, 3)))

    data = load_data("digits", quick=True)
    r = fit(TinyConv(), data, epochs=1, batch_size=50, amp="bf16", channels_last=True, **FAST)
    assert r.steps == 6 and np.isfinite(r.test["loss"]) and 0 <= r.test["acc"] <= 1


def test_model_given_as_module_callable(tmp_path: Path) -> None:
    res = train(dict(model="torch.nn:Linear", model_args={"out_features": 1}, data="line", quick=True,
                     epochs=30, batch_size=None, optimizer="sgd", lr=0.5, runs_dir=str(tmp_path), **FAST))
    assert isinstance(res.model, nn.Linear) and res.test["loss"] < 0.1
    assert abs(res.model.weight.item() - 2) < 0.2


def test_cli_lists_data_sets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    for name in ("mnist1d", "digits", "line", "blobs", "bow_en_es", "mnist", "cifar10", "seq_digits"):
        assert any(line.split()[0] == name for line in out.splitlines()[2:]), name


@pytest.mark.slow
def test_compiled_model_trains_like_eager() -> None:
    data = load_data("blobs", quick=True)

    def run(compile: bool) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
        return fit(model, data, epochs=2, batch_size=8, compile=compile, **FAST).model

    eager, compiled = run(False), run(True)
    for a, b in zip(eager.state_dict().values(), compiled.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


# --------------------------------------------------------------------------- size and vocabulary args


def test_image_size_argument_filled_from_the_data(tmp_path: Path) -> None:
    # the registration declares which argument fixes the input size (size_arg)
    @register(name="tmp_patch_net", family="model", paper="-", arxiv="-", year=2000, input="image",
              output="logits", example=Example(config=dict(in_chans=1, num_classes=2, image_size=4),
                                               inputs=images("in_chans"), size=(4, 4)),
              size_arg="image_size")
    class PatchNet(nn.Module):
        def __init__(self, num_classes: int = 2, *, in_chans: int = 1, image_size: int = 4) -> None:
            super().__init__()
            self.image_size = image_size
            self.fc = nn.Linear(in_chans * image_size * image_size, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            check_shape(x, "B C H W", name="PatchNet", H=self.image_size, W=self.image_size)
            return self.fc(x.flatten(1))

    try:
        res = train(dict(model="tmp_patch_net", data="digits", quick=True, epochs=1,
                         runs_dir=str(tmp_path), name="p", **FAST))
        assert res.model.image_size == 8
        assert evaluate_checkpoint(tmp_path / "p" / "best.pt")["acc"] == res.test["acc"]
    finally:
        unregister("tmp_patch_net")


def test_model_taking_features_or_token_ids(tmp_path: Path) -> None:
    pytest.importorskip("blockzoo.data.sequence_tasks")

    # the registration declares the argument that takes a vocabulary (ids_arg)
    @register(name="tmp_dual_tagger", family="model", paper="-", arxiv="-", year=2000, input="sequence",
              output="logits", example=Example(config=dict(input_size=3, num_classes=2),
                                               inputs=sequence("input_size"), size=(5,)),
              ids_arg="vocab_size")
    class Dual(nn.Module):
        def __init__(self, input_size: int | None = None, num_classes: int = 2, *,
                     vocab_size: int | None = None) -> None:
            super().__init__()
            self.vocab_size = vocab_size
            self.inp = nn.Embedding(vocab_size, 8) if vocab_size else nn.Linear(input_size, 8)
            self.out = nn.Linear(8, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.inp(x))  # (B, T, K)

    try:
        res = train(dict(model="tmp_dual_tagger", data="copy_memory", quick=True, epochs=1,
                         runs_dir=str(tmp_path), **FAST))
        assert res.model.vocab_size == 10 and isinstance(res.model.inp, nn.Embedding)
    finally:
        unregister("tmp_dual_tagger")


def test_register_refuses_a_convention_argument_the_builder_lacks() -> None:
    class Net(nn.Module):
        def __init__(self, in_chans: int = 1, num_classes: int = 2) -> None:
            super().__init__()

    with pytest.raises(ValueError, match="takes no argument 'image_size'"):
        register(name="tmp_no_size", family="model", paper="-", arxiv="-", year=2000, input="image",
                 output="logits", example=Example(config=dict(in_chans=1), inputs=images("in_chans"),
                                                  size=(4, 4)), size_arg="image_size")(Net)
    with pytest.raises(UnknownNameError):
        spec("tmp_no_size")
