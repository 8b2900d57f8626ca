"""Pretrained weights in the layouts of timm and torchvision, loaded into blockzoo models.

``blockzoo.create_model(name, weights=PATH)`` reads a checkpoint published for timm
or torchvision (a ``.pth`` / ``.bin`` state dict, read with ``weights_only=True``, or a
``.safetensors`` file), renames and reshapes its tensors into the blockzoo model's
names by the family's ``Layout`` below, and loads them. The file is data: it can
only fill tensors of a registered model whose constructor arguments are read from
the tensors' shapes (``Layout.infer``) or given by the caller; nothing in it is
imported or called.

Every file tensor must be used exactly once and every model tensor filled; otherwise
one ``FileFormatError`` lists the missing, unexpected and wrongly-shaped tensors.
The one allowed difference is the classifier head: a model built for another
``num_classes`` keeps its fresh head, and a warning says so.

Re-parameterizable models (RepVGG, MobileOne) load either of timm's forms and become
that form: the published training-form files (branches) a training-form model, fused
files (timm's ``reparam_conv``, after ``timm.utils.reparameterize_model``) the deploy
form, ``deploy=True``, read from the file like a size. ``deploy=True`` with a
training-form file loads it and then fuses.

Where the mappings come from: timm 1.0 (``timm.models.resnet``, ``vision_transformer``
(ViT, DeiT), ``mlp_mixer``, ``convmixer``, ``byobnet`` for RepVGG, MobileOne and MobileViT,
``swin_transformer``, ``swin_transformer_v2``, ``pvt_v2``, ``convnext``, ``mobilenetv3``,
``cait``, ``volo``, ``levit``, ``efficientformer``, ``coat``, ``crossvit``, ``tnt``,
``pit``, ``convit``) and torchvision's ``resnet`` (the same names as timm's ResNets).
``tests/fixtures/weights/`` holds, per model (and per form of a re-param model), the
reference's tensor names
and shapes and its outputs for deterministic weights (``synthetic_tensor``), written
by ``scripts/make_weight_fixtures.py`` where timm is installed; ``tests/test_weights.py``
loads those weights through ``weights=`` and requires the same outputs.

Adding a family: write its ``Rule`` table and ``infer`` function below and add its
registered names with ``register_layout``; nothing else needs to learn the names.
"""

from __future__ import annotations

import logging
import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blockzoo.checks import ConfigError, FileFormatError
from blockzoo.registry import create_model as _build_model
from blockzoo.registry import spec

__all__ = [
    "LAYOUTS", "Layout", "LoadReport", "Mapped", "Rule", "create_model", "fixture_input", "layout_for",
    "load_pretrained", "map_state_dict", "pretrained_args", "read_state_dict", "register_layout",
    "synthetic_state_dict", "synthetic_tensor",
]

log = logging.getLogger("blockzoo.weights")

Shapes = Mapping[str, tuple[int, ...]]


# --------------------------------------------------------------------------- the tables


@dataclass(frozen=True)
class Rule:
    """One renaming: a reference tensor name matching ``pattern`` (whole name, regex) becomes
    ``target`` (``\\1`` ... its groups), its value passed through ``convert`` if given."""

    pattern: str
    target: str
    convert: Callable[[torch.Tensor], torch.Tensor] | None = None
    part: tuple[int, int] | None = None
    """``(i, n)``: the target is chunk ``i`` of ``n`` equal chunks (dim 0) of the reference
    tensor, e.g. timm's fused ``qkv`` split into separate projections; every rule of the
    split names its own chunk and together they use the tensor once."""


@dataclass(frozen=True)
class Layout:
    """How one family's reference checkpoints map onto blockzoo's model.

    Args:
        source: the reference implementation(s), for messages.
        rules: reference name -> blockzoo name; the first rule whose pattern matches wins.
        head: blockzoo names of the classifier head (left fresh for another ``num_classes``).
        infer: constructor arguments read from the converted tensors' shapes (blockzoo
            names), e.g. ``num_classes``, ``dim``, ``depth``; the caller's arguments win.
        attach_after: where ``--attention`` puts a block by default (a glob over module
            names; ``None``: the user must say where).
    """

    source: str
    rules: tuple[Rule, ...]
    head: tuple[str, ...]
    infer: Callable[[Shapes], dict[str, Any]]
    attach_after: str | None = None
    prepare: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    """Applied to the reference state dict before the rules, for what renaming cannot do
    (concatenating tensors into one, dropping buffers the reference recomputes)."""


def _same(*names: str) -> Rule:
    """Names kept as they are: ``_same("conv1", "bn1")`` covers ``conv1.weight``, ``bn1.running_mean``."""
    return Rule(rf"((?:{'|'.join(re.escape(n) for n in names)})\.\w+)", r"\1")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def _need(shapes: Shapes, key: str, family: str) -> tuple[int, ...]:
    if key not in shapes:
        raise FileFormatError(f"not a {family} checkpoint: it has no tensor for {key!r}")
    return tuple(shapes[key])


def _count(shapes: Shapes, pattern: str) -> int:
    """How many distinct indices ``(\\d+)`` in ``pattern`` occur among the names."""
    found = {m.group(1) for k in shapes if (m := re.fullmatch(pattern, k))}
    return len(found)


