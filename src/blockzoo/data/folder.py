"""Images from a folder of class folders: ``--data folder:PATH[?size=HxW&augment=...&cache=...]``.

The layout other libraries' image-folder readers know::

    PATH/circle/001.png  PATH/square/a.jpg  ...          one sub-folder per class
    PATH/train/circle/...  PATH/val/...  PATH/test/...   or split folders (val/, test/ optional)

Classes are the sorted names of the class folders (of ``train/`` in the split layout).
Without ``test/``, a fixed share of the training images is held out as test (the same
images whatever the run's seed); without ``val/``, a seeded share of the rest is
validation; both shares are stratified (each class in proportion, ``base.split_off``).
Images (PNG, JPEG, BMP, GIF, WebP; grayscale or colour, any size) are decoded with
Pillow, scaled to cover ``size`` and centre-cropped, as pixels in [0, 1]: one channel
if every training image is grayscale, else RGB. Files that are not images are skipped
and counted; an image that cannot be decoded is a ``DataError`` naming it.

Two ways to the engine, chosen by ``cache`` and logged with the reason:

- cached (``cache=auto`` while the decoded tensors fit in ``MEMORY_LIMIT``, or
  ``cache=yes``): the whole set is decoded once and kept as tensors, the engine's fast
  path (a batch is one index);
- streamed (``cache=auto`` above the limit, or ``cache=no``): each split is a
  ``stream.LazyTensor``, an image decoded from its file when a batch needs it, by
  ``workers`` DataLoader processes (default: the CPUs but one, at most 4). The batches
  and their order are the cached path's for the same seed.

Training augmentation (``augment=batch``, the default) is done per batch, in torch,
on the training split only: a random resized crop (60-100% of the area, aspect
3/4-4/3) flipped left-right with probability 1/2 (``augment.BatchAugment``), fresh
each epoch and the same for the same seed. ``augment=K`` (cached only) instead adds
K decoded copies of every training image with such a crop, made once at load time
(seeded by the run's seed and the image's index); ``augment=none``: neither.
Inputs are standardised per channel with the training split's mean and std (of the
images themselves, not augmented ones), which the checkpoint keeps for ``predict``.

Letters: N images, C channels (1 grayscale, 3 RGB), H W spatial.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from blockzoo.checks import ConfigError, DataError
from blockzoo.data.augment import BatchAugment
from blockzoo.data.base import Data, TensorData, parse_file_spec, register_file_loader, split_off
from blockzoo.data.stream import LazyTensor

__all__ = ["IMAGE_SUFFIXES", "MEMORY_LIMIT", "FolderOptions", "image_files", "image_inputs", "load_folder",
           "parse_folder_spec", "read_images"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")  # the only decoders Pillow may pick
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_SPLITS = ("train", "val", "test")
MEMORY_LIMIT = 4 * 2**30  # bytes of decoded float32 tensors held in memory
_MAX_SIDE = 4096
_MAX_AUGMENT = 16
_CROP_AREA = (0.6, 1.0)  # random resized crop: share of the image's area
_CROP_RATIO = (3 / 4, 4 / 3)  # ... and aspect ratio relative to the output's


@dataclass(frozen=True)
class FolderOptions:
    """The options after ``?`` in ``folder:PATH?size=32x32&augment=none&cache=no``.

    Attributes:
        size: (H, W) every image is scaled and centre-cropped to; ``None``: the size all
            images share (an error if they differ).
        augment: ``"batch"`` (a random crop and flip per batch), ``"none"``, or K decoded
            augmented copies of each training image.
        cache: ``"auto"`` (in memory while under ``MEMORY_LIMIT``, else streamed), ``"yes"``
            (in memory) or ``"no"`` (streamed).
        workers: DataLoader processes that decode a streamed set (``None``: the CPUs but one,
            at most 4; 0: the training process).
    """

    size: tuple[int, int] | None = None
    augment: str | int = "batch"
    cache: str = "auto"
    workers: int | None = None


def _parse_size(v: str) -> tuple[int, int]:
    parts = v.lower().split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        hw = ()
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or not all(1 <= s <= _MAX_SIDE for s in hw):
        raise ConfigError(f"folder data: size={v!r} must be HxW (or one side N) with sides in 1..{_MAX_SIDE}")
    return hw[0], hw[1]


def _parse_augment(v: str) -> str | int:
    if v.lower() in ("none", "batch"):
        return v.lower()
    try:
        k = int(v)
    except ValueError:
        k = -1
    if not 0 <= k <= _MAX_AUGMENT:
        raise ConfigError(f"folder data: augment={v!r} must be 'batch' (a random crop and flip per batch), "
                          f"'none' or a number of decoded copies 0..{_MAX_AUGMENT}")
    return k or "none"


def _parse_cache(v: str) -> str:
    if v not in ("auto", "yes", "no"):
        raise ConfigError(f"folder data: cache={v!r} must be auto (in memory up to "
                          f"{MEMORY_LIMIT / 2**30:.0f} GiB, else streamed), yes or no (streamed)")
    return v


def _parse_workers(v: str) -> int:
    if not (v.isdigit() and int(v) <= 64):
        raise ConfigError(f"folder data: workers={v!r} must be a number of processes 0..64")
    return int(v)


_OPTIONS = {"size": _parse_size, "augment": _parse_augment, "cache": _parse_cache, "workers": _parse_workers}


def parse_folder_spec(spec: str) -> tuple[Path, FolderOptions]:
    """``PATH?key=value&...`` (what follows ``folder:``) -> (folder, options)."""
    path, opts = parse_file_spec(spec, _OPTIONS, "folder")
    return path, FolderOptions(**opts)


# --------------------------------------------------------------------------- finding files


def image_files(folder: Path, skipped: Counter[str] | None = None) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted); others are counted in ``skipped``."""
    out = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            out.append(p)
        elif skipped is not None:
            skipped[p.suffix.lower() or p.name] += 1
    return out


