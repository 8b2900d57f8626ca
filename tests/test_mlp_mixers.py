"""The maths of the MLP mixers: each block against its paper's equation written out by hand,
and the properties the papers state (what mixes with what, initial behaviour)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blockzoo
from blockzoo import ShapeError
from blockzoo.attention.maps import record_attention
from blockzoo.mlp import (
    Affine,
    GMLPBlock,
    MixerBlock,
    ResMLPBlock,
    S2MLPBlock,
    SparseMLP,
    SpatialGatingUnit,
    SpatialShift,
    WeightedPermuteMLP,
)

f64 = torch.float64


def _lin(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def _mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    """The plain MLP's linear layers with exact GELU between them."""
    lins = [m for m in mlp.layers if isinstance(m, nn.Linear)]
    for lin in lins[:-1]:
        x = F.gelu(_lin(lin, x))
    return _lin(lins[-1], x)


def test_mixer_block_equation() -> None:
    torch.manual_seed(0)
    blk = MixerBlock(6, 5, token_hidden=7, channel_hidden=9).double()
    x = torch.randn(3, 5, 6, dtype=f64)
    ln = lambda t, m: F.layer_norm(t, (6,), m.weight, m.bias, m.eps)  # noqa: E731
    # U = X + T(MLP_tok(T(LN(X)))),  Y = U + MLP_ch(LN(U))
    u = x + _mlp(blk.token_mlp, ln(x, blk.norm1).transpose(1, 2)).transpose(1, 2)
    y = u + _mlp(blk.channel_mlp, ln(u, blk.norm2))
    torch.testing.assert_close(blk(x), y)


def test_mixer_token_mixing_mixes_tokens_channel_mixing_does_not() -> None:
    """Token i's channel-MLP output depends on token j only through the token MLP."""
    blk = MixerBlock(4, 6).double()
    x = torch.randn(1, 6, 4, dtype=f64, requires_grad=True)
    blk(x)[0, 0].sum().backward()
    assert (x.grad[0, 1:].abs().sum(-1) > 0).all()  # other tokens reach token 0
    with torch.no_grad():  # without token mixing, tokens are independent
        for p in blk.token_mlp.parameters():
            p.zero_()
    x.grad = None
    blk(x)[0, 0].sum().backward()
    assert x.grad[0, 1:].abs().sum() == 0


def test_token_bias_is_cancelled_by_a_layernorm_so_mixer_tiny_has_none() -> None:
    # MLP_tok's output bias adds b_n to every channel of token n; LayerNorm over the
    # channels (what every later reader in a Mixer stack is) removes it exactly.
    torch.manual_seed(0)
    blk = MixerBlock(6, 5).double()
    x = torch.randn(3, 5, 6, dtype=f64)
    bias = blk.token_mlp.layers[-1].bias
    with torch.no_grad():
        bias.normal_()
        y = blk(x)
        bias.zero_()
        y0 = blk(x)
    assert not torch.allclose(y, y0)  # a lone block's output keeps it
    torch.testing.assert_close(F.layer_norm(y, (6,)), F.layer_norm(y0, (6,)))
    assert "token_mlp.layers.4.bias" not in MixerBlock(6, 5, token_bias=False).state_dict()
    keys = set(blockzoo.create("mixer_tiny").state_dict())
    assert not any(k.startswith("blocks.") and k.endswith("token_mlp.layers.4.bias") for k in keys)
    assert {"blocks.0.token_mlp.layers.0.bias", "blocks.0.channel_mlp.layers.4.bias"} <= keys
    # ResMLP's layer-scale and Affine do not cancel it: resmlp_tiny keeps it
    assert "blocks.0.token_mlp.layers.0.bias" in blockzoo.create("resmlp_tiny").state_dict()


