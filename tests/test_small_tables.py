"""Small tables of the user's own (issue 16 follow-up): stratified splits for classes, and a
default budget counted in optimizer steps, so that a 150-row table trains as far as a big one.

On the code before this, `blockzoo train --data csv:iris.csv --target species` split the
test rows 6/13/11 per class and trained 25 epochs x 2 steps: 76.7% test accuracy."""

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from blockzoo.checks import ConfigError
from blockzoo.data import load_data
from blockzoo.data.base import is_file_data, split_indices, split_off
from blockzoo.train import train
from blockzoo.train.config import DEFAULT_EPOCHS, MIN_FILE_STEPS, TrainConfig, default_epochs


def counts(labels: torch.Tensor, idx: torch.Tensor, k: int) -> list[int]:
    return torch.bincount(labels[idx], minlength=k).tolist()


# --------------------------------------------------------------------------- stratified splits


def test_split_indices_stratifies_each_class_in_proportion() -> None:
    sizes = [60, 30, 9, 3, 2, 1]  # 105 rows, shuffled
    labels = torch.repeat_interleave(torch.arange(6), torch.tensor(sizes))
    labels = labels[torch.randperm(105, generator=torch.Generator().manual_seed(7))]
    tr, va, te = split_indices(105, 0, 0.1, 0.2, labels)
    assert sorted(torch.cat([tr, va, te]).tolist()) == list(range(105))  # a partition
    # test: round(105 * 0.2) = 21 rows, as unstratified; shares 12, 6, 1.8, 0.6, 0.4, 0.2: the
    # class of 3 rows gets its one, the largest remainder (class 2) the last; classes of 1 and 2
    # rows keep theirs for train and val
    assert counts(labels, te, 6) == [12, 6, 2, 1, 0, 0]
    # val: round(84 * 0.1) = 8 of the rest [48, 24, 7, 2, 2, 1]; every class of 2 rows or more
    # gives one (5), the larger classes share what is left
    assert counts(labels, va, 6) == [4, 1, 1, 1, 1, 0]
    assert counts(labels, tr, 6) == [44, 23, 6, 1, 1, 1]
    # every class of 3 rows or more is in all three splits
    for k in range(4):
        assert all(counts(labels, s, 6)[k] >= 1 for s in (tr, va, te))
    # deterministic; the test rows do not move with the seed, validation does
    again = split_indices(105, 0, 0.1, 0.2, labels)
    assert all(torch.equal(a, b) for a, b in zip(again, (tr, va, te), strict=True))
    _, va1, te1 = split_indices(105, 1, 0.1, 0.2, labels)
    assert torch.equal(te1, te) and not torch.equal(va1, va)
    assert counts(labels, va1, 6) == counts(labels, va, 6)  # other rows, the same shares


def test_split_without_labels_is_the_plain_seeded_permutation() -> None:
    # regression targets and the registered data sets keep their splits (MNIST-1D's 95.4%)
    for n, seed in ((5, 0), (150, 3), (1000, 1)):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
        n_test = max(1, round(n * 0.2))
        rest = perm[n_test:]
        p2 = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, round(len(rest) * 0.1))
        want = (rest[p2[n_val:]], rest[p2[:n_val]], perm[:n_test])
        got = split_indices(n, seed, 0.1, 0.2)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_split_off_refuses_bad_labels_and_fractions() -> None:
    with pytest.raises(ConfigError, match=r"expected labels \(n=4,\) of class indices, got \(4, 1\)"):
        split_off(4, 0.5, 0, torch.zeros(4, 1, dtype=torch.int64))
    with pytest.raises(ConfigError, match=r"got \(4,\) torch.float32"):
        split_off(4, 0.5, 0, torch.zeros(4))
    with pytest.raises(ConfigError, match=r"fraction 1\.0 must be in"):
        split_off(4, 1.0, 0, torch.zeros(4, dtype=torch.int64))


def write_table(path: Path, per_class: list[int], *, regression: bool = False) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "label"])
        for k, n in enumerate(per_class):
            for _ in range(n):
                a, b = rng.normal(k, 1.0, 2)
                w.writerow([f"{a:.3f}", f"{b:.3f}", f"{a + b:.3f}" if regression else f"c{k}"])
    return path


def split_counts(d) -> list[list[int]]:
    return [torch.bincount(getattr(d, s).y.view(len(getattr(d, s).y), -1)[:, 0].long(),
                           minlength=d.num_classes).tolist() for s in ("train", "val", "test")]


