"""Image folders (``--data folder:PATH``): generated PNG/JPEG shapes are read, split,
standardised on the training split, augmented at decode time, trained on well above
chance, and predicted on from image files with class names."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blockzoo.checks import ConfigError, DataError
from blockzoo.cli import main
from blockzoo.data import BatchAugment, LazyTensor, folder, load_data, make_loader
from blockzoo.registry import UnknownNameError
from blockzoo.train import evaluate_checkpoint, predict, train

CLASSES = ("disc", "hbar", "vbar")  # sorted: the class order


def _shape_image(kind: str, rng: np.random.Generator, h: int, w: int, gray: bool) -> Image.Image:
    """A bright disc, horizontal bar or vertical bar at a random place on a dark, noisy ground."""
    yy, xx = np.mgrid[:h, :w] / np.array([h, w])[:, None, None]
    cy, cx = rng.uniform(0.3, 0.7, 2)
    if kind == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(0.15, 0.25) ** 2
    elif kind == "hbar":
        mask = (abs(yy - cy) < 0.1) & (abs(xx - 0.5) < rng.uniform(0.3, 0.45))
    else:
        mask = (abs(xx - cx) < 0.1) & (abs(yy - 0.5) < rng.uniform(0.3, 0.45))
    colour = rng.uniform(150, 255, 3)
    img = rng.uniform(0, 60, (h, w, 3)) + mask[..., None] * colour
    img = img.clip(0, 255).astype(np.uint8)
    return Image.fromarray(img[..., 0] if gray else img, "L" if gray else "RGB")


def make_folder(root: Path, per_class: int, *, seed: int = 0, gray: bool | None = None,
                sizes: tuple[int, ...] = (20, 24, 28)) -> Path:
    """``root/<class>/NNN.png|jpg``: sizes vary (non-square too), every 4th is a JPEG and,
    unless ``gray`` is given, every 3rd is grayscale."""
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = rng.choice(sizes, 2)
            g = (i % 3 == 0) if gray is None else gray
            im = _shape_image(kind, rng, int(h), int(w), g)
            ext = "jpg" if i % 4 == 1 else "png"
            im.save(root / kind / f"{i:03d}.{ext}", quality=95)
    return root


def test_trains_on_shape_images_well_above_chance(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    root = make_folder(tmp_path / "shapes", 40)
    (root / "disc" / "notes.txt").write_text("not an image")
    spec = f"folder:{root}?size=16x16"
    with caplog.at_level(logging.INFO, logger="blockzoo"):
        res = train(dict(data=spec, epochs=6, batch_size=16, lr=3e-3, optimizer="adam",
                         runs_dir=str(tmp_path), name="img", quiet=True, plots=False))
    log = caplog.text
    assert "cifar_cnn" in log  # the model chosen for image data
    assert "skipped 1 files that are not images (.txt x1)" in log
    assert "decoded once into memory" in log
    chance = 1 / len(CLASSES)
    assert res.test["acc"] >= 0.9 > chance + 0.5, res.test  # 24 test images; 1.0 on seeds 0-2
    data = load_data(spec)
    assert data.classes == CLASSES and data.shape == (3, 16, 16)
    # eval rebuilds the same data from the stored data string (options included)
    assert evaluate_checkpoint(tmp_path / "img" / "best.pt")["acc"] == pytest.approx(res.test["acc"])
    # predict on image files: a folder of them, and one file; answers are class names
    new = make_folder(tmp_path / "new", 6, seed=1)
    rows = predict(tmp_path / "img" / "best.pt", new)
    assert len(rows) == 18 and {r["prediction"] for r in rows} <= set(CLASSES)
    truth = [Path(r["file"]).parts[0] for r in rows]
    assert np.mean([r["prediction"] == t for r, t in zip(rows, truth, strict=True)]) >= 0.8
    # the same decoding and the stored training statistics as the data set's test split
    files = sorted((new / "disc").iterdir())
    x = (folder.read_images(files, (3, 16, 16)) - data.stats["mean"]) / data.stats["std"]
    with torch.no_grad():
        want = [CLASSES[i] for i in res.model(x).argmax(-1).tolist()]
    one = [predict(tmp_path / "img" / "best.pt", f)[0]["prediction"] for f in files]
    assert one == want
    assert main(["predict", "--checkpoint", str(tmp_path / "img" / "best.pt"), "--input",
                 str(files[0])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "index,file,prediction,confidence" and out[1].split(",")[2] == want[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="holds no images"):
        predict(tmp_path / "img" / "best.pt", tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        predict(tmp_path / "img" / "best.pt", tmp_path / "missing.png")


def test_split_folders_classes_stats_and_augmentation(tmp_path: Path) -> None:
    for split, n in (("train", 8), ("val", 2), ("test", 3)):
        make_folder(tmp_path / "s" / split, n, seed=len(split), gray=True, sizes=(12,))
    d = load_data(f"folder:{tmp_path / 's'}?augment=1")  # one size: no size= needed; 1 decoded copy
    assert d.classes == CLASSES and d.in_chans == 1 and d.shape == (1, 12, 12)
    assert (len(d.train), len(d.val), len(d.test)) == (2 * 24, 6, 9)
    assert d.train.y[:24].tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert torch.equal(d.train.y[24:], d.train.y[:24])
    # standardised with one mean/std per channel from the training images (not their copies)
    assert d.stats["mean"].shape == (1, 1, 1)
    assert d.train.x[:24].mean().abs() < 1e-5 and abs(d.train.x[:24].std() - 1) < 1e-5
    # augmented copies differ from the centre views, the same for the same seed only
    assert not torch.equal(d.train.x[24:], d.train.x[:24])
    again = load_data(f"folder:{tmp_path / 's'}?augment=1")
    assert torch.equal(again.train.x, d.train.x)
    other = load_data(f"folder:{tmp_path / 's'}?augment=1", seed=1)
    assert torch.equal(other.train.x[:24], d.train.x[:24]) and not torch.equal(other.train.x, d.train.x)
    none = load_data(f"folder:{tmp_path / 's'}?augment=none&size=8x10")
    assert len(none.train) == 24 and none.shape == (1, 8, 10)
    assert len(load_data(f"folder:{tmp_path / 's'}?augment=3").train) == 4 * 24


def test_flat_folder_split_and_colour(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", 10, sizes=(14,))  # mixed grayscale and RGB: RGB
    d = load_data(f"folder:{root}?augment=none")
    assert d.in_chans == 3 and len(d.train) + len(d.val) + len(d.test) == 30
    # 20% test (fixed), 10% of the rest (2.4 images) but one image of each class at least
    assert len(d.test) == 6 and len(d.val) == 3
    assert [torch.bincount(getattr(d, s).y, minlength=3).tolist() for s in ("train", "val", "test")] == [
        [7, 7, 7], [1, 1, 1], [2, 2, 2]]  # stratified: each class in proportion in every split
    # the test images do not move with the run's seed; validation does
    d1 = load_data(f"folder:{root}?augment=none", seed=1)
    def raw(data, split):  # the pixels before standardisation
        return getattr(data, split).x * data.stats["std"] + data.stats["mean"]

    assert torch.allclose(raw(d1, "test"), raw(d, "test"), atol=1e-5)
    assert not torch.allclose(raw(d1, "val"), raw(d, "val"), atol=1e-5)
    # grayscale pixels become three equal channels
    gray = (folder.read_images([root / "disc" / "000.png"], (3, 14, 14)))[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_errors_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "e", 4, sizes=(10, 12))
    with pytest.raises(DataError, match=r"differ in size.*size=HxW"):
        load_data(f"folder:{root}")
    with pytest.raises(UnknownNameError, match="augment"):
        load_data(f"folder:{root}?augmnt=none")
    with pytest.raises(ConfigError, match="size="):
        load_data(f"folder:{root}?size=0x3")
    with pytest.raises(ConfigError, match="augment="):
        load_data(f"folder:{root}?augment=lots")
    with pytest.raises(ConfigError, match="cache='maybe' must be auto"):
        load_data(f"folder:{root}?cache=maybe")
    with pytest.raises(ConfigError, match=r"augment=2 \(decoded copies\) needs the images in memory"):
        load_data(f"folder:{root}?size=8&augment=2&cache=no")
    (root / "hbar" / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match=r"hbar/002\.png cannot be decoded"):
        load_data(f"folder:{root}?size=8")
    with pytest.raises(FileNotFoundError):
        load_data(f"folder:{tmp_path / 'nope'}")
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    with pytest.raises(DataError, match="at least two class folders"):
        load_data(f"folder:{tmp_path / 'one'}")
    (tmp_path / "one" / "empty").mkdir()
    with pytest.raises(DataError, match="'empty' holds no images"):
        load_data(f"folder:{tmp_path / 'one'}")


@pytest.mark.filterwarnings("error")
def test_image_modes_decode_to_pixels_in_unit_range(tmp_path: Path) -> None:
    """16-bit grayscale is scaled by 65535, palette/alpha images lose alpha; no warnings."""
    ramp = np.tile(np.linspace(0, 65535, 16), (16, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    Image.fromarray(np.full((16, 16, 3), 51, np.uint8)).convert("P").save(tmp_path / "p.png", transparency=0)
    Image.fromarray(np.full((16, 16, 2), 102, np.uint8), "LA").save(tmp_path / "la.png")
    Image.fromarray(np.full((16, 16, 4), 153, np.uint8), "RGBA").save(tmp_path / "rgba.png")
    files = [tmp_path / f for f in ("g16.png", "p.png", "la.png", "rgba.png")]
    for c in (1, 3):
        x = folder.read_images(files, (c, 16, 16))
        assert x.shape == (4, c, 16, 16)
        assert x[0].amin() == 0 and abs(x[0].amax() - 1) < 1e-5  # the full 16-bit range
        assert torch.allclose(x[1:], torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1, 1).expand(3, c, 16, 16))


def test_hidden_folders_are_not_classes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "h", 4, sizes=(14,))
    (root / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (14, 14)).save(root / ".ipynb_checkpoints" / "x.png")
    d = load_data(f"folder:{root}?augment=none")
    assert list(d.classes) == sorted(CLASSES)


def _batches(data, seed: int, epoch: int, augment: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = make_loader(data.train, 8, shuffle=True, seed=seed, augment=data.augment if augment else None)
    loader.set_epoch(epoch)
    return [(x, y) for x, y, _ in loader.batches()]


def test_streaming_gives_the_cached_batches_and_trains(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "st", 30)
    with caplog.at_level(logging.INFO, logger="blockzoo"):
        cached = load_data(f"folder:{root}?size=12&augment=none")
        streamed = load_data(f"folder:{root}?size=12&augment=none&cache=no&workers=2")
    assert "the engine's fast path (0.00 GiB as tensors, within the in-memory limit" in caplog.text
    assert "streamed from disk, decoded per batch by 2 DataLoader workers (cache=no" in caplog.text
    assert isinstance(streamed.train.x, LazyTensor) and streamed.shape == cached.shape == (3, 12, 12)
    # the same statistics (one decoding pass) and the same batches, in the same order, per seed
    assert torch.allclose(streamed.stats["mean"], cached.stats["mean"], atol=1e-6)
    assert torch.allclose(streamed.stats["std"], cached.stats["std"], atol=1e-6)
    for epoch in (0, 1):
        a, b = _batches(cached, 3, epoch), _batches(streamed, 3, epoch)
        assert len(a) == len(b) == 9  # 65 training images in batches of 8
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-5)
    assert not torch.equal(_batches(streamed, 3, 0)[0][1], _batches(streamed, 4, 0)[0][1])
    # above the memory limit, auto streams (and says why); a streamed run trains well above chance
    monkeypatch.setattr(folder, "MEMORY_LIMIT", 1000)
    with caplog.at_level(logging.INFO, logger="blockzoo"):
        res = train(dict(data=f"folder:{root}?size=12&workers=1", epochs=8, batch_size=16, lr=3e-3,
                         optimizer="adam", runs_dir=str(tmp_path), name="s", quiet=True, plots=False))
    assert "over the in-memory limit of 0 GiB; cache=yes keeps them anyway" in caplog.text
    assert res.test["acc"] >= 0.7 > 1 / 3, res.test  # 18 test images
    assert evaluate_checkpoint(tmp_path / "s" / "best.pt")["acc"] == pytest.approx(res.test["acc"])
    with pytest.raises(ConfigError, match="streamed from files"):
        streamed.view("vector")


def test_batch_augmentation_is_fresh_each_epoch_seeded_and_train_only(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "au", 12, sizes=(14,))
    data = load_data(f"folder:{root}")  # augment=batch by default
    assert isinstance(data.augment, BatchAugment)
    plain = _batches(data, 0, 0, augment=False)
    e0, e1, again = _batches(data, 0, 0), _batches(data, 0, 1), _batches(data, 0, 0)
    assert all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(plain, e0, strict=True))
    assert all(not torch.allclose(xa, xb) for (xa, _), (xb, _) in zip(plain, e0, strict=True))
    assert all(not torch.allclose(xa, xb) for (xa, _), (xb, _) in zip(e0, e1[:len(e0)], strict=True))
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(e0, again, strict=True))
    # evaluation never augments: its batches are the split's tensors as they are
    val = make_loader(data.val, 4)
    assert torch.equal(torch.cat([x for x, _, _ in val.batches()]), data.val.x)
    assert data.augment is not None and load_data(f"folder:{root}?augment=none").augment is None
    # the maths: a whole-image crop is the image or its mirror, exactly; crops stay inside the image
    x = torch.randn(64, 2, 5, 7, dtype=torch.float64)
    whole = BatchAugment(area=(1.0, 1.0), ratio=(1.0, 1.0))(x, torch.Generator().manual_seed(0))
    same = [torch.allclose(w, v, atol=1e-12) for w, v in zip(whole, x, strict=True)]
    mirror = [torch.allclose(w, v.flip(-1), atol=1e-12) for w, v in zip(whole, x, strict=True)]
    assert all(a != b for a, b in zip(same, mirror, strict=True))
    assert 10 < sum(mirror) < 54  # about half flipped
    ramp = torch.linspace(0, 1, 9).expand(256, 1, 9, 9).contiguous()
    crops = BatchAugment(flip=False)(ramp, torch.Generator().manual_seed(1))
    assert crops.min() >= 0 and crops.max() <= 1  # never outside the image
    # the rows of a global batch: rank 1 of 2 gets rows 32-63 of the one-process draw
    g = torch.Generator().manual_seed(5)
    full = BatchAugment()(ramp[:64], g)
    part = BatchAugment()(ramp[32:64], torch.Generator().manual_seed(5), 32, 64)
    assert torch.equal(full[32:], part)
