"""The classic long-memory sequence benchmarks as data sets: adding problem, copy memory.

The generators live in ``data/sequence_tasks.py`` (Hochreiter & Schmidhuber, "Long
Short-Term Memory", 1997, the adding problem; Arjovsky, Shah & Bengio, arXiv
1511.06464, copy memory); this file registers them with a train/val/test split.
The test set comes from a fixed seed, so it does not change with the run's seed.

Letters: B batch, T time steps.
"""

from __future__ import annotations

from pathlib import Path

from blockzoo.data.base import Data, TensorData, register_dataset

__all__: list[str] = []

_TEST_SEED = 1_000_003


def _sizes(quick: bool, n: int, val_fraction: float) -> tuple[int, int, int]:
    n = 240 if quick else n
    n_val = max(1, round(n * val_fraction))
    return n - n_val, n_val, max(1, n // 5)


@register_dataset(
    "adding",
    input="sequence",
    task="regression",
    about="adding problem (Hochreiter & Schmidhuber 1997): sum the 2 marked values of T=50 steps; "
    "MSE vs 0.167",
)
def adding(*, seed: int = 0, val_fraction: float = 0.1, data_dir: Path | None = None,
           quick: bool = False, T: int = 50, n: int = 6000) -> Data:
    """Sequences (T, 2) of (value, marker); target (1,) the sum of the two marked values.

    Always predicting 1 gives test MSE 1/6 = 0.167, the trivial baseline to beat.
    """
    from blockzoo.data.sequence_tasks import adding_problem, adding_problem_baseline

    T = 20 if quick else T
    n_tr, n_val, n_te = _sizes(quick, n, val_fraction)
    x, y = adding_problem(n_tr + n_val, T, seed)
    xt, yt = adding_problem(n_te, T, _TEST_SEED)
    return Data("adding", TensorData(x[:n_tr], y[:n_tr, None]), TensorData(x[n_tr:], y[n_tr:, None]),
                TensorData(xt, yt[:, None]), input="sequence", task="regression", num_classes=1,
                in_chans=2, baselines={"predict 1 (trivial)": adding_problem_baseline()})


@register_dataset(
    "copy_memory",
    input="sequence",
    task="classification",
    about="copy memory (Arjovsky et al. 2015): recall 10 symbols after T=20 blank steps; "
    "per-step cross-entropy vs the memoryless baseline",
)
def copy_memory(*, seed: int = 0, val_fraction: float = 0.1, data_dir: Path | None = None,
                quick: bool = False, T: int = 20, n: int = 6000) -> Data:
    """Token ids (T + 20,) in 0..9 and one target id per step (10 classes).

    The headline metric is the test cross-entropy per step; the memoryless strategy
    (blanks, then a uniform guess among the 8 symbols) scores ``copy_memory_baseline(T)``.
    """
    from blockzoo.data.sequence_tasks import copy_memory as make
    from blockzoo.data.sequence_tasks import copy_memory_baseline

    T = 10 if quick else T
    n_tr, n_val, n_te = _sizes(quick, n, val_fraction)
    x, y = make(n_tr + n_val, T, seed)
    xt, yt = make(n_te, T, _TEST_SEED)
    vocab = int(max(x.max(), y.max())) + 1
    return Data("copy_memory", TensorData(x[:n_tr], y[:n_tr]), TensorData(x[n_tr:], y[n_tr:]),
                TensorData(xt, yt), input="sequence", task="classification", num_classes=vocab,
                in_chans=vocab, ids=True, headline="loss",
                baselines={"memoryless (blanks, then a uniform guess)": copy_memory_baseline(T)})
