"""Twins-PCPVT-S (issue 23, "CPVT (PCPVT-S)") and Twins-SVT-S: timm-layout weights giving timm's
outputs (fixtures of scripts/make_weight_fixtures.py), the parameter counts of timm's
``twins_pcpvt_small`` / ``twins_svt_small``, the whole networks and the locally-grouped attention
against references written from the papers' equations (float64), the PEG's place, the input
sizes they take and the layout's q / kv stacking.

(The generic tables of tests/test_backbones.py cover 224 and a non-square size, and
``attach`` after each of the four stages.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.attention.twins import LocallyGroupedAttention
from blockzoo.checks import FileFormatError
from blockzoo.models.twins import TwinsBlock
from blockzoo.weights import fixture_input, synthetic_state_dict

FIXTURES = Path(__file__).parent / "fixtures" / "weights"
# blockzoo name -> timm name and sum(p.numel() for p in timm.create_model(name).parameters()),
# read once from timm 1.0.31 at the default config (1000 classes)
TIMM = {"pcpvt_small": ("twins_pcpvt_small", 24_106_216), "twins_svt_small": ("twins_svt_small", 24_060_776)}


def _fixture(name: str = "pcpvt_small") -> dict:
    return json.loads((FIXTURES / f"{TIMM[name][0]}.json").read_text())


@pytest.mark.parametrize("name", sorted(TIMM))
def test_parameter_count_equals_timms(name: str) -> None:
    model = blockzoo.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == TIMM[name][1]


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_weights_give_timm_outputs(name: str, tmp_path: Path) -> None:
    fx = _fixture(name)
    assert fx["timm_model"] == TIMM[name][0] and fx["timm_version"] == "1.0.31"
    path = tmp_path / "w.pth"
    torch.save(synthetic_state_dict(fx["keys"]), path)
    model = blockzoo.create_model(name, weights=path).eval()
    assert sum(p.numel() for p in model.parameters()) == fx["num_params"] == TIMM[name][1]
    with torch.no_grad():
        out = model(fixture_input(fx["input"])).double()
    want = torch.tensor(fx["logits"], dtype=torch.float64)
    # fp32 on both sides: equal to 1e-5 relative to the logits' size (at least 1)
    tol = 1e-5 * max(1.0, want.abs().max().item())
    assert (out[:, :want.shape[1]] - want).abs().max().item() <= tol
    assert (out.logsumexp(1) - torch.tensor(fx["logsumexp"], dtype=torch.float64)).abs().max().item() <= tol
    assert (want[0] - want[1]).abs().max().item() > 1e-2  # the two samples tell a wrong mapping


def test_layout_stacks_timms_q_on_kv_and_names_a_missing_half(tmp_path: Path) -> None:
    tensors = synthetic_state_dict(_fixture()["keys"])
    path = tmp_path / "w.pth"
    torch.save(tensors, path)
    model = blockzoo.create_model("pcpvt_small", weights=path)
    qkv = model.stages[2].blocks[4].attn.attn.qkv
    assert torch.equal(qkv.weight, torch.cat([tensors["blocks.2.4.attn.q.weight"],
                                              tensors["blocks.2.4.attn.kv.weight"]]))
    assert torch.equal(model.stages[1].pos_block.proj.bias, tensors["pos_block.1.proj.0.bias"])
    del tensors["blocks.2.4.attn.kv.bias"]
    torch.save(tensors, path)
    want = r"stages\.2\.blocks\.4\.attn\.attn\.qkv\.bias.*blocks\.2\.4\.attn\.q\.bias"
    with pytest.raises(FileFormatError, match=want):
        blockzoo.create_model("pcpvt_small", weights=path)


# ------------------------------------------------------------------------ the papers' equations


def _ln(z: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(z, z.shape[-1:], norm.weight, norm.bias, norm.eps)


def _mhsa(mha, q_in: torch.Tensor, kv_in: torch.Tensor) -> torch.Tensor:
    """Concat_j softmax(Q_j K_j^T / sqrt(d)) V_j W^O for tokens (L, C) and keys/values from (S, C)."""
    c, nh = q_in.shape[-1], mha.num_heads
    wq, wk, wv = mha.qkv.weight.chunk(3)
    bq, bk, bv = mha.qkv.bias.chunk(3)
    q, k, v = (t.view(t.shape[0], nh, c // nh).transpose(0, 1)
               for t in (q_in @ wq.T + bq, kv_in @ wk.T + bk, kv_in @ wv.T + bv))
    o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // nh), -1) @ v  # (h, L, d)
    return o.transpose(0, 1).reshape(q_in.shape[0], c) @ mha.out_proj.weight.T + mha.out_proj.bias


def _sra_reference(sra, a: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """SRA / GSA (arXiv 2102.12122, Eq. (3)-(4)): keys and values from LN(Conv_{R x R / R}(x))."""
    b, _, c = a.shape
    out = []
    for i in range(b):
        kv = a[i]
        if sra.sr_ratio > 1:
            m = F.conv2d(a[i].T.reshape(1, c, h, w), sra.sr.weight, sra.sr.bias, stride=sra.sr_ratio)
            kv = _ln(m.flatten(2)[0].T, sra.norm)
        out.append(_mhsa(sra.attn, a[i], kv))
    return torch.stack(out)


def _lsa_reference(lsa, a: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """LSA (arXiv 2104.13840, Eq. (1)), group by group: the k x k group at (gy, gx) of the map
    zero-padded to multiples of k attends to itself only (padding included, as released)."""
    b, _, c = a.shape
    k = lsa.window_size
    hp, wp = -(-h // k) * k, -(-w // k) * k
    grid = torch.zeros(b, hp, wp, c, dtype=a.dtype)
    grid[:, :h, :w] = a.view(b, h, w, c)
    out = torch.zeros_like(grid)
    for i in range(b):
        for gy in range(0, hp, k):
            for gx in range(0, wp, k):
                g = grid[i, gy:gy + k, gx:gx + k].reshape(k * k, c)
                out[i, gy:gy + k, gx:gx + k] = _mhsa(lsa.attn, g, g).view(k, k, c)
    return out[:, :h, :w].reshape(b, h * w, c)


def _reference(model, x: torch.Tensor) -> torch.Tensor:
    """Twins (arXiv 2104.13840, Sec. 3) written out: per stage a p x p patch conv and LN, blocks
    z += Attn(LN z), z += MLP(LN z) with Attn SRA / GSA, or LSA in SVT's odd-numbered blocks
    (1st, 3rd, ...), the PEG z += DWConv_{3x3}(z) after the first block (arXiv 2102.10882); LN
    of the last tokens, their mean, the head."""
    for stage in model.stages:
        p = stage.patch_embed.patch_size
        x = F.pad(x, (0, -x.shape[3] % p, 0, -x.shape[2] % p))
        x = F.conv2d(x, stage.patch_embed.proj.weight, stage.patch_embed.proj.bias, stride=p)
        b, c, h, w = x.shape
        z = _ln(x.flatten(2).transpose(1, 2), stage.patch_embed.norm)
        for j, blk in enumerate(stage.blocks):
            a = _ln(z, blk.norm1)
            local = isinstance(blk.attn, LocallyGroupedAttention)
            z = z + (_lsa_reference if local else _sra_reference)(blk.attn, a, h, w)
            fc1, fc2 = blk.mlp.layers[0], blk.mlp.layers[4]
            z = z + F.linear(F.gelu(F.linear(_ln(z, blk.norm2), fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
            if j == 0:  # PEG
                img = z.transpose(1, 2).reshape(b, c, h, w)
                pe = stage.pos_block.proj
                z = (img + F.conv2d(img, pe.weight, pe.bias, padding=1, groups=c)).flatten(2).transpose(1, 2)
        x = z.transpose(1, 2).reshape(b, c, h, w)
    z = _ln(x.flatten(2).transpose(1, 2), model.norm)
    return F.linear(z.mean(1), model.head.weight, model.head.bias)


def _randomise_norms(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        if "norm" in name:  # non-trivial affine norms
            torch.nn.init.normal_(p, mean=1.0 if name.endswith("weight") else 0.0, std=0.3)


@pytest.mark.parametrize("name", sorted(TIMM))
@pytest.mark.parametrize("size", [(32, 32), (37, 50)])  # a multiple of 32; odd, non-square (padded)
def test_twins_equals_its_equations(name: str, size) -> None:
    torch.manual_seed(0)
    svt = dict(window_sizes=(3, 2, 2)) if name == "twins_svt_small" else {}
    model = blockzoo.create_model(name, num_classes=5, dims=(8, 12, 16), depths=(2, 1, 3),
                                  num_heads=(1, 2, 4), sr_ratios=(4, 2, 1), mlp_ratios=(2, 3, 2), **svt)
    model = model.double().eval()
    _randomise_norms(model)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference(model, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("size", "window"), [((6, 9), 3), ((7, 5), 3), ((2, 11), 4), ((4, 4), 1)])
def test_lsa_equals_its_equations(size, window) -> None:
    torch.manual_seed(0)
    lsa = LocallyGroupedAttention(12, 3, window_size=window).double().eval()
    x = torch.randn(2, 12, *size, dtype=torch.float64)
    b, c, h, w = x.shape
    want = _lsa_reference(lsa, x.flatten(2).transpose(1, 2), h, w).transpose(1, 2).reshape(b, c, h, w)
    with torch.no_grad():
        torch.testing.assert_close(lsa(x), want, rtol=1e-10, atol=1e-10)


def test_lsa_keeps_each_group_to_itself() -> None:
    torch.manual_seed(0)
    lsa = LocallyGroupedAttention(8, 2, window_size=3).double().eval()
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    y = x.clone()
    y[:, :, 4, 5] += 1.0  # a token of the bottom-right group
    with torch.no_grad():
        changed = (lsa(x) - lsa(y)).abs().amax(1)[0] > 0  # (H, W)
    want = torch.zeros(6, 6, dtype=torch.bool)
    want[3:, 3:] = True
    assert torch.equal(changed, want)


def test_svt_alternates_lsa_and_gsa() -> None:
    model = blockzoo.create_model("twins_svt_small")
    kinds = [[type(b.attn).__name__ for b in s.blocks] for s in model.stages]
    assert kinds[1] == ["LocallyGroupedAttention", "SpatialReductionAttention"]
    assert kinds[2] == ["LocallyGroupedAttention", "SpatialReductionAttention"] * 5
    assert [s.blocks[1].attn.sr_ratio for s in model.stages] == [8, 4, 2, 1]
    assert {s.blocks[0].attn.window_size for s in model.stages} == {7}
    with pytest.raises(ValueError, match="window_size=7 \\(LSA\\) takes no sr_ratio"):
        TwinsBlock(8, 2, sr_ratio=2, window_size=7)


def test_the_peg_follows_the_first_block_only() -> None:
    torch.manual_seed(0)
    model = blockzoo.create_model("pcpvt_small", num_classes=3, dims=(8,), depths=(3,), num_heads=(2,),
                                  sr_ratios=(2,), mlp_ratios=(2,)).double().eval()
    stage = model.stages[0]
    seen = []
    stage.pos_block.register_forward_hook(lambda *_: seen.append("peg"))
    for blk in stage.blocks:
        blk.register_forward_hook(lambda *_: seen.append("block"))
    with torch.no_grad():
        model(torch.randn(1, 3, 24, 20, dtype=torch.float64))
    assert seen == ["block", "peg", "block", "block"]
    # with the PEG's conv at zero it is the identity (a conditional position encoding, nothing fixed)
    with torch.no_grad():
        stage.pos_block.proj.weight.zero_()
        stage.pos_block.proj.bias.zero_()
        z = torch.randn(1, 8, 5, 4, dtype=torch.float64)
        torch.testing.assert_close(stage.pos_block(z), z, rtol=0, atol=0)


def test_pcpvt_small_is_the_papers_configuration() -> None:
    model = blockzoo.create_model("pcpvt_small")
    assert [len(s.blocks) for s in model.stages] == [3, 4, 6, 3]
    assert [s.dim for s in model.stages] == [64, 128, 320, 512]
    assert [s.patch_embed.patch_size for s in model.stages] == [4, 2, 2, 2]
    assert [s.blocks[0].attn.sr_ratio for s in model.stages] == [8, 4, 2, 1]
    assert [s.blocks[0].attn.attn.num_heads for s in model.stages] == [1, 2, 5, 8]
    assert [s.blocks[0].mlp.hidden_features[0] // s.dim for s in model.stages] == [8, 8, 4, 4]
    # released code: LayerNorm eps 1e-6 in the blocks and the final norm, 1e-5 in the embeddings and SRA
    assert model.norm.eps == model.stages[0].blocks[0].norm1.eps == 1e-6
    assert model.stages[0].patch_embed.norm.eps == model.stages[0].blocks[0].attn.norm.eps == 1e-5


@pytest.mark.parametrize("name", sorted(TIMM))
def test_twins_names_its_smallest_input(name: str) -> None:
    model = blockzoo.create_model(name, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 29, 29)).shape == (1, 3)
    with pytest.raises(blockzoo.ShapeError, match=r"input 28x64 gives stage 1 a 7x16 map, smaller than its "
                                                  r"spatial-reduction ratio 8; expected H, W >= 29"):
        model(torch.randn(1, 3, 28, 64))
    with pytest.raises(blockzoo.ShapeError, match="Twins"):
        model(torch.randn(1, 4, 64, 64))
