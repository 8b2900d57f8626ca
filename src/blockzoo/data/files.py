"""File-backed data sets read directly, without torchvision: MNIST, Fashion-MNIST, CIFAR-10.

- MNIST: LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to
  Document Recognition", Proc. IEEE 1998; IDX files.
- Fashion-MNIST: Xiao, Rasul & Vollgraf, arXiv 1708.07747 (MIT licence); IDX files.
- CIFAR-10: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
  2009; the "python version" pickle batches.

Files are looked for in ``<data_dir>/<name>/`` (``.gz`` or not). When missing, they
are downloaded and their MD5 (the checksums the publishers give) verified; offline,
the error names the files and where to put them. CIFAR pickles are read with a
restricted unpickler that accepts only plain containers and NumPy arrays.

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import tarfile
import tempfile
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from blockzoo.checks import FileFormatError
from blockzoo.data.base import Data, TensorData, register_dataset, split_train_val, standardize, subsample

__all__ = ["read_cifar_batch", "read_idx", "write_cifar_batch", "write_idx"]

log = logging.getLogger(__name__)

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

SOURCES = {
    "mnist": dict(
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        md5=dict(zip([f + ".gz" for f in _IDX_FILES], [
            "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"], strict=True)),
    ),
    "fashion_mnist": dict(
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5=dict(zip([f + ".gz" for f in _IDX_FILES], [
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"], strict=True)),
    ),
    "cifar10": dict(
        url="https://www.cs.toronto.edu/~kriz/",
        md5={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    ),
}

# --------------------------------------------------------------------------- IDX

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain): magic 0 0 dtype ndim, big-endian dims, data."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise FileFormatError(f"{path}: not an IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    n = int(np.prod(dims))
    if len(raw) != 4 + 4 * ndim + n * dtype.itemsize:
        raise FileFormatError(f"{path}: size {len(raw)} does not match the header dims {tuple(dims)}")
    return np.frombuffer(raw, dtype=dtype, count=n, offset=4 + 4 * ndim).reshape(tuple(dims))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed when ``path`` ends in .gz)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
    raw = header + a.tobytes()
    Path(path).write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)


# --------------------------------------------------------------------------- CIFAR pickles

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays; any other class is refused."""

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a data file")


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    with open(path, "rb") as f:
        d = _RestrictedUnpickler(f, encoding="bytes").load()
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    return data.reshape(-1, 3, 32, 32), labels


