r"""Synthetic long-memory sequence tasks: the adding problem and copy memory.

Papers: Long Short-Term Memory (Hochreiter, Schmidhuber), Neural Computation 9(8),
1997 (the adding problem, experiment 4); Unitary Evolution Recurrent Neural
Networks (Arjovsky, Shah, Bengio), arXiv 1511.06464, 2015 (both tasks in the form
used here).

Pure functions, deterministic given ``seed``; they return whole tensors.

Letters: n samples, T sequence length (time lag), S copied symbols.
"""

from __future__ import annotations

import math

import torch

__all__ = ["adding_problem", "adding_problem_baseline", "copy_memory", "copy_memory_baseline"]


def adding_problem(n: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The adding problem: sum the two values marked in a long sequence.

    Each sample is T steps of two channels: a value u_t ~ U(0, 1) and a marker m_t,
    which is 1 at exactly two steps, one drawn in the first half and one in the
    second half of the sequence, and 0 elsewhere. The target is::

        y = sum_t m_t u_t        (the sum of the two marked values, in [0, 2])

    Predicting the constant 1 gives MSE = Var(u_a + u_b) = 2/12 = 0.167 (the
    trivial baseline, ``adding_problem_baseline()``).

    Args:
        n: number of samples.
        T: sequence length (at least 2).
        seed: the random seed (same seed, same data).

    Returns:
        ``(x (n, T, 2) float32, y (n,) float32)``.
    """
    if T < 2 or n < 1:
        raise ValueError(f"adding_problem: need n >= 1 and T >= 2, got n={n}, T={T}")
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, T, generator=g)
    half = T // 2
    first = torch.randint(0, half, (n,), generator=g)  # a marked step in [0, T/2)
    second = torch.randint(half, T, (n,), generator=g)  # and one in [T/2, T)
    marks = torch.zeros(n, T)
    rows = torch.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    x = torch.stack([values, marks], dim=-1)  # (n, T, 2)
    y = (values * marks).sum(1)  # (n,)
    return x, y


def adding_problem_baseline() -> float:
    """MSE of always predicting 1 on the adding problem: Var(U + U) = 1/6."""
    return 2.0 / 12.0


def copy_memory(
    n: int, T: int, seed: int = 0, *, num_symbols: int = 8, copy_len: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Copy memory: recall S symbols after a blank stretch of T steps.

    Arjovsky, Shah & Bengio, arXiv 1511.06464, section 4.2. With symbols 1..8, blank
    0 and delimiter 9 (for the defaults S = copy_len = 10, num_symbols = 8), each
    input is::

        a_1..a_S, 0 x (T - 1), 9, 0 x S            (length T + 2S)

    and its target is::

        0 x (T + S), a_1..a_S

    Predicting blanks and then a uniform guess among the symbols gives the baseline
    cross-entropy S log(num_symbols) / (T + 2S) (``copy_memory_baseline``).

    Args:
        n: number of samples.
        T: the blank delay between the symbols and the delimiter (at least 1).
        seed: the random seed (same seed, same data).
        num_symbols: symbols to copy are drawn from 1..num_symbols.
        copy_len: S, symbols per sequence.

    Returns:
        ``(x (n, T + 2S) int64, y (n, T + 2S) int64)``, ids in [0, num_symbols + 1]
        (so ``num_symbols + 2`` classes).
    """
    if T < 1 or n < 1 or copy_len < 1 or num_symbols < 1:
        raise ValueError(f"copy_memory: need n, T, copy_len, num_symbols >= 1, got n={n}, T={T}, "
                         f"copy_len={copy_len}, num_symbols={num_symbols}")
    g = torch.Generator().manual_seed(seed)
    s = copy_len
    length = T + 2 * s
    symbols = torch.randint(1, num_symbols + 1, (n, s), generator=g)
    x = torch.zeros(n, length, dtype=torch.long)
    x[:, :s] = symbols
    x[:, T + s - 1] = num_symbols + 1  # the delimiter: "now recall"
    y = torch.zeros(n, length, dtype=torch.long)
    y[:, -s:] = symbols
    return x, y


def copy_memory_baseline(T: int, *, num_symbols: int = 8, copy_len: int = 10) -> float:
    """Cross-entropy per step of the memoryless strategy (blanks, then a uniform guess)."""
    return copy_len * math.log(num_symbols) / (T + 2 * copy_len)
