"""The conformance harness: the promises every registered entry keeps, as checks.

``tests/test_conformance.py`` runs every check over every registered entry, so a
new block is tested with no new test code. The checks are public so that users
who ``register`` their own blocks can hold them to the same standard::

    from blockzoo.testing import run_all
    run_all(blockzoo.spec("my_block"))      # raises ConformanceError on a fault

Each check raises ``ConformanceError`` naming the entry and what went wrong; an
entry that cannot meet a category lists it in ``register(exempt={...})`` with
its reason, and the test suite skips it there (and only there).
"""

from __future__ import annotations

import copy
import inspect
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from blockzoo.checks import ShapeError
from blockzoo.export import export_onnx, export_program, run_onnx
from blockzoo.registry import Size, Spec

__all__ = [
    "CHECKS",
    "ZERO_GRAD_RTOL",
    "ConformanceError",
    "check_bad_input",
    "check_batch_independence",
    "check_compile",
    "check_determinism",
    "check_dynamic_batch",
    "check_export",
    "check_float64",
    "check_forward",
    "check_fullgraph",
    "check_grad",
    "check_gradcheck",
    "check_onnx",
    "check_sizes",
    "run_all",
    "zero_grad_parameters",
]


class ConformanceError(AssertionError):
    """An entry broke one of the promises every block makes."""


def _fail(s: Spec, what: str) -> ConformanceError:
    return ConformanceError(f"{s.name}: {what}")


def _tensors(out: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def _float_tensors(out: Any) -> list[torch.Tensor]:
    return [t for t in _tensors(out) if t.is_floating_point() or t.is_complex()]


def _build(s: Spec, seed: int = 0, **overrides: Any) -> nn.Module:
    torch.manual_seed(seed)
    return s.build_example(**overrides)


def _expected_shape(s: Spec, args: Sequence[Any], config: dict[str, Any]) -> tuple[int, ...] | None:
    rule = s.example.out_shape
    if rule is None:
        return None
    in_shape = tuple(args[0].shape)
    if rule == "same":
        return in_shape
    return tuple(rule(in_shape, config))


def _check_output(s: Spec, out: Any, args: Sequence[Any], batch: int, where: str,
                  config: dict[str, Any] | None = None) -> None:
    tensors = _float_tensors(out)
    if not tensors:
        raise _fail(s, f"{where}: the output holds no floating-point tensor")
    for i, t in enumerate(tensors):
        if not torch.isfinite(t).all():
            raise _fail(s, f"{where}: output {i} {tuple(t.shape)} is not finite")
    dims = s.out_batch_dims or (0,) * len(tensors)
    for t, d in zip(tensors, dims, strict=False):
        if t.dim() <= d or t.shape[d] != batch:
            raise _fail(s, f"{where}: output {tuple(t.shape)} lacks batch {batch} at dim {d}")
    want = _expected_shape(s, args, dict(s.example.config) if config is None else config)
    if want is not None and tuple(tensors[0].shape) != want:
        raise _fail(s, f"{where}: expected output shape {want}, got {tuple(tensors[0].shape)}")


def check_forward(s: Spec) -> None:
    """Forward on the example input: finite output of the documented shape."""
    block = _build(s).eval()
    args = s.make_input(batch=2)
    with torch.no_grad():
        out = block(*args)
    _check_output(s, out, args, 2, f"example input {_shape_str(args)}")


def _shape_str(args: Sequence[Any]) -> str:
    return ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))


def _stride_overrides(s: Spec) -> list[dict[str, Any]]:
    """The example's config, then stride 2 if the constructor takes a stride (and the
    example does not already use 2)."""
    takes = "stride" in inspect.signature(s.builder).parameters
    return [{}, {"stride": 2}] if takes and s.example.config.get("stride") != 2 else [{}]


def check_sizes(s: Spec) -> None:
    """Batch 1 and 3 at the example size and at every other test size (non-square, odd);
    an entry that takes a ``stride`` is also tried at stride 2, and its output shape rule
    must predict the strided output."""
    sizes: list[Size] = [s.example.size, *s.example.test_sizes()]
    for over in _stride_overrides(s):
        block = _build(s, **over).eval()
        config = {**s.example.config, **over}
        tag = "".join(f", {k}={v}" for k, v in over.items())
        for batch in (1, 3):
            for size in sizes:
                args = s.make_input(batch=batch, size=size, seed=batch)
                try:
                    with torch.no_grad():
                        out = block(*args)
                except Exception as e:
                    raise _fail(
                        s, f"batch {batch}, size {size}{tag} ({_shape_str(args)}) failed: "
                        f"{type(e).__name__}: {e}"
                    ) from e
                _check_output(s, out, args, batch, f"batch {batch}, size {size}{tag}", config)


