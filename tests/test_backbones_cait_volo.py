"""CaiT-XXS-24 and VOLO-D1 (issue 23): parameter counts and outputs equal to PyTorch Image
Models' (fixtures), any input size, ``attach`` after each stage, and their distinctive blocks
(talking-heads attention, class attention) against references written from the papers'
equations (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.attention.class_attention import ClassAttention, ClassAttentionBlock
from blockzoo.attention.talking_heads import TalkingHeadsAttention

# the models of this file (the generic checks are tests/test_backbones.py's)
MODELS = ("cait_xxs24", "volo_d1")



@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_non_square_size_is_zero_padded_to_the_models_multiple(name: str) -> None:
    torch.manual_seed(0)
    model = blockzoo.create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 100, 60)
    padded = F.pad(x, (0, 4, 0, 12))  # 112 x 64: multiples of 16 (both models' patch grid)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 7) and torch.isfinite(out).all()
        torch.testing.assert_close(out, model(padded), rtol=0, atol=0)


def test_models_reject_the_wrong_channels() -> None:
    for name in MODELS:
        model = blockzoo.create_model(name, num_classes=3)
        with pytest.raises(blockzoo.ShapeError, match=r"expected .*C=3"):
            model(torch.randn(1, 4, 32, 32))


def test_volo_stages_after_the_first_share_one_width() -> None:
    with pytest.raises(ValueError, match=r"share one width.*dims=\(192, 384, 256, 384\)"):
        blockzoo.create_model("volo_d1", dims=(192, 384, 256, 384))


# ------------------------------------------------------------------------ talking heads


def _talking_heads_reference(attn: TalkingHeadsAttention, x: torch.Tensor) -> torch.Tensor:
    """Shazeer et al., arXiv 2003.02436, Sec. 4, head by head with explicit sums over heads."""
    b, n, _ = x.shape
    h, d = attn.num_heads, attn.head_dim
    wq, wk, wv = attn.qkv.weight.chunk(3)
    bq, bk, bv = attn.qkv.bias.chunk(3)
    q = (x @ wq.T + bq).view(b, n, h, d)
    k = (x @ wk.T + bk).view(b, n, h, d)
    v = (x @ wv.T + bv).view(b, n, h, d)
    logits = [q[:, :, i] @ k[:, :, i].transpose(1, 2) / d**0.5 for i in range(h)]  # h x (B, N, N)
    pl, pw, bw = attn.proj_l.weight, attn.proj_w.weight, attn.proj_w.bias
    mixed = [sum(pl[j, i] * logits[i] for i in range(h)) for j in range(h)]
    weights = [m.softmax(-1) for m in mixed]
    talked = [sum(pw[j, i] * weights[i] for i in range(h)) + bw[j] for j in range(h)]
    out = torch.cat([talked[j] @ v[:, :, j] for j in range(h)], -1)  # (B, N, h d)
    return attn.out_proj(out)


def test_talking_heads_attention_equals_its_equations() -> None:
    torch.manual_seed(0)
    attn = TalkingHeadsAttention(12, num_heads=3).double().eval()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _talking_heads_reference(attn, x), rtol=1e-10, atol=1e-10)


def test_talking_heads_with_identity_mixing_is_multi_head_attention() -> None:
    torch.manual_seed(0)
    attn = TalkingHeadsAttention(16, num_heads=4).double().eval()
    with torch.no_grad():
        for mix in (attn.proj_l, attn.proj_w):
            mix.weight.copy_(torch.eye(4))
        attn.proj_w.bias.zero_()
        x = torch.randn(2, 9, 16, dtype=torch.float64)
        q, k, v = attn.qkv(x).view(2, 9, 3, 4, 4).permute(2, 0, 3, 1, 4)
        mha = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 9, 16)
        torch.testing.assert_close(attn(x), attn.out_proj(mha), rtol=1e-10, atol=1e-10)


def test_the_biases_before_the_softmax_change_nothing() -> None:
    # CaiT keeps them (its checkpoints have them); the blocks leave them out by default
    assert TalkingHeadsAttention(8, num_heads=2).proj_l.bias is None
    assert ClassAttention(8, num_heads=2).k_proj.bias is None
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    for attn, bias in ((TalkingHeadsAttention(8, num_heads=2, logit_bias=True), "proj_l"),
                       (ClassAttention(8, num_heads=2, key_bias=True), "k_proj")):
        attn = attn.double().eval()
        with torch.no_grad():
            before = attn(x)
            getattr(attn, bias).bias.normal_(std=3.0)
            torch.testing.assert_close(attn(x), before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("logit_bias", [False, True])
def test_talking_heads_eval_path_equals_the_autograd_path(logit_bias: bool) -> None:
    # without autograd: the scale folded into a cached P_l, each head mix one batched matmul;
    # equal to the module path (autograd on) to 1e-12 in float64, also after the mixes change
    from blockzoo import _kept

    torch.manual_seed(0)
    attn = TalkingHeadsAttention(12, num_heads=3, logit_bias=logit_bias).double().eval()
    with torch.no_grad():
        for prm in attn.parameters():
            prm.normal_()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    for _ in range(2):
        _kept._DERIVED.pop(attn, None)
        with torch.no_grad():
            got = attn(x)
        assert "talk" in _kept._DERIVED[attn]  # the eval path ran
        torch.testing.assert_close(got, attn(x).detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got, _talking_heads_reference(attn, x).detach(), rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            attn.proj_l.weight.mul_(-1.5)
            attn.proj_w.bias.add_(0.5)
            if logit_bias:
                attn.proj_l.bias.add_(1.0)
    seen = []  # a hook on the map: the module path, and the hook fires
    handle = attn.attn_map.register_forward_hook(lambda *_a: seen.append(1))
    try:
        with torch.no_grad():
            attn(x)
    finally:
        handle.remove()
    assert seen == [1]


def test_talking_heads_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="num_heads=5 must divide dim=16"):
        TalkingHeadsAttention(16, num_heads=5)
    with pytest.raises(blockzoo.ShapeError, match="TalkingHeadsAttention"):
        TalkingHeadsAttention(16, num_heads=4)(torch.randn(2, 9, 8))


# ------------------------------------------------------------------------ class attention


def _class_attention_reference(ca: ClassAttention, x: torch.Tensor) -> torch.Tensor:
    """CaiT, arXiv 2103.17239, Eq. (4)-(5): the class token's query against every token."""
    b, n, _ = x.shape
    h, d = ca.num_heads, ca.head_dim
    q = ca.q_proj(x[:, 0]).view(b, h, 1, d)
    k = ca.k_proj(x).view(b, n, h, d).transpose(1, 2)
    v = ca.v_proj(x).view(b, n, h, d).transpose(1, 2)
    a = (q @ k.transpose(-1, -2) / d**0.5).softmax(-1)  # (B, h, 1, N)
    return ca.out_proj((a @ v).transpose(1, 2).reshape(b, 1, h * d))