def test_resmlp_is_a_mixer_with_affine_linear_tokens_and_layer_scale() -> None:
    torch.manual_seed(0)
    blk = ResMLPBlock(6, 5, channel_hidden=8, layer_scale=0.3).double()
    assert isinstance(blk, MixerBlock) and isinstance(blk.norm1, Affine)
    assert [type(m) for m in blk.token_mlp.layers] == [nn.Linear]  # A: N -> N, no hidden layer
    with torch.no_grad():
        for p in (blk.norm1.alpha, blk.norm1.beta, blk.norm2.alpha, blk.norm2.beta, blk.scale1, blk.scale2):
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 5, 6, dtype=f64)
    aff = lambda t, m: m.alpha * t + m.beta  # noqa: E731
    a = blk.token_mlp.layers[0]
    # Z = X + s1 * T(A T(Aff(X)) + a),  Y = Z + s2 * C GELU(B Aff(Z))
    z = x + blk.scale1 * _lin(a, aff(x, blk.norm1).transpose(1, 2)).transpose(1, 2)
    y = z + blk.scale2 * _mlp(blk.channel_mlp, aff(z, blk.norm2))
    torch.testing.assert_close(blk(x), y)
    # layer-scale starts at its init value; Affine starts as the identity
    fresh = ResMLPBlock(6, 5, layer_scale=0.1)
    assert torch.all(fresh.scale1 == 0.1) and torch.all(fresh.norm1.alpha == 1)
    assert torch.all(fresh.norm1.beta == 0)


@pytest.mark.parametrize("cls", [MixerBlock, ResMLPBlock, GMLPBlock], ids=lambda c: c.__name__)
def test_token_mixers_name_num_tokens(cls) -> None:
    blk = cls(8, 6)
    blk(torch.randn(2, 6, 8))
    with pytest.raises(ShapeError, match="num_tokens=6"):
        blk(torch.randn(2, 7, 8))
    with pytest.raises(ShapeError, match=type(blk).__name__):
        blk(torch.randn(2, 6, 9))


def test_gmlp_equation_and_gate() -> None:
    torch.manual_seed(0)
    blk = GMLPBlock(4, 5, hidden=6).double()
    sgu = blk.sgu
    with torch.no_grad():
        sgu.weight.normal_()
        sgu.bias.normal_()
    x = torch.randn(2, 5, 4, dtype=f64)
    z = F.gelu(_lin(blk.proj_in, F.layer_norm(x, (4,), blk.norm.weight, blk.norm.bias)))
    z1, z2 = z[..., :3], z[..., 3:]
    # f(Z2) = W LN(Z2) + b over tokens;  s = Z1 * f(Z2);  Y = X + s V
    f = sgu.weight @ F.layer_norm(z2, (3,), sgu.norm.weight, sgu.norm.bias) + sgu.bias[:, None]
    torch.testing.assert_close(blk(x), x + _lin(blk.proj_out, z1 * f))
    with record_attention(blk) as maps:
        blk(x)
    torch.testing.assert_close(maps["sgu.attn_map"], f)


def test_sgu_starts_as_identity_on_first_half() -> None:
    """Paper: W near zero and b = 1 make s(Z) ~ Z_1 at initialisation (a plain FFN)."""
    sgu = SpatialGatingUnit(8, 10)
    z = torch.randn(3, 10, 8)
    assert (sgu(z) - z[..., :4]).abs().max() < 1e-2
    with pytest.raises(ValueError, match="even"):
        SpatialGatingUnit(7, 10)


def test_spatial_shift_by_hand() -> None:
    x = torch.arange(2 * 8 * 3 * 4, dtype=f64).reshape(2, 8, 3, 4)
    y = SpatialShift(8)(x)
    # group 1 (ch 0-1) right: y[..., j] = x[..., j-1], column 0 kept
    torch.testing.assert_close(y[:, :2, :, 1:], x[:, :2, :, :-1])
    torch.testing.assert_close(y[:, :2, :, 0], x[:, :2, :, 0])
    torch.testing.assert_close(y[:, 2:4, :, :-1], x[:, 2:4, :, 1:])  # left
    torch.testing.assert_close(y[:, 2:4, :, -1], x[:, 2:4, :, -1])
    torch.testing.assert_close(y[:, 4:6, 1:], x[:, 4:6, :-1])  # down
    torch.testing.assert_close(y[:, 4:6, 0], x[:, 4:6, 0])
    torch.testing.assert_close(y[:, 6:8, :-1], x[:, 6:8, 1:])  # up
    torch.testing.assert_close(y[:, 6:8, -1], x[:, 6:8, -1])
    assert sum(p.numel() for p in SpatialShift(8).parameters()) == 0


