"""The arenas: which attention block, and which backbone, should I pick?

Two arenas, chosen by ``ArenaSettings.arena`` (``blockzoo arena --kind``):

``attention`` (the default): every image-attention block is attached into the same small
conv net and trained on the same images (the 8x8 digits by default; ``cluttered_digits``,
digits placed at random on a 16x16 canvas among fragments, is the harder task that
separates them more); every token-attention block is the token mixer of the same small
transformer trained on the same sequences (MNIST-1D by default). A baseline row
(``none``: the same backbone without attention) is trained alongside. Candidates are
registry entries of family ``attention`` whose example keeps the input shape
(``out_shape="same"``); for tokens, only those that mix tokens (so positional encodings
such as RoPE, which mix nothing, are left out). Each block runs at its registered example
config (the small settings ``blockzoo bench`` uses), its width set by the backbone.

``backbones``: every registered image classifier (family ``model``, image input, logits
or log-probabilities out; read from the registry on each call, so models registered later
join the next run) is trained whole, from scratch, at its registered example config with
the data's channels and classes. The data rule: the images are resized (bilinear,
antialiased when shrinking) to the model's registered example size, the size its
conformance tests run at (the 8x8 digits become 32x32 for a model registered at 32x32);
the ``data`` column names it (``digits@32x32``). A model whose forward pass of one image at
that size costs more than ``max_mflops`` MFLOPs, whose constructor sets no channels or
classes, or which does not run at its example config, is not trained: ``backbone_skips``
lists it with the reason, and the report prints it. Row kind ``backbone``; no baseline.

Both: same data, same optimiser and budget, K seeds each; the table reports test accuracy
mean ± std, params, FLOPs, training time and inference latency, and a scatter plots
accuracy against latency.

Runs are resumable: each finished (kind, block, seed, data, epochs, small_data)
result is appended to a CSV as soon as it is done, and a later call skips the
rows already there (failed runs are re-tried, and reported until they pass).

The rooms:

- ``settings.py``: ``ArenaSettings`` (which arena, budget and data; ``backbone_settings()``
  the backbone arena's default), ``ARENAS``, ``BASELINE``, ``BACKBONE``, ``KINDS``,
  ``QUICK_BLOCKS`` (``--quick``'s representative set).
- ``backbones.py``: the attention arena's ``ArenaConvNet`` (images), ``ArenaTransformer`` (tokens).
- ``block_config.py``: a block's example config, and the one guess of which
  constructor argument sets a token block's sequence length.
- ``candidates.py``: ``arena_candidates``, ``backbone_candidates``, ``backbone_skips`` (the
  cost cap and its reasons) and ``plan`` (the (kind, entry, seed) runs).
- ``one_run.py``: ``arena_data`` (a run's data, resized for a backbone), ``build_arena_model``,
  ``train_one``, ``measure_latency``.
- ``results.py``: the CSV: ``ARENA_COLUMNS``, ``read_results``, ``results_for``.
- ``pool.py``: ``run_arena`` (what the CSV lacks, in-process or in a process pool).
- ``reporting.py``: ``arena_latencies``, ``summarize``, ``plot_arena``, ``arena_markdown``.
"""

from blockzoo.bench.arena.backbones import ArenaConvNet, ArenaTransformer
from blockzoo.bench.arena.candidates import arena_candidates, backbone_candidates, backbone_skips, plan
from blockzoo.bench.arena.one_run import arena_data, build_arena_model, measure_latency, train_one
from blockzoo.bench.arena.pool import run_arena
from blockzoo.bench.arena.reporting import (
    SUMMARY_COLUMNS,
    arena_latencies,
    arena_markdown,
    plot_arena,
    summarize,
)
from blockzoo.bench.arena.results import ARENA_COLUMNS, read_results, results_for
from blockzoo.bench.arena.settings import (
    ARENAS,
    BACKBONE,
    BASELINE,
    KINDS,
    QUICK_BLOCKS,
    ArenaSettings,
    settings_text,
)

__all__ = [
    "ARENAS",
    "ARENA_COLUMNS",
    "BACKBONE",
    "BASELINE",
    "KINDS",
    "QUICK_BLOCKS",
    "SUMMARY_COLUMNS",
    "ArenaConvNet",
    "ArenaSettings",
    "ArenaTransformer",
    "arena_candidates",
    "arena_data",
    "arena_latencies",
    "arena_markdown",
    "backbone_candidates",
    "backbone_skips",
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