def test_class_attention_equals_its_equations_and_ignores_the_patch_order() -> None:
    torch.manual_seed(0)
    ca = ClassAttention(12, num_heads=3).double().eval()
    x = torch.randn(2, 6, 12, dtype=torch.float64)
    with torch.no_grad():
        out = ca(x)
        assert out.shape == (2, 1, 12)
        torch.testing.assert_close(out, _class_attention_reference(ca, x), rtol=1e-10, atol=1e-10)
        # the keys are a set: shuffling the patch tokens leaves the class token's update alone
        shuffled = torch.cat([x[:, :1], x[:, 1:][:, torch.tensor([3, 0, 4, 2, 1])]], 1)
        torch.testing.assert_close(ca(shuffled), out, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layer_scale", [None, 0.3])
def test_class_attention_block_updates_only_the_class_token(layer_scale) -> None:
    torch.manual_seed(0)
    block = ClassAttentionBlock(8, num_heads=2, mlp_ratio=2.0, layer_scale=layer_scale).double().eval()
    if layer_scale is not None:
        torch.nn.init.normal_(block.scale1)
        torch.nn.init.normal_(block.scale2)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    s1 = 1.0 if layer_scale is None else block.scale1
    s2 = 1.0 if layer_scale is None else block.scale2
    with torch.no_grad():
        out = block(x)
        ln = lambda z, norm: F.layer_norm(z, (8,), norm.weight, norm.bias, eps=1e-6)  # noqa: E731
        cls = x[:, :1] + s1 * _class_attention_reference(block.attn, ln(x, block.norm1))
        mlp = block.mlp.layers
        cls = cls + s2 * mlp[4](F.gelu(mlp[0](ln(cls, block.norm2))))
        torch.testing.assert_close(out[:, :1], cls, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out[:, 1:], x[:, 1:], rtol=0, atol=0)
    assert (block.scale1 is None) == (layer_scale is None)


def test_cait_and_volo_share_one_class_attention() -> None:
    for name in MODELS:
        model = blockzoo.create_model(name, num_classes=3)
        blocks = [m for m in model.modules() if isinstance(m, ClassAttentionBlock)]
        assert len(blocks) == 2
    cait = blockzoo.create_model("cait_xxs24", num_classes=3, depth=1)
    # CaiT's class-attention layers carry LayerScale; VOLO's (mlp_ratio 3, eps 1e-5) do not
    assert cait.cls_blocks[0].scale1 is not None and cait.cls_blocks[0].norm1.eps == 1e-6
    volo = blockzoo.create_model("volo_d1", num_classes=3)
    assert volo.post_blocks[0].scale1 is None and volo.post_blocks[0].norm1.eps == 1e-5
    assert volo.post_blocks[0].mlp.layers[0].out_features == 3 * 384


def test_volo_adds_half_the_best_token_prediction() -> None:
    torch.manual_seed(0)
    model = blockzoo.create_model("volo_d1", num_classes=4, layers=(1, 1), dims=(32, 64), num_heads=(1, 2),
                                  stem_dim=8).double().eval()
    x = torch.randn(2, 3, 48, 32, dtype=torch.float64)
    with torch.no_grad():
        z = model.forward_features(x)  # (B, 1 + 3 x 2, D)
        assert z.shape == (2, 7, 64)
        want = model.head(z[:, 0]) + 0.5 * model.aux_head(z[:, 1:]).max(1).values
        torch.testing.assert_close(model(x), want, rtol=1e-12, atol=1e-12)


def test_cait_grad_exemption_is_exactly_the_biases_before_a_softmax() -> None:
    from blockzoo.testing import zero_grad_parameters

    # register(exempt={"grad": ...}) claims these, and only these, have a zero training gradient
    # (at the example config: one talking-heads layer and one class-attention layer)
    want = ["blocks.0.attn.proj_l.bias", "cls_blocks.0.attn.k_proj.bias"]
    assert zero_grad_parameters(blockzoo.spec("cait_xxs24")) == want
