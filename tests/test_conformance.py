"""Generic conformance: every registered entry keeps every promise of DESIGN.md.

Parametrized over the registry, like timm's tests/test_models.py: a newly
registered block is tested here with no new test code. An entry that cannot
meet a category declares it in ``register(exempt={category: reason})``; the
named lists below are read from the registry so the reasons live beside the
block, and ``test_exemptions_have_reasons`` keeps them honest.
"""

import pytest

import blockzoo
from blockzoo import testing
from blockzoo.registry import EXEMPT_CATEGORIES

NAMES = blockzoo.list_blocks()


def exemptions(category: str) -> dict[str, str]:
    """Entries exempt from ``category``, with their reasons."""
    return {n: blockzoo.spec(n).exempt[category] for n in NAMES if category in blockzoo.spec(n).exempt}


EXEMPT = {c: exemptions(c) for c in EXEMPT_CATEGORIES}


def _run(category: str, name: str) -> None:
    reason = EXEMPT.get(category, {}).get(name)
    if reason:
        pytest.skip(f"exempt: {reason}")
    testing.CHECKS[category](blockzoo.spec(name))


@pytest.mark.forward
@pytest.mark.parametrize("name", NAMES)
def test_forward(name: str) -> None:
    _run("forward", name)


@pytest.mark.sizes
@pytest.mark.parametrize("name", NAMES)
def test_sizes(name: str) -> None:
    _run("sizes", name)


@pytest.mark.batch_independence
@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name: str) -> None:
    _run("batch_independence", name)


@pytest.mark.grad
@pytest.mark.parametrize("name", NAMES)
def test_grad(name: str) -> None:
    _run("grad", name)


@pytest.mark.determinism
@pytest.mark.parametrize("name", NAMES)
def test_determinism(name: str) -> None:
    _run("determinism", name)


@pytest.mark.float64
@pytest.mark.parametrize("name", NAMES)
def test_float64(name: str) -> None:
    _run("float64", name)


@pytest.mark.float64
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name: str) -> None:
    _run("gradcheck", name)


@pytest.mark.bad_input
@pytest.mark.parametrize("name", NAMES)
def test_bad_input(name: str) -> None:
    _run("bad_input", name)


def test_exemptions_have_reasons() -> None:
    for category, entries in EXEMPT.items():
        for name, reason in entries.items():
            assert len(reason.split()) >= 3, f"{name}: exemption from {category} needs a reason"


def test_every_entry_documented() -> None:
    """Docstring with the paper, an equation and a Shape: section, for every entry."""
    for name in NAMES:
        s = blockzoo.spec(name)
        doc = s.builder.__doc__ or ""
        assert "Shape:" in doc, f"{name}: docstring lacks a Shape: section"
        assert "Args:" in doc, f"{name}: docstring lacks an Args: section"
        assert s.paper and s.year > 1900, f"{name}: paper facts missing"
        assert s.summary, f"{name}: empty docstring summary"
