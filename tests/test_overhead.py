"""The per-call overhead every block pays (issue 19, goal 1), tested by what runs, not by time.

A valid input must cost ``check_shape`` only integer comparisons (no pattern parsing after
the first call, no message built), and an ``AttentionMap`` nobody records must not enter
``nn.Module``'s call machinery. The times are in ``benchmarks/overhead.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import blockzoo
from blockzoo import checks
from blockzoo.act import LayerNorm2d
from blockzoo.attention import SqueezeExcite
from blockzoo.attention.maps import AttentionMap, record_attention
from blockzoo.checks import ShapeError, check_shape
from blockzoo.mlp.mixer import Affine


@pytest.fixture
def no_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if ``check_shape`` formats a message or takes its failure path."""
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("check_shape built an error message for a valid input")

    monkeypatch.setattr(checks, "_format", boom)
    monkeypatch.setattr(checks, "_fail", boom)


@pytest.mark.parametrize(("shape", "pattern", "fixed", "want"), [
    ((8, 64, 7, 9), "B C H W", dict(C=64), dict(B=8, C=64, H=7, W=9)),
    ((2, 3, 5, 4), "* F", dict(F=4), dict(F=4)),
    ((5, 4), "* F", dict(F=4), dict(F=4)),
    ((2, 6, 3), "B N C", dict(B=2, N=None, C=3), dict(B=2, N=6, C=3)),
    ((2, 6, 3), "B N C", dict(Z=None), dict(B=2, N=6, C=3)),  # a free letter may be absent
])
def test_valid_input_builds_no_message(no_message: None, shape: tuple[int, ...], pattern: str,
                                       fixed: dict[str, int | None], want: dict[str, int]) -> None:
    assert check_shape(torch.zeros(shape), pattern, name="X", **fixed) == want


def test_pattern_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    parse = checks._parse

    def counting(pattern: str) -> object:
        calls.append(pattern)
        return parse(pattern)

    monkeypatch.setattr(checks, "_PATTERNS", {})
    monkeypatch.setattr(checks, "_parse", counting)
    x = torch.zeros(2, 3, 4, 5)
    for _ in range(5):
        check_shape(x, "B C H W", name="X", C=3)
        check_shape(x, "* W", name="X", W=5)
    assert calls == ["B C H W", "* W"]


@pytest.mark.parametrize(("x", "pattern", "fixed", "message"), [
    (torch.zeros(8, 32, 7, 7), "B C H W", dict(C=64),
     "CBAM: expected input (B, C=64, H, W), got (8, 32, 7, 7)"),
    (torch.zeros(3, 4), "B C H W", {}, "CBAM: expected input (B, C, H, W), got (3, 4)"),
    (torch.zeros(3), "* H W", dict(W=3), "CBAM: expected input (*, H, W=3), got (3,)"),
    (torch.zeros(2, 5, 4), "* H W", dict(W=3), "CBAM: expected input (*, H, W=3), got (2, 5, 4)"),
    ([1, 2], "B F", dict(F=2), "CBAM: expected input tensor (B, F=2), got list"),
])
def test_failures_keep_their_full_message(x: object, pattern: str, fixed: dict[str, int],
                                          message: str) -> None:
    with pytest.raises(ShapeError) as info:
        check_shape(x, pattern, name="CBAM", **fixed)
    assert str(info.value) == message


def test_a_fixed_letter_not_in_the_pattern_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match=r"\['Q'\] not in pattern 'B C'"):
        check_shape(torch.zeros(2, 3), "B C", name="X", Q=3)


@pytest.fixture
def count_map_forwards(monkeypatch: pytest.MonkeyPatch) -> list[AttentionMap]:
    """Every AttentionMap.forward call, by module (the hooks only run around a forward)."""
    seen: list[AttentionMap] = []

    def forward(self: AttentionMap, attn: torch.Tensor) -> torch.Tensor:
        seen.append(self)
        return attn

    monkeypatch.setattr(AttentionMap, "forward", forward)
    return seen


def test_attention_map_enters_nn_module_only_when_someone_listens(count_map_forwards: list) -> None:
    se = SqueezeExcite(16, reduction=4).eval()
    x = torch.randn(2, 16, 5, 5)
    y = se(x)
    assert count_map_forwards == []
    with record_attention(se) as maps:
        assert torch.equal(se(x), y)
    assert count_map_forwards == [se.attn_map] and maps["attn_map"].shape == (2, 16, 1, 1)
    seen = []
    handle = se.attn_map.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    se(x)
    handle.remove()
    se(x)
    assert seen == [(2, 16, 1, 1)] and len(count_map_forwards) == 2