def _receptive_field(block: nn.Module, c: int, h: int, w: int, i: int, j: int) -> torch.Tensor:
    x = torch.randn(1, c, h, w, dtype=f64, requires_grad=True)
    block.double()(x)[0, :, i, j].sum().backward()
    return x.grad[0].abs().sum(0) > 0  # (H, W): which pixels reach output (i, j)


def test_s2mlp_block_only_reads_its_plus_shaped_neighbourhood() -> None:
    torch.manual_seed(0)
    seen = _receptive_field(S2MLPBlock(8), 8, 6, 7, 2, 3)
    want = torch.zeros(6, 7, dtype=torch.bool)
    want[2, 3] = want[1, 3] = want[3, 3] = want[2, 2] = want[2, 4] = True
    assert torch.equal(seen, want)


def test_smlp_reads_only_its_row_and_column() -> None:
    torch.manual_seed(0)
    seen = _receptive_field(SparseMLP(4, 5, 6), 4, 5, 6, 1, 4)
    want = torch.zeros(5, 6, dtype=torch.bool)
    want[1, :] = True
    want[:, 4] = True
    assert torch.equal(seen, want)


def test_smlp_equation() -> None:
    torch.manual_seed(0)
    blk = SparseMLP(3, 4, 5).double()
    x = torch.randn(2, 3, 4, 5, dtype=f64)
    x_h = torch.einsum("ik,bckj->bcij", blk.proj_h.weight, x) + blk.proj_h.bias[:, None]
    x_w = torch.einsum("jk,bcik->bcij", blk.proj_w.weight, x) + blk.proj_w.bias
    y = F.conv2d(torch.cat([x, x_h, x_w], 1), blk.fuse.weight, blk.fuse.bias)
    torch.testing.assert_close(blk(x), y)
    with pytest.raises(ShapeError, match="height=4, width=5"):
        blk(torch.randn(1, 3, 5, 4, dtype=f64))


@pytest.mark.parametrize("h,w,s", [(4, 4, 2), (3, 5, 4), (6, 2, 1)])
def test_weighted_permute_mlp_equation(h, w, s) -> None:
    torch.manual_seed(0)
    c = 8
    blk = WeightedPermuteMLP(c, h, w, segment_size=s).double()
    x = torch.randn(2, c, h, w, dtype=f64)
    g = c // s
    xs = x.reshape(2, g, s, h, w)  # channel k = (segment, offset)
    wh = blk.fc_h.weight.reshape(h, s, h, s)  # out (i, t), in (k, u)
    ww = blk.fc_w.weight.reshape(w, s, w, s)
    # X_H[b, (g, t), i, j] = sum_{k, u} W_H[(i, t), (k, u)] x[b, (g, u), k, j] + b_H[(i, t)]
    xh = torch.einsum("itku,bgukj->bgtij", wh, xs) + blk.fc_h.bias.reshape(h, s).T[None, None, :, :, None]
    xw = torch.einsum("jtku,bguik->bgtij", ww, xs) + blk.fc_w.bias.reshape(w, s).T[None, None, :, None, :]
    xh, xw = xh.reshape(2, c, h, w), xw.reshape(2, c, h, w)
    xc = torch.einsum("oc,bcij->boij", blk.fc_c.weight, x) + blk.fc_c.bias[:, None, None]
    a = (xh + xw + xc).mean((2, 3))
    r = _mlp(blk.reweight, a).reshape(2, 3, c).softmax(1)
    mix = r[:, 0, :, None, None] * xh + r[:, 1, :, None, None] * xw + r[:, 2, :, None, None] * xc
    y = torch.einsum("oc,bcij->boij", blk.proj.weight, mix) + blk.proj.bias[:, None, None]
    with record_attention(blk) as maps:
        out = blk(x)
    torch.testing.assert_close(out, y)
    torch.testing.assert_close(maps["attn_map"].sum(1), torch.ones(2, c, dtype=f64))


def test_permute_mlp_arguments() -> None:
    assert WeightedPermuteMLP(16, 8, 6).segment_size == 2  # the paper's C / H
    with pytest.raises(ValueError, match="segment_size"):
        WeightedPermuteMLP(12, 8, 8)
    with pytest.raises(ShapeError, match="height=8, width=6"):
        WeightedPermuteMLP(16, 8, 6)(torch.randn(1, 16, 6, 8))