def _class_files(folder: Path, skipped: Counter[str]) -> dict[str, list[Path]]:
    """Class name -> its image files, for every sub-folder of ``folder``; loose files are skipped."""
    classes = {}
    for d in sorted(folder.iterdir()):
        if d.is_dir() and d.name.startswith("."):  # .ipynb_checkpoints, .git: not a class
            skipped[d.name + "/"] += 1
        elif d.is_dir():
            classes[d.name] = image_files(d, skipped)
        elif d.is_file():
            skipped[d.suffix.lower() or d.name] += 1
    return classes


def _scan(root: Path, skipped: Counter[str]) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """(sorted class names, split -> [(file, class index)]) for the splits the folder has."""
    if not root.is_dir():
        raise FileNotFoundError(f"folder data: no such folder {str(root)!r}")
    subdirs = {d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    if "train" in subdirs:
        extra = sorted(subdirs - set(_SPLITS))
        if extra:
            raise DataError(f"folder data {root}: has train/ (split layout) and also {', '.join(extra)}/; "
                            "put class folders inside train/, val/ and test/ only")
        splits = {s: _class_files(root / s, skipped) for s in _SPLITS if s in subdirs}
    else:
        splits = {"train": _class_files(root, skipped)}
    classes = sorted(splits["train"])
    if len(classes) < 2:
        raise DataError(f"folder data {root}: needs at least two class folders, found "
                        f"{len(classes)} ({', '.join(classes) or 'none'})")
    for name in classes:
        if not splits["train"][name]:
            raise DataError(f"folder data {root}: class folder {name!r} holds no images "
                            f"({', '.join(IMAGE_SUFFIXES)})")
    out = {}
    for split, by_class in splits.items():
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            raise DataError(f"folder data {root}: {split}/ has class folders {unknown} that train/ lacks")
        out[split] = [(f, classes.index(c)) for c in classes for f in by_class.get(c, [])]
        if not out[split]:
            raise DataError(f"folder data {root}: {split}/ holds no images")
    return classes, out


def _split(items: list[tuple[Path, int]], fraction: float, seed: int, reserve: int) -> tuple[list, list]:
    """(rest, held out): a seeded random ``fraction`` of ``items`` held out (at least one), each
    class in proportion, ``reserve`` images of a class kept for the splits after (``split_off``)."""
    if len(items) < 3:
        raise DataError(f"folder data: {len(items)} images are too few to split off validation and test")
    labels = torch.tensor([c for _, c in items], dtype=torch.int64)
    rest, held = split_off(len(items), fraction, seed, labels, reserve=reserve)
    return [items[i] for i in rest.tolist()], [items[i] for i in held.tolist()]


# --------------------------------------------------------------------------- decoding


def _open(path: Path) -> Image.Image:
    """The decoded image, or a DataError naming the file (missing or unreadable files: OSError)."""
    try:
        im = Image.open(path, formats=_FORMATS)
        im.load()
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError) as e:
        raise DataError(f"image {path} cannot be decoded ({e})") from None
    return im


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """(mode, (H, W)) from the file's header only."""
    try:
        with Image.open(path, formats=_FORMATS) as im:
            return im.mode, (im.height, im.width)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError) as e:
        raise DataError(f"image {path} cannot be decoded ({e})") from None


