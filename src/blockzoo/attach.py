"""Put a registered image-attention block into any network, after the modules you choose.

``attach(model, "cbam", after="layer*.*.bn2")`` finds every submodule matching the
selector, learns the channel count of each one's output from one dry forward on a
tiny input (forward hooks, eval mode, no gradients, so BatchNorm statistics do not
move), builds one attention block per location and wraps the module::

    layer1.0.bn2  ->  layer1.0.bn2 = Attached(module=<the BatchNorm2d>, attn=<the CBAM>)

The original module object stays inside the wrapper, so its weights are untouched
(the same tensors, bit for bit) and the model trains as before plus the new
blocks. The wrapped module's state_dict keys gain ``.module`` (``layer1.0.bn2.weight``
becomes ``layer1.0.bn2.module.weight``); ``Attached`` also accepts the old keys, so a
checkpoint saved before ``attach`` still loads (with ``strict=False``, or
``strict=True`` after loading the new blocks' keys too).

Papers: where the attention goes in a residual block follows Squeeze-and-Excitation
Networks (Hu, arXiv 1709.01507) and CBAM (Woo, arXiv 1807.06521).

Letters: B batch, C channels, H W spatial.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from blockzoo.checks import ConfigError
from blockzoo.registry import list_blocks, spec, unknown_name

__all__ = ["ATTACHED_ATTR", "Attached", "attach", "reattach"]

# On a model: the attach() calls made on it that data can describe (a registered block
# name, a glob, plain keyword arguments), so that save / checkpoints can record them and
# load rebuild the same structure with ``reattach`` (never anything but a registered block).
ATTACHED_ATTR = "_blockzoo_attached"

Selector = type[nn.Module] | tuple[type[nn.Module], ...] | str | Callable[[str, nn.Module], bool]
BlockSpec = str | Callable[..., nn.Module]


class Attached(nn.Module):
    """A module followed by an attention block: ``y = attn(module(*args))``.

    Made by ``attach``. Keeps the wrapped module (and its parameters) as they were;
    loading a state_dict saved before the wrapping maps ``prefix.weight`` to
    ``prefix.module.weight``.

    Args:
        module: the original module.
        attn: the attention block applied to its output.

    Shape:
        - Input: whatever ``module`` takes; output: ``module``'s output (B, C, H, W)
          passed through ``attn`` (same shape for attention blocks).
    """

    def __init__(self, module: nn.Module, attn: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.attn = attn
        self._register_load_state_dict_pre_hook(self._accept_unwrapped_keys)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.attn(self.module(*args, **kwargs))

    @staticmethod
    def _accept_unwrapped_keys(state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        # Keys written before attach() (prefix + "weight") belong to the wrapped module.
        inner = ("module.", "attn.")
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            if not rest.startswith(inner):
                state_dict[prefix + "module." + rest] = state_dict.pop(key)


def _matcher(after: Selector) -> Callable[[str, nn.Module], bool]:
    if isinstance(after, str):
        return lambda name, m: fnmatch.fnmatchcase(name, after)
    if isinstance(after, type) and issubclass(after, nn.Module):
        return lambda name, m: isinstance(m, after)
    if isinstance(after, tuple) and after and all(isinstance(t, type) for t in after):
        return lambda name, m: isinstance(m, after)
    if callable(after):
        return lambda name, m: bool(after(name, m))
    raise ConfigError(
        f"attach: after={after!r} must be a module class, a glob over qualified names "
        "(e.g. 'layer*.*.bn2') or a predicate (name, module) -> bool"
    )


def _block_factory(block: BlockSpec, kwargs: Mapping[str, Any]) -> Callable[[int], nn.Module]:
    if isinstance(block, str):
        images = [n for n in list_blocks() if spec(n).input == "image" and spec(n).family != "model"]
        if block not in images:
            raise unknown_name("image block for attach", block, images)
        s = spec(block)  # what create(block, channels=c, **kwargs) builds
        return lambda c: s.build(**{s.width_arg or "channels": c}, **kwargs)
    if callable(block):
        return lambda c: block(c, **kwargs)
    raise ConfigError(f"attach: block={block!r} must be a registered name or a factory taking channels")


def _first_input_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def _channels_at(model: nn.Module, named: dict[str, nn.Module], targets: list[str],
                 example_input: torch.Tensor | None) -> dict[str, int]:
    """Dry run: the channel count of every target's output, each call checked (B, C, H, W)."""
    shapes: dict[str, list[tuple[int, ...]]] = {n: [] for n in targets}
    handles = []
    for n in targets:
        def hook(_m: nn.Module, _inp: Any, out: Any, n: str = n) -> None:
            shapes[n].append(tuple(out.shape) if isinstance(out, torch.Tensor) else ())

        handles.append(named[n].register_forward_hook(hook))
    param = next(model.parameters(), None)
    if example_input is None:
        c = _first_input_channels(model)
        if c is None:
            for h in handles:
                h.remove()
            raise ConfigError(f"attach: {type(model).__name__} has no Conv2d; pass example_input=")
        example_input = torch.randn(2, c, 32, 32, device=None if param is None else param.device,
                                    dtype=None if param is None else param.dtype)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    channels: dict[str, int] = {}
    for n in targets:
        seen = shapes[n]
        if not seen:
            raise ConfigError(f"attach: {n!r} matches but the forward never calls it")
        if any(len(s) != 4 for s in seen):
            raise ConfigError(f"attach: {n!r} outputs {seen[0]}, not an image (B, C, H, W)")
        cs = {s[1] for s in seen}
        if len(cs) > 1:
            raise ConfigError(f"attach: {n!r} is called with different channel counts {sorted(cs)}")
        channels[n] = cs.pop()
    return channels