MODELS = ["mixer_tiny", "resmlp_tiny", "gmlp_tiny", "smlp_tiny", "permutator_tiny"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("image,patch,chans", [(8, 2, 1), (28, 4, 1), (28, 7, 1), (32, 4, 3)])
def test_models_at_digit_mnist_and_cifar_sizes(name, image, patch, chans) -> None:
    model = blockzoo.create_model(name, num_classes=10, in_chans=chans, image_size=image, patch_size=patch,
                                  dim=16, depth=1)
    assert model(torch.randn(2, chans, image, image)).shape == (2, 10)
    with pytest.raises(ShapeError, match="image_size"):
        model(torch.randn(2, chans, image + patch, image))
    with pytest.raises(ShapeError, match=name):
        model(torch.randn(2, chans + 1, image, image))


def test_model_arguments() -> None:
    with pytest.raises(ValueError, match="patch_size=3"):
        blockzoo.create_model("mixer_tiny", image_size=8, patch_size=3)
    m = blockzoo.create_model("mixer_tiny", num_classes=5, in_chans=2, image_size=(8, 12), patch_size=4,
                              dim=8)
    assert m(torch.randn(1, 2, 8, 12)).shape == (1, 5)
    assert m.blocks[0].num_tokens == 6 and blockzoo.spec("mixer_tiny").output == "logits"


def _module_path(block: nn.Module, *x: torch.Tensor) -> torch.Tensor:
    """``block(*x)`` with a global forward hook registered: every fast path takes its module path."""
    from blockzoo._fastcall import module_path

    with module_path():
        return block(*x)


def _jitter(block: nn.Module, scale: float = 0.3) -> None:
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize(("cls", "kw"), [(ResMLPBlock, {}), (MixerBlock, {}),
                                         (MixerBlock, {"token_bias": False}),
                                         (MixerBlock, {"act_layer": "relu", "token_hidden": 5})])
def test_mixer_folded_path_equals_the_module_path_and_refolds(cls, kw) -> None:
    """Without autograd the Mixer / ResMLP fold their norms, scales and biases into cached
    tensors (``_kept.param_fold``): the same output as every module run in the paper's order
    (float64, 1e-12), redone after an in-place change, a new parameter, a new submodule."""
    from blockzoo import _kept

    torch.manual_seed(0)
    block = cls(6, 7, channel_hidden=9, **kw).double().eval()
    _jitter(block)
    x = torch.randn(3, 7, 6, dtype=f64)

    def same() -> None:
        with torch.no_grad():
            torch.testing.assert_close(block(x), _module_path(block, x), rtol=1e-12, atol=1e-12)

    same()
    assert block in _kept._DERIVED  # the folded path ran
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.25)
            same()
    block.channel_mlp.layers[-1].weight = nn.Parameter(torch.randn(6, 9, dtype=f64))
    same()
    block.channel_mlp.layers[2] = nn.Tanh()
    same()
    block.norm1.load_state_dict({k: v * 2 for k, v in block.norm1.state_dict().items()})
    same()
    xt = torch.randn(3, 6, 7, dtype=f64).transpose(1, 2)  # a non-contiguous input
    with torch.no_grad():
        torch.testing.assert_close(block(xt), _module_path(block, xt), rtol=1e-12, atol=1e-12)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), _module_path(block, x), rtol=1e-12, atol=1e-12)
    # autograd takes the module path and its gradients are the module path's
    xg = x.clone().requires_grad_(True)
    block(xg).sum().backward()
    assert xg.grad is not None and all(p.grad is not None for p in block.parameters())