def test_tables_are_split_by_class(tmp_path: Path) -> None:
    iris = write_table(tmp_path / "iris.csv", [50, 50, 50])
    for seed in (0, 1):
        assert split_counts(load_data(f"csv:{iris}", seed=seed)) == [[36, 36, 36], [4, 4, 4], [10, 10, 10]]
    # binary (a float target in {0, 1}): stratified on its two classes, 70/30 in every split
    binary = load_data(f"csv:{write_table(tmp_path / 'b.csv', [70, 30])}")
    assert binary.task == "binary" and split_counts(binary)[0][:2] == [50, 22]
    assert [split_counts(binary)[i][:2] for i in (1, 2)] == [[6, 2], [14, 6]]
    # regression: the plain split, as before
    reg = load_data(f"csv:{write_table(tmp_path / 'r.csv', [40, 40], regression=True)}")
    tr, _, te = split_indices(80, 0, 0.1, 0.2)
    rows = np.loadtxt(tmp_path / "r.csv", delimiter=",", skiprows=1, dtype=np.float32)
    assert reg.task == "regression"
    assert torch.allclose(reg.test.y[:, 0], torch.from_numpy(rows[te.numpy(), 2]))
    assert torch.allclose(reg.train.y[:, 0], torch.from_numpy(rows[tr.numpy(), 2]))


def test_sentences_are_split_by_class(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    rows = [(f"good day number {i}", "pos") for i in range(40)] + [(f"bad day {i}", "neg") for i in range(10)]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    # test 10 rows: 8 pos, 2 neg; val round(40 * 0.1) = 4 of the rest: 3 pos, 1 neg
    assert split_counts(load_data(f"text:{path}")) == [[7, 29], [1, 3], [2, 8]]  # classes neg, pos


# --------------------------------------------------------------------------- the default budget


def test_default_epochs_is_a_floor_of_steps_for_files_only() -> None:
    assert (DEFAULT_EPOCHS, MIN_FILE_STEPS) == (25, 500)
    assert default_epochs(2, file_data=True) == 250  # iris: 108 rows at batch 64
    assert default_epochs(7, file_data=True) == 72  # breast cancer: 409 rows, ceil(500 / 7)
    assert default_epochs(1, file_data=True) == 500  # full batch: never more than 500 epochs
    assert default_epochs(20, file_data=True) == 25  # a big table keeps its 25 epochs
    assert default_epochs(2, file_data=False) == 25  # registered data: the MNIST-1D recipe
    with pytest.raises(ConfigError, match="per_epoch=0"):
        default_epochs(0, file_data=True)
    assert is_file_data("csv:iris.csv") and is_file_data("text:a.csv?encoder=bow")
    assert not is_file_data("mnist1d") and not is_file_data("nope:x.csv")


def test_settle_epochs_keeps_what_the_user_gave() -> None:
    cfg = TrainConfig(data="csv:iris.csv")
    assert cfg.epochs is None and TrainConfig().epochs is None
    settled, why = cfg.settle_epochs(2, 108, file_data=True)
    assert settled.epochs == 250 and settled.steps is None and cfg.epochs is None
    assert why is not None and "25 epochs would be 50 optimizer steps on 108 training rows" in why
    assert "training 250 epochs (500 steps)" in why
    for given in (dict(epochs=25), dict(epochs=3), dict(steps=40)):
        same, why = TrainConfig(data="csv:iris.csv", **given).settle_epochs(2, 108, file_data=True)
        assert (same.epochs, same.steps, why) == (given.get("epochs"), given.get("steps"), None)
    # blockzoo train with no arguments: MNIST-1D, 25 epochs of 57 steps, nothing said
    mnist1d = TrainConfig()
    assert mnist1d.settle_epochs(57, 3600, file_data=is_file_data(mnist1d.data)) == (
        TrainConfig(epochs=25), None)


def write_rings(path: Path) -> Path:
    """150 rows, 3 classes of 50 like iris, but nested rings in the plane: no linear boundary, so
    only a trained MLP separates them (25 epochs x 2 steps reach 67-90%)."""
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "ring"])
        for k in range(3):
            r, t = rng.uniform(1.5 * k, 1.5 * k + 1.0, 50), rng.uniform(0, 2 * math.pi, 50)
            xy = zip(r * np.cos(t), r * np.sin(t), strict=True)
            w.writerows([f"{a:.3f}", f"{b:.3f}", f"r{k}"] for a, b in xy)
    return path


def test_a_small_table_trains_to_the_end_with_the_defaults(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    torch.set_num_threads(1)
    path = write_rings(tmp_path / "rings.csv")
    with caplog.at_level(logging.INFO, logger="blockzoo"):
        res = train(dict(data=f"csv:{path}", runs_dir=str(tmp_path), name="r", plots=False))
    assert res.test["acc"] >= 0.95, res.test  # 30 test rows, 10 per ring; 86.7% before
    assert res.steps == 500 and len(res.history) == 250
    assert "25 epochs would be 50 optimizer steps on 108 training rows (2 per epoch); training 250 " \
           "epochs (500 steps)" in caplog.text
    # config.json holds the epochs chosen: replaying it is the same run
    assert json.loads((tmp_path / "r" / "config.json").read_text())["epochs"] == 250
    # an explicit budget is the user's, even when it is the default's 25
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="blockzoo"):
        res = train(dict(data=f"csv:{path}", epochs=25, runs_dir=str(tmp_path), name="e", plots=False,
                         quiet=True))
    assert res.steps == 50 and "budget" not in caplog.text
    assert json.loads((tmp_path / "e" / "config.json").read_text())["epochs"] == 25
