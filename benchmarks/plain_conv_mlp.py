"""Plain-PyTorch references for more blocks (issue 19, goal 3: every image-attention,
token-attention, MLP and conv block has one).

Imported by ``plain_reference.py``, which checks each against our block (same weights, max
relative difference <= 1e-4) before timing it. Written from the papers' equations the way a
reader would write them in plain PyTorch, not from our blocks; they take our block's weights.
"""

from __future__ import annotations

from torch import nn

REFS: dict[str, type[nn.Module]] = {}


def _ref(name: str):  # a class decorator
    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        REFS[name] = cls
        return cls

    return deco
