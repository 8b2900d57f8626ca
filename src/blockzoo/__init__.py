"""blockzoo: verified, shape-agnostic, measured neural-network building blocks.

    >>> import blockzoo, torch
    >>> block = blockzoo.create("mlp", in_features=8, out_features=2)
    >>> block(torch.randn(4, 8)).shape
    torch.Size([4, 2])
"""

# Importing the rooms registers their blocks and models.
from blockzoo import attention, conv, mlp, models, recurrent, rep
from blockzoo._version import __version__
from blockzoo.attach import attach
from blockzoo.checks import ShapeError
from blockzoo.io import load, load_weights, save
from blockzoo.registry import (
    Spec,
    UnknownNameError,
    create,
    list_blocks,
    register,
    spec,
)
from blockzoo.rep.fuse import reparameterize
from blockzoo.weights import create_model  # the registry's, plus weights= (timm / torchvision files)

__all__ = [
    "ShapeError",
    "Spec",
    "UnknownNameError",
    "__version__",
    "attach",
    "attention",
    "conv",
    "create",
    "create_model",
    "list_blocks",
    "load",
    "load_weights",
    "mlp",
    "models",
    "recurrent",
    "register",
    "rep",
    "reparameterize",
    "save",
    "spec",
]