BLOCKS_WITH_MAPS = [n for n in blockzoo.list_blocks()
                    if blockzoo.spec(n).family != "model"
                    and any(isinstance(m, AttentionMap) for m in blockzoo.spec(n).build_example().modules())]


@pytest.mark.parametrize("name", BLOCKS_WITH_MAPS)
def test_no_block_calls_into_its_map_module_when_not_recording(name: str, count_map_forwards: list) -> None:
    s = blockzoo.spec(name)
    block = s.build_example().eval()
    with torch.no_grad():
        block(*s.make_input(batch=1))
    assert count_map_forwards == []
    with torch.no_grad(), record_attention(block) as maps:
        block(*s.make_input(batch=1))
    assert count_map_forwards and maps


def test_identity_module_still_behaves_as_a_module() -> None:
    holder = nn.Sequential(AttentionMap("spatial"))
    assert "AttentionMap(kind='spatial')" in repr(holder)
    x = torch.randn(3)
    assert holder(x) is x


@pytest.mark.parametrize("name", ["se", "grn"])
def test_cheap_shape_guard_still_raises_the_full_error(name: str) -> None:
    block = blockzoo.create(name, channels=8)
    with pytest.raises(ShapeError, match=r"expected .*C=8"):
        block(torch.zeros(2, 5, 4, 4))
    with pytest.raises(ShapeError):
        block(torch.zeros(2, 8, 4))


def test_se_fast_path_equals_the_module_path_and_hooks_still_fire() -> None:
    """SE's eval forward skips its submodules' calls unless a hook listens (float64, 1e-12)."""
    torch.manual_seed(0)
    se = SqueezeExcite(8, reduction=2).double().eval()
    x = torch.randn(3, 8, 5, 4, dtype=torch.float64)
    fast = se(x)
    seen: list[str] = []
    handles = [getattr(se, n).register_forward_hook(lambda *_a, n=n: seen.append(n))
               for n in ("fc1", "act", "fc2", "gate")]
    try:
        hooked = se(x)
    finally:
        for h in handles:
            h.remove()
    assert seen == ["fc1", "act", "fc2", "gate"]
    torch.testing.assert_close(fast, hooked, rtol=1e-12, atol=1e-12)
    z = x.mean((2, 3))
    w1, w2 = se.fc1.weight.flatten(1), se.fc2.weight.flatten(1)
    want = x * torch.sigmoid(torch.relu(z @ w1.T + se.fc1.bias) @ w2.T + se.fc2.bias)[:, :, None, None]
    torch.testing.assert_close(fast, want, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # ReLU and sigmoid in place on the fresh products
        torch.testing.assert_close(se(x), want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- blockzoo._fastcall


def _double_inputs(s: object, batch: int = 3) -> tuple[torch.Tensor, ...]:
    return tuple(t.double() if t.is_floating_point() else t for t in s.make_input(batch=batch))


def _randomise_norms(block: nn.Module) -> None:
    for m in block.modules():  # non-trivial eval statistics, so a skipped BN would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


_COMPUTE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.GELU,
            nn.Sigmoid, Affine, LayerNorm2d)


@pytest.mark.parametrize("name", ["conv_bn_act", "depthwise_separable", "condconv", "eca",
                                  "multi_head_attention", "transformer_encoder_block", "mixer", "resmlp",
                                  "cbam", "external_attention", "gmlp", "convmixer_block",
                                  "inverted_residual", "mbconv", "involution", "sk", "bam",
                                  "triplet_attention", "resnet_basic", "resnet_bottleneck", "resnext_block",
                                  "simplified_self_attention", "mobilevit_block", "patchconvnet_block",
                                  "dynamic_conv", "mlp", "separable_self_attention", "aft_simple", "aft_conv",
                                  "patch_embed", "danet", "double_attention", "polarized_parallel",
                                  "polarized_sequential", "s2mlp", "linformer_attention", "ufo_attention",
                                  "performer_attention", "class_attention", "class_attention_block",
                                  "class_cross_attention", "gnconv", "hornet_block",
                                  "convnextv2_block", "conv_position_encoding", "epsa",
                                  "criss_cross_attention"])
def test_fast_path_equals_the_module_path_and_hooks_still_fire(name: str) -> None:
    """Blocks whose stock submodules run as functional ops when unhooked: the same output as
    with every module called (a global hook forces that), to 1e-12 in float64, and a hook on
    any computing submodule still fires."""
    from blockzoo._fastcall import module_path

    s = blockzoo.spec(name)
    torch.manual_seed(0)
    block = s.build_example().double().eval()
    _randomise_norms(block)
    x = _double_inputs(s)
    with torch.no_grad():
        fast = block(*x)
        with module_path():
            modules = block(*x)
        seen: set[nn.Module] = set()
        want = {m for m in block.modules() if type(m) in _COMPUTE}
        handles = [m.register_forward_hook(lambda m, *_a: seen.add(m)) for m in want]
        try:
            hooked = block(*x)
        finally:
            for h in handles:
                h.remove()
    assert want and seen == want
    torch.testing.assert_close(fast, modules, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast, hooked, rtol=1e-12, atol=1e-12)


def test_simam_in_place_path_equals_the_autograd_path_and_keeps_the_input() -> None:
    torch.manual_seed(0)
    block = blockzoo.create("simam", channels=6)
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    x0 = x.clone()
    with torch.no_grad():
        fast = block(x)
    assert torch.equal(x, x0)
    xg = x.clone().requires_grad_(True)
    slow = block(xg)
    slow.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-12, atol=1e-12)
    with record_attention(block) as maps, torch.no_grad():
        y = block(x)
    torch.testing.assert_close(y, x * maps["attn_map"], rtol=1e-12, atol=1e-12)