def _convert(im: Image.Image, channels: int) -> Image.Image:
    """L or RGB for 8-bit images; F in [0, 1] for 16-bit and float grayscale."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        scale = 1.0 if im.mode == "F" else 1 / 65535
        return im.convert("F").point(lambda v: v * scale)  # 16-bit grayscale -> [0, 1]
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # a palette's transparency, then drop alpha below
    return im.convert("L" if channels == 1 else "RGB")


def _centre_box(w: int, h: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The largest centred box of the output's aspect: scaling it to ``size`` covers it exactly."""
    out_h, out_w = size
    cw, ch = min(w, h * out_w / out_h), min(h, w * out_h / out_w)
    left, top = (w - cw) / 2, (h - ch) / 2
    return left, top, left + cw, top + ch


def _random_box(w: int, h: int, size: tuple[int, int], rng: np.random.Generator
                ) -> tuple[float, float, float, float]:
    """A random resized crop's box: 60-100% of the area, aspect within 3/4-4/3 of the output's."""
    aspect = size[1] / size[0]
    for _ in range(10):
        area = w * h * rng.uniform(*_CROP_AREA)
        r = aspect * math.exp(rng.uniform(math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1])))
        cw, ch = math.sqrt(area * r), math.sqrt(area / r)
        if cw <= w and ch <= h:
            left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return left, top, left + cw, top + ch
    return _centre_box(w, h, size)


def _to_tensor(im: Image.Image, channels: int) -> torch.Tensor:
    """(C, H, W) float32 in [0, 1]."""
    arr = np.array(im, dtype=np.float32)  # a copy: torch takes only writable arrays
    if im.mode != "F":
        arr = arr / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
    if arr.shape[0] != channels:
        arr = np.repeat(arr, channels, axis=0)  # 16-bit grayscale in an RGB set
    return torch.from_numpy(np.ascontiguousarray(arr))


def _decode(path: Path, size: tuple[int, int], channels: int,
            rngs: Sequence[np.random.Generator] = ()) -> list[torch.Tensor]:
    """The centre view of one image, then one augmented view per generator."""
    im = _convert(_open(path), channels)
    target = (size[1], size[0])  # Pillow sizes are (W, H)
    views = [_to_tensor(im.resize(target, Image.Resampling.BILINEAR, box=_centre_box(*im.size, size)),
                        channels)]
    for rng in rngs:
        aug = im.resize(target, Image.Resampling.BILINEAR, box=_random_box(*im.size, size, rng))
        if rng.random() < 0.5:
            aug = aug.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        views.append(_to_tensor(aug, channels))
    return views


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))  # Pillow decodes and resizes outside the GIL


def read_images(paths: Sequence[Path], shape: Sequence[int]) -> torch.Tensor:
    """Images decoded as a model trained on ``shape`` (C, H, W) saw them: (N, C, H, W) in [0, 1]."""
    c, h, w = (int(s) for s in shape)
    if c not in (1, 3):
        raise DataError(f"images have 1 (grayscale) or 3 (RGB) channels; the model takes {c}")
    with ThreadPoolExecutor(_workers()) as pool:
        views = list(pool.map(lambda p: _decode(p, (h, w), c)[0], paths))
    return torch.stack(views) if views else torch.zeros(0, c, h, w)


