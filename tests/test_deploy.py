"""Deployment paths for every registered entry: torch.export (static and dynamic
batch), torch.compile (aot_eager, fullgraph), ONNX through onnxruntime.

An exemption here is a claim that the path fails for that entry, with its reason
in ``register(exempt=...)``. The suite checks the claim: an exempt entry whose
path now works fails the test (remove the exemption), and so does a regression.
Inductor over the whole registry is ``make test-slow`` (BLOCKZOO_INDUCTOR_ALL=1);
here one representative entry per family compiles with inductor.
"""

import os

import pytest

import blockzoo
from blockzoo import testing

NAMES = blockzoo.list_blocks()


def _claimed(category: str) -> dict[str, str]:
    return {n: blockzoo.spec(n).exempt[category] for n in NAMES if category in blockzoo.spec(n).exempt}


def _run(category: str, name: str) -> None:
    s = blockzoo.spec(name)
    check = testing.DEPLOY_CHECKS[category]
    if category in s.exempt:
        with pytest.raises(testing.ConformanceError):
            check(s)
        return
    if category == "fullgraph" and "compile" in s.exempt:
        pytest.skip("exempt from compile altogether")
    if category in ("dynamic_batch",) and "export" in s.exempt:
        pytest.skip("exempt from export altogether")
    check(s)


@pytest.mark.export
@pytest.mark.parametrize("name", NAMES)
def test_export(name: str) -> None:
    _run("export", name)


@pytest.mark.export
@pytest.mark.parametrize("name", NAMES)
def test_dynamic_batch(name: str) -> None:
    _run("dynamic_batch", name)


@pytest.mark.compile
@pytest.mark.parametrize("name", NAMES)
def test_compile_aot_eager(name: str) -> None:
    _run("compile", name)


@pytest.mark.compile
@pytest.mark.parametrize("name", sorted(_claimed("fullgraph")))
def test_graph_breaks_are_real(name: str) -> None:
    """An entry listing graph breaks really has them (fullgraph=True fails)."""
    _run("fullgraph", name)


@pytest.mark.onnx
@pytest.mark.parametrize("name", NAMES)
def test_onnx(name: str) -> None:
    _run("onnx", name)


def _representatives() -> list[str]:
    if os.environ.get("BLOCKZOO_INDUCTOR_ALL"):
        return [n for n in NAMES if "compile" not in blockzoo.spec(n).exempt]
    reps: dict[str, str] = {}
    for n in NAMES:
        s = blockzoo.spec(n)
        if "compile" not in s.exempt:
            reps.setdefault(s.family, n)
    return sorted(reps.values())


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("name", _representatives())
def test_inductor(name: str) -> None:
    testing.check_compile(blockzoo.spec(name), backend="inductor")


def test_exemption_reasons() -> None:
    for category in testing.DEPLOY_CHECKS:
        for name, reason in _claimed(category).items():
            assert len(reason.split()) >= 3, f"{name}: give a reason for the {category} exemption"
