"""``blockzoo._fastcall.conv_bn``: BatchNorm folded into the convolution in eval (issue 19).

The fold must equal the module path (float64, 1e-12), must be redone whenever any tensor it
was computed from changes (in place, through ``load_state_dict``, by a new parameter, by
``.data =``, by a dtype move), and must never be taken where it would change behaviour:
training (batch statistics), autograd through the parameters, hooks, parametrizations.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import blockzoo
from blockzoo import _fastcall
from blockzoo._fastcall import conv_bn


def _pair(*, conv_bias: bool = False, affine: bool = True, groups: int = 1, k: int = 3
          ) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, k, padding=k // 2, groups=groups, bias=conv_bias).double()
    bn = nn.BatchNorm2d(6, affine=affine).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        if affine:
            bn.weight.normal_()
            bn.bias.normal_()
    return conv, bn


def _want(conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return bn(conv(x))


@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("groups", [1, 2])
def test_fold_equals_conv_then_norm(conv_bias: bool, affine: bool, groups: int) -> None:
    conv, bn = _pair(conv_bias=conv_bias, affine=affine, groups=groups)
    x = torch.randn(3, 4, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        got = conv_bn(conv, bn, x)
        assert bn in _fastcall._DERIVED  # the folded path ran (and kept its fold)
        torch.testing.assert_close(got, _want(conv, bn, x), rtol=1e-12, atol=1e-12)
    with torch.inference_mode():
        torch.testing.assert_close(conv_bn(conv, bn, x), _want(conv, bn, x), rtol=1e-12, atol=1e-12)


def test_fold_is_redone_whenever_a_source_tensor_changes() -> None:
    conv, bn = _pair(conv_bias=True)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)

    def same() -> None:
        with torch.no_grad():
            torch.testing.assert_close(conv_bn(conv, bn, x), _want(conv, bn, x), rtol=1e-12, atol=1e-12)

    same()
    with torch.no_grad():  # in place: every source tensor in turn
        for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean):
            t.add_(0.25)
            same()
        bn.running_var.mul_(3.0)
        same()
    other = nn.BatchNorm2d(6).double()
    other.running_mean.fill_(1.5)
    bn.load_state_dict(other.state_dict())  # copy_ into the same tensors
    same()
    conv.weight = nn.Parameter(torch.randn_like(conv.weight))  # a new parameter object
    same()
    bn.running_var.data = torch.full_like(bn.running_var, 4.0)  # .data swapped under the same object
    same()
    bn.eps = 0.5
    same()
    conv.float()
    bn.float()  # new tensors of another dtype
    with torch.no_grad():
        torch.testing.assert_close(conv_bn(conv, bn, x.float()), _want(conv, bn, x.float()))
        assert conv_bn(conv, bn, x.float()).dtype == torch.float32


def test_training_autograd_hooks_and_parametrizations_take_the_module_path() -> None:
    conv, bn = _pair()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    # autograd through the parameters: the module path, gradients reach both modules
    out = conv_bn(conv, bn, x)
    assert bn not in _fastcall._DERIVED
    out.sum().backward()
    assert conv.weight.grad is not None and bn.weight.grad is not None
    # training: batch statistics, and the running ones are updated
    bn.train()
    before = bn.running_mean.clone()
    with torch.no_grad():
        conv_bn(conv, bn, x)
    assert not torch.equal(bn.running_mean, before)
    bn.eval()
    # a hook on either module fires
    seen = []
    for m in (conv, bn):
        handle = m.register_forward_hook(lambda mod, *_: seen.append(mod))
        with torch.no_grad():
            torch.testing.assert_close(conv_bn(conv, bn, x), _want(conv, bn, x), rtol=1e-12, atol=1e-12)
        handle.remove()
    assert seen[0] is conv and seen[-1] is bn
    # a parametrized weight is computed through its parametrization
    torch.nn.utils.parametrize.register_parametrization(conv, "weight", _Double())
    with torch.no_grad():
        got = conv_bn(conv, bn, x)
    torch.nn.utils.parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
    with torch.no_grad():
        torch.testing.assert_close(got, _want(conv, bn, x), rtol=1e-12, atol=1e-12)


def test_gradient_through_the_input_of_a_frozen_eval_network() -> None:
    # frozen parameters, an input that needs its gradient (saliency, adversarial examples)
    conv, bn = _pair()
    for p in (*conv.parameters(), *bn.parameters()):
        p.requires_grad_(False)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    g = torch.autograd.grad(conv_bn(conv, bn, x).square().sum(), x)[0]
    want = torch.autograd.grad(_want(conv, bn, x).square().sum(), x)[0]
    torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-12)


def test_sequential_folds_each_conv_followed_by_a_norm() -> None:
    from blockzoo._fastcall import sequential

    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(4, 5, 3, padding=1), nn.Conv2d(5, 6, 1, bias=False), nn.BatchNorm2d(6),
                        nn.ReLU(), nn.BatchNorm2d(6), nn.Conv2d(6, 3, 1)).double().eval()
    for bn in (seq[2], seq[4]):
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(sequential(seq, x), seq(x), rtol=1e-12, atol=1e-12)
    assert seq[2] in _fastcall._DERIVED and seq[4] not in _fastcall._DERIVED  # (a ReLU before the second)


class _Double(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


@pytest.mark.parametrize("name", ["conv_bn_act", "resnet_basic", "resnet_bottleneck", "resnext_block",
                                  "depthwise_separable", "mbconv", "inverted_residual", "cot", "leff", "sk",
                                  "bam", "coord_attention", "lightweight_mhsa", "re_attention"])
def test_blocks_fold_in_eval_and_equal_the_module_path(name: str) -> None:
    """Each block's eval output with the folds equals the same block with every fold refused
    (a forward pre-hook on the norms sends them down the module path)."""
    torch.manual_seed(0)
    s = blockzoo.spec(name)
    block = s.build_example().double().eval()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    (x,) = (t.double() for t in s.make_input(batch=2))
    with torch.no_grad():
        fast = block(x)
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert any(m in _fastcall._DERIVED for m in norms), "no norm was folded"
    handles = [m.register_forward_pre_hook(lambda *_: None) for m in norms]
    try:
        with torch.no_grad():
            slow = block(x)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)


def test_mobilevit_conv_norm_act_units_fold_their_norms() -> None:
    """MobileViT's conv-BN-act units run through ``conv_bn``: in eval without autograd each norm
    is folded (kept in ``_DERIVED``) and the block's output equals the module path (float64)."""
    from blockzoo._fastcall import module_path

    torch.manual_seed(0)
    block = blockzoo.spec("mobilevit_block").build_example().double().eval()
    with torch.no_grad():
        for bn in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
    x = torch.randn(2, 16, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        got = block(x)
        assert all(bn in _fastcall._DERIVED for bn in block.modules() if isinstance(bn, nn.BatchNorm2d))
        with module_path():
            want = block(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_derived_tensors_are_rebuilt_whenever_a_source_changes_and_skipped_under_autograd() -> None:
    """``_kept.derived`` (branch mix): kept per owner and key, rebuilt on an in-place change,
    a new parameter, a ``.data`` swap and a dtype move; None when autograd would record."""
    from blockzoo._kept import derived

    owner = nn.Linear(3, 2).double()
    builds = []

    def build(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor]:
        builds.append(1)
        return (w.sum(1) + b,)

    def get() -> torch.Tensor:
        with torch.no_grad():
            out = derived(owner, "k", (owner.weight, owner.bias), build)
        assert out is not None
        torch.testing.assert_close(out[0], (owner.weight.sum(1) + owner.bias).detach(), rtol=0, atol=0)
        return out[0]

    get()
    get()
    assert len(builds) == 1  # kept
    with torch.no_grad():
        owner.weight.add_(1.0)  # in place
    get()
    owner.bias = nn.Parameter(torch.randn(2, dtype=torch.float64))  # a new parameter
    get()
    owner.weight.data = torch.randn(2, 3, dtype=torch.float64)  # .data swapped
    get()
    owner.float()  # another dtype
    assert get().dtype == torch.float32
    assert len(builds) == 5
    assert derived(owner, "k", (owner.weight, owner.bias), build) is None  # autograd records