def attach(
    model: nn.Module,
    block: BlockSpec = "cbam",
    after: Selector | None = None,
    *,
    example_input: torch.Tensor | None = None,
    **block_kwargs: Any,
) -> tuple[nn.Module, list[str]]:
    r"""Insert an image-attention block after every submodule of ``model`` matching ``after``.

    Equation, at each matched submodule m with output z = m(...) of C channels::

        m  ->  m' = attn_C o m,      m'(...) = attn_C(m(...))

    Args:
        model: any ``nn.Module`` (ours or a user's); modified in place.
        block: a registered image block's name (``"se"``, ``"cbam"``, ``"eca"``, ...)
            or a factory ``f(channels, **block_kwargs) -> nn.Module``.
        after: which submodules: a module class (or tuple of classes), a glob over
            qualified names (``"layer*.*.bn2"``; ``*`` also crosses dots), or a
            predicate ``(name, module) -> bool``.
        example_input: a tensor the model accepts, for the dry run that reads each
            location's channel count. Default: (2, C, 32, 32) with C the first
            ``nn.Conv2d``'s ``in_channels``; pass one for models that need another size.
        **block_kwargs: passed to every attention block (``reduction=8``, ...).

    Returns:
        ``(model, locations)``: the model (the same object; a new ``Attached`` when
        the root itself matched) and the qualified names where blocks were inserted.

    Raises:
        ValueError: ``after`` matches nothing, names a module the forward never
            calls, or matches one whose output is not (B, C, H, W) or whose
            channel count differs between calls.

    Shape:
        - The model's input and output shapes are unchanged.

    Example:
        >>> net = blockzoo.create_model("resnet18", num_classes=10)
        >>> net, where = attach(net, "se", after="layer*.*.bn2", reduction=16)
        >>> where[:2]
        ['layer1.0.bn2', 'layer1.1.bn2']
    """
    if after is None:
        raise ConfigError("attach: give after= (a module class, a glob like 'layer*.*.bn2', or a predicate)")
    match = _matcher(after)
    make = _block_factory(block, block_kwargs)
    named = dict(model.named_modules())
    targets = [n for n, m in named.items() if match(n, m)]
    if not targets:
        sample = ", ".join(list(n for n in named if n)[:8])
        raise ConfigError(
            f"attach: after={after!r} matches no submodule of {type(model).__name__} "
            f"(qualified names look like: {sample}, ...)"
        )

    channels = _channels_at(model, named, targets, example_input)
    # Deepest first, with parents resolved from the original names.
    param = next(model.parameters(), None)
    root: nn.Module = model
    for n in sorted(targets, key=lambda s: s.count(".") if s else -1, reverse=True):
        original = named[n]
        ref = next((p for p in original.parameters()), param)
        attn = make(channels[n])
        if ref is not None:
            attn = attn.to(device=ref.device, dtype=ref.dtype)
        attn.train(original.training)
        wrapped = Attached(original, attn)
        if n == "":
            root = wrapped
        else:
            parent_name, _, child = n.rpartition(".")
            setattr(named[parent_name], child, wrapped)
    if isinstance(block, str) and isinstance(after, str):
        record = {"block": block, "after": after, "kwargs": dict(block_kwargs)}
        setattr(root, ATTACHED_ATTR, [*getattr(model, ATTACHED_ATTR, []), record])
    return root, targets


def reattach(model: nn.Module, records: Any, *, example_input: torch.Tensor | None = None,
             source: str = "attach records") -> nn.Module:
    """Repeat recorded ``attach`` calls (``ATTACHED_ATTR``: block name, glob, keyword arguments) on ``model``.

    The records are data (from a file): each must name a registered image block and
    a glob; anything else is a ``ConfigError`` naming ``source``.
    """
    if not isinstance(records, list):
        raise ConfigError(f"{source}: attach records must be a list, got {type(records).__name__}")
    for r in records:
        if not (isinstance(r, dict) and isinstance(r.get("block"), str) and isinstance(r.get("after"), str)
                and isinstance(r.get("kwargs", {}), dict)):
            raise ConfigError(f"{source}: an attach record must be {{block: name, after: glob, "
                              f"kwargs: {{}}}}, got {r!r}")
        model, _ = attach(model, r["block"], r["after"], example_input=example_input, **r.get("kwargs", {}))
    return model
