"""The attention arena: which attention block should I pick?

Every image-attention block is attached into the same small conv net and trained
on the same images (the 8x8 digits by default; ``cluttered_digits``, digits placed at
random on a 16x16 canvas among fragments, is the harder task that separates them more);
every token-attention block is the token mixer of the same small transformer
trained on the same sequences (MNIST-1D by default). Same data, same optimiser and budget, K seeds each; the
table reports test accuracy mean ± std, params, FLOPs, training time and
inference latency, and a scatter plots accuracy against latency. A baseline
row (``none``: the same backbone without attention) is trained alongside.

Candidates are registry entries of family ``attention`` whose example keeps the
input shape (``out_shape="same"``); for tokens, only those that mix tokens (so
positional encodings such as RoPE, which mix nothing, are left out). Each block
runs at its registered example config (the small settings ``blockzoo bench``
uses), its width set by the backbone.

Runs are resumable: each finished (kind, block, seed, data, epochs, small_data)
result is appended to a CSV as soon as it is done, and a later call skips the
rows already there (failed runs are re-tried, and reported until they pass).

The rooms:

- ``settings.py``: ``ArenaSettings`` (budget and data), ``BASELINE``, ``KINDS``,
  ``QUICK_BLOCKS`` (``--quick``'s representative set).
- ``backbones.py``: ``ArenaConvNet`` (images), ``ArenaTransformer`` (tokens).
- ``block_config.py``: a block's example config, and the one guess of which
  constructor argument sets a token block's sequence length.
- ``candidates.py``: ``arena_candidates`` and ``plan`` (the (kind, block, seed) runs).
- ``one_run.py``: ``build_arena_model``, ``train_one``, ``measure_latency``.
- ``results.py``: the CSV: ``ARENA_COLUMNS``, ``read_results``, ``results_for``.
- ``pool.py``: ``run_arena`` (what the CSV lacks, in-process or in a process pool).
- ``reporting.py``: ``arena_latencies``, ``summarize``, ``plot_arena``, ``arena_markdown``.
"""

from blockzoo.bench.arena.backbones import ArenaConvNet, ArenaTransformer
from blockzoo.bench.arena.candidates import arena_candidates, plan
from blockzoo.bench.arena.one_run import build_arena_model, measure_latency, train_one
from blockzoo.bench.arena.pool import run_arena
from blockzoo.bench.arena.reporting import (
    SUMMARY_COLUMNS,
    arena_latencies,
    arena_markdown,
    plot_arena,
    summarize,
)
from blockzoo.bench.arena.results import ARENA_COLUMNS, read_results, results_for
from blockzoo.bench.arena.settings import BASELINE, KINDS, QUICK_BLOCKS, ArenaSettings, settings_text

__all__ = [
    "ARENA_COLUMNS",
    "BASELINE",
    "KINDS",
    "QUICK_BLOCKS",
    "SUMMARY_COLUMNS",
    "ArenaConvNet",
    "ArenaSettings",
    "ArenaTransformer",
    "arena_candidates",
    "arena_latencies",
    "arena_markdown",
    "build_arena_model",
    "measure_latency",
    "plan",
    "plot_arena",
    "read_results",
    "results_for",
    "run_arena",
    "settings_text",
    "summarize",
    "train_one",
]