def _stock_modules() -> list[tuple[nn.Module, tuple[int, ...]]]:
    return [
        (nn.Linear(5, 3), (4, 5)), (nn.Linear(5, 3, bias=False), (2, 4, 5)),
        (nn.Conv1d(1, 1, 3, padding=1, bias=False), (2, 1, 7)),
        (nn.Conv2d(4, 6, 3, padding=1, groups=2), (2, 4, 5, 5)),
        (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), (2, 4, 5, 5)),
        (nn.LayerNorm(5, eps=1e-3), (2, 3, 5)), (nn.BatchNorm2d(4).eval(), (2, 4, 3, 3)),
        (nn.ReLU(), (3, 4)), (nn.ReLU(inplace=True), (3, 4)), (nn.GELU(approximate="tanh"), (3, 4)),
        (nn.SiLU(), (3, 4)), (nn.ReLU6(), (3, 4)), (nn.Hardswish(), (3, 4)), (nn.Sigmoid(), (3, 4)),
        (nn.Tanh(), (3, 4)), (nn.Identity(), (3, 4)), (nn.Dropout(0.5).eval(), (3, 4)),
        (_random_affine(LayerNorm2d(4, eps=1e-3)), (2, 4, 3, 5)),
    ]


def _random_affine(m: nn.Module) -> nn.Module:
    """Random weight and bias (the default ones and zeros would hide a skipped affine)."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
    return m


@pytest.mark.parametrize("index", range(len(_stock_modules())))
def test_fastcall_equals_the_module_call(index: int) -> None:
    from blockzoo._fastcall import call

    torch.manual_seed(index)
    m, shape = _stock_modules()[index]
    m = m.double()
    if isinstance(m, nn.BatchNorm2d):
        _randomise_norms(m)
    x = 3 * torch.randn(shape, dtype=torch.float64)
    want = m(x.clone())
    got = call(m, x.clone())
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_fastcall_keeps_the_module_path_where_it_must() -> None:
    """Training batch norm (its statistics update), live dropout, subclasses, parametrized
    modules and hooked modules all run as modules."""
    from torch.nn.utils import parametrize

    from blockzoo._fastcall import call

    bn = nn.BatchNorm2d(3).train()
    call(bn, torch.randn(2, 3, 4, 4))
    assert int(bn.num_batches_tracked) == 1 and not torch.equal(bn.running_mean, torch.zeros(3))
    drop = nn.Dropout(0.5).train()
    assert (call(drop, torch.ones(200)) == 0).any()

    class Twice(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    twice, x = Twice(3, 3), torch.randn(2, 3)
    torch.testing.assert_close(call(twice, x), twice(x))

    class Scale(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 3 * w

    lin = nn.Linear(3, 3)
    parametrize.register_parametrization(lin, "weight", Scale())
    torch.testing.assert_close(call(lin, x), x @ lin.weight.T + lin.bias)
    fired: list[int] = []
    plain = nn.Linear(3, 3)
    plain.register_forward_pre_hook(lambda *_a: fired.append(1))
    call(plain, x)
    assert fired == [1]


def test_size_tables_are_built_once_per_size_and_mode() -> None:
    """Swin's index and shift mask, GPSA's offsets: one tensor per (arguments, inference mode);
    a table first built under inference_mode is not reused by a training step."""
    from blockzoo.attention.gpsa import relative_offsets
    from blockzoo.attention.swin import relative_position_index, shifted_window_mask

    a = relative_offsets(3, 4, dtype=torch.float64)
    assert relative_offsets(3, 4, dtype=torch.float64) is a
    assert relative_offsets(4, 3, dtype=torch.float64) is not a
    assert relative_position_index(2, 3, (4, 4)) is relative_position_index(2, 3, (4, 4))
    plan = (4, 4, 2, 2)
    m = shifted_window_mask(8, 8, 8, 8, plan, torch.device("cpu"), torch.float32)
    assert m is shifted_window_mask(8, 8, 8, 8, plan, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        inf = relative_offsets(5, 5)
    assert inf.is_inference() and not relative_offsets(5, 5).is_inference()

    block = blockzoo.create("shifted_window_attention", dim=8, num_heads=2, window_size=4, shift_size=2)
    x = torch.randn(2, 8, 8, 8)
    with torch.inference_mode():
        y0 = block(x)
    y = block(x)
    y.sum().backward()  # the tables built in inference mode would raise here if reused
    torch.testing.assert_close(y.detach(), y0)
    g = blockzoo.create("gated_positional_self_attention", dim=8, num_heads=4)
    with torch.inference_mode():
        g(torch.randn(1, 8, 7, 6))
    g(torch.randn(1, 8, 7, 6)).sum().backward()
    assert g.pos_proj.weight.grad is not None


@pytest.mark.parametrize("groups", [1, 2])
def test_repmlp_inference_merge_equals_the_autograd_path(groups: int) -> None:
    """RepMLP without autograd adds y + v straight into the (B, C, H, W) output (train and
    deploy forms): the same numbers as the autograd path, which keeps the merge copy."""
    import copy

    from blockzoo.mlp import RepMLPBlock

    torch.manual_seed(0)
    block = RepMLPBlock(8, (3, 2), groups=groups, kernel_sizes=(1, 3)).double().eval()
    _randomise_norms(block)
    x = torch.randn(2, 8, 6, 4, dtype=torch.float64)
    for form in (block, copy.deepcopy(block).reparameterize()):
        with torch.no_grad():
            fast = form(x)
        slow = form(x.clone().requires_grad_(True))
        assert fast.is_contiguous() and fast.shape == x.shape
        torch.testing.assert_close(fast, slow.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("stride", "size"), [(1, (8, 8)), (2, (9, 7)), (1, (40, 40)), (2, (41, 39))])
def test_involution_small_map_unfold_equals_the_tap_loop(monkeypatch: pytest.MonkeyPatch, stride: int,
                                                          size: tuple[int, int]) -> None:
    """Involution applies its kernels with one unfold on small maps and a per-tap loop on large
    ones: the same output either way (float64, 1e-12), with hooks firing as modules."""
    from blockzoo.conv import involution

    torch.manual_seed(0)
    block = blockzoo.create("involution", channels=8, kernel_size=3, group_channels=4, reduction=2,
                            stride=stride).double().eval()
    _randomise_norms(block)
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    with torch.no_grad():
        monkeypatch.setattr(involution, "_UNFOLD_MAX", 0)
        taps = block(x)
        monkeypatch.setattr(involution, "_UNFOLD_MAX", 1 << 40)
        unfold = block(x)
    torch.testing.assert_close(unfold, taps, rtol=1e-12, atol=1e-12)
    # with autograd (the strided neighbourhood view is differentiable): the same gradients
    x.requires_grad_()
    grads = []
    for limit in (0, 1 << 40):
        monkeypatch.setattr(involution, "_UNFOLD_MAX", limit)
        y = block(x)
        grads.append(torch.autograd.grad((y * y.detach().cos()).sum(), [x, *block.parameters()]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["multi_head_attention", "conv_bn_act", "mixer", "resmlp", "cbam", "sk",
                                  "separable_self_attention", "patch_embed", "danet", "double_attention",
                                  "polarized_parallel", "polarized_sequential", "s2mlp",
                                  "class_attention_block", "class_cross_attention", "gnconv",
                                  "hornet_block", "convnextv2_block", "grn", "global_filter",
                                  "pit_pooling", "conv_position_encoding", "eca", "epsa",
                                  "criss_cross_attention"])
def test_fast_path_reads_parameters_swapped_by_functional_call(name: str) -> None:
    """``torch.func.functional_call`` swaps the parameters the fast path reads from
    ``_parameters``: the output is that of a copy holding those parameters."""
    import copy

    from torch.func import functional_call

    s = blockzoo.spec(name)
    torch.manual_seed(0)
    block = s.build_example().double().eval()
    x = _double_inputs(s, batch=2)
    params = {k: 2 * v.detach() for k, v in block.named_parameters()}
    got = functional_call(block, {**params, **dict(block.named_buffers())}, x)
    twin = copy.deepcopy(block)
    with torch.no_grad():
        for _, v in twin.named_parameters():
            v.mul_(2)
        want = twin(*x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("groups", "size", "direct"),
                         [(2, (5, 7), True), (2, (5, 7), False), (3, (4, 6), True), (1, (3, 3), True)])
def test_shuffle_attention_fused_path_equals_the_module_path(monkeypatch: pytest.MonkeyPatch, groups: int,
                                                              size: tuple[int, int], direct: bool) -> None:
    """Shuffle attention folds W_2, b_2 into GN's affine and (even G, large maps) writes each half
    straight to its shuffled channels: the same output and gradients as the paper's order of
    operations, which runs while GN is hooked (float64, 1e-12)."""
    from blockzoo.attention import shuffle

    monkeypatch.setattr(shuffle, "_DIRECT_WRITE_MIN", 0 if direct else 1 << 40)
    torch.manual_seed(0)
    block = shuffle.ShuffleAttention(8 * groups, groups=groups, init_weight=0.7).double()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 8 * groups, *size, dtype=torch.float64)

    def run() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            y_eval = block(x)
        xg = x.clone().requires_grad_(True)
        block.zero_grad()
        y = block(xg)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        return (y_eval, y.detach(), xg.grad, block.sweight.grad.clone(), block.gn.weight.grad.clone())

    fused = run()
    handle = block.gn.register_forward_hook(lambda *_: None)  # a listener: the module path
    try:
        plain = run()
    finally:
        handle.remove()
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_shuffle_attention_reads_a_parametrized_weight() -> None:
    """The fused path reads ``_parameters``; a parametrization (which moves ``cweight`` out of it)
    takes the module path and gives the output of the parametrized value (float64, 1e-12)."""
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    torch.manual_seed(0)
    block = blockzoo.create("shuffle_attention", channels=16, groups=4, init_weight=0.5).double()
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        block.cweight.mul_(2)
        want = block(x)
        block.cweight.div_(2)
        parametrize.register_parametrization(block, "cweight", Double())
        got = block(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_squeeze_excite_with_a_parametrized_conv_takes_the_module_path() -> None:
    """A parametrization moves fc1's weight out of ``_parameters``: SE must compute with the
    parametrized weight (module path), not fail or read a stale tensor."""
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    torch.manual_seed(0)
    se = SqueezeExcite(8, reduction=2).double().eval()
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    w1 = se.fc1.weight.detach().clone()
    parametrize.register_parametrization(se.fc1, "weight", Doubled())
    z = x.mean((2, 3))
    h = torch.relu(z @ (2 * w1.flatten(1)).T + se.fc1.bias)
    s = torch.sigmoid(h @ se.fc2.weight.flatten(1).T + se.fc2.bias)
    with torch.no_grad():
        torch.testing.assert_close(se(x), x * s[:, :, None, None], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "owner", "attr"), [("condconv", "CondConv", "weight"),
                                                      ("gmlp", "SpatialGatingUnit", "weight"),
                                                      ("resmlp", "ResMLPBlock", "scale1"),
                                                      ("shuffle_attention", "ShuffleAttention", "cweight"),
                                                      ("grn", "GlobalResponseNorm", "weight"),
                                                      ("learned_pe", "LearnedPositionalEmbedding", "weight")])
def test_a_parametrized_own_parameter_is_used(name: str, owner: str, attr: str) -> None:
    """Blocks that read their own parameters from ``_parameters`` (no ``__getattr__``) still see
    a parametrized one: doubling it through a parametrization equals doubling the tensor."""
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    def find(block: nn.Module) -> nn.Module:
        return next(m for m in block.modules() if type(m).__name__ == owner)

    spec = blockzoo.spec(name)
    torch.manual_seed(0)
    block = spec.build_example().double().eval()
    x = tuple(a.double() for a in spec.make_input(batch=2))
    doubled = spec.build_example().double().eval()
    with torch.no_grad():
        getattr(find(block), attr).add_(0.25)  # away from 0 or 1, where doubling could be invisible
        doubled.load_state_dict(block.state_dict())
        getattr(find(doubled), attr).mul_(2)
        want = doubled(*x)
    parametrize.register_parametrization(find(block), attr, Doubled())
    with torch.no_grad():
        torch.testing.assert_close(block(*x), want, rtol=1e-12, atol=1e-12)


class _TimesOneAndHalf(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 1.5 * w


@pytest.mark.parametrize("name", blockzoo.list_blocks())
def test_every_entry_computes_with_parametrized_parameters(name: str) -> None:
    """Every parameter of every submodule put under ``torch.nn.utils.parametrize`` (w -> 1.5 w):
    the same output as the plain copy with its parameters scaled by 1.5 (float64, 1e-10 of the
    output's scale). Fast paths that read ``_parameters`` directly would raise or read the raw
    tensor instead."""
    import copy

    from torch.nn.utils import parametrize

    spec = blockzoo.spec(name)
    torch.manual_seed(0)
    block = spec.build_example().double().eval()
    x = tuple(a.double() if a.is_floating_point() else a for a in spec.make_input(batch=2))
    scaled = copy.deepcopy(block)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(1.5)
        want = scaled(*x)
    for m in list(block.modules()):
        for pname in [n for n, p in m._parameters.items() if p is not None]:
            parametrize.register_parametrization(m, pname, _TimesOneAndHalf(), unsafe=True)
    with torch.no_grad():
        got = block(*x)
    want, got = (want[0], got[0]) if isinstance(want, tuple) else (want, got)
    assert (got - want).abs().max().item() <= 1e-10 * max(want.abs().max().item(), 1.0)


def test_shuffle_attention_trains_with_the_channel_gate_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any trainable parameter, not only x or W_1, needs the autograd-safe write of the shuffled
    halves: with W_1 frozen and x not requiring grad, W_2 still gets the module path's gradient."""
    from blockzoo.attention import shuffle

    monkeypatch.setattr(shuffle, "_DIRECT_WRITE_MIN", 0)
    torch.manual_seed(0)
    block = shuffle.ShuffleAttention(16, groups=2, init_weight=0.7).double()
    block.cweight.requires_grad_(False)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    weights = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).view_as(x)
    (block(x) * weights).sum().backward()
    fused = block.sweight.grad.clone()
    block.zero_grad()
    handle = block.gn.register_forward_hook(lambda *_: None)  # a listener: the module path
    (block(x) * weights).sum().backward()
    handle.remove()
    torch.testing.assert_close(fused, block.sweight.grad, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- branch tka: token attention


def _sdpa_kernels(fn: object) -> set[str]:
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_learned_mask_takes_the_fused_kernel_without_grad_and_equals_the_autograd_path() -> None:
    """A learned relative bias (a parameter, so its views require grad even under no_grad) is
    detached for SDPA when no grad is recorded: the fused CPU kernel runs instead of the math
    one, with the same output in float64; with grad on, the bias still gets its gradient."""
    torch.manual_seed(0)
    s = blockzoo.spec("lightweight_mhsa")
    block = s.build_example().double().eval()
    (x,) = _double_inputs(s)
    with torch.no_grad():
        fast = block(x)
        kernels = _sdpa_kernels(lambda: block(x))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels, kernels
    slow = block(x)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-12, atol=1e-12)
    slow.square().sum().backward()
    assert block.relative_pos.grad is not None and block.relative_pos.grad.abs().sum() > 0
    q, k, v = torch.randn(3, 2, 2, 5, 4, dtype=torch.float64)
    mask = nn.Parameter(torch.randn(2, 5, 5, dtype=torch.float64))  # 3-D: viewed as 4-D for the fused kernel
    from blockzoo.attention.dot_product import scaled_dot_product_attention

    with torch.no_grad():
        got = scaled_dot_product_attention(q, k, v, mask)
        kernels = _sdpa_kernels(lambda: scaled_dot_product_attention(q, k, v, mask))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels, kernels
    want = scaled_dot_product_attention(q, k, v, mask, reference=True)
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)