def test_gmlp_in_place_path_without_autograd_equals_the_equation_and_records_the_gate() -> None:
    """Without autograd the gate is multiplied and the residual added in place: the same output
    as the equation (float64, 1e-12), a recorded gate that is f(Z_2) itself (not the product),
    and a forward hook on proj_out that sees its own output unchanged."""
    torch.manual_seed(0)
    blk = GMLPBlock(4, 5, hidden=6).double()
    _jitter(blk)
    sgu = blk.sgu
    x = torch.randn(2, 5, 4, dtype=f64)
    z = F.gelu(_lin(blk.proj_in, F.layer_norm(x, (4,), blk.norm.weight, blk.norm.bias))).detach()
    z1, z2 = z[..., :3], z[..., 3:]
    f = (sgu.weight @ F.layer_norm(z2, (3,), sgu.norm.weight, sgu.norm.bias) + sgu.bias[:, None]).detach()
    want = (x + _lin(blk.proj_out, z1 * f)).detach()
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            torch.testing.assert_close(blk(x), want, rtol=1e-12, atol=1e-12)
            with record_attention(blk) as maps:
                torch.testing.assert_close(blk(x), want, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(maps["sgu.attn_map"], f, rtol=1e-12, atol=1e-12)
    seen = []
    handle = blk.proj_out.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        blk(x)
    handle.remove()
    torch.testing.assert_close(seen[0], want - x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bmm_min", [0, 1 << 30])
@pytest.mark.parametrize(("bias", "s"), [(True, 2), (False, 3)])
def test_permute_mlp_channels_first_path_equals_the_module_path(monkeypatch, bmm_min, bias, s) -> None:
    """Without autograd the Permute-MLP runs on (B, C, H, W) as it lies (FC_H reordered and
    cached, batched matmuls or one copy and one matmul): the same output and branch weights as
    the (H, W, C) path every hook forces (float64, 1e-12), refolded after an in-place change."""
    from blockzoo.mlp import permutator

    monkeypatch.setattr(permutator, "_BMM_MIN_COLUMNS", bmm_min)
    torch.manual_seed(0)
    blk = WeightedPermuteMLP(12, 5, 4, segment_size=s, bias=bias).double().eval()
    _jitter(blk)
    x = torch.randn(3, 12, 5, 4, dtype=f64)
    for xin in (x, x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)):  # NCHW and NHWC memory
        with torch.no_grad():
            with record_attention(blk) as got_maps:
                got = blk(xin)
            with record_attention(blk) as want_maps:
                want = _module_path(blk, xin)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_maps["attn_map"], want_maps["attn_map"], rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        blk.fc_h.weight.add_(0.5)
        torch.testing.assert_close(blk(x), _module_path(blk, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gather_max", [0, 1 << 30])
@pytest.mark.parametrize(("c", "size"), [(8, (5, 4)), (6, (3, 7)), (16, (1, 2))])
def test_s2mlp_gather_shift_and_in_place_residuals_equal_the_autograd_path(monkeypatch, gather_max, c,
                                                                           size) -> None:
    """The shift as one index_select from a cached index (small maps) equals the five copies,
    and the residuals added in place without autograd equal the autograd path (float64, 1e-12,
    channels beyond 4 (C // 4) unshifted)."""
    from blockzoo.mlp import s2mlp

    monkeypatch.setattr(s2mlp, "_GATHER_MAX", gather_max)
    torch.manual_seed(0)
    blk = S2MLPBlock(c, hidden=5).double().eval()
    _jitter(blk)
    x = torch.randn(2, c, *size, dtype=f64)
    want = blk(x).detach()  # autograd on: the out-of-place path
    with torch.no_grad():
        torch.testing.assert_close(blk(x), want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(_module_path(blk, x), want, rtol=1e-12, atol=1e-12)
    u = torch.randn(3, *size, c, dtype=f64)
    idx = s2mlp._shift_index(*size, c, c // 4, u.device)
    want = s2mlp._shift(u.permute(0, 3, 1, 2), c // 4).permute(0, 2, 3, 1)
    torch.testing.assert_close(u.reshape(3, -1)[:, idx].view_as(u), want, rtol=0, atol=0)


def test_mixer_with_a_per_channel_prelu_keeps_its_layout() -> None:
    """A per-channel PReLU reads dim 1 as channels, so the folded path (another layout) must not
    run it: the output equals the module path (float64, 1e-12)."""
    torch.manual_seed(0)
    blk = MixerBlock(6, 7, token_hidden=4, channel_hidden=9).double().eval()
    blk.token_mlp.layers[2] = nn.PReLU(6, dtype=f64)  # (B, C, D_S): C = 6 channels at dim 1
    blk.channel_mlp.layers[2] = nn.PReLU(7, dtype=f64)  # (B, N, D_C): N = 7 at dim 1
    _jitter(blk)
    x = torch.randn(3, 7, 6, dtype=f64)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), _module_path(blk, x), rtol=1e-12, atol=1e-12)