def _square_grid(tokens: int, patch: int, family: str, arg: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise FileFormatError(f"{family}: {tokens} tokens are not a square grid; pass {arg}=(H, W) yourself")
    return side * patch


# ResNet / ResNeXt: timm and torchvision name them alike; blockzoo's projection shortcut
# is `shortcut.conv` / `shortcut.bn` where they have `downsample.0` / `downsample.1`.
_RESNET_RULES = (
    _same("conv1", "bn1", "fc"),
    Rule(r"(layer\d\.\d+\.(?:conv|bn)\d\.\w+)", r"\1"),
    Rule(r"(layer\d\.\d+)\.downsample\.0\.(\w+)", r"\1.shortcut.conv.\2"),
    Rule(r"(layer\d\.\d+)\.downsample\.1\.(\w+)", r"\1.shortcut.bn.\2"),
)


def _resnet_args(s: Shapes) -> dict[str, Any]:
    conv1 = _need(s, "conv1.weight", "ResNet")
    return dict(num_classes=_need(s, "fc.weight", "ResNet")[0], in_chans=conv1[1])


def _resnet(attach_after: str) -> Layout:
    return Layout("timm / torchvision ResNet", _RESNET_RULES, ("fc.weight", "fc.bias"), _resnet_args,
                  attach_after)


# ViT (timm's VisionTransformer, class token, 'token' pooling): blockzoo's encoder block
# keeps the MLP's two layers as fc1 / fc2 directly and names the output projection out_proj.
_VIT_RULES = (
    Rule(r"(cls_token|pos_embed)", r"\1"),
    _same("patch_embed.proj", "norm", "head"),
    Rule(r"(blocks\.\d+\.(?:norm1|norm2|attn\.qkv)\.\w+)", r"\1"),
    Rule(r"(blocks\.\d+)\.attn\.proj\.(\w+)", r"\1.attn.out_proj.\2"),
    Rule(r"(blocks\.\d+)\.mlp\.(fc[12])\.(\w+)", r"\1.\2.\3"),
)


def _vit_args(s: Shapes) -> dict[str, Any]:
    proj = _need(s, "patch_embed.proj.weight", "ViT")
    p, dim = proj[2], proj[0]
    cls = "cls_token" in s
    tokens = _need(s, "pos_embed", "ViT")[1] - (1 if cls else 0)
    return dict(num_classes=_need(s, "head.weight", "ViT")[0], in_chans=proj[1], patch_size=p,
                img_size=_square_grid(tokens, p, "ViT", "img_size"), pool="cls" if cls else "mean",
                mlp_ratio=_need(s, "blocks.0.fc1.weight", "ViT")[0] / dim)


# The all-MLP models share timm's MlpMixer skeleton: stem.proj, blocks, norm, head. blockzoo's
# MLP keeps its layers in `layers` (0: first linear, 4: second, after norm, act, dropout).
_PATCH_MLP = (Rule(r"stem\.proj\.(\w+)", r"patch_embed.\1"), _same("head"))


def _patch_args(s: Shapes, family: str, tokens: int) -> dict[str, Any]:
    stem = _need(s, "patch_embed.weight", family)
    return dict(num_classes=_need(s, "head.weight", family)[0], in_chans=stem[1], dim=stem[0],
                patch_size=stem[2], depth=_count(s, r"blocks\.(\d+)\..*"),
                image_size=_square_grid(tokens, stem[2], family, "image_size"))


_MIXER_RULES = (
    *_PATCH_MLP, _same("norm"),
    Rule(r"(blocks\.\d+\.norm[12]\.\w+)", r"\1"),
    Rule(r"(blocks\.\d+)\.mlp_tokens\.fc1\.(\w+)", r"\1.token_mlp.layers.0.\2"),
    Rule(r"(blocks\.\d+)\.mlp_tokens\.fc2\.(\w+)", r"\1.token_mlp.layers.4.\2"),
    Rule(r"(blocks\.\d+)\.mlp_channels\.fc1\.(\w+)", r"\1.channel_mlp.layers.0.\2"),
    Rule(r"(blocks\.\d+)\.mlp_channels\.fc2\.(\w+)", r"\1.channel_mlp.layers.4.\2"),
)


def _mixer_args(s: Shapes) -> dict[str, Any]:
    tokens = _need(s, "blocks.0.token_mlp.layers.0.weight", "MLP-Mixer")[1]
    return dict(_patch_args(s, "MLP-Mixer", tokens), token_bias="blocks.0.token_mlp.layers.4.bias" in s)


# ResMLP: timm's Affine keeps alpha, beta as (1, 1, D); blockzoo's as (D,).
_RESMLP_RULES = (
    *_PATCH_MLP,
    Rule(r"((?:blocks\.\d+\.)?norm[12]?\.(?:alpha|beta))", r"\1", _flat),
    Rule(r"(blocks\.\d+)\.ls([12])", r"\1.scale\2"),
    Rule(r"(blocks\.\d+)\.linear_tokens\.(\w+)", r"\1.token_mlp.layers.0.\2"),
    Rule(r"(blocks\.\d+)\.mlp_channels\.fc1\.(\w+)", r"\1.channel_mlp.layers.0.\2"),
    Rule(r"(blocks\.\d+)\.mlp_channels\.fc2\.(\w+)", r"\1.channel_mlp.layers.4.\2"),
)


def _resmlp_args(s: Shapes) -> dict[str, Any]:
    return _patch_args(s, "ResMLP", _need(s, "blocks.0.token_mlp.layers.0.weight", "ResMLP")[0])


# gMLP: timm's GatedMlp (fc1, gate = spatial gating unit, fc2) is blockzoo's proj_in, sgu, proj_out.
_GMLP_RULES = (
    *_PATCH_MLP, _same("norm"),
    Rule(r"(blocks\.\d+\.norm\.\w+)", r"\1"),
    Rule(r"(blocks\.\d+)\.mlp_channels\.fc1\.(\w+)", r"\1.proj_in.\2"),
    Rule(r"(blocks\.\d+)\.mlp_channels\.fc2\.(\w+)", r"\1.proj_out.\2"),
    Rule(r"(blocks\.\d+)\.mlp_channels\.gate\.norm\.(\w+)", r"\1.sgu.norm.\2"),
    Rule(r"(blocks\.\d+)\.mlp_channels\.gate\.proj\.(weight|bias)", r"\1.sgu.\2"),
)


def _gmlp_args(s: Shapes) -> dict[str, Any]:
    return _patch_args(s, "gMLP", _need(s, "blocks.0.sgu.weight", "gMLP")[0])


# ConvMixer: timm's blocks are Sequential(Residual(Sequential(dwconv, act, BN)), pwconv, act, BN).
_CONVMIXER_RULES = (
    Rule(r"stem\.([02])\.(\w+)", r"stem.\1.\2"),
    Rule(r"(blocks\.\d+)\.0\.fn\.0\.(\w+)", r"\1.dw.\2"),
    Rule(r"(blocks\.\d+)\.0\.fn\.2\.(\w+)", r"\1.bn1.\2"),
    Rule(r"(blocks\.\d+)\.1\.(\w+)", r"\1.pw.\2"),
    Rule(r"(blocks\.\d+)\.3\.(\w+)", r"\1.bn2.\2"),
    Rule(r"head\.(\w+)", r"fc.\1"),
)


def _convmixer_args(s: Shapes) -> dict[str, Any]:
    stem = _need(s, "stem.0.weight", "ConvMixer")
    return dict(num_classes=_need(s, "fc.weight", "ConvMixer")[0], in_chans=stem[1], dim=stem[0],
                patch_size=stem[2], depth=_count(s, r"blocks\.(\d+)\..*"),
                kernel_size=_need(s, "blocks.0.dw.weight", "ConvMixer")[2])


_HEAD = ("head.weight", "head.bias")


# RepVGG / MobileOne (timm's ByobNet, ``byobnet.py``): the same ``stem``, ``stages.i.j`` and
# ``head.fc`` prefixes; inside a block timm keeps its branches as attributes where blockzoo
# keeps them in ``branches`` (RepNet's docstring). timm's fused (deploy) form has one
# ``reparam_conv`` per block, blockzoo's ``conv``; a file holds one form or the other.
_REP_BLOCK = r"((?:stem|stages\.\d+\.\d+))"
_REP_COMMON = (
    Rule(rf"{_REP_BLOCK}\.identity\.(\w+)", r"\1.branches.identity.bn.\2"),
    Rule(rf"{_REP_BLOCK}\.reparam_conv\.(weight|bias)", r"\1.conv.\2"),
    _same("head.fc"),
)
_REPVGG_RULES = (
    Rule(rf"{_REP_BLOCK}\.(conv_kxk|conv_1x1)\.(conv|bn)\.(\w+)", r"\1.branches.\2.\3.\4"),
    *_REP_COMMON,
)
_MOBILEONE_RULES = (
    Rule(rf"{_REP_BLOCK}\.conv_kxk\.(\d+)\.(conv|bn)\.(\w+)", r"\1.branches.conv_kxk_\2.\3.\4"),
    Rule(rf"{_REP_BLOCK}\.conv_scale\.(conv|bn)\.(\w+)", r"\1.branches.scale.\2.\3"),
    *_REP_COMMON,
)


def _rep_args(s: Shapes, family: str, first_branch: str) -> dict[str, Any]:
    """The classes, input channels and form (``deploy``: fused) of a RepNet file.

    Each registered RepNet is one paper size, so the stages and widths are not read from
    the file: a RepVGG-B0 file does not fit ``repvgg_a0`` (one error lists the tensors).
    """
    deploy = "stem.conv.weight" in s
    stem = _need(s, "stem.conv.weight" if deploy else f"stem.branches.{first_branch}.conv.weight", family)
    return dict(num_classes=_need(s, "head.fc.weight", family)[0], in_chans=stem[1], deploy=deploy)


def _repvgg_args(s: Shapes) -> dict[str, Any]:
    return _rep_args(s, "RepVGG", "conv_kxk")


def _mobileone_args(s: Shapes) -> dict[str, Any]:
    return _rep_args(s, "MobileOne", "conv_kxk_0")


# ------------------------------------------------------ DeiT, Swin, PVT v2, ConvNeXt V2, MobileNetV3
# deit_tiny(_distilled), swin_tiny, pvt_v2_b0, convnextv2_atto and mobilenetv3_small/large in
# the layouts of timm 1.0's ``vision_transformer`` (DeiT), ``swin_transformer``, ``pvt_v2``,
# ``convnext`` (V2) and ``mobilenetv3``. Each registered name is one paper size, so beyond the
# classes and input channels only what the forward needs from the file (DeiT's
# position-embedding grid, Swin's window) is read.


# DeiT: ViT's layout, plus the distilled model's ``dist_token`` and ``head_dist``.
_DEIT_RULES = (Rule(r"(dist_token)", r"\1"), _same("head_dist"), *_VIT_RULES)


def _deit_args(s: Shapes) -> dict[str, Any]:
    proj = _need(s, "patch_embed.proj.weight", "DeiT")
    extra = ("cls_token" in s) + ("dist_token" in s)
    tokens = _need(s, "pos_embed", "DeiT")[1] - extra
    return dict(num_classes=_need(s, "head.weight", "DeiT")[0], in_chans=proj[1], patch_size=proj[2],
                img_size=_square_grid(tokens, proj[2], "DeiT", "img_size"))


# Swin: the same names but the MLP's (blockzoo's ``MLP`` keeps its layers in ``layers``) and
# the head (timm's ClassifierHead ``head.fc``). timm's ``relative_position_index`` and
# ``attn_mask`` are derived buffers, not in its state dict since they became non-persistent;
# ``prepare`` drops them from older files (as timm's own checkpoint filter does); blockzoo
# computes both for each input size.
_SWIN_RULES = (
    _same("patch_embed.proj", "patch_embed.norm", "norm"),
    Rule(r"(layers\.\d+\.downsample\.(?:norm|reduction)\.\w+)", r"\1"),
    Rule(r"(layers\.\d+\.blocks\.\d+\.(?:norm1|norm2|attn\.qkv|attn\.proj)\.\w+)", r"\1"),
    Rule(r"(layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table)", r"\1"),
    Rule(r"(layers\.\d+\.blocks\.\d+)\.mlp\.fc1\.(\w+)", r"\1.mlp.layers.0.\2"),
    Rule(r"(layers\.\d+\.blocks\.\d+)\.mlp\.fc2\.(\w+)", r"\1.mlp.layers.4.\2"),
    Rule(r"head\.fc\.(\w+)", r"head.\1"),
)


def _swin_prepare(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # files saved before timm made them non-persistent carry the derived index and mask buffers
    return {k: v for k, v in t.items() if not k.endswith((".relative_position_index", ".attn_mask"))}


def _swin_args(s: Shapes) -> dict[str, Any]:
    proj = _need(s, "patch_embed.proj.weight", "Swin")
    rows = _need(s, "layers.0.blocks.0.attn.relative_position_bias_table", "Swin")[0]
    side = math.isqrt(rows)  # (2M - 1)^2 rows
    if side * side != rows or side % 2 == 0:
        raise FileFormatError(f"Swin: a relative-position table of {rows} rows is not (2M - 1)^2 for a "
                              "square window M")
    return dict(num_classes=_need(s, "head.weight", "Swin")[0], in_chans=proj[1], patch_size=proj[2],
                window_size=(side + 1) // 2)


# PVT v2: timm projects queries (``attn.q``) and keys-values (``attn.kv``, rows k then v) apart;
# blockzoo's SRA keeps one ``MultiHeadAttention`` whose ``qkv`` rows are q, k, v: ``prepare``
# stacks q on kv (a file with only one of them is left alone, and the error names the other).
_PVT_BLOCK = r"(stages\.\d+\.blocks\.\d+)"
_PVT_RULES = (
    _same("patch_embed.proj", "patch_embed.norm", "head"),
    Rule(r"(stages\.\d+\.(?:norm|downsample\.proj|downsample\.norm)\.\w+)", r"\1"),
    Rule(rf"({_PVT_BLOCK}\.(?:norm1|norm2|attn\.sr|attn\.norm|mlp\.fc1|mlp\.dwconv|mlp\.fc2)\.\w+)", r"\1"),
    Rule(rf"{_PVT_BLOCK}\.attn\.qkv\.(\w+)", r"\1.attn.attn.qkv.\2"),
    Rule(rf"{_PVT_BLOCK}\.attn\.proj\.(\w+)", r"\1.attn.attn.out_proj.\2"),
)


def _pvt_prepare(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for key in [k for k in t if re.fullmatch(rf"{_PVT_BLOCK}\.attn\.q\.(weight|bias)", k)]:
        kv = key.replace(".attn.q.", ".attn.kv.")
        if kv in t:
            t[key.replace(".attn.q.", ".attn.qkv.")] = torch.cat([t.pop(key), t.pop(kv)], 0)
    return t


def _pvt_args(s: Shapes) -> dict[str, Any]:
    proj = _need(s, "patch_embed.proj.weight", "PVT v2")
    return dict(num_classes=_need(s, "head.weight", "PVT v2")[0], in_chans=proj[1])


# ConvNeXt V2: timm's NormMlpClassifierHead keeps the final norm in the head.
_CONVNEXT_RULES = (
    Rule(r"(stem\.[01]\.\w+)", r"\1"),
    Rule(r"(stages\.\d+\.downsample\.[01]\.\w+)", r"\1"),
    Rule(r"(stages\.\d+\.blocks\.\d+\.(?:conv_dw|norm|mlp\.fc1|mlp\.grn|mlp\.fc2)\.\w+)", r"\1"),
    Rule(r"head\.norm\.(\w+)", r"norm.\1"),
    Rule(r"head\.fc\.(\w+)", r"head.\1"),
)


def _convnext_args(s: Shapes) -> dict[str, Any]:
    stem = _need(s, "stem.0.weight", "ConvNeXt V2")
    return dict(num_classes=_need(s, "head.weight", "ConvNeXt V2")[0], in_chans=stem[1])


# MobileNetV3: timm numbers a block's BNs in order (bn1, bn2, bn3), so the same name means
# another layer in each kind of block: in the depthwise-separable first block (conv_dw, bn1,
# conv_pw, bn2) and the last 1x1 ConvBnAct (conv, bn1) as against an inverted residual
# (conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3). ``prepare`` gives each BN its conv's name
# (``conv_dw`` -> ``bn_dw``, ``conv`` -> ``bn``; a separable block's ``conv_pw`` is its
# projection, renamed ``conv_pwl``),
# so one rule per layer places it.
_MBV3_KINDS = {  # a block's convs -> its BNs in timm's order, renamed
    ("conv_dw", "conv_pw", "conv_pwl"): ("conv_pw", "conv_dw", "conv_pwl"),
    ("conv_dw", "conv_pw"): ("conv_dw", "conv_pwl"),
    ("conv",): ("conv",),
}


def _mbv3_prepare(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    blocks = sorted({m.group(1) for k in t if (m := re.fullmatch(r"(blocks\.\d+\.\d+)\.\w+(?:\.\w+)*", k))})
    for block in blocks:
        convs = tuple(c for c in ("conv", "conv_dw", "conv_pw", "conv_pwl") if f"{block}.{c}.weight" in t)
        order = _MBV3_KINDS.get(convs)
        if order is None:
            continue  # not a block timm builds: no rule places its tensors, and the error lists them
        if convs == ("conv_dw", "conv_pw"):  # the separable block's pointwise conv is its projection
            t[f"{block}.conv_pwl.weight"] = t.pop(f"{block}.conv_pw.weight")
        for i, conv in enumerate(order, 1):
            for key in [k for k in t if k.startswith(f"{block}.bn{i}.")]:
                t[key.replace(f".bn{i}.", f".{conv.replace('conv', 'bn', 1)}.")] = t.pop(key)
    return t


_MBV3_BLOCK = r"(blocks\.\d+\.\d+)"
_MBV3_RULES = (
    Rule(r"conv_stem\.weight", "stem.conv.weight"),
    Rule(r"bn1\.(\w+)", r"stem.bn.\1"),
    Rule(rf"{_MBV3_BLOCK}\.conv_pw\.weight", r"\1.expand.conv.weight"),
    Rule(rf"{_MBV3_BLOCK}\.bn_pw\.(\w+)", r"\1.expand.bn.\2"),
    Rule(rf"{_MBV3_BLOCK}\.conv_dw\.weight", r"\1.dw.conv.weight"),
    Rule(rf"{_MBV3_BLOCK}\.bn_dw\.(\w+)", r"\1.dw.bn.\2"),
    Rule(rf"{_MBV3_BLOCK}\.conv_pwl\.weight", r"\1.project.conv.weight"),
    Rule(rf"{_MBV3_BLOCK}\.bn_pwl\.(\w+)", r"\1.project.bn.\2"),
    Rule(rf"{_MBV3_BLOCK}\.se\.conv_reduce\.(\w+)", r"\1.se.fc1.\2"),
    Rule(rf"{_MBV3_BLOCK}\.se\.conv_expand\.(\w+)", r"\1.se.fc2.\2"),
    Rule(rf"{_MBV3_BLOCK}\.conv\.weight", r"\1.conv.weight"),
    Rule(rf"({_MBV3_BLOCK}\.bn\.\w+)", r"\1"),
    _same("conv_head", "classifier"),
)


def _mbv3_args(s: Shapes) -> dict[str, Any]:
    stem = _need(s, "stem.conv.weight", "MobileNetV3")
    return dict(num_classes=_need(s, "classifier.weight", "MobileNetV3")[0], in_chans=stem[1])


# --------------------------------------------------------------------------- CaiT, VOLO


def _class_attention_rules(src: str, dst: str, *, fused_kv: bool) -> tuple[Rule, ...]:
    """timm's class-attention blocks (CaiT's ``LayerScaleBlockClassAttn``, VOLO's ``ClassBlock``) ->
    ``ClassAttentionBlock``: q, k, v into ``q_proj``, ``k_proj``, ``v_proj`` (VOLO's fused ``kv``
    split in two: rows k, then v), ``proj`` -> ``out_proj``, ``gamma_i`` -> ``scale_i``, the MLP's
    ``fc1``, ``fc2`` -> ``layers.0``, ``layers.4``."""
    kv = ((Rule(rf"{src}\.(\d+)\.attn\.kv\.(\w+)", rf"{dst}.\1.attn.k_proj.\2", part=(0, 2)),
           Rule(rf"{src}\.(\d+)\.attn\.kv\.(\w+)", rf"{dst}.\1.attn.v_proj.\2", part=(1, 2)))
          if fused_kv else ())
    return (
        Rule(rf"{src}\.(\d+)\.(norm[12]\.\w+)", rf"{dst}.\1.\2"),
        Rule(rf"{src}\.(\d+)\.attn\.([qkv])\.(\w+)", rf"{dst}.\1.attn.\2_proj.\3"),
        *kv,
        Rule(rf"{src}\.(\d+)\.attn\.proj\.(\w+)", rf"{dst}.\1.attn.out_proj.\2"),
        Rule(rf"{src}\.(\d+)\.gamma_([12])", rf"{dst}.\1.scale\2"),
        Rule(rf"{src}\.(\d+)\.mlp\.fc1\.(\w+)", rf"{dst}.\1.mlp.layers.0.\2"),
        Rule(rf"{src}\.(\d+)\.mlp\.fc2\.(\w+)", rf"{dst}.\1.mlp.layers.4.\2"),
    )


# CaiT (timm's ``Cait``): self-attention blocks keep timm's names except the talking-heads
# output projection (``out_proj``), LayerScale (``scale1``, ``scale2``) and the MLP's layers;
# the class-attention stage ``blocks_token_only`` is ``cls_blocks``.
_CAIT_RULES = (
    Rule(r"(cls_token|pos_embed)", r"\1"),
    _same("patch_embed.proj", "norm", "head"),
    Rule(r"(blocks\.\d+\.(?:norm1|norm2|attn\.qkv|attn\.proj_l|attn\.proj_w)\.\w+)", r"\1"),
    Rule(r"(blocks\.\d+)\.attn\.proj\.(\w+)", r"\1.attn.out_proj.\2"),
    Rule(r"(blocks\.\d+)\.gamma_([12])", r"\1.scale\2"),
    Rule(r"(blocks\.\d+)\.mlp\.fc1\.(\w+)", r"\1.mlp.layers.0.\2"),
    Rule(r"(blocks\.\d+)\.mlp\.fc2\.(\w+)", r"\1.mlp.layers.4.\2"),
    *_class_attention_rules(r"blocks_token_only", "cls_blocks", fused_kv=False),
)


def _cait_args(s: Shapes) -> dict[str, Any]:
    proj = _need(s, "patch_embed.proj.weight", "CaiT")
    dim, p = proj[0], proj[2]
    return dict(num_classes=_need(s, "head.weight", "CaiT")[0], in_chans=proj[1], patch_size=p, dim=dim,
                depth=_count(s, r"blocks\.(\d+)\..*"),
                num_heads=_need(s, "blocks.0.attn.proj_l.weight", "CaiT")[0],
                depth_token_only=_count(s, r"cls_blocks\.(\d+)\..*"),
                img_size=_square_grid(_need(s, "pos_embed", "CaiT")[1], p, "CaiT", "img_size"),
                mlp_ratio=_need(s, "blocks.0.mlp.layers.0.weight", "CaiT")[0] / dim,
                mlp_ratio_token_only=_need(s, "cls_blocks.0.mlp.layers.0.weight", "CaiT")[0] / dim,
                qkv_bias="blocks.0.attn.qkv.bias" in s)


def _linear_to_conv1x1(t: torch.Tensor) -> torch.Tensor:
    return t[:, :, None, None]


# VOLO (timm's ``VOLO``): ``network`` = [outlook stage, downsample, Transformer stages...] is
# blockzoo's ``stages.0``, ``downsample``, ``stages.1...``; the outlook attention's linear maps
# are 1 x 1 convs here (channels first); the stem's Sequential is three ``ConvBnAct`` units.
_VOLO_RULES = (
    Rule(r"cls_token", r"cls_token"),
    Rule(r"pos_embed", r"pos_embed", lambda t: t.permute(0, 3, 1, 2).contiguous()),  # (1, D, g_h, g_w)
    *(Rule(rf"patch_embed\.conv\.{3 * i}\.weight", rf"patch_embed.stem.{i}.conv.weight") for i in range(3)),
    *(Rule(rf"patch_embed\.conv\.{3 * i + 1}\.(\w+)", rf"patch_embed.stem.{i}.bn.\1") for i in range(3)),
    _same("patch_embed.proj", "norm", "head", "aux_head"),
    Rule(r"network\.0\.(\d+)\.attn\.(v|attn|proj)\.weight", r"stages.0.blocks.\1.attn.\2.weight",
         _linear_to_conv1x1),
    Rule(r"network\.0\.(\d+)\.(attn\.(?:v|attn|proj)\.bias|norm[12]\.\w+)", r"stages.0.blocks.\1.\2"),
    Rule(r"network\.0\.(\d+)\.mlp\.fc1\.(\w+)", r"stages.0.blocks.\1.mlp.layers.0.\2"),
    Rule(r"network\.0\.(\d+)\.mlp\.fc2\.(\w+)", r"stages.0.blocks.\1.mlp.layers.4.\2"),
    Rule(r"network\.1\.proj\.(\w+)", r"downsample.\1"),
    *(r for k in range(2, 10) for r in (
        Rule(rf"network\.{k}\.(\d+)\.(norm[12]\.\w+|attn\.qkv\.\w+)", rf"stages.{k - 1}.blocks.\1.\2"),
        Rule(rf"network\.{k}\.(\d+)\.attn\.proj\.(\w+)", rf"stages.{k - 1}.blocks.\1.attn.out_proj.\2"),
        Rule(rf"network\.{k}\.(\d+)\.mlp\.(fc[12])\.(\w+)", rf"stages.{k - 1}.blocks.\1.\2.\3"),
    )),
    *_class_attention_rules(r"post_network", "post_blocks", fused_kv=True),
)

# The file's shapes do not tell the head count of the Transformer and class-attention layers
# (the outlook stage's they do): it is read as width / 32, right for VOLO-D1 to D3; D4 and D5
# (heads of width 48) need ``num_heads=(12, 16, 16, 16)`` from the caller.
_VOLO_HEAD_DIM = 32


def _volo_args(s: Shapes) -> dict[str, Any]:
    proj = _need(s, "patch_embed.proj.weight", "VOLO")
    n = _count(s, r"stages\.(\d+)\..*")
    dims = (proj[0], *[_need(s, "downsample.weight", "VOLO")[0]] * (n - 1))
    pos = _need(s, "pos_embed", "VOLO")
    return dict(
        num_classes=_need(s, "head.weight", "VOLO")[0],
        in_chans=_need(s, "patch_embed.stem.0.conv.weight", "VOLO")[1],
        patch_size=2 * proj[2], stem_dim=proj[1], dims=dims,
        img_size=(pos[2] * 4 * proj[2], pos[3] * 4 * proj[2]),  # the grid is 1/16 (1/(2p)) of the image
        layers=tuple(_count(s, rf"stages\.{i}\.blocks\.(\d+)\..*") for i in range(n)),
        # the outlook attention predicts h K^4 weights per centre (K = 3 in every VOLO)
        num_heads=(_need(s, "stages.0.blocks.0.attn.attn.weight", "VOLO")[0] // 3**4,
                   *[dims[-1] // _VOLO_HEAD_DIM] * (n - 1)),
        mlp_ratio=_need(s, "stages.0.blocks.0.mlp.layers.0.weight", "VOLO")[0] / proj[0],
        post_layers=_count(s, r"post_blocks\.(\d+)\..*"), aux_head="aux_head.weight" in s,
        qkv_bias="stages.0.blocks.0.attn.v.bias" in s)


# ---------------------------------------------------------- MobileViT, LeViT, EfficientFormer


# MobileViT (timm's ByobNet with MobileVitBlock): the inverted residuals are blockzoo's MBConv,
# the MobileViT block's parts are named as ``MobileViTBlock`` names them (models/mobilevit.py).
_MV_BLOCK = r"(stages\.\d+\.\d+)"
_MOBILEVIT_RULES = (
    _same("stem.conv", "stem.bn", "final_conv.conv", "final_conv.bn"),
    Rule(rf"{_MV_BLOCK}\.conv1_1x1\.(conv|bn)\.(\w+)", r"\1.expand.\2.\3"),
    Rule(rf"{_MV_BLOCK}\.conv2_kxk\.(conv|bn)\.(\w+)", r"\1.dw.\2.\3"),
    Rule(rf"{_MV_BLOCK}\.conv3_1x1\.(conv|bn)\.(\w+)", r"\1.project.\2.\3"),
    Rule(rf"{_MV_BLOCK}\.conv_kxk\.conv\.(\w+)", r"\1.local.0.0.\2"),
    Rule(rf"{_MV_BLOCK}\.conv_kxk\.bn\.(\w+)", r"\1.local.0.1.\2"),
    Rule(rf"{_MV_BLOCK}\.conv_1x1\.(\w+)", r"\1.local.1.\2"),
    Rule(rf"{_MV_BLOCK}\.transformer\.(\d+)\.(norm[12])\.(\w+)", r"\1.layers.\2.\3.\4"),
    Rule(rf"{_MV_BLOCK}\.transformer\.(\d+)\.attn\.(qkv|proj)\.(\w+)", r"\1.layers.\2.\3.\4"),
    Rule(rf"{_MV_BLOCK}\.transformer\.(\d+)\.mlp\.fc1\.(\w+)", r"\1.layers.\2.mlp.0.\3"),
    Rule(rf"{_MV_BLOCK}\.transformer\.(\d+)\.mlp\.fc2\.(\w+)", r"\1.layers.\2.mlp.2.\3"),
    Rule(rf"{_MV_BLOCK}\.norm\.(\w+)", r"\1.norm.\2"),
    Rule(rf"{_MV_BLOCK}\.conv_proj\.conv\.(\w+)", r"\1.proj.0.\2"),
    Rule(rf"{_MV_BLOCK}\.conv_proj\.bn\.(\w+)", r"\1.proj.1.\2"),
    Rule(rf"{_MV_BLOCK}\.conv_fusion\.conv\.(\w+)", r"\1.fuse.0.\2"),
    Rule(rf"{_MV_BLOCK}\.conv_fusion\.bn\.(\w+)", r"\1.fuse.1.\2"),
    Rule(r"head\.fc\.(\w+)", r"head.\1"),
)


def _mobilevit_args(s: Shapes) -> dict[str, Any]:
    """Classes and input channels; the stages are the registered size's (Table 4)."""
    return dict(num_classes=_need(s, "head.weight", "MobileViT")[0],
                in_chans=_need(s, "stem.conv.weight", "MobileViT")[1])


# LeViT (timm's LevitDistilled): ``ConvNorm`` / ``LinearNorm`` keep ``linear`` + ``bn`` as
# blockzoo's ``LinearNorm`` does; the stem is blockzoo's ConvBnAct list, and the output
# projections drop the Sequential level (``proj.ln``) that holds timm's activation.
_LEVIT_RULES = (
    *(Rule(rf"stem\.conv{k}\.linear\.(\w+)", rf"stem.{k - 1}.conv.\1") for k in range(1, 5)),
    *(Rule(rf"stem\.conv{k}\.bn\.(\w+)", rf"stem.{k - 1}.bn.\1") for k in range(1, 5)),
    Rule(r"(stages\.\d+\..*\.(?:attn|attn_downsample))\.(q|proj)\.ln\.(.+)", r"\1.\2.\3"),
    Rule(r"(stages\.\d+\..+)", r"\1"),
    _same("head.bn", "head.linear", "head_dist.bn", "head_dist.linear"),
)


def _levit_args(s: Shapes) -> dict[str, Any]:
    """Classes, input channels, the distillation head, and the training size the bias tables fix."""
    table = _need(s, "stages.0.blocks.0.attn.attention_biases", "LeViT")[1]
    return dict(num_classes=_need(s, "head.linear.weight", "LeViT")[0],
                in_chans=_need(s, "stem.0.conv.weight", "LeViT")[1],
                distilled="head_dist.linear.weight" in s,
                img_size=_square_grid(table, 16, "LeViT", "img_size"))


# EfficientFormer (timm): Meta4D's conv MLP is two ConvBnAct, layer scales ``ls{k}.gamma`` are
# ``scale{k}``; Meta3D's projections are ``LeViTAttention``'s ``LinearNorm`` without BN and its
# MLP blockzoo's ``MLP``. ``_efficientformer_prepare`` renumbers the Meta3D blocks (timm counts
# its parameter-free ``Flat`` as a block before them) and drops ``attention_bias_idxs``.
_EF_BLOCK = r"(stages\.\d+\.blocks\.\d+)"
_EFFICIENTFORMER_RULES = (
    *(Rule(rf"stem\.conv{k}\.(\w+)", rf"stem.{k - 1}.conv.\1") for k in (1, 2)),
    *(Rule(rf"stem\.norm{k}\.(\w+)", rf"stem.{k - 1}.bn.\1") for k in (1, 2)),
    Rule(r"(stages\.\d+\.downsample)\.conv\.(\w+)", r"\1.conv.\2"),
    Rule(r"(stages\.\d+\.downsample)\.norm\.(\w+)", r"\1.bn.\2"),
    Rule(rf"{_EF_BLOCK}\.ls([12])\.gamma", r"\1.scale\2"),
    Rule(rf"{_EF_BLOCK}\.mlp\.fc1\.(\w+)", r"\1.mlp.0.conv.\2"),
    Rule(rf"{_EF_BLOCK}\.mlp\.norm1\.(\w+)", r"\1.mlp.0.bn.\2"),
    Rule(rf"{_EF_BLOCK}\.mlp\.fc2\.(\w+)", r"\1.mlp.1.conv.\2"),
    Rule(rf"{_EF_BLOCK}\.mlp\.norm2\.(\w+)", r"\1.mlp.1.bn.\2"),
    Rule(rf"{_EF_BLOCK}\.token_mixer\.(qkv|proj)\.(\w+)", r"\1.token_mixer.\2.linear.\3"),
    Rule(rf"({_EF_BLOCK[1:-1]}\.(?:token_mixer\.attention_biases|norm[12]\.\w+|mlp\.layers\.\d\.\w+))",
         r"\1"),
    _same("norm", "head", "head_dist"),
)


def _efficientformer_prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    meta3d = {m.group(1) for k in tensors if (m := re.match(rf"{_EF_BLOCK}\.token_mixer\.", k))}
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if key.endswith(".attention_bias_idxs"):
            continue  # an index buffer blockzoo recomputes from the map size
        m = re.fullmatch(r"(stages\.\d+\.blocks\.)(\d+)(\..+)", key)
        if m and m.group(1) + m.group(2) in meta3d:
            rest = m.group(3).replace(".mlp.fc1.", ".mlp.layers.0.").replace(".mlp.fc2.", ".mlp.layers.4.")
            key = f"{m.group(1)}{int(m.group(2)) - 1}{rest}"  # one index lower: no Flat here
        out[key] = t
    return out


def _efficientformer_args(s: Shapes) -> dict[str, Any]:
    """Classes, input channels, widths, depths, Meta3D blocks, heads and the training size."""
    n = _count(s, r"stages\.(\d+)\..*")
    dims = [_need(s, f"stages.{i}.blocks.0.scale1", "EfficientFormer")[0] for i in range(n)]
    depths = [_count(s, rf"stages\.{i}\.blocks\.(\d+)\..*") for i in range(n)]
    vit = sorted({k.split(".token_mixer.")[0] for k in s if ".token_mixer." in k})
    args: dict[str, Any] = dict(num_classes=_need(s, "head.weight", "EfficientFormer")[0],
                                in_chans=_need(s, "stem.0.conv.weight", "EfficientFormer")[1],
                                dims=tuple(dims), depths=tuple(depths), num_vit=len(vit),
                                distilled="head_dist.weight" in s)
    if vit:
        heads, table = s[f"{vit[0]}.token_mixer.attention_biases"]
        qkv = _need(s, f"{vit[0]}.token_mixer.qkv.linear.weight", "EfficientFormer")[0]
        val = _need(s, f"{vit[0]}.token_mixer.proj.linear.weight", "EfficientFormer")[1] // heads
        args.update(num_heads=heads, key_dim=(qkv // heads - val) // 2,
                    img_size=_square_grid(table, 32, "EfficientFormer", "img_size"))
    return args


# --------------------------------------------------------------------------- Swin V2, CoaT-Lite, CrossViT


# Swin V2 (timm's SwinTransformerV2): the names are blockzoo's but for the MLP's layers and
# the head (SwinTransformerV2's module docstring); the window is not in the file (the
# position bias is a network over offsets), so it stays the constructor's (8).
_SWINV2_RULES = (
    _same("patch_embed.proj", "patch_embed.norm", "norm"),
    Rule(r"(layers\.\d+\.downsample\.(?:reduction|norm)\.\w+)", r"\1"),
    Rule(r"(layers\.\d+\.blocks\.\d+\.(?:norm[12]|attn\.(?:qkv|proj|cpb_mlp\.[02]))\.\w+)", r"\1"),
    Rule(r"(layers\.\d+\.blocks\.\d+\.attn\.(?:logit_scale|q_bias|v_bias))", r"\1"),
    Rule(r"(layers\.\d+\.blocks\.\d+)\.mlp\.fc1\.(\w+)", r"\1.mlp.layers.0.\2"),
    Rule(r"(layers\.\d+\.blocks\.\d+)\.mlp\.fc2\.(\w+)", r"\1.mlp.layers.4.\2"),
    Rule(r"head\.fc\.(\w+)", r"head.\1"),
)


def _swinv2_args(s: Shapes) -> dict[str, Any]:
    proj = _need(s, "patch_embed.proj.weight", "Swin V2")
    stages = _count(s, r"layers\.(\d+)\..*")
    return dict(num_classes=_need(s, "head.weight", "Swin V2")[0], in_chans=proj[1], dim=proj[0],
                patch_size=proj[2],
                depths=tuple(_count(s, rf"layers\.{i}\.blocks\.(\d+)\..*") for i in range(stages)),
                num_heads=tuple(_need(s, f"layers.{i}.blocks.0.attn.logit_scale", "Swin V2")[0]
                                for i in range(stages)))


# CoaT-Lite (timm's CoaT without parallel blocks): timm numbers the stages 1-4 in the names
# (patch_embed1, serial_blocks1, ...) and lists each stage's shared position encodings
# (cpe1, crpe1) once more under every block. ``prepare`` keeps one copy per stage, the one
# torch's ``load_state_dict`` applies last to timm's shared module (the last block's; in a
# released file all copies are equal), and counts the stages from 0.
_COAT_COPY = re.compile(r"serial_blocks(\d)\.(\d+)\.(cpe|factoratt_crpe\.crpe)\.(.+)")
_COAT_STAGE = re.compile(r"(patch_embed|cls_token|cpe|crpe|serial_blocks)([1-9])")


def _coat_prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    chosen: dict[str, tuple[int, str]] = {}  # top-level name -> (block index, the key holding it)
    rest = {}
    for key in tensors:
        m = _COAT_COPY.fullmatch(key)
        if m is None:
            rest[key] = tensors[key]
            continue
        top = f"{'cpe' if m.group(3) == 'cpe' else 'crpe'}{m.group(1)}.{m.group(4)}"
        if top not in chosen or int(m.group(2)) > chosen[top][0]:
            chosen[top] = (int(m.group(2)), key)
    rest.update({top: tensors[key] for top, (_, key) in chosen.items()})
    return {_COAT_STAGE.sub(lambda m: f"{m.group(1)}{int(m.group(2)) - 1}", k, count=1): v
            for k, v in rest.items()}


_COAT_RULES = (
    Rule(r"patch_embed(\d)\.(proj|norm)\.(\w+)", r"stages.\1.patch_embed.\2.\3"),
    Rule(r"cls_token(\d)", r"stages.\1.cls_token"),
    Rule(r"cpe(\d)\.proj\.(\w+)", r"stages.\1.cpe.proj.\2"),
    Rule(r"crpe(\d)\.conv_list\.(\d+)\.(\w+)", r"stages.\1.crpe.conv_list.\2.\3"),
    Rule(r"serial_blocks(\d)\.(\d+)\.(norm[12])\.(\w+)", r"stages.\1.blocks.\2.\3.\4"),
    Rule(r"serial_blocks(\d)\.(\d+)\.factoratt_crpe\.(qkv|proj)\.(\w+)", r"stages.\1.blocks.\2.attn.\3.\4"),
    Rule(r"serial_blocks(\d)\.(\d+)\.mlp\.fc1\.(\w+)", r"stages.\1.blocks.\2.mlp.layers.0.\3"),
    Rule(r"serial_blocks(\d)\.(\d+)\.mlp\.fc2\.(\w+)", r"stages.\1.blocks.\2.mlp.layers.4.\3"),
    Rule(r"norm4\.(\w+)", r"norm.\1"),
    _same("head"),
)


def _coat_args(s: Shapes) -> dict[str, Any]:
    """Classes, widths, depths and MLP ratios; the heads (8) and the CRPE kernels are not in the shapes."""
    n = _count(s, r"stages\.(\d+)\..*")
    stem = _need(s, "stages.0.patch_embed.proj.weight", "CoaT-Lite")
    dims = tuple(_need(s, f"stages.{i}.patch_embed.proj.weight", "CoaT-Lite")[0] for i in range(n))
    return dict(num_classes=_need(s, "head.weight", "CoaT-Lite")[0], in_chans=stem[1], patch_size=stem[2],
                dims=dims, depths=tuple(_count(s, rf"stages\.{i}\.blocks\.(\d+)\..*") for i in range(n)),
                mlp_ratios=tuple(_need(s, f"stages.{i}.blocks.0.mlp.layers.0.weight", "CoaT-Lite")[0]
                                 / dims[i] for i in range(n)))


# CrossViT (timm's CrossVit): the branch tokens are ``cls_token_{b}`` / ``pos_embed_{b}`` there,
# ``cls_tokens.{b}`` / ``pos_embeds.{b}`` here; the rest as ViT's (encoder blocks) and the
# catalogue's MultiHeadAttention (the fusion's wq, wk, wv, proj).
_XVIT_BLOCK = r"(blocks\.\d+\.blocks\.\d+\.\d+)"
_XVIT_FUSION = r"(blocks\.\d+\.fusion\.\d+)"
_CROSSVIT_RULES = (
    Rule(r"cls_token_(\d)", r"cls_tokens.\1"),
    Rule(r"pos_embed_(\d)", r"pos_embeds.\1"),
    Rule(r"(patch_embed\.\d+\.proj\.\w+)", r"\1"),
    Rule(rf"{_XVIT_BLOCK}\.(norm[12]|attn\.qkv)\.(\w+)", r"\1.\2.\3"),
    Rule(rf"{_XVIT_BLOCK}\.attn\.proj\.(\w+)", r"\1.attn.out_proj.\2"),
    Rule(rf"{_XVIT_BLOCK}\.mlp\.(fc[12])\.(\w+)", r"\1.\2.\3"),
    Rule(r"(blocks\.\d+\.(?:projs|revert_projs)\.\d+\.[02]\.\w+)", r"\1"),
    Rule(rf"{_XVIT_FUSION}\.norm1\.(\w+)", r"\1.norm1.\2"),
    Rule(rf"{_XVIT_FUSION}\.attn\.w([qkv])\.(\w+)", r"\1.attn.\2_proj.\3"),
    Rule(rf"{_XVIT_FUSION}\.attn\.proj\.(\w+)", r"\1.attn.out_proj.\2"),
    Rule(r"((?:norm|head)\.\d+\.\w+)", r"\1"),
)


def _crossvit_args(s: Shapes) -> dict[str, Any]:
    """Classes, widths, patches, depths, MLP ratios and the size the position embeddings fit;
    the heads (3, 3) and the branch scales are not in the shapes."""
    nb = _count(s, r"patch_embed\.(\d+)\..*")
    projs = [_need(s, f"patch_embed.{b}.proj.weight", "CrossViT") for b in range(nb)]
    dims = tuple(p[0] for p in projs)
    k = _count(s, r"blocks\.(\d+)\..*")
    tokens = _need(s, "pos_embeds.0", "CrossViT")[1] - 1
    return dict(num_classes=_need(s, "head.0.weight", "CrossViT")[0], in_chans=projs[0][1],
                patch_sizes=tuple(p[2] for p in projs), dims=dims,
                img_size=_square_grid(tokens, projs[0][2], "CrossViT", "img_size"),
                depths=tuple(tuple(_count(s, rf"blocks\.{i}\.blocks\.{b}\.(\d+)\..*") for b in range(nb))
                             for i in range(k)),
                mlp_ratios=tuple(_need(s, f"blocks.0.blocks.{b}.0.fc1.weight", "CrossViT")[0] / dims[b]
                                 for b in range(nb)))


# --------------------------------------------------------------------------- TNT, PiT, ConViT


def _fuse_qk_v(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's TNT and ConViT GPSA attentions keep q, k in ``*.qk`` and v in ``*.v``; blockzoo's one
    ``*.qkv`` holds the rows q, k, v in that order: concatenate each present pair (weights and biases)."""
    for key in [k for k in tensors if re.search(r"\.qk\.(weight|bias)$", k)]:
        v_key = key.replace(".qk.", ".v.")
        if v_key in tensors:
            tensors[key.replace(".qk.", ".qkv.")] = torch.cat([tensors.pop(key), tensors.pop(v_key)], 0)
    return tensors


# TNT (timm's ``TNT``): each block's inner (pixel) and outer (patch) Transformers are blockzoo
# ``TransformerEncoderBlock``s named ``inner`` and ``outer``.
_TNT_PART = {"norm_in": "inner.norm1", "norm_mlp_in": "inner.norm2", "attn_in.qkv": "inner.attn.qkv",
             "attn_in.proj": "inner.attn.out_proj", "mlp_in.fc1": "inner.fc1", "mlp_in.fc2": "inner.fc2",
             "norm_out": "outer.norm1", "norm_mlp": "outer.norm2", "attn_out.qkv": "outer.attn.qkv",
             "attn_out.proj": "outer.attn.out_proj", "mlp.fc1": "outer.fc1", "mlp.fc2": "outer.fc2"}
_TNT_RULES = (
    Rule(r"(cls_token|patch_pos|pixel_pos)", r"\1"),
    _same("pixel_embed.proj", "norm1_proj", "proj", "norm2_proj", "norm", "head"),
    Rule(r"(blocks\.\d+\.(?:norm1_proj|proj|norm2_proj)\.\w+)", r"\1"),
    *(Rule(rf"(blocks\.\d+)\.{re.escape(ref)}\.(\w+)", rf"\1.{ours}.\2") for ref, ours in _TNT_PART.items()),
)


def _tnt_args(s: Shapes) -> dict[str, Any]:
    # The patch size is not in the shapes (the 7x7 pixel conv is the same for any p): TNT-S's 16.
    pos, dim = _need(s, "patch_pos", "TNT"), _need(s, "norm2_proj.weight", "TNT")[0]
    return dict(num_classes=_need(s, "head.weight", "TNT")[0], in_chans=_need(s, "pixel_embed.proj.weight",
                                                                                 "TNT")[1],
                dim=dim, inner_dim=_need(s, "pixel_pos", "TNT")[1], depth=_count(s, r"blocks\.(\d+)\..*"),
                img_size=_square_grid(pos[1] - 1, 16, "TNT", "img_size"),
                mlp_ratio=_need(s, "blocks.0.outer.fc1.weight", "TNT")[0] / dim)


# PiT (timm's ``PoolingVisionTransformer``): ``transformers.i`` are blockzoo's ``stages.i``, whose
# blocks are ``TransformerEncoderBlock``s (MLP layers fc1 / fc2 directly, projection out_proj).
_PIT_RULES = (
    Rule(r"(cls_token|pos_embed)", r"\1"),
    _same("patch_embed.conv", "norm", "head"),
    Rule(r"transformers\.(\d+)\.pool\.(conv|fc)\.(\w+)", r"stages.\1.pool.\2.\3"),
    Rule(r"transformers\.(\d+)\.(blocks\.\d+\.(?:norm1|norm2|attn\.qkv)\.\w+)", r"stages.\1.\2"),
    Rule(r"transformers\.(\d+)\.(blocks\.\d+)\.attn\.proj\.(\w+)", r"stages.\1.\2.attn.out_proj.\3"),
    Rule(r"transformers\.(\d+)\.(blocks\.\d+)\.mlp\.(fc[12])\.(\w+)", r"stages.\1.\2.\3.\4"),
)


def _pit_args(s: Shapes) -> dict[str, Any]:
    # The stem stride is not in the shapes: PiT's 8 (the map is (img - p) / 8 + 1 on a side).
    conv, pos = _need(s, "patch_embed.conv.weight", "PiT"), _need(s, "pos_embed", "PiT")
    n_stages = _count(s, r"stages\.(\d+)\..*")
    return dict(num_classes=_need(s, "head.weight", "PiT")[0], in_chans=conv[1], patch_size=conv[2],
                img_size=((pos[2] - 1) * 8 + conv[2], (pos[3] - 1) * 8 + conv[3]),
                depths=tuple(_count(s, rf"stages\.{i}\.blocks\.(\d+)\..*") for i in range(n_stages)))


# ConViT (timm's ``ConVit``): GPSA blocks and SA blocks share the names norm1, attn, norm2,
# fc1, fc2; both attentions' output projections are ``out_proj``.
_CONVIT_RULES = (
    Rule(r"(cls_token|pos_embed)", r"\1"),
    _same("patch_embed.proj", "norm", "head"),
    Rule(r"(blocks\.\d+\.(?:norm1|norm2|attn\.qkv|attn\.pos_proj)\.\w+)", r"\1"),
    Rule(r"(blocks\.\d+\.attn\.gating_param)", r"\1"),
    Rule(r"(blocks\.\d+)\.attn\.proj\.(\w+)", r"\1.attn.out_proj.\2"),
    Rule(r"(blocks\.\d+)\.mlp\.(fc[12])\.(\w+)", r"\1.\2.\3"),
)


def _convit_args(s: Shapes) -> dict[str, Any]:
    proj = _need(s, "patch_embed.proj.weight", "ConViT")
    return dict(num_classes=_need(s, "head.weight", "ConViT")[0], in_chans=proj[1], dim=proj[0],
                patch_size=proj[2], depth=_count(s, r"blocks\.(\d+)\..*"),
                local_layers=_count(s, r"blocks\.(\d+)\.attn\.gating_param"),
                img_size=_square_grid(_need(s, "pos_embed", "ConViT")[1], proj[2], "ConViT", "img_size"),
                mlp_ratio=_need(s, "blocks.0.fc1.weight", "ConViT")[0] / proj[0])


# ------------------------------------------------------------------------- bbf: pcpvt_small, twins_svt_small


# Twins-PCPVT and Twins-SVT (timm's ``Twins``): timm keeps each stage's parts in parallel
# lists (``patch_embeds.i``, ``blocks.i.j``, ``pos_block.i``); blockzoo's ``stages.i`` holds
# them. Its global attention (PCPVT's, SVT's GSA) projects q and kv apart as PVT v2's does:
# ``prepare`` stacks q on kv into the one ``qkv`` of blockzoo's SRA (a file with one half only
# is left as it is, and the error names the other); SVT's LSA has one ``qkv`` already.
_TWINS_BLOCK = r"blocks\.(\d+)\.(\d+)"


def _twins_prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for key in [k for k in tensors if re.fullmatch(rf"{_TWINS_BLOCK}\.attn\.q\.(weight|bias)", k)]:
        kv = key.replace(".attn.q.", ".attn.kv.")
        if kv in tensors:
            tensors[key.replace(".attn.q.", ".attn.qkv.")] = torch.cat([tensors.pop(key), tensors.pop(kv)], 0)
    return tensors


_TWINS_RULES = (
    Rule(r"patch_embeds\.(\d+)\.(proj|norm)\.(\w+)", r"stages.\1.patch_embed.\2.\3"),
    Rule(rf"{_TWINS_BLOCK}\.(norm[12]|attn\.sr|attn\.norm)\.(\w+)", r"stages.\1.blocks.\2.\3.\4"),
    Rule(rf"{_TWINS_BLOCK}\.attn\.qkv\.(\w+)", r"stages.\1.blocks.\2.attn.attn.qkv.\3"),
    Rule(rf"{_TWINS_BLOCK}\.attn\.proj\.(\w+)", r"stages.\1.blocks.\2.attn.attn.out_proj.\3"),
    Rule(rf"{_TWINS_BLOCK}\.mlp\.fc1\.(\w+)", r"stages.\1.blocks.\2.mlp.layers.0.\3"),
    Rule(rf"{_TWINS_BLOCK}\.mlp\.fc2\.(\w+)", r"stages.\1.blocks.\2.mlp.layers.4.\3"),
    Rule(r"pos_block\.(\d+)\.proj\.0\.(\w+)", r"stages.\1.pos_block.proj.\2"),
    _same("norm", "head"),
)


def _twins_args(s: Shapes) -> dict[str, Any]:
    """Classes, input channels, the first patch and the stages' widths and depths; the heads,
    reduction ratios and groups are not in the shapes (the registered model's: PCPVT-S, SVT-S)."""
    stem = _need(s, "stages.0.patch_embed.proj.weight", "Twins")
    n = _count(s, r"stages\.(\d+)\..*")
    return dict(num_classes=_need(s, "head.weight", "Twins")[0], in_chans=stem[1], patch_size=stem[2],
                dims=tuple(_need(s, f"stages.{i}.patch_embed.proj.weight", "Twins")[0] for i in range(n)),
                depths=tuple(_count(s, rf"stages\.{i}\.blocks\.(\d+)\..*") for i in range(n)))


# Registered model name -> its layout.
LAYOUTS: dict[str, Layout] = {}


def register_layout(names: Iterable[str], layout: Layout) -> None:
    """Make ``weights=`` load ``layout``'s checkpoints into the registered models ``names``."""
    for name in names:
        spec(name)  # unknown names list close matches
        LAYOUTS[name] = layout


register_layout(("resnet18", "resnet34"), _resnet("layer*.*.bn2"))
register_layout(("resnet50", "resnext50"), _resnet("layer*.*.bn3"))
register_layout(("vit_tiny", "vit_small", "vit_base"), Layout("timm VisionTransformer", _VIT_RULES, _HEAD,
                                                              _vit_args))
register_layout(("mixer_tiny",), Layout("timm MlpMixer (Mixer-B/16 layout)", _MIXER_RULES, _HEAD,
                                        _mixer_args))
register_layout(("resmlp_tiny",), Layout("timm ResMLP", _RESMLP_RULES, _HEAD, _resmlp_args))
register_layout(("gmlp_tiny",), Layout("timm gMLP", _GMLP_RULES, _HEAD, _gmlp_args))
register_layout(("convmixer",), Layout("timm ConvMixer", _CONVMIXER_RULES, ("fc.weight", "fc.bias"),
                                       _convmixer_args, "blocks.*.bn2"))
register_layout(("repvgg_a0", "repvgg_b0"), Layout("timm RepVGG (ByobNet)", _REPVGG_RULES,
                                                  ("head.fc.weight", "head.fc.bias"), _repvgg_args))
register_layout(("mobileone_s0",), Layout("timm MobileOne (ByobNet)", _MOBILEONE_RULES,
                                          ("head.fc.weight", "head.fc.bias"), _mobileone_args))
register_layout(("deit_tiny", "deit_tiny_distilled"), Layout("timm VisionTransformer (DeiT)", _DEIT_RULES,
                                                            (*_HEAD, "head_dist.weight", "head_dist.bias"),
                                                            _deit_args))
register_layout(("swin_tiny",), Layout("timm SwinTransformer", _SWIN_RULES, _HEAD, _swin_args,
                                       "layers.[0-9]", prepare=_swin_prepare))
register_layout(("pvt_v2_b0",), Layout("timm PyramidVisionTransformerV2", _PVT_RULES, _HEAD, _pvt_args,
                                       "stages.[0-9]", prepare=_pvt_prepare))
register_layout(("convnextv2_atto",), Layout("timm ConvNeXt (V2)", _CONVNEXT_RULES, _HEAD, _convnext_args,
                                             "stages.[0-9]"))
register_layout(("mobilenetv3_small", "mobilenetv3_large"),
                Layout("timm MobileNetV3", _MBV3_RULES, ("classifier.weight", "classifier.bias"), _mbv3_args,
                       "blocks.[0-9]", prepare=_mbv3_prepare))
register_layout(("cait_xxs24",), Layout("timm Cait", _CAIT_RULES, _HEAD, _cait_args))
register_layout(("volo_d1",), Layout("timm VOLO", _VOLO_RULES, (*_HEAD, "aux_head.weight", "aux_head.bias"),
                                     _volo_args))
register_layout(("mobilevit_xxs",), Layout("timm MobileViT (ByobNet)", _MOBILEVIT_RULES, _HEAD,
                                           _mobilevit_args))
register_layout(("levit_128s",), Layout("timm LeViT (LevitDistilled)", _LEVIT_RULES,
                                        ("head.linear.weight", "head.linear.bias", "head_dist.linear.weight",
                                         "head_dist.linear.bias"), _levit_args))
register_layout(("efficientformer_l1",), Layout("timm EfficientFormer", _EFFICIENTFORMER_RULES,
                                                (*_HEAD, "head_dist.weight", "head_dist.bias"),
                                                _efficientformer_args, prepare=_efficientformer_prepare))
register_layout(("swinv2_tiny",), Layout("timm SwinTransformerV2", _SWINV2_RULES, _HEAD, _swinv2_args,
                                         "layers.[0-9]"))
register_layout(("coat_lite_tiny",), Layout("timm CoaT (CoaT-Lite)", _COAT_RULES, _HEAD, _coat_args,
                                            "stages.[0-2]", prepare=_coat_prepare))
register_layout(("crossvit_tiny",), Layout("timm CrossVit", _CROSSVIT_RULES,
                                           ("head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"),
                                           _crossvit_args, "patch_embed.*.proj"))
register_layout(("tnt_s",), Layout("timm TNT", _TNT_RULES, _HEAD, _tnt_args, "pixel_embed.proj",
                                   prepare=_fuse_qk_v))
register_layout(("pit_ti",), Layout("timm PoolingVisionTransformer (PiT)", _PIT_RULES, _HEAD, _pit_args,
                                    "*.conv"))
register_layout(("convit_tiny",), Layout("timm ConVit", _CONVIT_RULES, _HEAD, _convit_args,
                                         "patch_embed.proj", prepare=_fuse_qk_v))
register_layout(("pcpvt_small", "twins_svt_small"), Layout("timm Twins", _TWINS_RULES, _HEAD, _twins_args,
                                                           "stages.[0-9]", prepare=_twins_prepare))


def layout_for(name: str) -> Layout:
    """The layout of registered model ``name``; a model without one is a ``ConfigError`` naming those with."""
    spec(name)
    if name not in LAYOUTS:
        raise ConfigError(f"weights=: no timm/torchvision layout is known for {name!r}; pretrained weights "
                          f"load into {', '.join(sorted(LAYOUTS))}")
    return LAYOUTS[name]


# --------------------------------------------------------------------------- reading


_NESTED = ("state_dict", "model", "state_dict_ema", "model_ema")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` file.

    Pickled files are read with ``torch.load(weights_only=True)`` (no code runs); a
    training checkpoint's nested ``state_dict`` / ``model`` entry is unwrapped and a
    ``module.`` prefix (DistributedDataParallel) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return dict(load_file(str(path)))
        except SafetensorError as e:
            raise FileFormatError(f"{path} is not a readable safetensors file ({e})") from None
    if path.suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise FileFormatError(f"{path}: expected a .safetensors, .pth, .pt, .bin or .ckpt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an UnpicklingError for pickled code, or a broken archive
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileFormatError(f"{path} cannot be read as a state dict with weights_only=True "
                              f"({first})") from None
    for key in _NESTED:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise FileFormatError(f"{path} holds no state dict (a mapping of names to tensors)")
    tensors = dict(obj)
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


# --------------------------------------------------------------------------- mapping


@dataclass
class Mapped:
    """A reference state dict in blockzoo's names: tensors, where each came from, what no rule took."""

    tensors: dict[str, torch.Tensor]
    source: dict[str, str]
    unknown: list[str]


def map_state_dict(layout: Layout, tensors: Mapping[str, torch.Tensor]) -> Mapped:
    """Rename (and reshape) reference tensors by ``layout``'s rules; two onto one name is an error."""
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    unknown: list[str] = []
    compiled = [(re.compile(r.pattern), r) for r in layout.rules]
    if layout.prepare is not None:
        tensors = layout.prepare(dict(tensors))
    for key, t in tensors.items():
        matches = [(m, rule) for pat, rule in compiled if (m := pat.fullmatch(key))]
        if not matches:
            unknown.append(key)
            continue
        if matches[0][1].part is None:
            matches = matches[:1]  # the first rule wins
        else:  # a split: every matching rule with a part takes its chunk
            matches = [(m, r) for m, r in matches if r.part is not None]
            parts = sorted(r.part for _, r in matches)
            n = parts[0][1]
            if parts != [(i, n) for i in range(n)]:
                raise FileFormatError(f"{layout.source}: the rules splitting {key!r} name parts {parts}, "
                                      f"not 0..{n - 1} of {n}")
            if t.shape[0] % n:
                raise FileFormatError(f"{layout.source}: {key!r} has {t.shape[0]} rows, not divisible "
                                      f"into {n} parts")
        for m, rule in matches:
            new = m.expand(rule.target)
            if new in out:
                raise FileFormatError(f"{layout.source}: {source[new]!r} and {key!r} both map to {new!r}")
            value = t.chunk(rule.part[1], 0)[rule.part[0]].contiguous() if rule.part else t
            out[new] = rule.convert(value) if rule.convert else value
            source[new] = key
    return Mapped(out, source, unknown)


def pretrained_args(name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The constructor arguments of ``name`` that the checkpoint's shapes fix (dim, depth, classes, ...)."""
    layout = layout_for(name)
    mapped = map_state_dict(layout, tensors)
    return layout.infer({k: tuple(v.shape) for k, v in mapped.tensors.items()})


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: blockzoo names loaded, and those left as initialised."""

    loaded: list[str]
    fresh: list[str]


def _few(items: list[str]) -> str:
    return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")


def load_pretrained(model: nn.Module, name: str, weights: str | os.PathLike[str] | Mapping[str, torch.Tensor],
                    *, label: str | None = None) -> LoadReport:
    """Load a reference checkpoint into ``model`` (registered model ``name``) by its family's layout.

    Every file tensor must fill one model tensor of the same shape and every model
    tensor must be filled, except the head: when the model's head has another shape
    than the file's (another ``num_classes``) it stays as initialised, with a warning.
    ``weights`` is a path or the tensors already read (``read_state_dict``); ``label``
    names them in messages (default: the path, or "the state dict").

    Raises:
        FileFormatError: listing the model tensors the file lacks, the file tensors the
            model has no place for, and those whose shapes differ.
    """
    layout = layout_for(name)
    what = label or (str(weights) if not isinstance(weights, Mapping) else "the state dict")
    tensors = read_state_dict(weights) if not isinstance(weights, Mapping) else weights
    mapped = map_state_dict(layout, tensors)
    own = model.state_dict()
    got = mapped.tensors
    fresh = [k for k in layout.head if k in own and k in got and tuple(own[k].shape) != tuple(got[k].shape)]
    missing = sorted(set(own) - set(got))
    unexpected = sorted(mapped.unknown) + sorted(f"{mapped.source[k]} (-> {k})" for k in set(got) - set(own))
    wrong = sorted(f"{mapped.source[k]} -> {k}: file {tuple(got[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in set(got) & set(own)
                   if tuple(got[k].shape) != tuple(own[k].shape) and k not in fresh)
    if missing or unexpected or wrong:
        parts = [f"{label}: {_few(items)}" for label, items in (
            ("missing from the file", missing), ("not in the model", unexpected), ("shape mismatch", wrong))
            if items]
        raise FileFormatError(f"{what} does not fit {name} as a {layout.source} checkpoint: "
                              + "; ".join(parts))
    if fresh:
        log.warning("%s: the head %s was left fresh: the file's is %s, this model's %s (another "
                    "num_classes); the rest (%d tensors) is loaded", name, ", ".join(fresh),
                    tuple(got[fresh[0]].shape), tuple(own[fresh[0]].shape), len(got) - len(fresh))
    load = {k: v for k, v in got.items() if k not in fresh}
    with torch.no_grad():
        for k, v in load.items():
            own[k].copy_(v)  # state_dict() shares storage with the model; copy_ casts dtype
    return LoadReport(loaded=sorted(load), fresh=fresh)


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None, *,
                 weights: str | os.PathLike[str] | None = None, **kw: Any) -> nn.Module:
    """Build registered model ``name``; with ``weights``, load a timm / torchvision checkpoint into it.

    Without ``weights`` this is ``blockzoo.registry.create_model``. With it, the
    constructor arguments the checkpoint's shapes fix (width, depth, patch size, the
    image size of the position embedding, ``num_classes``) are read from it; arguments
    given here win. A ``num_classes`` other than the file's gets a fresh head (with a
    warning); any other difference is a ``FileFormatError`` listing it.

    Re-parameterizable models (RepVGG, MobileOne): the file's form decides the model's.
    A training-form file (branches) builds the training form and a fused file (timm's
    ``reparam_conv``) the deploy form (``deploy=True``); ``deploy=True`` with a
    training-form file loads it and then fuses (``reparameterize()``), the one way round
    that exists (a fused file cannot be split into branches again).

    Example:
        >>> model = blockzoo.create_model("resnet18", num_classes=10, weights="resnet18.pth")
        >>> plain = blockzoo.create_model("repvgg_a0", weights="repvgg_a0.safetensors", deploy=True)
    """
    if weights is None:
        return _build_model(name, num_classes, in_chans, **kw)
    tensors = read_state_dict(weights)
    fixed = pretrained_args(name, tensors)
    args = {**fixed, **kw}
    if num_classes is not None:
        args["num_classes"] = num_classes
    if in_chans is not None:
        args.pop("in_chans", None)
        args[spec(name).width_arg or "in_chans"] = in_chans
    if fixed.get("deploy") and not args["deploy"]:
        raise ConfigError(f"deploy=False: {weights} holds {name}'s fused (deploy) form, which has no "
                          "branches to train; load it with deploy=True (the default for such files)")
    fuse = "deploy" in fixed and args["deploy"] and not fixed["deploy"]
    if fuse:  # build the form the file holds, load it, then fuse
        args["deploy"] = False
    model = _build_model(name, **args)
    load_pretrained(model, name, tensors, label=str(weights))
    if fuse:
        model.reparameterize()
    return model


# --------------------------------------------------------------------------- fixtures


# The BN scales of the summed branches in timm's re-param blocks (synthetic_tensor).
_REP_BRANCH_SCALES = (
    (re.compile(r"\.conv_1x1\.bn\.weight$"), 0.6),
    (re.compile(r"\.conv_kxk\.\d+\.bn\.weight$"), 0.4),
    (re.compile(r"\.identity\.weight$"), 0.7),
    # timm's MobileNetV3: the BNs before its hard-swish / ReLU and the projection BNs
    (re.compile(r"^blocks\.\d+\.\d+\.bn[12]\.weight$"), 1.6),
    (re.compile(r"^blocks\.\d+\.\d+\.bn3\.weight$"), 1.3),
)


def synthetic_tensor(name: str, shape: Iterable[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A deterministic tensor for reference name ``name``: its values depend on the name and shape only.

    Drawn from ``numpy.random.RandomState(crc32(name))`` (a stream numpy keeps fixed),
    scaled so a deep network's activations stay of order one: weights ~ N(0, 1 / fan_in),
    norm and BN scales 1 + 0.1 N(0, 1), running variances >= 1, layer-scales near 0.5,
    biases, shifts and embeddings small. Integer tensors (BN's counter) are zero.

    Re-param blocks (timm's names) sum several BN'd branches before each ReLU, which
    would grow activations by about 1.4x (RepVGG) to 1.8x (MobileOne) per block, so the
    scales of the summed branches' BNs shrink: RepVGG's ``conv_1x1`` 0.6, MobileOne's k
    copies ``conv_kxk.{i}`` 0.4, the ``identity`` BN 0.7 (times 1 + 0.1 N). A fused
    ``reparam_conv`` is followed by ReLU alone: its weights are He-scaled, N(0, 2 / fan_in).
    timm's MobileNetV3 (``blocks.i.j.bn1`` / ``bn2`` / ``bn3``) goes the other way: its
    hard-swish and hard-sigmoid SE gates have slope 1/2 near 0, so its input's trace would
    fade to ~1e-5 of the logits; the BNs before the activations scale by 1.6 and the
    projection BNs by 1.3 (times 1 + 0.1 N), which keeps the two fixture samples apart.
    """
    shape = tuple(int(s) for s in shape)
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    n = np.random.RandomState(zlib.crc32(name.encode())).standard_normal(shape)
    leaf = name.rsplit(".", 1)[-1]
    branch = next((c for pat, c in _REP_BRANCH_SCALES if pat.search(name)), None)
    if leaf == "running_var":
        v = 1.0 + 0.2 * np.abs(n)
    elif leaf == "weight" and len(shape) == 1 and branch is not None:
        v = branch * (1.0 + 0.1 * n)
    elif leaf == "weight" and name.endswith("reparam_conv.weight"):
        v = n * math.sqrt(2 / math.prod(shape[1:]))
    elif leaf in ("alpha",) or (leaf == "weight" and len(shape) == 1):
        v = 1.0 + 0.1 * n
    elif leaf in ("ls1", "ls2", "gamma"):
        v = 0.5 + 0.1 * n
    elif leaf in ("cls_token", "pos_embed"):
        v = 0.02 * n
    elif leaf == "weight" and len(shape) >= 2:
        v = n / math.sqrt(math.prod(shape[1:]))
    else:  # biases, BN means, affine shifts
        v = 0.1 * n
    return torch.from_numpy(np.ascontiguousarray(v)).to(dtype)


def synthetic_state_dict(keys: Iterable[tuple[str, Iterable[int], str]]) -> dict[str, torch.Tensor]:
    """``synthetic_tensor`` for every (name, shape, dtype name) of a reference layout."""
    return {k: synthetic_tensor(k, shape, getattr(torch, dtype)) for k, shape, dtype in keys}


def fixture_input(shape: Iterable[int]) -> torch.Tensor:
    """The fixed input the fixtures' outputs are measured on: ``RandomState(0)`` normals, float32."""
    return torch.from_numpy(np.random.RandomState(0).standard_normal(tuple(shape)).astype(np.float32))

