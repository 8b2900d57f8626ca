"""Deployment paths: compiled modules, ``torch.export`` programs and ONNX files.

``compile`` is ``torch.compile`` (inductor by default) told what the registry knows
about the entries inside the module: whether their forward is one graph.

Both go through PyTorch's own machinery: ``torch.export.export`` (non-strict
tracing) with the batch dimension declared dynamic where the block allows, and
``torch.onnx.export(..., dynamo=True)``, whose ONNX model ``run_onnx`` executes with
onnxruntime (the ``export`` extra). A re-parameterizable model is exported in its
deploy form when ``reparameterize=True``.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_unflatten

from blockzoo.checks import ConfigError, ShapeError
from blockzoo.registry import ENTRY_ATTR, Spec, list_blocks, spec

__all__ = ["AOTCompiled", "compile", "export_onnx", "export_program", "outputs", "registered_entries",
           "run_onnx"]

log = logging.getLogger(__name__)


def outputs(out: Any) -> list[torch.Tensor]:
    """The tensors of a (possibly nested) output, in pytree order."""
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def registered_entries(module: nn.Module) -> list[tuple[str, Spec]]:
    """Every registered entry inside ``module`` (itself included), as (path, spec).

    A submodule is an entry when ``create`` built it (it carries its name) or when its
    class is a registered builder; the path is its ``named_modules`` name (``""`` for
    ``module`` itself).
    """
    by_class = {s.builder: s for s in map(spec, list_blocks()) if isinstance(s.builder, type)}
    found = []
    for path, m in module.named_modules():
        entry = getattr(m, ENTRY_ATTR, None)
        s = spec(entry[0]) if entry is not None else by_class.get(type(m))
        if s is not None:
            found.append((path, s))
    return found


def compile(  # the package's verb, like torch.compile (shadows the builtin here only)
    module: nn.Module,
    *,
    backend: str = "inductor",
    fullgraph: bool | None = None,
    example_inputs: Sequence[Any] | None = None,
    aot: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """``torch.compile`` of ``module``, honouring what the registry declares about it.

    - An entry inside ``module`` that the registry exempts from compiling
      (``register(exempt={"compile": reason})``) makes this raise ``ConfigError`` with
      that reason: compile around it yourself (``torch.compiler.disable`` on it).
    - ``fullgraph`` defaults to ``True`` when ``module`` is itself a registered entry that
      declares no graph breaks (``exempt={"fullgraph": reason}``), so a new break fails
      loudly instead of silently running part of the forward in eager mode; to ``False``
      otherwise (an entry with declared breaks, or a user's module whose own code the
      registry knows nothing about). Asking ``fullgraph=True`` for a module holding an
      entry with declared breaks raises ``ConfigError`` naming it.
    - ``torch.compile`` compiles on the first call. With ``example_inputs`` the module is
      compiled now (one call under ``torch.no_grad``), and a failure raises
      ``ConfigError`` naming the module, the backend and the compiler's first line.

    - ``aot=True`` (inference only) skips dynamo: the module is captured with
      ``torch.export`` at ``example_inputs`` (required) and compiled ahead of time by
      AOTInductor; the result is an ``AOTCompiled`` module, see there. Its call costs
      a few microseconds where ``torch.compile``'s guards cost tens (docs/benchmarks.md).

    Other keyword arguments (``mode``, ``dynamic``, ``options``) go to ``torch.compile``
    (with ``aot=True`` only ``options``, given to AOTInductor as ``inductor_configs``, and
    ``max_variants``).
    The result is PyTorch's ``OptimizedModule``: it shares ``module``'s parameters, and its
    ``state_dict`` keys carry the ``_orig_mod.`` prefix (save ``module``, not the result).

    Example:
        >>> se = blockzoo.create("se", channels=64)
        >>> fast = blockzoo.compile(se)              # fullgraph=True: SE is one graph
        >>> fast(torch.randn(2, 64, 7, 9)).shape     # compiled here, on the first call
        torch.Size([2, 64, 7, 9])
    """
    if not isinstance(module, nn.Module):
        raise ConfigError(f"blockzoo.compile: expected an nn.Module, got {type(module).__name__}")
    entries = registered_entries(module)
    where = {path: s for path, s in entries}
    blocked = [(p, s) for p, s in entries if "compile" in s.exempt]
    if blocked:
        p, s = blocked[0]
        raise ConfigError(f"blockzoo.compile: {s.name!r}{f' at {p!r}' if p else ''} cannot be compiled: "
                          f"{s.exempt['compile']}")
    breaks = [(p, s) for p, s in entries if "fullgraph" in s.exempt]
    top = where.get("")
    if fullgraph is None:
        fullgraph = top is not None and not breaks
    elif fullgraph and breaks:
        p, s = breaks[0]
        raise ConfigError(f"blockzoo.compile: fullgraph=True but {s.name!r}{f' at {p!r}' if p else ''} "
                          f"declares graph breaks: {s.exempt['fullgraph']}")
    if aot:
        if example_inputs is None:
            raise ConfigError("blockzoo.compile: aot=True needs example_inputs (the input to compile for)")
        extra = sorted(set(kwargs) - {"options", "max_variants"})
        if backend != "inductor" or extra:
            raise ConfigError(f"blockzoo.compile: aot=True compiles with AOTInductor; backend={backend!r} "
                              f"and {extra} do not apply")
        return AOTCompiled(module, example_inputs, name=top.name if top is not None else None, **kwargs)
    compiled = torch.compile(module, backend=backend, fullgraph=fullgraph, **kwargs)
    if example_inputs is not None:
        name = top.name if top is not None else type(module).__name__
        try:
            with torch.no_grad():
                compiled(*example_inputs)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"blockzoo.compile: {name} could not be compiled (backend={backend!r}, "
                              f"fullgraph={fullgraph}): {type(e).__name__}: {first}") from e
    return compiled


_Key = tuple[tuple[tuple[int, ...], tuple[int, ...], torch.dtype, torch.device], ...]


def _key(args: Sequence[Any]) -> _Key:
    return tuple((tuple(a.shape), a.stride(), a.dtype, a.device) for a in args)


def _describe(key: _Key) -> str:
    """``(8, 16, 8, 8) float32``, with the strides when they are not the contiguous ones."""
    return ", ".join(f"{tuple(s)} {str(d).replace('torch.', '')}"
                     + ("" if st == _contiguous(s) else f" strides {st}") for s, st, d, _ in key)


def _contiguous(shape: Sequence[int]) -> tuple[int, ...]:
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= max(n, 1)
    return tuple(reversed(out))


class AOTCompiled(nn.Module):
    """An eval-mode module compiled ahead of time: ``torch.export`` then AOTInductor.

    Built by ``blockzoo.compile(module, example_inputs=args, aot=True)``. A call runs the
    compiled C++ entry point directly: no dynamo frame evaluation and no guard tree, only a
    check that the tensors have exactly the shapes, strides, dtypes and devices of a
    compiled variant (integer and dtype comparisons, ~1 us). The compiled code itself
    checks nothing (fed another shape it reads out of bounds), so that check is what keeps
    it correct: a call with new input specs compiles a new variant (seconds; like a
    ``torch.compile`` recompile) up to ``max_variants``, then raises ``ShapeError``; a
    variant that does not run or compile (e.g. a dtype the weights do not match: the eager
    module runs once on the new input first) raises ``ConfigError``.

    - Inference only: the compiled program has no backward. A call with autograd
      recording, when ``module`` had trainable parameters or an input requires grad, raises
      ``ConfigError`` (no silent missing gradients); run it under ``torch.no_grad()`` or
      ``torch.inference_mode()``.
    - Weights are a snapshot, as in ``export_program`` and ``export_onnx``: the module is
      copied in eval mode when this is built (``module`` keeps its mode) and later changes
      to ``module`` are not seen; compile again after training. (AOTInductor can take
      user-managed weight tensors, but it folds some of them into its own constants, e.g.
      SE's first bias, so in-place updates would be seen only in part.)
    - Keyword arguments and non-tensor arguments are not supported (pass tensors
      positionally).
    """

    def __init__(self, module: nn.Module, example_inputs: Sequence[Any], *, name: str | None = None,
                 options: dict[str, Any] | None = None, max_variants: int = 8) -> None:
        super().__init__()
        if not all(isinstance(a, torch.Tensor) for a in example_inputs):
            raise ConfigError("blockzoo.compile(aot=True): example_inputs must be tensors, got "
                              + ", ".join(type(a).__name__ for a in example_inputs))
        self.name = name or type(module).__name__
        self.max_variants = max_variants
        self._options = dict(options or {})
        # A snapshot in eval mode (not a submodule: state_dict stays empty); every variant
        # is compiled from it, so all of them compute with the same weights.
        self._source = [copy.deepcopy(module).eval().requires_grad_(False)]
        self._trainable = any(p.requires_grad for p in module.parameters())
        self._variants: dict[_Key, tuple[Any, Any, bool]] = {}
        self._last: tuple[_Key, Any, Any, bool] | None = None
        self._compile(_key(example_inputs), tuple(example_inputs))

    @property
    def variants(self) -> int:
        """How many input signatures have been compiled."""
        return len(self._variants)

    def _compile(self, key: _Key, args: tuple[torch.Tensor, ...]) -> tuple[Any, Any, bool]:
        module = self._source[0]
        if len(self._variants) >= self.max_variants:
            raise ShapeError(f"{self.name} (compiled, aot): no variant for input {_describe(key)} and "
                             f"max_variants={self.max_variants} reached; compiled for: "
                             + "; ".join(_describe(k) for k in self._variants))
        try:
            with torch.no_grad():
                module(*args)  # an input the module refuses fails here, not after seconds of C++
                program = torch.export.export(module, args, strict=False)
                with tempfile.TemporaryDirectory(prefix="blockzoo-aot-") as tmp:
                    path = torch._inductor.aoti_compile_and_package(
                        program, package_path=os.path.join(tmp, "model.pt2"), inductor_configs=self._options)
                    runner = torch._inductor.aoti_load_package(path)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"blockzoo.compile: {self.name} could not be compiled ahead of time for input "
                              f"{_describe(key)}: {type(e).__name__}: {first}") from e
        out_spec = program.call_spec.out_spec
        single = out_spec is not None and out_spec.is_leaf()
        entry = (runner.loader, out_spec, single)
        self._variants[key] = entry
        return entry

    def forward(self, *args: torch.Tensor) -> Any:
        if torch.is_grad_enabled() and (self._trainable
                                        or any(getattr(a, "requires_grad", False) for a in args)):
            raise ConfigError(f"{self.name} (compiled, aot) is inference-only and has no backward: call it "
                              f"under torch.no_grad() or torch.inference_mode()")
        last = self._last
        # Fast path: the same specs as the previous call (plain attribute comparisons).
        if last is not None and len(args) == len(last[0]) and all(
            type(a) is torch.Tensor and a.shape == s and a.dtype == d and a.device == dev and a.stride() == st
            for a, (s, st, d, dev) in zip(args, last[0], strict=True)
        ):
            loader, out_spec, single = last[1], last[2], last[3]
        else:
            if not all(isinstance(a, torch.Tensor) for a in args):
                raise ShapeError(f"{self.name} (compiled, aot): expected tensors, got "
                                 + ", ".join(type(a).__name__ for a in args))
            key = _key(args)
            loader, out_spec, single = self._variants.get(key) or self._compile(key, args)
            self._last = (key, loader, out_spec, single)
        outs = loader.boxed_run(list(args))
        return outs[0] if single else tree_unflatten(outs, out_spec)

    def extra_repr(self) -> str:
        return f"{self.name}, variants={len(self._variants)}"


def _batch_shapes(args: Sequence[Any], batched: Sequence[int]) -> tuple[Any, ...]:
    batch = torch.export.Dim("batch", min=1, max=4096)
    return tuple(
        {0: batch} if (i in batched and isinstance(a, torch.Tensor)) else None
        for i, a in enumerate(args)
    )


def export_program(
    model: nn.Module,
    args: Sequence[Any],
    *,
    dynamic_batch: bool = True,
    batched: Sequence[int] = (0,),
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` at ``args`` (eval mode, non-strict tracing).

    With ``dynamic_batch`` the first dimension of the ``batched`` arguments is
    declared dynamic, so the program runs at any batch size; trace it at batch >= 2
    (PyTorch specializes sizes 0 and 1).
    """
    model = model.eval()
    first = args[batched[0]] if batched and isinstance(args[batched[0]], torch.Tensor) else None
    if dynamic_batch and first is not None and first.shape[0] < 2:
        raise ConfigError(f"export_program: trace a dynamic batch at batch >= 2, got {first.shape[0]}")
    shapes = _batch_shapes(args, batched) if dynamic_batch else None
    return torch.export.export(model, tuple(args), dynamic_shapes=shapes, strict=False)


def _deploy_copy(model: nn.Module, reparameterize: bool) -> nn.Module:
    model = copy.deepcopy(model).eval()
    if reparameterize:
        from blockzoo.rep.fuse import reparameterize as fuse

        fuse(model)
    return model


def export_onnx(
    model: nn.Module,
    args: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    reparameterize: bool = False,
    dynamic_batch: bool = False,
    batched: Sequence[int] = (0,),
) -> Path:
    """Write ``model`` at ``args`` as an ONNX file (PyTorch's dynamo-based exporter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _deploy_copy(model, reparameterize)
    shapes = _batch_shapes(args, batched) if dynamic_batch else None
    # The exporter and its optimizer log every pass and every torchvision op they
    # cannot register at INFO/WARNING; that is noise for our users.
    noisy = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch's own pytree deprecation noise, raised while the exporter copies specs.
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(
                model, tuple(args), dynamo=True, dynamic_shapes=shapes, verbose=False, report=False
            )
    finally:
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))
    return path


def run_onnx(path: str | os.PathLike[str], args: Sequence[Any]) -> list[torch.Tensor]:
    """Run an ONNX file with onnxruntime on CPU; returns its outputs as tensors."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("run_onnx needs onnxruntime: pip install 'blockzoo[export]'") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors, strict=False)}
    return [torch.from_numpy(o) for o in session.run(None, feed)]
