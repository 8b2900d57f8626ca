"""What every recurrent family registers alike: its cell's and its layer's examples.

Private to ``blockzoo.recurrent``: ``elman.py``, ``lstm.py``, ``gru.py`` and ``jordan.py``
register with these, so the example sizes are written once.
"""

from __future__ import annotations

from typing import Any

from blockzoo.registry import Example, sequence, vectors

# The example feeds one step from the zero state, so the recurrent weights get an exactly
# zero gradient there; tests/test_recurrent.py checks every gradient with a non-zero state.
CELL_GRAD_EXEMPT = {"grad": "the recurrent weights multiply the zero initial state of a single-step "
                            "example, so their gradient is exactly zero; test_recurrent checks them "
                            "with a non-zero state"}


def _out_features(cfg: Any) -> int:
    return cfg.get("output_size") or cfg["hidden_size"]


def _cell_out(shape: Any, cfg: Any) -> tuple[int, int]:
    return (shape[0], _out_features(cfg))


def _layer_out(shape: Any, cfg: Any) -> tuple[int, ...]:
    d = 2 if cfg.get("bidirectional") else 1
    return (shape[0], shape[1], d * _out_features(cfg))


def cell_example(**sizes: tuple[int, int]) -> Example:
    """A cell's example: one step of (B, 8) inputs, hidden 12; ``sizes``: more (example, tiny) sizes."""
    return Example(
        config=dict(input_size=8, hidden_size=12, **{k: v[0] for k, v in sizes.items()}),
        inputs=vectors("input_size"),
        out_shape=_cell_out,
        tiny=dict(input_size=3, hidden_size=4, **{k: v[1] for k, v in sizes.items()}),
    )


def layer_example(**sizes: tuple[int, int]) -> Example:
    """A layer's example: two bidirectional layers over a padded batch with lengths, like ``cell_example``."""
    return Example(
        config=dict(input_size=8, hidden_size=12, num_layers=2, bidirectional=True,
                    **{k: v[0] for k, v in sizes.items()}),
        inputs=sequence("input_size", lengths=True),
        size=(8,),
        out_shape=_layer_out,
        tiny=dict(input_size=3, hidden_size=4, **{k: v[1] for k, v in sizes.items()}),
    )


def state_dims(state_parts: int) -> tuple[int, ...]:
    """``out_batch_dims`` of a layer: the output's batch dim 0, each state part's dim 1."""
    return (0, *([1] * state_parts))