def test_attend_detaches_a_learned_bias_without_grad() -> None:
    """``_attend.attend`` (CoAtNet, CrossFormer, DAT, HAT, MoA) gives SDPA a learned bias
    detached when no grad is recorded: the fused CPU kernel, the same output in float64."""
    from blockzoo.attention._attend import attend

    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 5, 4, dtype=torch.float64)
    bias = nn.Parameter(torch.randn(2, 5, 5, dtype=torch.float64))
    idle = AttentionMap("weights")
    with torch.no_grad():
        got = attend(q, k, v, idle, bias=bias)
        kernels = _sdpa_kernels(lambda: attend(q, k, v, idle, bias=bias))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels, kernels
    want = ((q @ k.transpose(-1, -2)) * 0.5 + bias).softmax(-1) @ v
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    attend(q, k, v, idle, bias=bias).sum().backward()  # with grad on, the bias still learns
    assert bias.grad is not None and bias.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["lightweight_mhsa", "spatial_reduction_attention", "ufo_attention",
                                  "re_attention", "muse_attention", "performer_attention"])
def test_token_attention_inference_path_equals_the_autograd_path(name: str) -> None:
    """Without autograd these blocks take inference-only kernels (a folded norm, im2col for a
    small patch convolution, the fused SDPA); in float64 the output equals the autograd path's
    (module calls, oneDNN, math SDPA), and that path still trains."""
    torch.manual_seed(0)
    s = blockzoo.spec(name)
    block = s.build_example().double().eval()
    with torch.no_grad():
        _randomise_norms(block)
    x = _double_inputs(s)
    with torch.no_grad():
        fast = block(*x)
    slow = block(*x)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-12, atol=1e-12)
    slow.square().sum().backward()
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)


