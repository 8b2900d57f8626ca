"""Data sets: bundled files intact, generated sets deterministic, file formats read back,
CSV standardised on the training split only, and the whole-tensor loader exact."""

import hashlib
import pickle
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from blockzoo.data import TensorData, TensorLoader, list_datasets, load_data
from blockzoo.data.bundled import load_digits_arrays, load_mnist1d_arrays
from blockzoo.data.files import read_cifar_batch, read_idx, write_cifar_batch, write_idx
from blockzoo.data.generated import bag_of_words
from blockzoo.registry import UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
IN_MEMORY = ["mnist1d", "digits", "seq_digits", "pseq_digits", "line", "blobs", "bow_en_es",
             "cluttered_digits"]


def test_mnist1d_bundle_matches_the_generator_checksum() -> None:
    a = load_mnist1d_arrays()
    h = hashlib.sha256()
    for k in ("x", "y", "x_test", "y_test", "t"):
        h.update(np.ascontiguousarray(a[k]).tobytes())
    script = (ROOT / "scripts" / "make_mnist1d.py").read_text()
    want = re.search(r'ARRAYS_SHA256 = "([0-9a-f]{64})"', script).group(1)
    assert h.hexdigest() == want
    assert a["x"].shape == (4000, 40) and a["x_test"].shape == (1000, 40)
    # 500 signals per class, shuffled before the 80/20 split
    assert (np.bincount(a["y"]) + np.bincount(a["y_test"])).tolist() == [500] * 10


def test_mnist1d_splits() -> None:
    d = load_data("mnist1d")
    assert (d.input, d.shape, d.num_classes, d.task) == ("sequence", (40, 1), 10, "classification")
    assert (len(d.train), len(d.val), len(d.test)) == (3600, 400, 1000)
    # The validation split is part of the 4000 training signals, disjoint from train.
    a = load_mnist1d_arrays()
    both = torch.cat([d.train.x, d.val.x])[:, :, 0]
    ref = torch.from_numpy(a["x"])
    assert torch.equal(both[both[:, 0].argsort()], ref[ref[:, 0].argsort()])
    assert d.baselines["CNN"] == 0.94 and d.baselines["logistic regression"] == 0.32


def test_digits() -> None:
    px, y = load_digits_arrays()
    assert px.shape == (1797, 64) and px.min() == 0 and px.max() == 16
    assert np.bincount(y).min() >= 174
    d = load_data("digits")
    assert d.shape == (1, 8, 8) and len(d.train) + len(d.val) + len(d.test) == 1797
    assert float(d.train.x.max()) == 1.0
    # The test split does not move with the run's seed; the validation split does.
    e = load_data("digits", seed=3)
    assert torch.equal(d.test.x, e.test.x) and not torch.equal(d.val.x, e.val.x)


def test_sequential_digits_are_the_pixels_in_order_and_permuted() -> None:
    d, s, p = load_data("digits"), load_data("seq_digits"), load_data("pseq_digits")
    assert s.shape == (64, 1) and torch.equal(s.train.x[:, :, 0], d.train.x.flatten(1))
    # Permuted: the same pixel multiset per image, one fixed order for all images.
    assert torch.equal(p.train.x.sort(1).values, s.train.x.sort(1).values)
    assert not torch.equal(p.train.x, s.train.x)
    perm = [int(torch.nonzero((s.train.x[:, :, 0] == p.train.x[:, i:i + 1, 0]).all(0))[0]) for i in range(3)]
    assert torch.equal(p.test.x[:, :3, 0], s.test.x[:, perm, 0])


@pytest.mark.parametrize("name", IN_MEMORY)
def test_in_memory_sets_are_deterministic(name: str) -> None:
    a, b = load_data(name, seed=5), load_data(name, seed=5)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).x, getattr(b, split).x)
        assert torch.equal(getattr(a, split).y, getattr(b, split).y)
    assert len(a.train) > 0 and len(a.val) > 0 and len(a.test) > 0
    q = load_data(name, quick=True)
    assert len(q.train) <= len(a.train)