def _slice_args(s: Spec, args: Sequence[Any], i: int) -> tuple[Any, ...]:
    batched = s.example.inputs.batched
    return tuple(a[i : i + 1] if k in batched else a for k, a in enumerate(args))


def check_batch_independence(s: Spec, *, batch: int = 3) -> None:
    """In eval mode, sample i's output equals the output of sample i fed alone.

    Within rtol 1e-4 and an atol of 1e-5 times the output's largest magnitude (at least
    1): a deep net at its initial, eval-mode BN statistics (MobileOne-S0: logits ~1e3)
    differs between batch sizes by float32 rounding of that scale, which is no batch
    dependence.
    """
    block = _build(s).eval()
    args = s.make_input(batch=batch, seed=1)
    with torch.no_grad():
        full = _float_tensors(block(*args))
        dims = s.out_batch_dims or (0,) * len(full)
        for i in range(batch):
            alone = _float_tensors(block(*_slice_args(s, args, i)))
            for k, (f, a, d) in enumerate(zip(full, alone, dims, strict=False)):
                part = f.narrow(d, i, 1)
                atol = 1e-5 * max(1.0, f.abs().max().item()) if f.numel() else 1e-5
                if part.shape != a.shape or not torch.allclose(part, a, rtol=1e-4, atol=atol):
                    diff = (part - a).abs().max().item() if part.shape == a.shape else "shape"
                    raise _fail(
                        s, f"output {k} of sample {i} changes with the rest of the batch "
                        f"(max |diff| {diff})"
                    )


# A parameter whose float64 gradient is at most ZERO_GRAD_RTOL times the block's typical
# gradient counts as identically zero (see ``zero_grad_parameters``).
ZERO_GRAD_RTOL = 1e-11


def _projected_loss(outs: Sequence[torch.Tensor]) -> torch.Tensor:
    # A random projection of the output: a plain sum can hide parameters whose
    # gradient cancels (e.g. anything before a softmax summed over its axis).
    g = torch.Generator().manual_seed(3)
    return sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)


