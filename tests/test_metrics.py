"""A run's final metrics, gradient norms and TensorBoard scalars (issue 16).

The metrics are checked against values computed by hand on tiny fixed examples
(the formula beside each), then end to end: metrics.json, the report, the
confusion figure, ``blockzoo eval``. Tables run in tests/test_csv.py.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from blockzoo.checks import ConfigError
from blockzoo.cli import main
from blockzoo.data import load_data
from blockzoo.train import fit, objective
from blockzoo.train.metrics import (
    Outputs,
    class_names,
    classification_metrics,
    grad_groups,
    group_norms,
    regression_metrics,
)
from blockzoo.viz.confusion import plot_confusion, row_fractions

FAST = dict(quiet=True, plots=False, eval_batch_size=256)
PNG = b"\x89PNG\r\n\x1a\n"


def item(out: str, name: str) -> str:
    """The value of the ``name`` row of a printed item/value table."""
    rows = [line[len(name):].strip() for line in out.splitlines() if line.startswith(name + "  ")]
    assert len(rows) == 1, (name, out)
    return rows[0]


# --------------------------------------------------------------------------- the formulas


def test_classification_metrics_equal_hand_computed_values() -> None:
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 0, 1, 2, 2, 2, 0, 1])
    m = classification_metrics(truth, pred, ["a", "b", "c", "d"])  # "d": never true, never predicted
    # confusion[i][j]: true i predicted j
    assert m["confusion"] == [[2, 1, 0, 0], [0, 1, 1, 0], [1, 1, 2, 0], [0, 0, 0, 0]]
    # precision_k = C[k][k] / column k's sum; recall_k = C[k][k] / row k's sum
    precision, recall = [2 / 3, 1 / 3, 2 / 3, 0.0], [2 / 3, 1 / 2, 2 / 4, 0.0]
    # F1_k = 2 P R / (P + R): 2/3, 2/5, 4/7
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall, strict=True)]
    assert f1[:3] == pytest.approx([2 / 3, 2 / 5, 4 / 7], abs=1e-12)
    got = m["per_class"]
    assert [c["class"] for c in got] == ["a", "b", "c", "d"]
    assert [c["support"] for c in got] == [3, 2, 4, 0]
    assert [c["precision"] for c in got] == pytest.approx(precision, abs=1e-12)
    assert [c["recall"] for c in got] == pytest.approx(recall, abs=1e-12)
    assert [c["f1"] for c in got] == pytest.approx(f1, abs=1e-12)
    # macro-F1: the mean over the classes that occur (a class absent from truth and
    # predictions has no F1 to average, rather than a 0 pulling the mean down)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 5 + 4 / 7) / 3, abs=1e-12)
    assert m["acc"] == pytest.approx(5 / 9, abs=1e-12)  # the diagonal over N
    assert "roc_auc" not in m and m["classes"] == ["a", "b", "c", "d"]


def test_binary_roc_auc_is_the_probability_a_positive_outranks_a_negative() -> None:
    truth = np.array([0, 0, 1, 1, 0, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.4])
    # positives 0.35, 0.8, 0.4 against negatives 0.1, 0.4, 0.4, a tie counting 1/2:
    # 0.35: 1 + 0 + 0;  0.8: 1 + 1 + 1;  0.4: 1 + 1/2 + 1/2  ->  6 of 9 pairs
    m = classification_metrics(truth, (score > 0.5).astype(int), ["no", "yes"], score)
    assert m["roc_auc"] == pytest.approx(6 / 9, abs=1e-12)
    one_class = classification_metrics(np.zeros(3, int), np.zeros(3, int), ["no", "yes"], np.ones(3))
    assert one_class["roc_auc"] is None  # undefined, not a number


def test_binary_auc_ranks_logits_not_their_rounded_sigmoid() -> None:
    # float32 sigmoid(30) == sigmoid(40) == 1.0: ranked by it, the positive would only tie
    # the negative at 30 (AUC 0.75); ranked by the logit it beats both (AUC 1)
    assert torch.sigmoid(torch.tensor(30.0)) == torch.sigmoid(torch.tensor(40.0)) == 1.0
    keep = Outputs(objective("binary", "logits", 1))
    keep(torch.tensor([[30.0], [40.0], [-1.0]]), torch.tensor([[0.0], [1.0], [0.0]]))
    m = keep.metrics(["no", "yes"])
    assert m["roc_auc"] == 1.0
    assert m["confusion"] == [[1, 1], [0, 1]]  # class 1 where the logit > 0, the loss's rule
    # a log-probability model (B, 2): class 1's log-probability is the score
    keep = Outputs(objective("binary", "log_probs", 1))
    logp = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]).log()
    keep(logp, torch.tensor([[1.0], [0.0], [0.0]]))
    m = keep.metrics(["no", "yes"])
    assert m["roc_auc"] == 1.0 and m["confusion"] == [[1, 1], [0, 1]]


def test_regression_metrics_equal_hand_computed_values() -> None:
    y = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0], [4.0, 1.0]])
    p = np.array([[1.5, 0.0], [2.0, 0.5], [2.0, 0.5], [5.0, 1.0]])
    m = regression_metrics(y, p)
    # errors: column 0: 0.5, 0, -1, 1; column 1: 0, 0.5, -0.5, 0
    assert m["mse"] == pytest.approx((0.25 + 0 + 1 + 1 + 0 + 0.25 + 0.25 + 0) / 8, abs=1e-12)  # mean e^2
    assert m["mae"] == pytest.approx((0.5 + 0 + 1 + 1 + 0 + 0.5 + 0.5 + 0) / 8, abs=1e-12)  # mean |e|
    # R^2 = 1 - SS_res / SS_tot per column: 1 - 2.25 / 5 and 1 - 0.5 / 1, averaged
    assert m["r2"] == pytest.approx(((1 - 2.25 / 5) + (1 - 0.5 / 1)) / 2, abs=1e-12)
    assert regression_metrics(np.ones((3, 1)), np.zeros((3, 1)))["r2"] is None  # constant target


def test_outputs_keep_accuracy_only_for_per_step_targets() -> None:
    keep = Outputs(objective("classification", "logits", 3))
    keep(torch.randn(2, 5, 3), torch.zeros(2, 5, dtype=torch.long))  # (B, T, K), (B, T)
    assert keep.metrics(["a", "b", "c"]) == {}


def test_class_names_fall_back_to_indices() -> None:
    assert class_names(("cat", "dog"), "classification", 2) == ["cat", "dog"]
    assert class_names(None, "classification", 3) == ["0", "1", "2"]
    assert class_names(None, "binary", 1) == ["0", "1"]


def test_group_norms_are_the_roots_of_summed_squares() -> None:
    names, index = grad_groups(["a.w", "a.b", "b.0.w", "c"])
    assert names == ["a", "b", "c"] and index.tolist() == [0, 0, 1, 2]
    got = group_norms(torch.tensor([3.0, 4.0, 12.0, 0.0]), index, 3)
    # global: sqrt(9 + 16 + 144) = 13; a: sqrt(9 + 16) = 5; b: 12; c: 0
    assert got.tolist() == [13.0, 5.0, 12.0, 0.0]


def test_confusion_figure_colours_rows_by_fraction(tmp_path: Path) -> None:
    assert row_fractions([[2, 2], [0, 0]]).tolist() == [[0.5, 0.5], [0.0, 0.0]]
    out = plot_confusion([[2, 2], [0, 1]], ["cat", "dog"], tmp_path / "c.png", title="t")
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(ConfigError, match=r"expected \(3, 3\) for 3 classes, got \(2, 2\)"):
        plot_confusion([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "x.png")


# --------------------------------------------------------------------------- a run's metrics


def test_run_writes_final_metrics_and_eval_prints_the_same(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "softmax_regression", "--data", "digits", "--quick", "--epochs", "2",
                 "--batch-size", "32", "--runs-dir", str(tmp_path), "--name", "d", "--quiet"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "d"
    saved = json.loads((run / "metrics.json").read_text())
    test, val = saved["test"], saved["val"]
    assert set(test) == {"loss", "acc", "macro_f1", "per_class", "confusion", "classes"}
    assert test["classes"] == [str(i) for i in range(10)]  # digits has no names: the indices
    cm = np.array(test["confusion"])
    assert cm.trace() / cm.sum() == pytest.approx(test["acc"], abs=1e-12)  # one pass, one answer
    assert [c["support"] for c in test["per_class"]] == cm.sum(1).tolist()
    assert val["acc"] == pytest.approx(np.trace(val["confusion"]) / np.sum(val["confusion"]), abs=1e-12)
    assert item(out, "test macro-F1") == f"{test['macro_f1']:.3f}"
    assert (run / "confusion.png").read_bytes()[:8] == PNG
    assert item(out, "confusion matrix") == str(run / "confusion.png")
    # eval recomputes the same metrics from best.pt and prints them with the same labels
    assert main(["eval", "--checkpoint", str(run / "best.pt")]) == 0
    ev = capsys.readouterr().out
    assert item(ev, "macro-F1") == f"{test['macro_f1']:.3f}" and "test split, per class:" in ev
    assert item(ev, "accuracy") == f"{100 * test['acc']:.1f}%"
    table = ev.split("per class:\n", 1)[1].splitlines()[2:]
    assert [line.split()[0] for line in table] == test["classes"]
    assert [int(line.split()[-1]) for line in table] == cm.sum(1).tolist()


def test_binary_run_auc_is_that_of_the_best_weights_scores() -> None:
    data = load_data("blobs")  # overlapping blobs: an AUC below 1
    torch.manual_seed(0)
    res = fit(nn.Linear(2, 1), data, epochs=2, batch_size=16, **FAST)
    with torch.no_grad():
        z = res.model(data.test.x)[:, 0].double()
    y = data.test.y[:, 0]
    pos, neg = z[y == 1], z[y == 0]
    # AUC = P(a positive's score > a negative's), ties 1/2, over every (positive, negative) pair
    auc = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean().item()
    assert 0.5 < auc < 1.0
    assert res.test["roc_auc"] == pytest.approx(auc, abs=1e-12)
    tp = int(((z > 0) & (y == 1)).sum())
    assert res.test["per_class"][1]["recall"] == pytest.approx(tp / len(pos), abs=1e-12)  # TP / (TP + FN)
    assert res.val["roc_auc"] is not None and res.val["acc"] == res.history[res.best_epoch - 1]["val_acc"]


def test_regression_run_reports_mse_mae_and_r2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", "line", "--epochs", "3", "--runs-dir",
                 str(tmp_path), "--name", "r", "--quiet", "--no-plots"]) == 0
    out = capsys.readouterr().out
    test = json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]
    assert set(test) == {"loss", "mse", "mae", "r2"}
    assert test["mse"] == pytest.approx(test["loss"], rel=1e-5)  # the loss is the MSE (float32 sums)
    y = load_data("line").test.y.double()
    # R^2 = 1 - SS_res / SS_tot = 1 - MSE / (the test targets' variance)
    assert test["r2"] == pytest.approx(1 - test["mse"] / y.var(unbiased=False).item(), rel=1e-9)
    assert item(out, "test MAE") == f"{test['mae']:.4g}" and item(out, "test R²") == f"{test['r2']:.3f}"
    assert "per class" not in out


# --------------------------------------------------------------------------- gradient norms


def test_grad_norm_columns_are_the_epoch_mean_of_each_step_norm(tmp_path: Path) -> None:
    data = load_data("blobs", quick=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    start = [p.detach().clone() for p in model.parameters()]
    res = fit(model, data, epochs=2, batch_size=None, optimizer="sgd", lr=0.5, warmup=0, grad_stats=True,
              run_dir=tmp_path, **FAST)  # full batch: one step per epoch
    row = res.history[0]
    # the first step's gradient, recomputed: global norm and one per top-level module (0, 2)
    ref = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        for p, s in zip(ref.parameters(), start, strict=True):
            p.copy_(s)
    obj = objective("binary", "logits", 1)
    obj.loss(ref(data.train.x.double()), data.train.y.double()).backward()
    g = {n: p.grad.norm().item() for n, p in ref.named_parameters()}
    first = math.sqrt(g["0.weight"] ** 2 + g["0.bias"] ** 2)
    last = math.sqrt(g["2.weight"] ** 2 + g["2.bias"] ** 2)
    assert row["grad_norm/0"] == pytest.approx(first, rel=1e-5)
    assert row["grad_norm/2"] == pytest.approx(last, rel=1e-5)
    assert row["grad_norm"] == pytest.approx(math.hypot(first, last), rel=1e-5)
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[-4:] == ["grad_norm", "grad_norm/0", "grad_norm/2", "seconds"]


def test_grad_norms_of_a_stopped_epoch_resume_exactly(tmp_path: Path) -> None:
    data = load_data("blobs", quick=True)
    common = dict(epochs=2, batch_size=8, grad_stats=True, **FAST)
    torch.manual_seed(0)
    full = fit(nn.Linear(2, 1), data, **common)
    torch.manual_seed(0)
    fit(nn.Linear(2, 1), data, run_dir=tmp_path, stop_after=5, **common)  # mid-epoch: sums saved
    resumed = fit(nn.Linear(2, 1), data, run_dir=tmp_path, resume=True, **common)
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["grad_norm"] == b["grad_norm"]
    assert full.grad_history == resumed.grad_history


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_scalars_match_metrics_csv(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = load_data("digits", quick=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    res = fit(model, data, epochs=2, batch_size=64, run_dir=tmp_path, tensorboard=True, grad_stats=True,
              **FAST)
    files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {"loss/train", "loss/val", "acc/train", "acc/val", "lr", "grad_norm", "grad_norm/1",
                    "grad_norm_per_step"}
    for tag, key in (("loss/val", "val_loss"), ("acc/train", "train_acc"), ("grad_norm", "grad_norm")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [h["step"] for h in res.history]
        assert [e.value for e in events] == pytest.approx([h[key] for h in res.history], rel=1e-6)
    per_step = acc.Scalars("grad_norm_per_step")
    assert [e.step for e in per_step] == list(range(1, res.steps + 1))
    first_epoch = [e.value for e in per_step[:res.history[0]["step"]]]
    assert np.mean(first_epoch) == pytest.approx(res.history[0]["grad_norm"], rel=1e-5)


def test_tensorboard_of_a_resumed_run_has_each_step_once(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    data = load_data("blobs", quick=True)
    common = dict(epochs=2, batch_size=8, grad_stats=True, tensorboard=True, run_dir=tmp_path, **FAST)
    fit(nn.Linear(2, 1), data, stop_after=5, **common)
    # what a killed run wrote after its checkpoint (steps 6, 7) is dropped on resume
    (tmp_path / "tensorboard").rename(tmp_path / "keep")
    w = SummaryWriter(str(tmp_path / "keep"))
    for step in (6, 7):
        w.add_scalar("grad_norm_per_step", -1.0, step)
    w.close()
    (tmp_path / "keep").rename(tmp_path / "tensorboard")
    res = fit(nn.Linear(2, 1), data, resume=True, **common)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("grad_norm_per_step")]
    assert steps == list(range(1, res.steps + 1))  # no step twice, none lost
    assert all(e.value > 0 for e in acc.Scalars("grad_norm_per_step"))
    assert [e.step for e in acc.Scalars("loss/val")] == [h["step"] for h in res.history]


def test_tensorboard_missing_is_one_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    need = r"needs the tensorboard package: pip install 'blockzoo\[tensorboard\]'"
    with pytest.raises(ConfigError, match=need):
        fit(nn.Linear(2, 1), load_data("blobs", quick=True), tensorboard=True, run_dir=tmp_path / "f", **FAST)
    assert not (tmp_path / "f").exists()  # refused before the run folder is made
    with pytest.raises(ConfigError, match="writes into the run folder: give fit a run_dir"):
        fit(nn.Linear(2, 1), load_data("blobs", quick=True), tensorboard=True, **FAST)
    assert main(["train", "--data", "blobs", "--quick", "--tensorboard", "--runs-dir", str(tmp_path),
                 "--name", "x", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'blockzoo[tensorboard]'" in err[0]
    assert not (tmp_path / "x").exists()
