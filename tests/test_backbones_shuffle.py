"""Shuffle Transformer-T of issue 23 (no reference implementation installed).

The parameter count equals the authors' released model; the shuffled window attention is
checked against a reference that gathers each window's tokens one position at a time from
the paper's definition (float64), and the network against a forward written from the
released code's block structure. Generic rows (paper table, MACs, other sizes, ``attach``
after each stage) are in tests/test_backbones_paper_only.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.attention.shuffle_window import ShuffleWindowAttention
from blockzoo.attention.swin import ShiftedWindowAttention
from blockzoo.checks import ConfigError, ShapeError
from blockzoo.models.shuffle_transformer import ShuffleBlock
from blockzoo.testing import zero_grad_parameters

# The authors' released Shuffle-T (github.com/mulinmeng/Shuffle-Transformer,
# models/shuffle_transformer.py with configs/shuffle_vit_tiny_patch4_window7_224.yaml, whose
# training log output/shuffle_vit_tiny_patch4_window7_224_local7midV2/default/log_rank0.txt
# prints "number of params: 28532482"); the paper's table rounds it to 29M.
OFFICIAL_PARAMS = 28_532_482


def test_parameter_count_equals_the_released_model() -> None:
    model = blockzoo.create_model("shuffle_transformer_t")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS
    # the released layout: no merging before stage 1, 2 + 2 + 6 + 2 blocks, 32 channels a head
    assert model.stages[0].reduction is None
    assert [len(s.blocks) for s in model.stages] == [2, 2, 6, 2]
    assert [s.blocks[0].attn.head_dim for s in model.stages] == [32] * 4
    assert [b.attn.shuffle for b in model.stages[2].blocks] == [False, True] * 3


# ------------------------------------------------------------------------ the attention


def _shuffle_reference(m: ShiftedWindowAttention, x: torch.Tensor, shuffle: bool) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W) from the definition, one window at a time: pad to multiples
    of M; window (i, j) holds the tokens at (a g_h + i, b g_w + j) (shuffled) or
    (i M_h + a, j M_w + b) (regular), 0 <= a < M_h, 0 <= b < M_w; softmax(q k^T / sqrt(d) + B)
    v over the window's real tokens, B = the table's row of the offset (a - a', b - b')."""
    b, c, h, w = x.shape
    mh, mw = (min(h, m.window_size[0]), min(w, m.window_size[1]))
    hp, wp = math.ceil(h / mh) * mh, math.ceil(w / mw) * mw
    gh, gw = hp // mh, wp // mw
    xp = F.pad(x, (0, wp - w, 0, hp - h)).permute(0, 2, 3, 1)  # (B, Hp, Wp, C)
    nh, d = m.num_heads, m.head_dim
    table, (th, tw) = m.relative_position_bias_table, m.window_size
    out = torch.zeros(b, hp, wp, c, dtype=x.dtype)
    for i in range(gh):
        for j in range(gw):
            if shuffle:
                pos = [(a * gh + i, bb * gw + j) for a in range(mh) for bb in range(mw)]
            else:
                pos = [(i * mh + a, j * mw + bb) for a in range(mh) for bb in range(mw)]
            grid = [(a, bb) for a in range(mh) for bb in range(mw)]
            tok = torch.stack([xp[:, y, z] for y, z in pos], 1)  # (B, N, C)
            q, k, v = m.qkv(tok).view(b, len(pos), 3, nh, d).permute(2, 0, 3, 1, 4)
            logits = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, h, N, N)
            for p, (a1, b1) in enumerate(grid):
                for r, (a2, b2) in enumerate(grid):
                    logits[:, :, p, r] += table[(a1 - a2 + th - 1) * (2 * tw - 1) + (b1 - b2 + tw - 1)]
                    if pos[r][0] >= h or pos[r][1] >= w:
                        logits[:, :, p, r] = float("-inf")  # a padded key
            y = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, len(pos), nh * d)
            y = m.proj(y)
            for p, (yy, zz) in enumerate(pos):
                out[:, yy, zz] = y[:, p]
    return out[:, :h, :w].permute(0, 3, 1, 2)


@pytest.mark.parametrize(("size", "window"),
                         [((12, 8), 4), ((9, 12), 3), ((11, 7), 3), ((5, 9), 4), ((3, 2), 4)])
def test_shuffle_window_attention_equals_the_definition(size: tuple[int, int], window: int) -> None:
    torch.manual_seed(0)
    m = ShuffleWindowAttention(8, 2, window_size=window).double().eval()
    with torch.no_grad():
        m.relative_position_bias_table.normal_()  # a table that matters
        x = torch.randn(2, 8, *size, dtype=torch.float64)
        torch.testing.assert_close(m(x), _shuffle_reference(m, x, shuffle=True), rtol=1e-10, atol=1e-10)