def test_line_and_blobs_follow_their_equations() -> None:
    d = load_data("line")
    x, y = d.train.x[:, 0], d.train.y[:, 0]
    w, b = np.polyfit(x.numpy(), y.numpy(), 1)
    assert abs(w - 2) < 0.05 and abs(b - 1) < 0.05
    assert d.task == "regression"
    c = load_data("blobs")
    assert c.task == "binary" and c.train.y.shape[1] == 1
    assert set(c.train.y.unique().tolist()) == {0.0, 1.0}
    # Class 1 sits around (1, 1), class 0 around (-1, -1).
    assert c.train.x[c.train.y[:, 0] == 1].mean(0).gt(0.8).all()
    assert c.train.x[c.train.y[:, 0] == 0].mean(0).lt(-0.8).all()


def test_bag_of_words_counts() -> None:
    x = bag_of_words([["a", "b", "a"], ["c"]], ("a", "b", "zz"))
    assert x.tolist() == [[2, 1, 0], [0, 0, 0]]
    d = load_data("bow_en_es")
    assert d.vocab is not None and d.train.x.shape[1] == len(d.vocab)
    assert torch.equal(d.train.x, d.train.x.round()) and d.train.x.sum(1).ge(3).all()


def test_views() -> None:
    d = load_data("digits")
    v = d.view("vector")
    assert v.shape == (64,) and v.in_chans == 64 and torch.equal(v.train.x, d.train.x.flatten(1))
    assert d.view("image") is d
    m = load_data("mnist1d")
    with pytest.raises(ValueError, match="no image view"):
        m.view("image")


def test_unknown_data_set_names_close_matches() -> None:
    with pytest.raises(UnknownNameError, match="did you mean mnist1d"):
        load_data("mnist1")
    assert set(IN_MEMORY) | {"mnist", "fashion_mnist", "cifar10"} <= set(list_datasets())


# --------------------------------------------------------------------------- loader


def test_loader_covers_each_sample_once_per_epoch_and_reshuffles() -> None:
    data = TensorData(torch.arange(10).float()[:, None], torch.arange(10))
    loader = TensorLoader(data, 3, shuffle=True, seed=1)
    assert len(loader) == 4
    first = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(10))
    again = torch.cat([y for _, y in loader])
    assert torch.equal(first, again)  # same epoch, same order
    loader.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y in loader]))
    # Resuming mid-epoch yields exactly the remaining batches.
    loader.set_epoch(0)
    rest = torch.cat([y for _, y, _ in loader.batches(start=2)])
    assert torch.equal(rest, first[6:])


def test_loader_full_batch_single_sample_and_drop_last() -> None:
    data = TensorData(torch.randn(7, 2), torch.arange(7))
    assert len(TensorLoader(data, None)) == 1
    assert [len(y) for _, y in TensorLoader(data, 1)] == [1] * 7
    assert [len(y) for _, y in TensorLoader(data, 3, drop_last=True)] == [3, 3]


def test_loader_ddp_shares_make_up_the_global_batch() -> None:
    data = TensorData(torch.arange(11).float()[:, None], torch.arange(11))
    one = list(TensorLoader(data, 4, shuffle=True, seed=2).batches())
    shares = [list(TensorLoader(data, 4, shuffle=True, seed=2, rank=r, world_size=2).batches())
              for r in range(2)]
    for b, (_, y, n) in enumerate(one):
        assert torch.equal(torch.cat([shares[0][b][1], shares[1][b][1]]), y)
        assert shares[0][b][2] == shares[1][b][2] == n == len(y)


# --------------------------------------------------------------------------- file formats