# --------------------------------------------------------------------------- the loader


@register_file_loader("folder")
def load_folder(spec: str | Path, *, seed: int = 0, val_fraction: float = 0.1,
                test_fraction: float = 0.2) -> Data:
    """Load ``PATH[?size=HxW&augment=batch|none|K&cache=auto|yes|no&workers=N]``: a folder of class
    folders (see the module doc)."""
    root, opts = parse_folder_spec(str(spec))
    skipped: Counter[str] = Counter()
    classes, splits = _scan(root, skipped)
    if skipped:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(skipped.items()))
        log.warning("folder data %s: skipped %d files that are not images (%s)",
                    root, sum(skipped.values()), kinds)
    if "test" not in splits:
        # a fixed seed: the test images do not change with the run's seed
        splits["train"], splits["test"] = _split(splits["train"], test_fraction, len(splits["train"]),
                                                 reserve=1 if "val" in splits else 2)
    if "val" not in splits:
        splits["train"], splits["val"] = _split(splits["train"], val_fraction, seed, reserve=1)
    heads = {p: _header(p) for s in _SPLITS for p, _ in splits[s]}
    channels = 1 if all(heads[p][0] in _GRAY_MODES for p, _ in splits["train"]) else 3
    size = opts.size or _common_size(root, heads)
    copies = opts.augment if isinstance(opts.augment, int) else 0
    n = sum(len(v) for v in splits.values()) + copies * len(splits["train"])
    nbytes = n * channels * size[0] * size[1] * 4
    stream, why = _cached_or_streamed(opts, nbytes)
    augment = BatchAugment() if opts.augment == "batch" else None
    aug = ("a random crop and flip per training batch" if augment else
           f"{copies} decoded copies of each training image" if copies else "no augmentation")
    if stream:
        if copies:
            raise ConfigError(f"folder data {root}: augment={copies} (decoded copies) needs the images in "
                              "memory; streamed images are augmented per batch (augment=batch, the default)")
        workers = _stream_workers() if opts.workers is None else opts.workers
        log.info("folder data %s: %d images of %dx%dx%d streamed from disk, decoded per batch by %d "
                 "DataLoader workers (%s); %s", root, n, channels, *size, workers, why, aug)
        mean, std = _channel_stats([p for p, _ in splits["train"]], size, channels)
        split_data = {}
        for s in _SPLITS:
            fetch = _Decoded(splits[s], size, channels, mean, std)
            split_data[s] = TensorData(LazyTensor(len(splits[s]), (channels, *size), fetch, workers=workers),
                                       torch.tensor([c for _, c in splits[s]], dtype=torch.int64))
    else:
        log.info("folder data %s: %d images (%d augmented copies) decoded once into memory as tensors "
                 "(%.1f MiB, %dx%dx%d), the engine's fast path (%s); %s", root, n,
                 copies * len(splits["train"]), nbytes / 2**20, channels, *size, why, aug)
        tensors = {s: _decode_split(splits[s], size, channels, copies if s == "train" else 0, seed)
                   for s in _SPLITS}
        # per-channel mean and std of the training images themselves (not their augmented
        # copies), so the statistics predict applies do not depend on the seed or augment
        clean = tensors["train"].x[:len(splits["train"])]
        mean = clean.mean((0, 2, 3)).view(-1, 1, 1)
        std = clean.std((0, 2, 3)).clamp_min(1e-8).view(-1, 1, 1)
        split_data = {s: TensorData((t.x - mean) / std, t.y) for s, t in tensors.items()}
    return Data(f"folder:{spec}", **split_data, input="image", task="classification",
                num_classes=len(classes), in_chans=channels, classes=tuple(classes),
                stats={"mean": mean, "std": std}, about=f"images from {root}", augment=augment)


