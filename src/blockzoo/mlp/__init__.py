"""MLP-style blocks: the plain MLP and the MLP mixers."""

from blockzoo.mlp.mlp import MLP

__all__ = ["MLP"]