def test_muse_merged_convs_follow_every_parameter_change() -> None:
    """MUSE's merged convolution (cached per block) is rebuilt after any in-place change of
    alpha, a conv weight or bias, or the output bias; each time the no-grad output equals the
    autograd path's (the separate convolutions) in float64."""
    torch.manual_seed(0)
    s = blockzoo.spec("muse_attention")
    block = s.build_example().double().eval()
    (x,) = _double_inputs(s)
    with torch.no_grad():
        block.alpha.normal_()
    for change in (None, "alpha", "depthwise.1.weight", "depthwise.2.bias", "pointwise.0.weight",
                   "pointwise.2.bias", "proj.bias"):
        if change is not None:
            with torch.no_grad():
                block.get_parameter(change).add_(0.5)
        with torch.no_grad():
            fast = block(x)
        torch.testing.assert_close(fast, block(x).detach(), rtol=1e-12, atol=1e-12)
    hooked: list[int] = []
    handle = block.depthwise[1].register_forward_hook(lambda *_a: hooked.append(1))
    try:
        with torch.no_grad():
            block(x)
    finally:
        handle.remove()
    assert hooked == [1]


@pytest.mark.parametrize("name", ["lightweight_mhsa", "spatial_reduction_attention", "ufo_attention",
                                  "re_attention", "muse_attention", "performer_attention",
                                  "linformer_attention"])