def _fake_idx_set(root: Path, n_train: int = 40, n_test: int = 12) -> None:
    root.mkdir(parents=True)
    g = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", g.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_sequential_mnist_from_tiny_files(tmp_path: Path) -> None:
    _fake_idx_set(tmp_path / "mnist")
    img = load_data("mnist", data_dir=tmp_path)
    seq, perm = load_data("seq_mnist", data_dir=tmp_path), load_data("pseq_mnist", data_dir=tmp_path)
    assert seq.shape == (784, 1) and torch.equal(seq.train.x[:, :, 0], img.train.x.flatten(1))
    assert torch.equal(perm.train.x.sort(1).values, seq.train.x.sort(1).values)
    assert not torch.equal(perm.train.x, seq.train.x)


def test_idx_round_trip_and_bad_magic(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_data_sets_from_tiny_files(tmp_path: Path, name: str) -> None:
    _fake_idx_set(tmp_path / name)
    d = load_data(name, data_dir=tmp_path, val_fraction=0.25)
    assert d.shape == (1, 28, 28) and (len(d.train), len(d.val), len(d.test)) == (30, 10, 12)
    assert abs(float(d.train.x.mean())) < 1e-4 and abs(float(d.train.x.std()) - 1) < 1e-2
    assert sorted(d.test.y.tolist()) == sorted((np.arange(12) % 10).tolist())


def test_cifar10_from_tiny_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = np.random.default_rng(1)
    for b in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        write_cifar_batch(folder / b, g.integers(0, 256, (6, 3, 32, 32)), np.arange(6) % 10)
    imgs, labels = read_cifar_batch(folder / "test_batch")
    assert imgs.shape == (6, 3, 32, 32) and labels.tolist() == list(range(6))
    d = load_data("cifar10", data_dir=tmp_path, val_fraction=0.2)
    assert d.shape == (3, 32, 32) and len(d.train) + len(d.val) == 30 and len(d.test) == 6
    assert d.classes[0] == "airplane"


def test_cifar_reader_refuses_arbitrary_objects(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_cifar_batch(tmp_path / "evil")


def test_missing_files_offline_name_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as e:
        load_data("mnist", data_dir=tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "mnist") in msg
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python\.tar\.gz"):
        load_data("cifar10", data_dir=tmp_path)


# --------------------------------------------------------------------------- CSV


def _write_csv(path: Path, rows: np.ndarray, header: str | None) -> None:
    lines = [header] if header else []
    lines += [",".join(f"{v:.9g}" for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def test_csv_binary_standardised_on_train_only(tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    x = g.normal(5, 3, (100, 3))
    rows = np.c_[x, (x[:, 0] > 5).astype(int)]
    _write_csv(tmp_path / "p.csv", rows, "a,b,c,label")
    d = load_data(f"csv:{tmp_path / 'p.csv'}")
    assert d.task == "binary" and d.num_classes == 1 and d.in_chans == 3
    assert len(d.train) + len(d.val) + len(d.test) == 100
    assert d.train.x.mean(0).abs().max() < 1e-5 and (d.train.x.std(0) - 1).abs().max() < 1e-5
    assert d.test.x.mean(0).abs().max() > 1e-3  # not re-standardised on its own statistics
    raw = torch.tensor(x, dtype=torch.float32)
    mean, std = d.stats["mean"], d.stats["std"]
    # every standardised test row is a raw row mapped with the *training* statistics
    restored = d.test.x * std + mean
    assert (restored[:, None] - raw[None]).abs().amax(-1).min(1).values.max() < 1e-4


def test_csv_classification_regression_and_errors(tmp_path: Path) -> None:
    g = np.random.default_rng(1)
    x = g.normal(size=(30, 2))
    _write_csv(tmp_path / "c.csv", np.c_[x, np.arange(30) % 3], None)
    d = load_data(f"csv:{tmp_path / 'c.csv'}")
    assert d.task == "classification" and d.num_classes == 3 and d.train.y.dtype == torch.int64
    _write_csv(tmp_path / "r.csv", np.c_[x, x[:, 0] * 0.37], None)
    assert load_data(f"csv:{tmp_path / 'r.csv'}").task == "regression"
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_data(f"csv:{tmp_path / 'none.csv'}")
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n1,2,3\n1,2,3\n")
    with pytest.raises(ValueError, match="same number"):
        load_data(f"csv:{tmp_path / 'ragged.csv'}")


# --------------------------------------------------------------------------- sequence benchmarks


def test_adding_and_copy_memory_data_sets() -> None:
    pytest.importorskip("blockzoo.data.sequence_tasks")
    a = load_data("adding", quick=True)
    assert a.task == "regression" and a.shape == (20, 2) and a.train.y.shape[1:] == (1,)
    # the target is the sum of the two marked values
    x, y = a.train.x, a.train.y[:, 0]
    assert torch.allclose((x[..., 0] * x[..., 1]).sum(1), y)
    assert a.baselines["predict 1 (trivial)"] == pytest.approx(1 / 6)
    assert torch.equal(a.test.x, load_data("adding", quick=True, seed=9).test.x)  # fixed test set
    c = load_data("copy_memory", quick=True)
    assert c.ids and c.metric == "loss" and c.num_classes == c.in_chans == 10
    assert c.train.x.dtype == torch.int64 and c.train.y.shape == c.train.x.shape == (len(c.train), 30)
    assert torch.equal(c.train.y[:, -10:], c.train.x[:, :10])  # recall the first 10 symbols at the end
    with pytest.raises(ValueError, match="integer token ids"):
        c.view("vector")


def test_download_rejects_a_wrong_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=0: io.BytesIO(b"not mnist"))
    with pytest.raises(ValueError, match=r"has MD5 .* expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        load_data("mnist", data_dir=tmp_path)
    assert not list((tmp_path / "mnist").iterdir())  # nothing half-downloaded is left


def test_cluttered_digits_place_whole_digits_and_fix_the_test_split() -> None:
    from blockzoo.data.generated import clutter

    a, b = load_data("cluttered_digits", seed=0), load_data("cluttered_digits", seed=1)
    assert a.train.x.shape[1:] == (1, 16, 16) and a.num_classes == 10
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)  # seed-independent
    assert not torch.equal(a.train.x[:100], b.train.x[:100])
    digits = load_data("digits", seed=0)
    assert len(a.test) == 2 * len(digits.test) and torch.equal(a.test.y, digits.test.y.repeat(2))
    # no clutter, no noise: each digit lands whole (its ink is kept, up to interpolation) and
    # scaled by s in [1, 1.5] (ink scales by s^2), never cut by the canvas edge
    g = torch.Generator().manual_seed(0)
    x = digits.test.x[:64]
    placed = clutter(x, g, fragments=0, noise=0.0)
    ratio = placed.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert bool(((ratio > 0.9) & (ratio < 1.5**2 * 1.1)).all()), ratio
    with pytest.raises(ValueError, match="does not fit"):
        clutter(x, g, canvas=10, scale=(1.5, 1.5))


@pytest.mark.slow
def test_cluttered_digits_need_spatial_context() -> None:
    """A small CNN learns the task above chance; a linear model on the pixels stays below it."""
    from blockzoo.bench.arena import ArenaConvNet
    from blockzoo.data.generated import cluttered_digits
    from blockzoo.models.linear import SoftmaxRegression
    from blockzoo.train.loop import fit

    data = cluttered_digits(seed=0)
    budget = dict(epochs=6, lr=1e-2, quiet=True, plots=False, device="cpu", seed=0)
    torch.manual_seed(0)
    cnn = fit(ArenaConvNet(1, 10, width=8), data, budget).test["acc"]
    torch.manual_seed(0)
    linear = fit(SoftmaxRegression(256, 10), data.view("vector"), budget, output="log_probs").test["acc"]
    assert cnn > 0.2, cnn  # chance is 0.1
    assert cnn > linear + 0.05, (cnn, linear)