def test_regular_windows_are_swins_unshifted_windows() -> None:
    torch.manual_seed(1)
    m = ShuffleWindowAttention(8, 2, window_size=3, shuffle=False, qkv_bias=True).double().eval()
    swin = ShiftedWindowAttention(8, 2, window_size=3, shift_size=0).double().eval()
    swin.load_state_dict(m.state_dict())
    with torch.no_grad():
        m.relative_position_bias_table.normal_()
        swin.relative_position_bias_table.copy_(m.relative_position_bias_table)
        x = torch.randn(2, 8, 10, 9, dtype=torch.float64)
        torch.testing.assert_close(m(x), swin(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m(x), _shuffle_reference(m, x, shuffle=False), rtol=1e-10, atol=1e-10)
        m.shuffle = True
        assert not torch.allclose(m(x), swin(x))  # the shuffled windows are other windows


def test_a_token_reaches_only_its_strided_window() -> None:
    # window (0, 0) of a 12 x 8 map with M = 4 holds the positions (3a, 2b): changing the
    # token at (0, 0) changes the output there and nowhere else
    torch.manual_seed(2)
    m = ShuffleWindowAttention(8, 2, window_size=4).double().eval()
    x = torch.randn(1, 8, 12, 8, dtype=torch.float64)
    y = x.clone()
    y[0, :, 0, 0] += 1.0
    with torch.no_grad():
        changed = (m(x) - m(y)).abs().amax(1)[0] > 1e-12  # (H, W)
    want = torch.zeros(12, 8, dtype=torch.bool)
    want[::3, ::2] = True
    assert torch.equal(changed, want)


def test_shuffle_window_attention_errors() -> None:
    m = ShuffleWindowAttention(8, 2, window_size=4)
    with pytest.raises(ShapeError, match="C=8"):
        m(torch.randn(1, 6, 8, 8))
    with pytest.raises(ConfigError, match="num_heads=3 must divide dim=8"):
        ShuffleWindowAttention(8, 3)
    with pytest.raises(ConfigError, match="window_size"):
        ShuffleWindowAttention(8, 2, window_size=0)
    assert "shuffle=True" in repr(m)


# ------------------------------------------------------------------------ the network


def _official_block(blk: ShuffleBlock, x: torch.Tensor) -> torch.Tensor:
    """The released code's Block.forward: attention, local (depthwise) conv, MLP, each after its
    BatchNorm and residual; the attention from the window definition above."""
    x = x + _shuffle_reference(blk.attn, blk.norm1(x), blk.attn.shuffle)
    x = x + F.conv2d(blk.norm2(x), blk.local.weight, blk.local.bias, padding=blk.local.padding,
                     groups=x.shape[1])
    hid = F.relu6(F.conv2d(blk.norm3(x), blk.mlp.fc1.weight, blk.mlp.fc1.bias))
    return x + F.conv2d(hid, blk.mlp.fc2.weight, blk.mlp.fc2.bias)


def test_network_equals_the_released_structure() -> None:
    torch.manual_seed(3)
    cfg = dict(num_classes=5, dims=(8, 16), depths=(2, 2), num_heads=(1, 2), stem_dim=8, window_size=3)
    model = blockzoo.create_model("shuffle_transformer_t", **cfg).double()
    for mod in model.modules():  # random BatchNorm statistics (default ones hide mistakes)
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.normal_()
            mod.bias.data.normal_()
    for blk in model.modules():
        if isinstance(blk, ShuffleBlock):
            blk.attn.relative_position_bias_table.data.normal_()
    model.eval()
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)  # maps 12 x 12 and 6 x 6: windows divide them
    with torch.no_grad():
        s1, s2 = model.stem[0], model.stem[1]
        z = F.relu6(s1.bn(F.conv2d(x, s1.conv.weight, s1.conv.bias, stride=2, padding=1)))
        z = F.relu6(s2.bn(F.conv2d(z, s2.conv.weight, s2.conv.bias, stride=2, padding=1)))
        z = F.conv2d(z, model.stem[2].weight, model.stem[2].bias)
        for i, stage in enumerate(model.stages):
            if i > 0:  # PatchMerging: BatchNorm, then a 2 x 2 stride-2 conv without bias
                z = F.conv2d(stage.norm(z), stage.reduction.weight, stride=2)
            for blk in stage.blocks:
                z = _official_block(blk, z)
        want = F.linear(z.mean((2, 3)), model.head.weight, model.head.bias)
        torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)


def test_odd_sides_are_padded_before_merging() -> None:
    torch.manual_seed(4)
    s = blockzoo.spec("shuffle_transformer_t")
    model = blockzoo.create_model("shuffle_transformer_t", **s.example.config).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 37, 21))  # stem 10 x 6 -> 5 x 3
    assert feats.shape == (1, 16, 5, 3)


def test_grad_exemption_is_exactly_the_biases_a_batchnorm_removes() -> None:
    # the stem's convs before their BatchNorms, and the residual-stream biases of every stage
    # but the last (the example has two stages of two blocks): all their readers are BatchNorms
    want = ["stem.0.conv.bias", "stem.1.conv.bias", "stem.2.bias"]
    want += [f"stages.0.blocks.{j}.{p}.bias" for j in range(2) for p in ("attn.proj", "local", "mlp.fc2")]
    got = zero_grad_parameters(blockzoo.spec("shuffle_transformer_t"))
    assert sorted(got) == sorted(want)


def test_network_errors() -> None:
    model = blockzoo.create_model("shuffle_transformer_t", num_classes=3, dims=(8,), depths=(2,),
                                  num_heads=(1,), stem_dim=4, window_size=3)
    with pytest.raises(ShapeError, match="C=3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ConfigError, match="equally long"):
        blockzoo.create_model("shuffle_transformer_t", dims=(8, 16), depths=(2,), num_heads=(1, 2))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_an_even_window_keeps_the_map_size() -> None:
    # the NWC conv pads "same" (one less at the top / left for an even M)
    blk = ShuffleBlock(8, 2, window_size=4, shuffle=True).eval()
    with torch.no_grad():
        assert blk(torch.randn(1, 8, 9, 6)).shape == (1, 8, 9, 6)