def _cached_or_streamed(opts: FolderOptions, nbytes: int) -> tuple[bool, str]:
    """(stream?, why) from ``cache`` and the decoded tensors' size."""
    size, limit = f"{nbytes / 2**30:.2f} GiB as tensors", f"{MEMORY_LIMIT / 2**30:.0f} GiB"
    if opts.cache == "no":
        return True, f"cache=no; {size}"
    if opts.cache == "yes":
        if nbytes > MEMORY_LIMIT:
            log.warning("folder data: cache=yes keeps %s in memory, over the %s limit", size, limit)
        return False, f"cache=yes; {size}"
    if nbytes > MEMORY_LIMIT:
        return True, f"{size}, over the in-memory limit of {limit}; cache=yes keeps them anyway"
    return False, f"{size}, within the in-memory limit of {limit}; cache=no streams them"


def _stream_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1) - 1))  # the CPUs but the training process's


class _Decoded:
    """Image i of a split, decoded and standardised (a ``LazyTensor``'s fetch; picklable for workers)."""

    def __init__(self, items: list[tuple[Path, int]], size: tuple[int, int], channels: int,
                 mean: torch.Tensor, std: torch.Tensor) -> None:
        self.paths, self.size, self.channels = [p for p, _ in items], size, channels
        self.mean, self.std = mean, std

    def __call__(self, i: int) -> torch.Tensor:
        return (_decode(self.paths[i], self.size, self.channels)[0] - self.mean) / self.std  # (C, H, W)


def _channel_stats(paths: Sequence[Path], size: tuple[int, int], channels: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std of the images, decoded in one pass without keeping them."""
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    with ThreadPoolExecutor(_workers()) as pool:
        for start in range(0, len(paths), 1024):  # bounded: a chunk's images at a time
            for v in pool.map(lambda p: _decode(p, size, channels)[0].double(), paths[start:start + 1024]):
                total += v.sum((1, 2))
                squares += (v * v).sum((1, 2))
    n = len(paths) * size[0] * size[1]
    mean = total / n
    var = (squares - n * mean * mean) / max(1, n - 1)
    std = var.clamp_min(0).sqrt().clamp_min(1e-8)
    return mean.float().view(-1, 1, 1), std.float().view(-1, 1, 1)


def _common_size(root: Path, heads: dict[Path, tuple[str, tuple[int, int]]]) -> tuple[int, int]:
    sizes = {hw: p for p, (_, hw) in heads.items()}
    if len(sizes) == 1:
        return next(iter(sizes))
    (a, pa), (b, pb) = list(sizes.items())[:2]
    raise DataError(f"folder data {root}: images differ in size ({a[0]}x{a[1]} {pa}, {b[0]}x{b[1]} {pb}); "
                    f"choose one: folder:{root}?size=HxW")


def _decode_split(items: list[tuple[Path, int]], size: tuple[int, int], channels: int, augment: int,
                  seed: int) -> TensorData:
    """Every image's centre view, then (training) ``augment`` random views of each, as tensors."""
    def one(i: int) -> list[torch.Tensor]:
        rngs = [np.random.default_rng([seed, i, k]) for k in range(augment)]
        return _decode(items[i][0], size, channels, rngs)

    with ThreadPoolExecutor(_workers()) as pool:
        views = list(pool.map(one, range(len(items))))
    labels = torch.tensor([c for _, c in items], dtype=torch.int64)
    x = torch.stack([v[0] for v in views] + [v[k] for k in range(1, augment + 1) for v in views])
    return TensorData(x, labels.repeat(augment + 1))


def image_inputs(path: Path) -> list[tuple[str, Path]] | None:
    """The images ``predict --input`` names: (name, file) for one image or a folder of them
    (named relative to it, sorted); ``None`` when ``path`` is no image and no folder."""
    if not (path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES):
        return None
    if not path.exists():
        raise FileNotFoundError(f"no input image {str(path)!r}")
    if not path.is_dir():
        return [(str(path), path)]
    files = image_files(path)
    if not files:
        raise DataError(f"input folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [(f.relative_to(path).as_posix(), f) for f in files]
