"""The one hook through which every block exposes its attention weights or gates.

A block passes each attention map it computes — softmax weights (B, h, N, M),
a channel gate (B, C, 1, 1), a spatial gate (B, 1, H, W), ... — through an
``AttentionMap`` submodule. It is an identity, so it costs nothing (outside a
recording a call returns its input without entering ``nn.Module``'s hooks); figures and
analyses read the maps with ``record_attention``, which registers forward hooks
on every ``AttentionMap`` of a model. A block whose fast path never
materialises the weights (fused SDPA) checks ``map.active`` and takes its
reference path while someone is recording.

    >>> with record_attention(model) as maps:
    ...     model(x)
    >>> maps["blocks.0.attn.attn_map"].shape      # qualified name -> tensor
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from blockzoo.checks import ConfigError

__all__ = ["AttentionMap", "record_attention"]


class AttentionMap(nn.Module):
    """Identity marking an attention map; ``record_attention`` reads what passes.

    Args:
        kind: what the map is, for figures: ``"weights"`` (rows sum to 1 over keys),
            ``"channel"`` (a per-channel gate), ``"spatial"`` (a per-position gate),
            or any short word.

    Shape:
        - Input: any; output: the same tensor.
    """

    def __init__(self, kind: str = "weights") -> None:
        super().__init__()
        self.kind = kind
        self._recording = 0

    @property
    def active(self) -> bool:
        """True while ``record_attention`` is collecting from this map."""
        return self._recording > 0

    def __call__(self, attn: torch.Tensor) -> torch.Tensor:
        # Free unless someone listens: a plain return skips nn.Module's call machinery
        # (~1-2 us per call on CPU); with a recording or any hook of its own it runs as
        # a module, so its hooks fire.
        if self._recording or self._forward_hooks or self._forward_pre_hooks:
            return super().__call__(attn)
        return attn

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return attn

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Collect every ``AttentionMap``'s tensor from forwards run inside the block.

    Yields a dict from the map's qualified module name to the (detached) tensor of
    the last forward; raises ``ValueError`` when the model has no attention map.
    """
    found = {n: m for n, m in model.named_modules() if isinstance(m, AttentionMap)}
    if not found:
        raise ConfigError(f"{type(model).__name__} has no AttentionMap: it exposes no attention")
    maps: dict[str, torch.Tensor] = {}
    handles = []
    for name, m in found.items():
        def hook(_m: nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
            maps[name] = out.detach()

        handles.append(m.register_forward_hook(hook))
        m._recording += 1
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
        for m in found.values():
            m._recording -= 1