def write_cifar_batch(path: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images (N, 3, 32, 32) uint8 and labels as a CIFAR-10 python batch (for tests)."""
    d = {b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1),
         b"labels": [int(v) for v in labels]}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


# --------------------------------------------------------------------------- download


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(name: str, root: Path, files: list[str]) -> None:
    """Download ``files`` of data set ``name`` into ``root``, verifying MD5; clear error offline."""
    src = SOURCES[name]
    root.mkdir(parents=True, exist_ok=True)
    for fname in files:
        target = root / fname
        try:
            with urllib.request.urlopen(src["url"] + fname, timeout=30) as r:
                blob = r.read()
        except OSError as e:
            need = ", ".join(src["md5"])
            raise FileNotFoundError(
                f"{name}: {fname} is missing and could not be downloaded ({e}); put {need} "
                f"(from {src['url']}) in {root}/"
            ) from None
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        got = _md5(Path(tmp))
        if got != src["md5"][fname]:
            os.unlink(tmp)
            raise FileFormatError(f"{name}: {fname} has MD5 {got}, expected {src['md5'][fname]}")
        os.replace(tmp, target)
        log.info("downloaded %s (%d bytes, MD5 ok)", target, len(blob))


def _find(root: Path, stem: str) -> Path | None:
    for p in (root / stem, root / f"{stem}.gz"):
        if p.exists():
            return p
    return None


def _load_idx_set(name: str, data_dir: Path) -> tuple[np.ndarray, ...]:
    root = data_dir / name
    missing = [f for f in _IDX_FILES if _find(root, f) is None]
    if missing:
        _fetch(name, root, [f + ".gz" for f in missing])
    return tuple(read_idx(_find(root, f)) for f in _IDX_FILES)  # type: ignore[arg-type]


def _idx_data(name: str, *, seed: int, val_fraction: float, data_dir: Path, quick: bool,
              classes: tuple[str, ...]) -> Data:
    xtr, ytr, xte, yte = _load_idx_set(name, data_dir)
    x = torch.from_numpy(xtr.astype(np.float32) / 255.0).unsqueeze(1)  # (B, 1, 28, 28)
    y = torch.from_numpy(ytr.astype(np.int64))
    train, val = split_train_val(x, y, val_fraction, seed)
    test = TensorData(torch.from_numpy(xte.astype(np.float32) / 255.0).unsqueeze(1),
                      torch.from_numpy(yte.astype(np.int64)))
    data = Data(name, train, val, test, input="image", task="classification", num_classes=10,
                in_chans=1, classes=classes)
    data = standardize(data, per_channel=True)
    return subsample(data, 512) if quick else data


@register_dataset("mnist", input="image", task="classification", source="file",
                  about="MNIST handwritten digits (LeCun et al. 1998), 28x28; IDX files from --data-dir")
def mnist(*, seed: int = 0, val_fraction: float = 0.1, data_dir: Path = Path("data"),
          quick: bool = False) -> Data:
    """MNIST: 60000 train / 10000 test images (1, 28, 28), standardised per channel."""
    return _idx_data("mnist", seed=seed, val_fraction=val_fraction, data_dir=data_dir, quick=quick,
                     classes=tuple(str(i) for i in range(10)))


@register_dataset("fashion_mnist", input="image", task="classification", source="file",
                  about="Fashion-MNIST (Xiao et al. 2017), 28x28 clothing images; IDX files from --data-dir")
def fashion_mnist(*, seed: int = 0, val_fraction: float = 0.1, data_dir: Path = Path("data"),
                  quick: bool = False) -> Data:
    """Fashion-MNIST: 60000 train / 10000 test images (1, 28, 28), standardised per channel."""
    return _idx_data("fashion_mnist", seed=seed, val_fraction=val_fraction, data_dir=data_dir,
                     quick=quick, classes=("t-shirt", "trouser", "pullover", "dress", "coat",
                                           "sandal", "shirt", "sneaker", "bag", "ankle boot"))


# One fixed pixel order for permuted sequential MNIST, the same for every run.
_PERMUTATION_SEED = 784


@register_dataset("seq_mnist", input="sequence", task="classification", source="file",
                  about="sequential MNIST (Le et al. 2015): the 28x28 digits pixel by pixel (T=784, F=1)")
def seq_mnist(*, seed: int = 0, val_fraction: float = 0.1, data_dir: Path = Path("data"),
              quick: bool = False) -> Data:
    """MNIST read one pixel per step, row by row (Le, Jaitly & Hinton, arXiv 1504.00941)."""
    data = mnist(seed=seed, val_fraction=val_fraction, data_dir=data_dir, quick=quick).view("sequence")
    return replace(data, name="seq_mnist")


@register_dataset("pseq_mnist", input="sequence", task="classification", source="file",
                  about="permuted sequential MNIST: the 784 pixels in one fixed random order")
def pseq_mnist(*, seed: int = 0, val_fraction: float = 0.1, data_dir: Path = Path("data"),
               quick: bool = False) -> Data:
    """Sequential MNIST with the pixels in one fixed random order (long-range dependencies)."""
    data = seq_mnist(seed=seed, val_fraction=val_fraction, data_dir=data_dir, quick=quick)
    perm = torch.randperm(784, generator=torch.Generator().manual_seed(_PERMUTATION_SEED))
    splits = {s: TensorData(getattr(data, s).x[:, perm], getattr(data, s).y)
              for s in ("train", "val", "test")}
    return replace(data, name="pseq_mnist", **splits)


_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def _load_cifar(data_dir: Path) -> tuple[np.ndarray, ...]:
    root = data_dir / "cifar10"
    folder = root / _CIFAR_DIR
    if not all((folder / b).exists() for b in _CIFAR_BATCHES):
        archive = root / "cifar-10-python.tar.gz"
        if not archive.exists():
            _fetch("cifar10", root, ["cifar-10-python.tar.gz"])
        with tarfile.open(archive) as tar:
            for b in _CIFAR_BATCHES:
                member = tar.extractfile(f"{_CIFAR_DIR}/{b}")
                if member is None:
                    raise FileNotFoundError(f"cifar10: {archive} lacks {_CIFAR_DIR}/{b}")
                folder.mkdir(parents=True, exist_ok=True)
                (folder / b).write_bytes(member.read())
    parts = [read_cifar_batch(folder / b) for b in _CIFAR_BATCHES[:5]]
    xte, yte = read_cifar_batch(folder / "test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xte, yte


@register_dataset("cifar10", input="image", task="classification", source="file",
                  about="CIFAR-10 (Krizhevsky 2009), 32x32 colour images; python batches from --data-dir")
def cifar10(*, seed: int = 0, val_fraction: float = 0.1, data_dir: Path = Path("data"),
            quick: bool = False) -> Data:
    """CIFAR-10: 50000 train / 10000 test images (3, 32, 32), standardised per channel."""
    xtr, ytr, xte, yte = _load_cifar(data_dir)
    x = torch.from_numpy(xtr.astype(np.float32) / 255.0)
    train, val = split_train_val(x, torch.from_numpy(ytr), val_fraction, seed)
    test = TensorData(torch.from_numpy(xte.astype(np.float32) / 255.0), torch.from_numpy(yte))
    data = Data("cifar10", train, val, test, input="image", task="classification", num_classes=10,
                in_chans=3, classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                     "horse", "ship", "truck"))
    data = standardize(data, per_channel=True)
    return subsample(data, 512) if quick else data
