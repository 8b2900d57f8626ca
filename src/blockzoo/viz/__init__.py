"""Figures for learners, computed by the library itself (autograd, real blocks, hooks).

- ``activations``: each activation of ``blockzoo.act`` and its autograd derivative;
- ``attention``: attention weights / gates read through ``record_attention``;
- ``confusion``: a classifier's confusion matrix (the training run's ``confusion.png``);
- ``posenc``: positional-encoding tables and their dot product by offset;
- ``shapes``: every layer's output shape, parameters and FLOPs for one forward.

Each ``plot_*`` function writes a PNG with matplotlib's Agg backend (no display
needed) and returns its path; the numbers behind each figure come from a
separate function that the tests check. matplotlib is imported only when a
figure is drawn.
"""

from blockzoo.viz.activations import activation_curves, plot_activations
from blockzoo.viz.attention import attention_maps, plot_attention
from blockzoo.viz.confusion import plot_confusion, row_fractions
from blockzoo.viz.posenc import encoding_table, offset_dot_products, plot_posenc
from blockzoo.viz.shapes import LayerRow, layer_table, plot_shapes

__all__ = [
    "LayerRow",
    "activation_curves",
    "attention_maps",
    "encoding_table",
    "layer_table",
    "offset_dot_products",
    "plot_activations",
    "plot_attention",
    "plot_confusion",
    "plot_posenc",
    "plot_shapes",
    "row_fractions",
]
