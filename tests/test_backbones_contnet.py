"""ConTNet-M (issue 23, paper-only: no reference implementation installed). Parameter count
against the authors' released model, MACs against the paper's table, forwards at other
sizes (``attach``: test_backbones_paper_only.py), and the patch-wise transformer (STE) against an
independent float64 reference written from the equations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.attention.contnet import PatchwiseTransformer
from blockzoo.bench.flops import flop_report
from blockzoo.checks import ConfigError, ShapeError
from blockzoo.models.contnet import ConTBlock

# The authors' released ConT-M (yan-hao-tian/ConTNet, ConTNet.py: create_ConTNet_M with the
# training script's defaults: absolute position embeddings, qkv_bias=True, post-norm) has
# 19,536,936 parameters, counted layer by layer from that code: stem 9,408; per stage i the
# STEs (P * D_i position parameters, 4 D_i^2 + 4 D_i attention, 2 D_i M_i + M_i + D_i MLP,
# 4 D_i LayerNorm), the BNs, the 3 x 3 / 1 x 1 convs; head 1,025,000. The paper's table prints
# 19.2M for ConT-M; the same count for the released ConT-S (one block per stage) gives
# 10,103,400, which is its table's 10.1M.
CONTNET_M_PARAMS = 19_536_936
CONTNET_S_PARAMS = 10_103_400


def test_parameter_count_equals_the_released_model() -> None:
    model = blockzoo.create_model("contnet_m")
    assert sum(p.numel() for p in model.parameters()) == CONTNET_M_PARAMS
    small = blockzoo.create_model("contnet_m", depths=(1, 1, 1, 1))  # the released ConT-S
    n = sum(p.numel() for p in small.parameters())
    assert n == CONTNET_S_PARAMS and round(n / 1e6, 1) == 10.1


def _attention_macs(model: torch.nn.Module, size: tuple[int, int]) -> int:
    """MACs of the two attention products (Q K^T and A V) of every STE at ``size``."""
    total, hooks = 0, []

    def count(m: PatchwiseTransformer, args: tuple[torch.Tensor], _out: torch.Tensor) -> None:
        nonlocal total
        _, c, h, w = args[0].shape
        p = m.patch_size
        tokens = math.ceil(h / p) * p * math.ceil(w / p) * p
        total += 2 * tokens * p * p * c

    for m in model.modules():
        if isinstance(m, PatchwiseTransformer):
            hooks.append(m.register_forward_hook(count))
    with torch.no_grad():
        model(torch.zeros(1, 3, *size, device="meta"))
    for h in hooks:
        h.remove()
    return total


def test_macs_at_224_and_the_papers_count_without_attention_products() -> None:
    s = blockzoo.spec("contnet_m")
    with torch.device("meta"):
        model = blockzoo.create_model("contnet_m").eval()
        report = flop_report(model, s.make_input(batch=1, size=(224, 224), device="meta"))
    macs = report.flops / 2
    assert macs == pytest.approx(3.4397e9, rel=1e-3)  # measured once with our counter
    assert not report.uncounted
    # The paper's 3.1G is what a layer-hook counter reports: everything but the attention
    # matrix products (0.354G here).
    with torch.device("meta"):
        attn = _attention_macs(blockzoo.create_model("contnet_m").eval(), (224, 224))
    assert attn == pytest.approx(0.3541e9, rel=1e-3)
    assert round((macs - attn) / 1e9, 1) == 3.1


def test_full_model_maps_and_no_padding_at_224() -> None:
    with torch.device("meta"):
        model = blockzoo.create_model("contnet_m").eval()
    seen: list[tuple[int, int, int, int]] = []
    hooks = [m.register_forward_hook(lambda m, a, o: seen.append((m.patch_size, *a[0].shape[1:])))
             for m in model.modules() if isinstance(m, PatchwiseTransformer)]
    widths = []
    with torch.device("meta"), torch.no_grad():
        z = model.stem(torch.zeros(1, 3, 224, 224))
        for stage in model.stages:
            z = stage(z)
            widths.append(tuple(z.shape[1:]))
    for h in hooks:
        h.remove()
    assert widths == [(128, 28, 28), (256, 14, 14), (512, 7, 7), (1024, 7, 7)]
    assert len(seen) == 16
    # at 224 every map divides into its patches: the released model's exact computation
    assert all(h % p == 0 and w % p == 0 for p, _, h, w in seen)
    assert [p for p, *_ in seen] == [7, 14] * 6 + [7, 7] * 2


@pytest.mark.parametrize("size", [(72, 40), (33, 47)])
def test_full_model_forward_at_a_non_square_size(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = blockzoo.create_model("contnet_m").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


# ------------------------------------------------------------------------ the STE


def _ste_reference(m: PatchwiseTransformer, x: torch.Tensor) -> torch.Tensor:
    """The STE patch by patch in image coordinates: the real pixels of each P x P patch (a
    partial one at the bottom/right border keeps only its real pixels), each given
    concat(E_row[i], E_col[j]) by its position (i, j) in the patch, one transformer layer."""
    b, c, h, w = x.shape
    p, enc = m.patch_size, m.encoder
    heads, d = enc.attn.num_heads, enc.attn.head_dim
    out = torch.empty_like(x)
    for y0 in range(0, h, p):
        for x0 in range(0, w, p):
            ph, pw = min(p, h - y0), min(p, w - x0)
            t = x[:, :, y0:y0 + ph, x0:x0 + pw].permute(0, 2, 3, 1)  # (B, ph, pw, C)
            pos = torch.cat([m.pos_row[:ph, None, :].expand(ph, pw, c // 2),
                             m.pos_col[None, :pw, :].expand(ph, pw, c // 2)], dim=-1)
            t = (t + pos).reshape(b, ph * pw, c)

            def attn(z: torch.Tensor) -> torch.Tensor:
                q, k, v = F.linear(z, enc.attn.qkv.weight, enc.attn.qkv.bias).split(c, dim=-1)
                q, k, v = (u.reshape(b, -1, heads, d).transpose(1, 2) for u in (q, k, v))
                a = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1)
                return enc.attn.out_proj((a @ v).transpose(1, 2).reshape(b, -1, c))

            def mlp(z: torch.Tensor) -> torch.Tensor:
                return enc.fc2(F.gelu(enc.fc1(z)))

            if enc.norm_first:
                t = t + attn(enc.norm1(t))
                t = t + mlp(enc.norm2(t))
            else:
                t = enc.norm1(t + attn(t))
                t = enc.norm2(t + mlp(t))
            out[:, :, y0:y0 + ph, x0:x0 + pw] = t.reshape(b, ph, pw, c).permute(0, 3, 1, 2)
    return out


@pytest.mark.parametrize(("size", "patch", "norm_first"), [
    ((8, 8), 4, False),  # whole patches
    ((7, 10), 4, False),  # padded to 8 x 12, padded keys masked
    ((3, 5), 4, False),  # the map smaller than one patch
    ((6, 9), 3, True),  # the pre-norm variant
    ((14, 14), 7, False),
])
def test_patchwise_transformer_equals_the_per_patch_reference(size, patch, norm_first) -> None:
    torch.manual_seed(0)
    m = PatchwiseTransformer(8, num_heads=2, patch_size=patch, norm_first=norm_first).double().eval()
    with torch.no_grad():
        for prm in m.parameters():  # random position embeddings and norms, not the zero init
            prm.normal_()
        x = torch.randn(2, 8, *size, dtype=torch.float64)
        torch.testing.assert_close(m(x), _ste_reference(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("norm_first", [False, True])
def test_patchwise_fused_inference_equals_the_module_path(norm_first: bool) -> None:
    # whole patches under no_grad run PyTorch's fused encoder layer; it equals the module path
    # (forced by a hook on the encoder, which fires) to 1e-12 in float64
    torch.manual_seed(0)
    m = PatchwiseTransformer(8, num_heads=2, patch_size=4, norm_first=norm_first).double().eval()
    enc = m.encoder
    with torch.no_grad():
        for prm in m.parameters():
            prm.normal_()
        x = torch.randn(2, 8, 8, 12, dtype=torch.float64)
        z = torch.randn(6, 16, 8, dtype=torch.float64)
        assert enc._fused(z) is not None  # the fused kernel does run here
        torch.testing.assert_close(enc._fused(z), enc(z), rtol=1e-12, atol=1e-12)
        fused = m(x)
        seen = []
        handle = enc.register_forward_hook(lambda *_a: seen.append(1))
        try:
            hooked = m(x)
        finally:
            handle.remove()
    assert seen == [1]
    torch.testing.assert_close(fused, hooked, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused, _ste_reference(m, x), rtol=1e-10, atol=1e-10)
    # where the kernel would not compute the same, no fused result: autograd, training, odd
    # heads, a hook on a submodule
    assert enc._fused(z) is None  # autograd on
    with torch.no_grad():
        handle = enc.fc1.register_forward_hook(lambda *_a: None)
        try:
            assert enc._fused(z) is None
        finally:
            handle.remove()
        assert PatchwiseTransformer(8, num_heads=1, patch_size=4).eval().encoder._fused(z.float()) is None
        m.train()
        assert enc._fused(z) is None


def test_patchwise_windows_written_with_the_embedding_equal_the_windowing_path() -> None:
    # without autograd and padding, X + E is written straight into patch order with a cached
    # embedding; it equals the windowing path (taken with autograd on) to 1e-12 in float64,
    # and follows in-place changes of the embedding
    from blockzoo import _kept

    torch.manual_seed(0)
    m = PatchwiseTransformer(8, num_heads=2, patch_size=4).double().eval()
    with torch.no_grad():
        for prm in m.parameters():
            prm.normal_()
    x = torch.randn(2, 8, 8, 12, dtype=torch.float64)
    for _ in range(2):
        with torch.no_grad():
            got = m(x)
        assert "position_embedding" in _kept._DERIVED[m]  # the new path ran
        want = m(x).detach()  # autograd on: the windowing path and the module encoder
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            m.pos_row.mul_(-3.0)
            m.pos_col.add_(1.0)


def test_position_embedding_is_rows_on_the_first_half_columns_on_the_second() -> None:
    m = PatchwiseTransformer(4, patch_size=3)
    with torch.no_grad():
        m.pos_row.copy_(torch.arange(6.0).view(3, 2))
        m.pos_col.copy_(-torch.arange(6.0).view(3, 2))
    e = m.position_embedding().view(3, 3, 4)  # (i, j, C)
    assert torch.equal(e[1, 2, :2], torch.tensor([2.0, 3.0]))  # E_row[1]
    assert torch.equal(e[1, 2, 2:], torch.tensor([-4.0, -5.0]))  # E_col[2]
    assert torch.equal(e[:, 0, :2], e[:, 2, :2]) and torch.equal(e[0, :, 2:], e[2, :, 2:])


def test_attention_stays_inside_each_patch() -> None:
    torch.manual_seed(0)
    m = PatchwiseTransformer(8, num_heads=2, patch_size=4).double().eval()
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    y = x.clone()
    y[:, :, 4:, 4:] += 1.0  # change only the bottom-right patch
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.equal(a[:, :, :4], b[:, :, :4]) and torch.equal(a[:, :, 4:, :4], b[:, :, 4:, :4])
    assert not torch.allclose(a[:, :, 4:, 4:], b[:, :, 4:, 4:])


# ------------------------------------------------------------------------ the ConT block


def test_cont_block_convs_and_shortcut_follow_the_released_rule() -> None:
    plain = ConTBlock(16, num_heads=2, patch_sizes=(2, 4))
    down = ConTBlock(16, 32, num_heads=2, patch_sizes=(2, 4), stride=2)
    widen = ConTBlock(16, 32, num_heads=2, patch_sizes=(2, 4))
    assert plain.shortcut is None and plain.conv.kernel_size == 3
    assert down.conv.kernel_size == 3 and down.conv.stride == 2 and down.shortcut.kernel_size == 1
    assert widen.conv.kernel_size == 1 and widen.shortcut.kernel_size == 1
    assert all(m.conv.conv.bias is None for m in (plain, down, widen))
    x = torch.randn(2, 16, 9, 7)
    assert plain(x).shape == (2, 16, 9, 7)
    assert down(x).shape == (2, 32, 5, 4)
    assert widen(x).shape == (2, 32, 9, 7)


def test_cont_block_is_pre_activation_residual() -> None:
    torch.manual_seed(0)
    blk = ConTBlock(8, num_heads=2, patch_sizes=(2, 4)).double().eval()
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        a = F.relu(blk.norm(x))
        want = F.conv2d(blk.ste2(blk.ste1(a)), blk.conv.conv.weight, padding=1) + x
        torch.testing.assert_close(blk(x), want, rtol=1e-12, atol=1e-12)


def test_bad_configs_and_inputs_raise_clear_errors() -> None:
    with pytest.raises(ConfigError, match="dim=7 must be even"):
        PatchwiseTransformer(7)
    with pytest.raises(ConfigError, match="stride=3 must be 1 or 2"):
        ConTBlock(8, stride=3)
    with pytest.raises(ConfigError, match="equally long"):
        blockzoo.create_model("contnet_m", depths=(1, 1, 1))
    with pytest.raises(ShapeError, match="C=8"):
        PatchwiseTransformer(8, patch_size=2)(torch.randn(1, 6, 4, 4))
    model = blockzoo.create_model("contnet_m", **blockzoo.spec("contnet_m").example.config)
    with pytest.raises(ShapeError, match="ConTNet"):
        model(torch.randn(1, 1, 32, 32))
