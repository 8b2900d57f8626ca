"""What the plain-PyTorch references of ``plain_reference.py`` share (issue 19, goal 3).

A reference is a class ``PlainX(nn.Module)`` whose ``__init__(self, b)`` takes our built block
and copies its weights into plain modules, and whose ``forward`` computes the block's output as
a reader of the paper would write it in plain PyTorch (the paper's equations, or its official
code where the paper defers to it), never by calling blockzoo. ``plain_reference.py`` checks
each against its block (max difference <= 1e-4 of the output's scale) before timing it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Registry = dict[str, type[nn.Module]]


def reference_registry() -> tuple[Registry, Callable[[str], Callable[[type[nn.Module]], type[nn.Module]]]]:
    """A file's ``REFS`` dict and the class decorator ``@ref("registered_name")`` that fills it."""
    refs: Registry = {}

    def ref(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
        def deco(cls: type[nn.Module]) -> type[nn.Module]:
            refs[name] = cls
            return cls

        return deco

    return refs, ref


def linear_from(conv_or_linear: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` holding a 1x1 conv's (or a linear's) weights."""
    w = conv_or_linear.weight.detach()
    lin = nn.Linear(w.shape[1], w.shape[0], bias=conv_or_linear.bias is not None)
    lin.weight.data.copy_(w.reshape(w.shape[0], w.shape[1]))
    if conv_or_linear.bias is not None:
        lin.bias.data.copy_(conv_or_linear.bias.detach())
    return lin
