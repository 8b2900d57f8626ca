"""blockzoo: verified, shape-agnostic, measured neural-network building blocks.

    >>> import blockzoo, torch
    >>> block = blockzoo.create("mlp", in_features=8, out_features=2)
    >>> block(torch.randn(4, 8)).shape
    torch.Size([4, 2])

``import blockzoo`` is lazy (PEP 562): it imports neither torch nor any room until a
name below is first used; then every block room is imported (registering its
entries) and every name is bound, as an eager import would have. The registry's
lookups import the rooms themselves, so ``blockzoo.registry.spec`` sees every entry
whichever module is imported first. This keeps ``blockzoo --help`` free of torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from blockzoo._version import __version__

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from blockzoo import attention, conv, mlp, models, recurrent, rep
    from blockzoo.attach import attach
    from blockzoo.checks import ShapeError
    from blockzoo.export import compile
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
    from blockzoo.weights import create_model

# Each public name bound on first use and the module that defines it; the rooms
# (attention, conv, ...) are bound by importing them (registry.load_rooms).
_EXPORTS = {
    "ShapeError": "blockzoo.checks",
    "Spec": "blockzoo.registry",
    "UnknownNameError": "blockzoo.registry",
    "attach": "blockzoo.attach",
    "compile": "blockzoo.export",  # torch.compile honouring the registry's declared graph breaks
    "create": "blockzoo.registry",
    "create_model": "blockzoo.weights",  # the registry's, plus weights= (timm / torchvision files)
    "list_blocks": "blockzoo.registry",
    "load": "blockzoo.io",
    "load_weights": "blockzoo.io",
    "register": "blockzoo.registry",
    "reparameterize": "blockzoo.rep.fuse",
    "save": "blockzoo.io",
    "spec": "blockzoo.registry",
}

__all__ = [
    "ShapeError",
    "Spec",
    "UnknownNameError",
    "__version__",
    "attach",
    "attention",
    "compile",
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


def _load() -> None:
    """Import every room and bind every public name here (what an eager import did)."""
    importlib.import_module("blockzoo.registry").load_rooms()
    for name, module in _EXPORTS.items():
        globals()[name] = getattr(importlib.import_module(module), name)


def __getattr__(name: str) -> Any:
    """The first use of a public name (or of any attribute not yet bound) loads the package."""
    if name.startswith("__"):  # dunder probes (__path__, __wrapped__, ...) load nothing
        raise AttributeError(f"module 'blockzoo' has no attribute {name!r}")
    _load()
    try:
        return globals()[name]
    except KeyError:
        raise AttributeError(f"module 'blockzoo' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
