"""Twins-PCPVT-S (issue 23, "CPVT (PCPVT-S)"): timm-layout weights giving timm's outputs (fixture
of scripts/make_weight_fixtures.py), the parameter count of timm's ``twins_pcpvt_small``, the
whole network against a reference written from the papers' equations (float64), the PEG's
place, the input sizes it takes and the layout's q / kv stacking.

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
from blockzoo.checks import FileFormatError
from blockzoo.weights import fixture_input, synthetic_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "weights" / "twins_pcpvt_small.json"
# sum(p.numel() for p in timm.create_model("twins_pcpvt_small").parameters()), timm 1.0.31
TIMM_PCPVT_SMALL = 24_106_216


def _fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def test_pcpvt_small_has_timms_parameter_count() -> None:
    model = blockzoo.create_model("pcpvt_small")
    assert sum(p.numel() for p in model.parameters()) == TIMM_PCPVT_SMALL


def test_timm_weights_give_timm_outputs(tmp_path: Path) -> None:
    fx = _fixture()
    assert fx["timm_model"] == "twins_pcpvt_small" and fx["timm_version"] == "1.0.31"
    path = tmp_path / "w.pth"
    torch.save(synthetic_state_dict(fx["keys"]), path)
    model = blockzoo.create_model("pcpvt_small", weights=path).eval()
    assert sum(p.numel() for p in model.parameters()) == fx["num_params"] == TIMM_PCPVT_SMALL
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


def _reference(model, x: torch.Tensor) -> torch.Tensor:
    """Twins-PCPVT (arXiv 2104.13840, Sec. 3.1) written out: per stage a p x p patch conv and LN,
    PVT blocks z += SRA(LN z), z += MLP(LN z) with SRA's keys from LN(Conv_{R x R / R}) (arXiv
    2102.12122, Eq. (3)-(4)), the PEG z += DWConv_{3x3}(z) after the first block (arXiv
    2102.10882); LN of the last tokens, their mean, the head."""
    for stage in model.stages:
        p = stage.patch_embed.patch_size
        x = F.pad(x, (0, -x.shape[3] % p, 0, -x.shape[2] % p))
        x = F.conv2d(x, stage.patch_embed.proj.weight, stage.patch_embed.proj.bias, stride=p)
        b, c, h, w = x.shape
        z = _ln(x.flatten(2).transpose(1, 2), stage.patch_embed.norm)
        for j, blk in enumerate(stage.blocks):
            a, sra = _ln(z, blk.norm1), blk.attn
            r = sra.sr_ratio
            if r > 1:
                m = F.conv2d(a.transpose(1, 2).reshape(b, c, h, w), sra.sr.weight, sra.sr.bias, stride=r)
                kv = _ln(m.flatten(2).transpose(1, 2), sra.norm)
            else:
                kv = a
            nh = sra.attn.num_heads
            wq, wk, wv = sra.attn.qkv.weight.chunk(3)
            bq, bk, bv = sra.attn.qkv.bias.chunk(3)

            q, k, v = (t.view(b, t.shape[1], nh, c // nh).transpose(1, 2)
                       for t in (a @ wq.T + bq, kv @ wk.T + bk, kv @ wv.T + bv))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // nh), -1)
            o = (att @ v).transpose(1, 2).reshape(b, h * w, c)
            z = z + o @ sra.attn.out_proj.weight.T + sra.attn.out_proj.bias
            fc1, fc2 = blk.mlp.layers[0], blk.mlp.layers[4]
            z = z + F.linear(F.gelu(F.linear(_ln(z, blk.norm2), fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
            if j == 0:  # PEG
                img = z.transpose(1, 2).reshape(b, c, h, w)
                pe = stage.pos_block.proj
                z = (img + F.conv2d(img, pe.weight, pe.bias, padding=1, groups=c)).flatten(2).transpose(1, 2)
        x = z.transpose(1, 2).reshape(b, c, h, w)
    z = _ln(x.flatten(2).transpose(1, 2), model.norm)
    return F.linear(z.mean(1), model.head.weight, model.head.bias)


@pytest.mark.parametrize("size", [(32, 32), (37, 50)])  # a multiple of 32; odd, non-square (padded)
def test_pcpvt_equals_its_equations(size) -> None:
    torch.manual_seed(0)
    model = blockzoo.create_model("pcpvt_small", num_classes=5, dims=(8, 12, 16), depths=(2, 1, 2),
                                  num_heads=(1, 2, 4), sr_ratios=(4, 2, 1), mlp_ratios=(2, 3, 2))
    model = model.double().eval()
    for name, p in model.named_parameters():
        if "norm" in name:  # non-trivial affine norms
            torch.nn.init.normal_(p, mean=1.0 if name.endswith("weight") else 0.0, std=0.3)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference(model, x), rtol=1e-10, atol=1e-10)


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


def test_pcpvt_names_its_smallest_input() -> None:
    model = blockzoo.create_model("pcpvt_small", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 29, 29)).shape == (1, 3)
    with pytest.raises(blockzoo.ShapeError, match=r"input 28x64 gives stage 1 a 7x16 map, smaller than its "
                                                  r"spatial-reduction ratio 8; expected H, W >= 29"):
        model(torch.randn(1, 3, 28, 64))
    with pytest.raises(blockzoo.ShapeError, match="Twins"):
        model(torch.randn(1, 4, 64, 64))