def zero_grad_parameters(s: Spec, *, rtol: float = ZERO_GRAD_RTOL) -> list[str]:
    """The parameters whose gradient is identically zero, decided in float64.

    A float64 copy of the example block (training mode) is fed the example input in
    float64 and the same random projection of its output as ``check_grad`` is
    back-propagated. With ``m(t)`` = max |grad t| for each parameter and each
    floating-point input t, and ``typical`` = the median of m over all of them, a
    parameter is *zero* when ``m(p) <= rtol * typical`` (``rtol`` = 1e-11 by default).

    A parameter that cannot change the output (a bias before a softmax over the axis
    it is constant on) has an exact gradient of 0. Float32 leaves it rounding noise of
    about 1e-7 of the others here and an exact 0 on another machine, so a float32 test
    passes or fails by chance; float64 leaves 1e-18 to 1e-13 of the median (the largest
    behind a BatchNorm over 3 samples), while the smallest true gradient among the
    registered entries is 4e-9 of it (resnext50). The median, not the maximum: in a deep
    network in train mode, BatchNorm over a few 1x1 maps makes the largest gradient 1e11
    times the smallest live one.
    """
    block = _build(s).double().train()
    args = tuple(
        a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in s.make_input(batch=3, seed=2, dtype=torch.float64)
    )
    named = [(n, p) for n, p in block.named_parameters() if p.requires_grad]
    if not named:
        return []
    leaves = [p for _, p in named] + [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad(_projected_loss(_float_tensors(block(*args))), leaves, allow_unused=True)
    mags = [0.0 if g is None else g.abs().max().item() for g in grads]
    typical = statistics.median(mags)
    return [n for (n, _), m in zip(named, mags, strict=False) if m <= rtol * typical]


def check_grad(s: Spec, *, allow_zero: bool = False) -> None:
    """Training mode: every parameter gets a finite gradient that is not identically zero.

    Finiteness is checked on the float32 block; "identically zero" is decided in
    float64, relative to the block's other gradients (``zero_grad_parameters``: at
    most 1e-11 of their median), so that rounding noise neither hides a parameter
    that cannot change the output nor invents one.

    A parameter-free block (SimAM, positional encodings) must instead pass a finite,
    non-zero gradient back to its floating-point inputs.
    """
    block = _build(s).train()
    args = s.make_input(batch=3, seed=2)
    parameter_free = not any(p.requires_grad for p in block.parameters())
    if parameter_free:
        args = tuple(
            a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args
        )
    outs = _float_tensors(block(*args))
    if parameter_free:
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        if not leaves or not any(o.requires_grad for o in outs):
            raise _fail(s, "has no parameters and its output does not depend differentiably on its input")
    _projected_loss(outs).backward()
    if parameter_free:
        for i, a in enumerate(leaves):
            if a.grad is None or not torch.isfinite(a.grad).all() or not a.grad.any():
                raise _fail(s, f"input {i} received no finite, non-zero gradient")
        return
    missing = [n for n, p in block.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise _fail(s, f"parameters received no gradient: {missing}")
    bad = [n for n, p in block.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        raise _fail(s, f"non-finite gradients in {bad}")
    if allow_zero:
        return
    zero = zero_grad_parameters(s)
    if zero:
        raise _fail(s, f"gradients identically zero for {zero} (float64, <= {ZERO_GRAD_RTOL:g} "
                    "of the median gradient)")


def check_determinism(s: Spec) -> None:
    """Eval is deterministic; a state_dict round trip and ``copy.deepcopy`` reproduce outputs."""
    block = _build(s).eval()
    args = s.make_input(batch=2, seed=4)
    with torch.no_grad():
        ref = _tensors(block(*args))
        again = _tensors(block(*args))
        if any(not torch.equal(a, b) for a, b in zip(ref, again, strict=True)):
            raise _fail(s, "two eval forwards on the same input differ")
        other = _build(s, seed=12345).eval()
        other.load_state_dict(block.state_dict())
        if any(not torch.equal(a, b) for a, b in zip(ref, _tensors(other(*args)), strict=True)):
            raise _fail(s, "a fresh instance loaded with state_dict() gives other outputs")
        clone = copy.deepcopy(block)
        if any(not torch.equal(a, b) for a, b in zip(ref, _tensors(clone(*args)), strict=True)):
            raise _fail(s, "copy.deepcopy gives other outputs")


def check_float64(s: Spec) -> None:
    """The block runs in float64 and returns float64."""
    block = _build(s).double().eval()
    args = s.make_input(batch=2, dtype=torch.float64)
    with torch.no_grad():
        outs = _float_tensors(block(*args))
    wrong = [str(o.dtype) for o in outs if o.dtype != torch.float64]
    if wrong:
        raise _fail(s, f"float64 input gave outputs of dtype {wrong}")
    if not all(torch.isfinite(o).all() for o in outs):
        raise _fail(s, "float64 output is not finite")


def check_gradcheck(s: Spec) -> None:
    """``torch.autograd.gradcheck`` in float64 on the tiny config.

    Differentiates w.r.t. the floating-point inputs; an entry fed integer ids is
    checked w.r.t. its parameters instead.
    """
    cfg = {**s.example.config, **s.example.tiny}
    block = _build(s, **s.example.tiny).double().eval()
    args = list(s.make_input(batch=2, config=cfg, dtype=torch.float64, seed=5))
    float_idx = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    if float_idx:
        def f(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            full = list(args)
            for i, x in zip(float_idx, xs, strict=True):
                full[i] = x
            return tuple(_float_tensors(block(*full)))

        inputs = tuple(args[i].detach().requires_grad_() for i in float_idx)
    else:
        names = [n for n, p in block.named_parameters()]
        params = {n: p.detach() for n, p in block.named_parameters()}

        def f(*ps: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(_float_tensors(
                torch.func.functional_call(block, dict(zip(names, ps, strict=True)), tuple(args))
            ))

        inputs = tuple(params[n].clone().requires_grad_() for n in names)
    try:
        ok = torch.autograd.gradcheck(f, inputs, fast_mode=True, atol=1e-5, rtol=1e-3)
    except RuntimeError as e:
        raise _fail(s, f"gradcheck failed: {str(e).splitlines()[0]}") from e
    if not ok:
        raise _fail(s, "gradcheck failed")


def check_bad_input(s: Spec) -> None:
    """Wrong rank and wrong channel/feature count raise ``ShapeError`` naming the block."""
    block = _build(s).eval()
    for label, args in s.example.inputs.bad(2, s.example.size, s.example.config):
        try:
            with torch.no_grad():
                block(*args)
        except ShapeError as e:
            msg = str(e).lower()
            names = {s.name.lower(), type(block).__name__.lower()}
            if not any(n in msg or n.replace("_", "") in msg for n in names):
                raise _fail(s, f"{label}: ShapeError does not name the block: {e}") from e
            continue
        except Exception as e:
            raise _fail(
                s, f"{label}: raised {type(e).__name__} instead of ShapeError: {e}"
            ) from e
        raise _fail(s, f"{label}: accepted the bad input {_shape_str(args)} without error")


def _compare(s: Spec, want: Sequence[torch.Tensor], got: Sequence[torch.Tensor], what: str,
             *, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    if len(want) != len(got):
        raise _fail(s, f"{what} returned {len(got)} tensors, eager {len(want)}")
    for i, (a, b) in enumerate(zip(want, got, strict=True)):
        b = b.to(a.dtype) if a.dtype != b.dtype and a.is_floating_point() else b
        if a.shape != b.shape or not torch.allclose(a, b, rtol=rtol, atol=atol):
            diff = (a - b).abs().max().item() if a.shape == b.shape else f"shape {tuple(b.shape)}"
            raise _fail(s, f"{what}: output {i} differs from eager (max |diff| {diff})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def check_export(s: Spec) -> None:
    """``torch.export.export`` captures the block and the program equals eager."""
    block = _build(s).eval()
    args = s.make_input(batch=2, seed=6)
    with torch.no_grad():
        want = _tensors(block(*args))
        try:
            program = export_program(block, args, dynamic_batch=False)
            got = _tensors(program.module()(*args))
        except Exception as e:
            raise _fail(s, f"torch.export failed: {_first_line(e)}") from e
    _compare(s, want, got, "exported program")


def check_dynamic_batch(s: Spec) -> None:
    """Exported with a dynamic batch dimension, the program runs at other batch sizes."""
    block = _build(s).eval()
    batched = s.example.inputs.batched
    with torch.no_grad():
        try:
            program = export_program(block, s.make_input(batch=2, seed=6), batched=batched).module()
        except Exception as e:
            raise _fail(s, f"torch.export with a dynamic batch failed: {_first_line(e)}") from e
        for batch in (3, 1):
            args = s.make_input(batch=batch, seed=7)
            try:
                got = _tensors(program(*args))
            except Exception as e:
                raise _fail(s, f"exported program at batch {batch} failed: {_first_line(e)}") from e
            _compare(s, _tensors(block(*args)), got, f"dynamic-batch program at batch {batch}")


def check_compile(s: Spec, *, backend: str = "aot_eager") -> None:
    """``torch.compile`` (``fullgraph=True`` unless the entry lists its graph breaks) equals eager."""
    import torch._dynamo

    torch._dynamo.reset()
    block = _build(s).eval()
    args = s.make_input(batch=2, seed=8)
    fullgraph = "fullgraph" not in s.exempt
    with torch.no_grad():
        want = _tensors(block(*args))
        try:
            got = _tensors(torch.compile(block, backend=backend, fullgraph=fullgraph)(*args))
        except Exception as e:
            raise _fail(
                s, f"torch.compile(backend={backend!r}, fullgraph={fullgraph}) failed: {_first_line(e)}"
            ) from e
        finally:
            torch._dynamo.reset()
    _compare(s, want, got, f"compiled ({backend})", rtol=1e-4, atol=1e-5)


def check_fullgraph(s: Spec) -> None:
    """The whole forward is one graph under ``torch.compile(fullgraph=True)``."""
    check_compile(_without_exemption(s, "fullgraph"))


def _without_exemption(s: Spec, category: str) -> Spec:
    import dataclasses

    return dataclasses.replace(s, exempt={k: v for k, v in s.exempt.items() if k != category})


def check_onnx(s: Spec, *, rtol: float = 1e-3, atol: float = 1e-4) -> None:
    """``torch.onnx.export`` works and onnxruntime reproduces eager within rtol 1e-3, atol 1e-4.

    A re-parameterizable block is exported (and compared) in its deploy form.
    """
    import tempfile

    block = _build(s).eval()
    reparam = any(hasattr(m, "reparameterize") for m in block.modules())
    args = s.make_input(batch=2, seed=9)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/{s.name}.onnx"
        try:
            export_onnx(block, args, path, reparameterize=reparam)
            got = run_onnx(path, args)
        except Exception as e:
            raise _fail(s, f"ONNX export/run failed: {_first_line(e)}") from e
    with torch.no_grad():
        want = _tensors(block(*args))
    _compare(s, want, got, "onnxruntime", rtol=rtol, atol=atol)


CHECKS: dict[str, Callable[[Spec], None]] = {
    "forward": check_forward,
    "sizes": check_sizes,
    "batch_independence": check_batch_independence,
    "grad": check_grad,
    "determinism": check_determinism,
    "float64": check_float64,
    "gradcheck": check_gradcheck,
    "bad_input": check_bad_input,
}

# The deployment paths: for these, an exemption is a claim that the path fails,
# and the suite checks the claim (a fix or a regression both show up).
DEPLOY_CHECKS: dict[str, Callable[[Spec], None]] = {
    "export": check_export,
    "dynamic_batch": check_dynamic_batch,
    "compile": check_compile,
    "fullgraph": check_fullgraph,
    "onnx": check_onnx,
}


def run_all(s: Spec, *, deploy: bool = False) -> None:
    """Run every check the entry is not exempt from (and the deployment paths if asked)."""
    checks = {**CHECKS, **(DEPLOY_CHECKS if deploy else {})}
    for category, check in checks.items():
        if category not in s.exempt:
            check(s)