def test_token_attention_no_grad_reads_parameters_swapped_by_functional_call(name: str) -> None:
    """Under no_grad (the inference paths, with their cached folds and merged weights),
    ``torch.func.functional_call`` swaps in other parameters: the output is that of a copy
    holding them, and a later plain call is the block's own again."""
    import copy

    from torch.func import functional_call

    s = blockzoo.spec(name)
    torch.manual_seed(0)
    block = s.build_example().double().eval()
    with torch.no_grad():
        _randomise_norms(block)
    x = _double_inputs(s, batch=2)
    params = {k: 2 * v.detach() for k, v in block.named_parameters()}
    twin = copy.deepcopy(block)
    with torch.no_grad():
        own_out = block(*x)
        got = functional_call(block, {**params, **dict(block.named_buffers())}, x)
        for _, v in twin.named_parameters():
            v.mul_(2)
        want = twin(*x)
        again = block(*x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(again, own_out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("length", [1, 4, 10, 15, 16, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_last_equals_softmax(length: int, dtype: torch.dtype) -> None:
    """``_fastops.softmax_last_`` (in place on a short CPU axis) equals ``softmax(-1)``,
    -inf entries included, and leaves autograd inputs alone."""
    from blockzoo._fastops import softmax_last_

    torch.manual_seed(0)
    x = torch.randn(3, 5, length, dtype=dtype) * 4
    if length > 1:  # a masked entry (a whole row of -inf is NaN either way)
        x[0, 0, 0] = float("-inf")
    want = x.softmax(-1)
    with torch.no_grad():
        got = softmax_last_(x.clone())
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    y = x.clone().requires_grad_()
    out = softmax_last_(y)
    assert out is not y and out.requires_grad
    torch.testing.assert_close(out.detach(), want, rtol=tol, atol=tol)

@pytest.mark.parametrize("layer_scale", [None, 0.3])
def test_class_attention_block_equals_its_equation_with_module_calls(layer_scale: float | None) -> None:
    """The block's fast path (functional submodules, addcmul for the layer scales) equals the
    equation written with module calls, in float64, outputs and gradients."""
    from blockzoo.attention.class_attention import ClassAttentionBlock

    torch.manual_seed(0)
    block = ClassAttentionBlock(8, num_heads=2, mlp_ratio=2.0, layer_scale=layer_scale).double()
    if layer_scale is not None:
        with torch.no_grad():
            block.scale1.uniform_(0.5, 1.5)
            block.scale2.uniform_(-1.5, -0.5)
    x = torch.randn(3, 6, 8, dtype=torch.float64, requires_grad=True)

    def equation(x: torch.Tensor) -> torch.Tensor:
        s1 = 1 if block.scale1 is None else block.scale1
        s2 = 1 if block.scale2 is None else block.scale2
        z = block.norm1(x)
        cls = x[:, :1] + s1 * block.attn(z)
        cls = cls + s2 * block.mlp(block.norm2(cls))
        return torch.cat([cls, x[:, 1:]], 1)

    with torch.no_grad():
        torch.testing.assert_close(block(x), equation(x), rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(block(x).square().sum(), [x, *block.parameters()])
    want = torch.autograd.grad(equation(x).square().sum(), [x, *block.parameters()])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("dim", "heads", "head_dim", "kdim", "bias"),
                         [(8, 2, None, None, True), (8, 1, None, None, False), (6, 3, 4, 5, True)])
def test_one_query_reassociated_path_equals_the_projected_path(monkeypatch: pytest.MonkeyPatch, dim: int,
                                                               heads: int, head_dim: int | None,
                                                               kdim: int | None, bias: bool) -> None:
    """One query over many keys (class attention): softmax((q W_k) z^T) (A z) W_v equals
    projecting every key and value, in float64, with random biases (the key bias cancels);
    with autograd, a hook or a recording the projected path runs."""
    from blockzoo.attention import dot_product
    from blockzoo.attention.dot_product import MultiHeadAttention

    torch.manual_seed(0)
    mha = MultiHeadAttention(dim, heads, head_dim=head_dim, kdim=kdim, vdim=kdim, qkv_bias=bias,
                             fused_qkv=False).double().eval()
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_()
    z = torch.randn(3, 40, mha.kdim, dtype=torch.float64)
    q = torch.randn(3, 1, dim, dtype=torch.float64)
    taken: list[int] = []
    one_query = MultiHeadAttention._one_query
    monkeypatch.setattr(MultiHeadAttention, "_one_query",
                        lambda self, *a: taken.append(1) or one_query(self, *a))
    with torch.no_grad():
        fast = mha(q, z, z)
        assert taken
        monkeypatch.setattr(dot_product, "_ONE_QUERY_MIN_KEYS", 10 ** 9)
        projected = mha(q, z, z)
    torch.testing.assert_close(fast, projected, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(dot_product, "_ONE_QUERY_MIN_KEYS", 1)
    taken.clear()
    seen: list[int] = []
    handle = mha.k_proj.register_forward_hook(lambda *_a: seen.append(1))
    with torch.no_grad():
        hooked = mha(q, z, z)
    handle.remove()
    assert seen  # the hook fired: the keys were projected
    torch.testing.assert_close(hooked, fast, rtol=1e-12, atol=1e-12)
    with record_attention(mha) as maps, torch.no_grad():
        mha(q, z, z)
    assert maps
    zg = z.clone().requires_grad_()
    out = mha(q, zg, zg)
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), fast, rtol=1e-12, atol=1e-12)

@pytest.mark.parametrize("name", ["grn", "convnextv2_block", "epsa", "criss_cross_attention"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_grn_and_convnextv2_eval_path_equals_the_autograd_path(name: str, channels_last: bool) -> None:
    """Without autograd GRN forms its statistics in place with cached 0-dim constants, the
    ConvNeXt V2 block runs on channels-last tokens, EPSA's convs on a channels-last copy and its
    SE as matrix products, criss-cross attention's Q, K, V as one cached product on tokens: the
    same output (and layout) as with grad mode on, to 1e-12 in float64."""
    s = blockzoo.spec(name)
    torch.manual_seed(0)
    block = s.build_example().double().eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.rand_like(p) - 0.5)  # GRN's gamma and beta start at zero
    (x,) = _double_inputs(s)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = block(x)
    with torch.no_grad():
        got = block(x)
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    assert got.stride() == want.stride()


@pytest.mark.parametrize("name", ["conv_position_encoding", "pit_pooling"])
@pytest.mark.parametrize("size", [(6, 7), (40, 40)])
def test_small_grouped_conv_and_residual_fold_equal_the_autograd_path(name: str,
                                                                       size: tuple[int, int]) -> None:
    """Without autograd a small depthwise conv runs through a channels-last copy (and CPE's
    residual is folded into the kernel's centre tap, cached): the same output and layout as
    with grad mode on, to 1e-12 in float64, also after an in-place change of the kernel."""
    s = blockzoo.spec(name)
    torch.manual_seed(0)
    block = s.build_example().double().eval()
    (x,) = _double_inputs(s, batch=2)
    x = torch.randn(2, x.shape[1], *size, dtype=torch.float64)
    for _ in range(2):
        want = block(x)
        with torch.no_grad():
            got = block(x)
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
        assert got.stride() == want.stride()
        with torch.no_grad():
            for p in block.parameters():
                p.mul_(-1.5)


def test_criss_cross_token_path_equals_the_conv_path_with_recurrence_and_refolds() -> None:
    torch.manual_seed(0)
    block = blockzoo.create("criss_cross_attention", channels=16, reduction=4, recurrence=2).double().eval()
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    for _ in range(2):
        with torch.no_grad():
            block.gamma.add_(0.7)
        with record_attention(block) as maps:
            want = block(x)
            want_map = next(iter(maps.values())).clone()
            with torch.no_grad():
                got = block(x)
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(next(iter(maps.values())), want_map, rtol=1e-12, atol=1e-12)
        with torch.no_grad():  # an in-place change of a projection: the fused weight is rebuilt
            block.value.weight.mul_(-1.5)
            block.key.weight.add_(0.25)
