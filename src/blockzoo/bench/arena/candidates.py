"""What the arena trains: its candidates, the list of (kind, entry, seed) runs, and the
backbone arena's cost cap (which models it does not train, and why)."""

from __future__ import annotations

import functools
import inspect

import torch

from blockzoo.bench.arena.settings import BACKBONE, BASELINE, KINDS, ArenaSettings
from blockzoo.checks import ConfigError
from blockzoo.registry import list_blocks, spec

__all__ = ["arena_candidates", "backbone_candidates", "backbone_skips", "input_size", "kind_of", "plan",
           "run_data"]

# The outputs a classifier's loss can take (``fit``'s ``output``).
CLASSIFIER_OUTPUTS = ("logits", "log_probs")


def _mixes_tokens(name: str) -> bool:
    """True when changing token 0 changes the block's output at some other token."""
    s = spec(name)
    try:
        torch.manual_seed(0)
        block = s.build_example().eval()
        (x,) = s.make_input(batch=1, size=(8,))
        y = x.clone()
        y[:, 0] += 1.0
        with torch.no_grad():
            return not torch.allclose(block(x)[:, 1:], block(y)[:, 1:])
    except Exception:  # a block that cannot run here is still a candidate: its run reports why
        return True


def arena_candidates(kind: str) -> list[str]:
    """Attention entries for the ``image`` or ``tokens`` arena.

    Image: every shape-keeping (``out_shape="same"``) image entry of family attention.
    Tokens: every shape-keeping tokens entry that mixes tokens (changing token 0 changes
    another token's output), which leaves out positional encodings (RoPE, sinusoidal,
    learned) that only add or rotate per position.
    """
    if kind not in KINDS:
        raise ConfigError(f"arena kind {kind!r} not in {KINDS}")
    names = [n for n in list_blocks(family="attention")
             if spec(n).input == kind and spec(n).example.out_shape == "same"]
    return names if kind == "image" else [n for n in names if _mixes_tokens(n)]


def backbone_candidates() -> list[str]:
    """The backbone arena's models: every registry entry of family ``model`` that takes an
    image and returns class scores (``output`` logits or log_probs).

    Read from the registry on every call, so models registered later join the next run.
    Models that cannot train here are still candidates: ``backbone_skips`` says why.
    """
    return [n for n in list_blocks(family="model")
            if spec(n).input == "image" and spec(n).output in CLASSIFIER_OUTPUTS]


def input_size(model: str) -> tuple[int, int]:
    """The (H, W) a backbone trains at: its registered example size (the data are resized to it)."""
    h, w = spec(model).example.size
    return int(h), int(w)


def kind_of(block: str) -> str:
    """The attention arena's kind of a block: its registered input kind."""
    return spec(block).input


def run_data(settings: ArenaSettings, kind: str, block: str) -> str:
    """The ``data`` cell of a run: the data set's name; a backbone's also names the size it
    is resized to (``digits@32x32``), so a changed example size is a new run."""
    data = settings.data_for(kind)
    if kind != BACKBONE:
        return data
    h, w = input_size(block)
    return f"{data}@{h}x{w}"


@functools.cache
def _data_shape(data: str, data_dir: str) -> tuple[int, int]:
    """(channels, classes) of an image data set."""
    from blockzoo.data import load_data

    d = load_data(data, quick=True, data_dir=data_dir)
    if d.input != "image" or d.task != "classification":
        raise ConfigError(f"arena data {data!r}: the backbone arena needs image classification data, "
                          f"got {d.input} {d.task}")
    return d.in_chans, d.num_classes


@functools.cache
def _skip_reason(model: str, in_chans: int, num_classes: int, max_mflops: float) -> str | None:
    from blockzoo.bench.flops import count_flops

    s = spec(model)
    params = inspect.signature(s.builder).parameters
    if s.width_arg is None or "num_classes" not in params:
        return "its constructor sets no input channels or num_classes"
    h, w = input_size(model)
    try:
        torch.manual_seed(0)
        m = s.build_example(**{s.width_arg: in_chans, "num_classes": num_classes}).eval()
        mflops = count_flops(m, (torch.zeros(1, in_chans, h, w),)) / 1e6
    except Exception as e:
        return f"does not run at its example config ({h}x{w}): {type(e).__name__}: {e}".splitlines()[0]
    if mflops > max_mflops:
        return f"{mflops:,.0f} MFLOPs per {h}x{w} image, over the arena's cap of {max_mflops:g} " \
               "(--max-mflops)"
    return None


def backbone_skips(settings: ArenaSettings, models: list[str] | None = None) -> dict[str, str]:
    """``{model: why it is not trained}`` for the backbone arena's models (``models`` or all
    candidates): a constructor without ``num_classes`` or input channels, a model that does
    not run at its example config, or a forward pass of one image costing more than
    ``settings.max_mflops``. Cached per (model, data shape, cap)."""
    in_chans, num_classes = _data_shape(settings.image_data, settings.data_dir)
    out = {}
    for m in backbone_candidates() if models is None else models:
        reason = _skip_reason(m, in_chans, num_classes, float(settings.max_mflops))
        if reason:
            out[m] = reason
    return out


def _backbone_models(settings: ArenaSettings) -> list[str]:
    if not settings.blocks:
        return backbone_candidates()
    ok = set(backbone_candidates())
    for b in settings.blocks:
        spec(b)  # an unknown name fails here, with close matches
    bad = [b for b in settings.blocks if b not in ok]
    if bad:
        raise ConfigError(f"backbone arena: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not an image "
                          "classifier (family model, image input, class scores out); "
                          "see `blockzoo list --family model`")
    return list(settings.blocks)


def plan(settings: ArenaSettings) -> list[tuple[str, str, int]]:
    """All (kind, entry, seed) runs of these settings: attention baselines first; for the
    backbone arena the models ``backbone_skips`` passes (no baseline), seed by seed."""
    if settings.arena == "backbones":
        models = _backbone_models(settings)
        skips = backbone_skips(settings, models)
        # seed-major: an interrupted run has every model's first seed before any second one
        return [(BACKBONE, m, s) for s in range(settings.seeds) for m in models if m not in skips]
    if settings.blocks:
        for b in settings.blocks:
            if b != BASELINE:
                spec(b)
        blocks = list(settings.blocks)
    else:
        blocks = [b for k in KINDS for b in arena_candidates(k)]
    kinds_used = sorted({kind_of(b) for b in blocks if b != BASELINE} or set(KINDS))
    bad = [b for b in blocks if b != BASELINE and kind_of(b) not in KINDS]
    if bad:
        raise ConfigError(f"arena: {bad} take neither image nor tokens input")
    runs = [(k, BASELINE, s) for k in kinds_used for s in range(settings.seeds)]
    runs += [(kind_of(b), b, s) for b in blocks if b != BASELINE for s in range(settings.seeds)]
    return runs
