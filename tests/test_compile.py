"""``blockzoo.compile``: torch.compile told what the registry declares (issue 19, goal 4).

Equal outputs are checked with ``aot_eager`` (seconds) and, marked slow, once with inductor
(about 20 s of C++ compilation on a small CPU). Tolerance: rtol 1e-5, atol 1e-6 in fp32,
the reassociation error of a few hundred fused float32 operations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import blockzoo
from blockzoo.checks import ConfigError, ShapeError
from blockzoo.export import AOTCompiled, registered_entries
from blockzoo.registry import Example, images, register, unregister


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``blockzoo.compile`` passed to ``torch.compile`` (nothing is compiled)."""
    seen: dict[str, Any] = {}

    def fake(module: nn.Module, **kw: Any) -> nn.Module:
        seen.update(kw)
        return module

    monkeypatch.setattr(torch, "compile", fake)
    return seen


def _se() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    s = blockzoo.spec("se")
    torch.manual_seed(0)
    return s.build_example().eval(), s.make_input(batch=2, seed=3)


def test_equal_outputs_aot_eager() -> None:
    block, args = _se()
    fast = blockzoo.compile(block, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(fast(*args), block(*args), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.compile
def test_equal_outputs_inductor() -> None:
    block, args = _se()
    fast = blockzoo.compile(block, example_inputs=args)
    with torch.no_grad():
        torch.testing.assert_close(fast(*args), block(*args), rtol=1e-5, atol=1e-6)


def test_entry_without_breaks_is_one_graph(captured: dict[str, Any]) -> None:
    blockzoo.compile(_se()[0])
    assert captured == {"backend": "inductor", "fullgraph": True}


def test_declared_breaks_turn_fullgraph_off(captured: dict[str, Any]) -> None:
    gru = blockzoo.create("gru", input_size=4, hidden_size=8)
    assert "fullgraph" in blockzoo.spec("gru").exempt
    blockzoo.compile(gru, mode="max-autotune")
    assert captured == {"backend": "inductor", "fullgraph": False, "mode": "max-autotune"}
    with pytest.raises(ConfigError, match=r"'gru'.*declares graph breaks"):
        blockzoo.compile(gru, fullgraph=True)


def test_user_module_is_not_forced_into_one_graph(captured: dict[str, Any]) -> None:
    net = nn.Sequential(_se()[0], nn.ReLU())
    assert [(p, s.name) for p, s in registered_entries(net)] == [("0", "se")]
    blockzoo.compile(net)
    assert captured["fullgraph"] is False


def test_not_a_module() -> None:
    with pytest.raises(ConfigError, match=r"expected an nn\.Module, got builtin_function_or_method"):
        blockzoo.compile(torch.relu)  # type: ignore[arg-type]


class _Breaks(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()
        return x + 1


def test_compile_exemption_is_a_clear_error() -> None:
    register(name="toy_uncompilable", family="conv", paper="p", arxiv="", year=1, input="image",
             example=Example(config=dict(channels=2), inputs=images(), size=(4, 4)),
             exempt={"compile": "uses a host callback the tracer cannot follow"})(_Breaks)
    try:
        block = blockzoo.create("toy_uncompilable", channels=2)
        with pytest.raises(ConfigError, match="'toy_uncompilable' at '1' cannot be compiled: uses a host"):
            blockzoo.compile(nn.Sequential(nn.Identity(), block))
    finally:
        unregister("toy_uncompilable")


def test_undeclared_break_fails_when_compiled_now() -> None:
    register(name="toy_break", family="conv", paper="p", arxiv="", year=1, input="image",
             example=Example(config=dict(channels=2), inputs=images(), size=(4, 4)))(_Breaks)
    try:
        block = blockzoo.create("toy_break", channels=2)
        with pytest.raises(ConfigError, match=r"toy_break could not be compiled \(backend='aot_eager', "
                                              r"fullgraph=True\)"):
            blockzoo.compile(block, backend="aot_eager", example_inputs=(torch.zeros(1, 2, 4, 4),))
    finally:
        unregister("toy_break")


# ---------------------------------------------------------------- aot=True: torch.export + AOTInductor


def test_aot_needs_example_inputs_and_inductor() -> None:
    block, args = _se()
    with pytest.raises(ConfigError, match="aot=True needs example_inputs"):
        blockzoo.compile(block, aot=True)
    with pytest.raises(ConfigError, match=r"backend='aot_eager' and \[\] do not apply"):
        blockzoo.compile(block, aot=True, example_inputs=args, backend="aot_eager")
    with pytest.raises(ConfigError, match=r"\['mode'\] do not apply"):
        blockzoo.compile(block, aot=True, example_inputs=args, mode="max-autotune")


@pytest.mark.compile
def test_aot_equal_refuses_other_inputs_and_is_a_snapshot() -> None:
    """One AOTInductor compile (~15-40 s here): equal outputs, then every input it was not
    compiled for is refused (max_variants=1) instead of being read with the wrong layout."""
    block, args = _se()
    fast = blockzoo.compile(block, example_inputs=args, aot=True, max_variants=1)
    assert isinstance(fast, AOTCompiled) and fast.variants == 1
    assert list(fast.state_dict()) == []  # holds a snapshot, not the module's parameters
    (x,) = args
    with torch.no_grad():
        want = block(x)
        torch.testing.assert_close(fast(x), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast(x.clone()), want, rtol=1e-5, atol=1e-6)  # same specs, new tensor
        strided = x.transpose(2, 3).contiguous().transpose(2, 3)  # same shape and values, other layout
        for bad, what in ((x[:1], r"\(1, 16, 8, 8\) float32"),
                          (strided, r"\(2, 16, 8, 8\) float32 strides \(1024, 64, 1, 8\)"),
                          (x.double(), r"\(2, 16, 8, 8\) float64")):
            with pytest.raises(ShapeError, match=rf"se \(compiled, aot\): no variant for input {what} and "
                                                 r"max_variants=1 reached; compiled for: "
                                                 r"\(2, 16, 8, 8\) float32$"):
                fast(bad)
        assert fast.variants == 1
        # later changes to the module are not seen (documented: a snapshot, like export)
        for p in block.parameters():
            p.mul_(2.0)
        torch.testing.assert_close(fast(x), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match=r"inference-only and has no backward: call it under torch.no_grad"):
        fast(x)


@pytest.mark.slow
@pytest.mark.compile
def test_aot_recompiles_for_new_specs() -> None:
    """Two compiles: a new shape compiles a second variant, equal to eager there; a dtype the
    weights do not take is refused with a ConfigError before any C++ is compiled."""
    block, args = _se()
    fast = blockzoo.compile(block, example_inputs=args, aot=True)
    y = torch.randn(3, 16, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(fast(y), block(y), rtol=1e-5, atol=1e-6)
        assert fast.variants == 2
        torch.testing.assert_close(fast(*args), block(*args), rtol=1e-5, atol=1e-6)
        assert fast.variants == 2
        with pytest.raises(ConfigError, match=r"se could not be compiled ahead of time for input "
                                              r"\(3, 16, 5, 7\) float64: RuntimeError: mat1 and mat2"):
            fast(y.double())
        assert fast.variants == 2
