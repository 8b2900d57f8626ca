"""The tutorials' toy problems, generated deterministically from a seed.

- ``line``: noisy points on y = 2x + b, for linear regression (least squares,
  Legendre 1805 / Gauss 1809).
- ``blobs``: two Gaussian blobs in the plane, for logistic regression (Cox 1958).
- ``bow_en_es``: short English and Spanish sentences as bag-of-words count
  vectors, for a bag-of-words classifier (Harris 1954). The word lists are our
  own; sentences are drawn at random from them.
- ``cluttered_digits``: the bundled 8x8 digits scaled, moved to a random place on a
  larger canvas among fragments of other digits, with pixel noise: translated,
  cluttered MNIST as in "Recurrent Models of Visual Attention" (Mnih et al.,
  arXiv 1406.6247, 2014), made from the 8x8 digits so it can be generated here.
  A classifier must find the digit and read its whole shape, so it separates image
  models (and the arena's attention blocks) that the 8x8 digits cannot.

Letters: B batch, F features, V vocabulary size, S canvas side, k digit side.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from blockzoo.checks import require
from blockzoo.data.base import Data, TensorData, register_dataset
from blockzoo.data.bundled import digits

__all__ = ["BOW_WORDS", "bag_of_words", "clutter", "en_es_sentences"]


def _splits(x: torch.Tensor, y: torch.Tensor, val_fraction: float, test_fraction: float = 0.2):
    n = len(x)
    n_test = round(n * test_fraction)
    n_val = max(1, round((n - n_test) * val_fraction))
    n_tr = n - n_test - n_val
    return (TensorData(x[:n_tr], y[:n_tr]), TensorData(x[n_tr:n_tr + n_val], y[n_tr:n_tr + n_val]),
            TensorData(x[n_tr + n_val:], y[n_tr + n_val:]))


@register_dataset(
    "line",
    input="vector",
    task="regression",
    about="noisy line y = 2x + 1 + noise (x in [-1, 1], noise std 0.1): linear regression",
)
def line(*, seed: int = 0, val_fraction: float = 0.1, data_dir: Path | None = None,
         quick: bool = False, n: int = 500, slope: float = 2.0, intercept: float = 1.0,
         noise: float = 0.1) -> Data:
    """Points (x, y) with y = slope * x + intercept + N(0, noise^2); x ~ U(-1, 1).

    The best possible test MSE is about ``noise**2`` (0.01); the trivial baseline
    (predict the mean) is about ``slope**2 / 3`` (1.33).
    """
    g = torch.Generator().manual_seed(seed)
    n = 64 if quick else n
    x = torch.rand(n, 1, generator=g) * 2 - 1
    y = slope * x + intercept + noise * torch.randn(n, 1, generator=g)
    train, val, test = _splits(x, y, val_fraction)
    return Data("line", train, val, test, input="vector", task="regression", num_classes=1,
                in_chans=1, baselines={"noise floor": noise**2, "predict the mean": slope**2 / 3})


@register_dataset(
    "blobs",
    input="vector",
    task="binary",
    about="two Gaussian blobs in 2-D (centres (-1,-1) and (1,1), std 0.75): logistic regression",
)
def blobs(*, seed: int = 0, val_fraction: float = 0.1, data_dir: Path | None = None,
          quick: bool = False, n: int = 600, spread: float = 0.75) -> Data:
    """Class 0 ~ N((-1, -1), spread^2 I), class 1 ~ N((1, 1), spread^2 I); y float (B, 1).

    The Bayes-optimal accuracy is Phi(sqrt(2) / spread) (about 97% at spread 0.75).
    """
    g = torch.Generator().manual_seed(seed)
    n = 80 if quick else n
    y = (torch.rand(n, generator=g) < 0.5).float()
    centre = (2 * y - 1)[:, None].expand(n, 2)
    x = centre + spread * torch.randn(n, 2, generator=g)
    bayes = 0.5 * (1 + torch.erf(torch.tensor(2**0.5 / spread) / 2**0.5)).item()
    train, val, test = _splits(x, y[:, None], val_fraction)
    return Data("blobs", train, val, test, input="vector", task="binary", num_classes=1,
                in_chans=2, baselines={"Bayes optimal": bayes, "chance": 0.5},
                classes=("0", "1"))


# Our own word lists. A few words are shared by both languages ("no", "a", "me"),
# so single words do not always decide the label.
BOW_WORDS = {
    "english": ("i", "you", "we", "like", "to", "eat", "drink", "the", "a", "house", "is", "big",
                "small", "water", "bread", "good", "bad", "it", "not", "no", "me", "give", "where",
                "today", "my", "friend", "and", "very"),
    "spanish": ("yo", "tu", "nosotros", "me", "gusta", "comer", "beber", "la", "el", "casa", "es",
                "grande", "pequena", "agua", "pan", "bueno", "malo", "no", "a", "dame", "donde",
                "hoy", "mi", "amigo", "y", "muy", "creo", "que"),
}


def bag_of_words(sentences: list[list[str]], vocab: tuple[str, ...]) -> torch.Tensor:
    """Count vectors (B, V): x[b, v] = how often word ``vocab[v]`` occurs in sentence b."""
    index = {w: i for i, w in enumerate(vocab)}
    rows = torch.zeros(len(sentences), len(vocab))
    for b, words in enumerate(sentences):
        for w in words:
            if w in index:
                rows[b, index[w]] += 1
    return rows


def en_es_sentences(n: int = 400, seed: int = 0) -> tuple[list[list[str]], torch.Tensor]:
    """``n`` sentences of 3-8 words drawn from one language's list (``BOW_WORDS``) and their labels
    (0 English, 1 Spanish): the data of ``bow_en_es``, as words (``text:`` data's example)."""
    g = torch.Generator().manual_seed(seed)
    langs = ("english", "spanish")
    labels = torch.randint(0, 2, (n,), generator=g)
    lengths = torch.randint(3, 9, (n,), generator=g)
    sentences = []
    for lab, length in zip(labels.tolist(), lengths.tolist(), strict=True):
        words = BOW_WORDS[langs[lab]]
        picks = torch.randint(0, len(words), (length,), generator=g).tolist()
        sentences.append([words[i] for i in picks])
    return sentences, labels


@register_dataset(
    "bow_en_es",
    input="vector",
    task="classification",
    about="English vs Spanish sentences as bag-of-words counts (random sentences from our word lists)",
)
def bow_en_es(*, seed: int = 0, val_fraction: float = 0.1, data_dir: Path | None = None,
              quick: bool = False, n: int = 400) -> Data:
    """Sentences of 3-8 words drawn from one language's list; label 0 English, 1 Spanish."""
    vocab = tuple(sorted(set(BOW_WORDS["english"]) | set(BOW_WORDS["spanish"])))
    sentences, labels = en_es_sentences(60 if quick else n, seed)
    x = bag_of_words(sentences, vocab)
    train, val, test = _splits(x, labels, val_fraction)
    return Data("bow_en_es", train, val, test, input="vector", task="classification", num_classes=2,
                in_chans=len(vocab), classes=("english", "spanish"), vocab=vocab)


def clutter(images: torch.Tensor, g: torch.Generator, *, canvas: int = 16,
            scale: tuple[float, float] = (1.0, 1.5), fragments: int = 3, fragment_size: int = 3,
            noise: float = 0.1) -> torch.Tensor:
    """Each (1, 8, 8) image scaled by s ~ U(scale), placed whole at a random position of an
    S x S canvas (S = ``canvas``), with ``fragments`` random f x f crops of other images
    (f = ``fragment_size``) at random positions and Gaussian pixel noise of std ``noise``.

    Shape: (B, 1, h, w) in [0, 1] -> (B, 1, S, S); pixels are clamped to [0, 1] before the
    noise is added.
    """
    b, _, h, w = images.shape
    k = torch.empty(b).uniform_(*scale, generator=g) * max(h, w)  # digit side in canvas pixels
    require(float(k.max()) <= canvas, f"clutter: a digit of side {float(k.max()):.1f} does not fit "
            f"canvas={canvas}")
    # where each output pixel reads the digit: input = (canvas position - centre) * S / k,
    # in grid_sample's [-1, 1] coordinates; the centre keeps the whole digit on the canvas
    room = 1 - k / canvas
    centre = (torch.rand(b, 2, generator=g) * 2 - 1) * room[:, None]  # (B, 2) as (x, y)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = canvas / k
    theta[:, :, 2] = -centre * (canvas / k)[:, None]
    grid = F.affine_grid(theta, [b, 1, canvas, canvas], align_corners=False)  # (B, S, S, 2)
    out = F.grid_sample(images.float(), grid, align_corners=False, padding_mode="zeros")  # (B, 1, S, S)
    f = fragment_size
    for _ in range(fragments):
        src = torch.randint(0, b, (b,), generator=g)
        r, c = torch.randint(0, h - f + 1, (b,), generator=g), torch.randint(0, w - f + 1, (b,), generator=g)
        pr = torch.randint(0, canvas - f + 1, (b,), generator=g)
        pc = torch.randint(0, canvas - f + 1, (b,), generator=g)
        ar = torch.arange(f)
        # (B, f, f) crops of other images, pasted (max) at (pr, pc)
        crop = images[src[:, None, None], 0, (r[:, None] + ar)[:, :, None], (c[:, None] + ar)[:, None, :]]
        rows, cols = (pr[:, None] + ar)[:, :, None], (pc[:, None] + ar)[:, None, :]
        bi = torch.arange(b)[:, None, None]
        out[bi, 0, rows, cols] = torch.maximum(out[bi, 0, rows, cols], crop.float())
    return out.clamp(0, 1) + noise * torch.randn(out.shape, generator=g)


# The test split's placements are fixed (independent of the run's seed), like digits' test split.
_CLUTTER_TEST_SEED = 2406


@register_dataset(
    "cluttered_digits",
    input="image",
    task="classification",
    about="8x8 digits scaled x1-2, at random places on a 24x24 canvas among digit fragments, noisy",
)
def cluttered_digits(*, seed: int = 0, val_fraction: float = 0.1, data_dir: Path | None = None,
                     quick: bool = False, canvas: int = 16, copies: int = 2) -> Data:
    """The digits' splits, each image placed ``copies`` times (different scale, place,
    clutter and noise) on a (1, S, S) canvas, S = ``canvas``.

    Train/val placements follow ``seed``; the test split (the digits' fixed 360 test
    images) is placed the same way in every run. With the default 3 copies: about 3880
    train, 430 val and 1080 test images.
    """
    base = digits(seed=seed, val_fraction=val_fraction, quick=quick)
    g = torch.Generator().manual_seed(seed)
    gt = torch.Generator().manual_seed(_CLUTTER_TEST_SEED)
    splits = {}
    for name, split in (("train", base.train), ("val", base.val), ("test", base.test)):
        x = split.x.repeat(copies, 1, 1, 1)
        splits[name] = TensorData(clutter(x, gt if name == "test" else g, canvas=canvas),
                                  split.y.repeat(copies))
    return Data("cluttered_digits", splits["train"], splits["val"], splits["test"], input="image",
                task="classification", num_classes=10, in_chans=1, classes=base.classes)
