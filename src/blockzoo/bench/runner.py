"""Measure registered entries: params, FLOPs, latency, throughput, memory, efficiency.

``run_bench(names, settings)`` builds each entry at its registered example
config (updated by ``BenchSettings.config``), feeds it its example input (or the
sizes given in ``BenchSettings``) and returns one row per entry. An entry that
fails to build or run at the requested size becomes a row in
``BenchResult.failures`` with its error: it is never silently dropped.

What each column means (one forward is ``model(*inputs)``):

- ``params``: parameter count; ``flops``: FLOPs of one forward
  (``blockzoo.bench.flops``: torch's ``FlopCounterMode`` with SDPA on every backend,
  2 per multiply-accumulate; elementwise ops are not counted).
- ``fwd_ms`` / ``fwd_iqr_ms``: median and interquartile range of the forward
  latency in eval mode under ``torch.no_grad``; ``train_ms`` / ``train_iqr_ms``:
  the same for forward + backward in train mode (loss: sum of the outputs).
- ``samples_s``: batch / median forward time.
- ``fwd_mem_mib`` / ``train_mem_mib``: peak tensor memory of one forward / one
  forward+backward (see ``blockzoo.bench.memory``).
- ``gflops``: forward FLOPs / median forward time; ``pct_peak``: that as a
  percentage of this machine's dense matmul GFLOP/s at the same dtype, measured
  in the same run (``blockzoo.bench.peak``).

With ``BenchSettings(compile=True)`` (``blockzoo bench --compile``) each row also has
``COMPILE_COLUMNS``, measured on ``blockzoo.compile(model)`` right after the eager
columns, same inputs, warm-up and repeats (the warm-up calls after the first one run the
compiled code): ``compiled_fwd_ms`` / ``compiled_train_ms`` (medians), ``fwd_speedup``
/ ``train_speedup`` (eager median / compiled median) and ``compile_s`` (seconds of the
first eval and first training call, where compiling happens). A block that fails to
compile keeps its eager row and is listed in the failures as ``name (compiled)``. With
``compile_aot=True`` (``--compile --aot``) the forward is ``blockzoo.compile(model,
example_inputs=..., aot=True)`` (torch.export + AOTInductor, inference only): the train
columns stay empty and ``compile_s`` is the ahead-of-time compile.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from blockzoo.bench.flops import count_flops, count_params
from blockzoo.bench.memory import peak_memory_bytes
from blockzoo.bench.peak import matmul_peak
from blockzoo.bench.timing import time_call
from blockzoo.checks import ConfigError
from blockzoo.registry import Size, Spec, spec

__all__ = [
    "BENCH_COLUMNS", "COMPILE_COLUMNS", "DTYPES", "BenchResult", "BenchSettings", "bench_entry",
    "machine_info", "run_bench",
]

log = logging.getLogger("blockzoo.bench")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

BENCH_COLUMNS = [
    "name", "family", "input", "params", "flops", "fwd_ms", "fwd_iqr_ms", "train_ms",
    "train_iqr_ms", "samples_s", "fwd_mem_mib", "train_mem_mib", "gflops", "pct_peak",
]
COMPILE_COLUMNS = ["compiled_fwd_ms", "compiled_train_ms", "fwd_speedup", "train_speedup", "compile_s"]


@dataclass(frozen=True)
class BenchSettings:
    """What to measure at: batch, config, sizes, device, dtype, warm-up and repeats.

    ``config`` holds constructor arguments that update each entry's example config
    (``dim=512, num_heads=8``); the input is made for that config. ``image_size``
    (H, W) replaces the example size of image entries, ``length`` (N) that of
    tokens, sequence and graph entries; entries of other kinds keep their example
    size.
    """

    batch: int = 8
    config: Mapping[str, Any] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    length: int | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    warmup: int = 3
    repeats: int = 10
    threads: int = field(default_factory=torch.get_num_threads)
    compile: bool = False
    compile_backend: str = "inductor"
    compile_aot: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} not in {sorted(DTYPES)}")
        if self.batch < 1:
            raise ConfigError(f"batch={self.batch} must be >= 1")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError(f"repeats={self.repeats} must be >= 1 and warmup={self.warmup} >= 0")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def size_for(self, s: Spec) -> Size:
        if s.input == "image" and self.image_size is not None:
            return tuple(self.image_size)
        if s.input in ("tokens", "sequence", "graph") and self.length is not None:
            return (self.length,)
        return tuple(s.example.size)


@dataclass
class BenchResult:
    """Rows of measured entries, the entries that failed, and the conditions."""

    rows: list[dict[str, Any]]
    failures: list[dict[str, str]]
    machine: dict[str, Any]


def machine_info(settings: BenchSettings, peak_gflops: float | None = None) -> dict[str, Any]:
    """The machine, versions and every setting, to print above the table."""
    dev = torch.device(settings.device)
    name = platform.processor() or platform.machine()
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    info = dict(
        device=f"{dev.type} ({name})",
        torch=torch.__version__,
        python=platform.python_version(),
        platform=platform.platform(terse=True),
        threads=settings.threads,
        batch=settings.batch,
        config=", ".join(f"{k}={v!r}" for k, v in settings.config.items()) or "example",
        image_size="example" if settings.image_size is None else "x".join(map(str, settings.image_size)),
        length="example" if settings.length is None else settings.length,
        dtype=settings.dtype,
        warmup=settings.warmup,
        repeats=settings.repeats,
    )
    if settings.compile:
        info["compiled"] = ("blockzoo.compile(aot=True), AOTInductor, forward only" if settings.compile_aot
                            else f"blockzoo.compile, backend {settings.compile_backend}")
    if peak_gflops is not None:
        info["matmul_peak_gflops"] = round(peak_gflops, 1)
    return info


def _float_outputs(out: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _shapes(args: Sequence[Any]) -> str:
    return " ".join("x".join(map(str, a.shape)) for a in args if isinstance(a, torch.Tensor))


def bench_entry(name: str, settings: BenchSettings, peak_gflops: float | None = None) -> dict[str, Any]:
    """Measure one registered entry; raises whatever building or running it raises."""
    s = spec(name)
    dev, dt = torch.device(settings.device), settings.torch_dtype
    torch.manual_seed(0)
    model = s.build_example(**settings.config).to(device=dev, dtype=dt)
    args = s.make_input(batch=settings.batch, size=settings.size_for(s), config=settings.config,
                        dtype=dt, device=dev)

    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(*args)

    flops = count_flops(model, args)
    fwd = time_call(forward, warmup=settings.warmup, repeats=settings.repeats, device=dev)
    fwd_mem = peak_memory_bytes(forward, dev)

    model.train()
    train_args = [a.detach().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point()
                  else a for a in args]

    def train_step() -> None:
        outs = _float_outputs(model(*train_args))
        loss = sum(o.float().sum() for o in outs)
        if isinstance(loss, torch.Tensor) and loss.requires_grad:
            loss.backward()
        model.zero_grad(set_to_none=True)

    train = time_call(train_step, warmup=settings.warmup, repeats=settings.repeats, device=dev)
    train_mem = peak_memory_bytes(train_step, dev)
    compiled: dict[str, Any] = {}
    if settings.compile:
        try:
            compiled = _bench_compiled(model, args, train_args, settings, fwd.median_ms, train.median_ms)
        except Exception as e:  # the eager row stands; run_bench lists the compile failure
            log.debug("bench %s: compiling failed", name, exc_info=True)
            compiled = dict.fromkeys(COMPILE_COLUMNS)
            compiled["compile_error"] = f"{type(e).__name__}: {e}".splitlines()[0]

    gflops = flops / (fwd.median_ms * 1e-3) / 1e9
    return dict(
        name=s.name,
        family=s.family,
        input=_shapes(args),
        params=count_params(model),
        flops=flops,
        fwd_ms=fwd.median_ms,
        fwd_iqr_ms=fwd.spread_ms,
        train_ms=train.median_ms,
        train_iqr_ms=train.spread_ms,
        samples_s=settings.batch / (fwd.median_ms * 1e-3),
        fwd_mem_mib=fwd_mem / 2**20,
        train_mem_mib=train_mem / 2**20,
        gflops=gflops,
        pct_peak=100 * gflops / peak_gflops if peak_gflops else None,
        **compiled,
    )


def _bench_compiled(model: torch.nn.Module, args: Sequence[Any], train_args: Sequence[Any],
                    settings: BenchSettings, eager_fwd_ms: float, eager_train_ms: float) -> dict[str, Any]:
    """The ``COMPILE_COLUMNS`` of one entry: ``blockzoo.compile(model)`` timed like eager."""
    import time

    import torch._dynamo

    from blockzoo.export import compile as compile_module

    dev = torch.device(settings.device)
    if settings.compile_aot:
        model.eval()
        t0 = time.perf_counter()
        fast = compile_module(model, example_inputs=tuple(args), aot=True)
        compile_s = time.perf_counter() - t0

        def aot_forward() -> None:
            with torch.no_grad():
                fast(*args)

        fwd = time_call(aot_forward, warmup=settings.warmup, repeats=settings.repeats, device=dev)
        return dict(compiled_fwd_ms=fwd.median_ms, compiled_train_ms=None,
                    fwd_speedup=eager_fwd_ms / fwd.median_ms, train_speedup=None, compile_s=compile_s)
    torch._dynamo.reset()  # each entry compiles afresh: no recompile limit across entries
    try:
        fast = compile_module(model, backend=settings.compile_backend)

        def forward() -> None:
            with torch.no_grad():
                fast(*args)

        def train_step() -> None:
            outs = _float_outputs(fast(*train_args))
            loss = sum(o.float().sum() for o in outs)
            if isinstance(loss, torch.Tensor) and loss.requires_grad:
                loss.backward()
            model.zero_grad(set_to_none=True)

        model.eval()
        t0 = time.perf_counter()
        forward()
        model.train()
        train_step()
        compile_s = time.perf_counter() - t0
        model.eval()
        fwd = time_call(forward, warmup=settings.warmup, repeats=settings.repeats, device=dev)
        model.train()
        train = time_call(train_step, warmup=settings.warmup, repeats=settings.repeats, device=dev)
    finally:
        torch._dynamo.reset()
    return dict(
        compiled_fwd_ms=fwd.median_ms,
        compiled_train_ms=train.median_ms,
        fwd_speedup=eager_fwd_ms / fwd.median_ms,
        train_speedup=eager_train_ms / train.median_ms,
        compile_s=compile_s,
    )


def run_bench(
    names: Sequence[str],
    settings: BenchSettings,
    *,
    progress: bool = True,
    peak_gflops: float | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> BenchResult:
    """Measure ``names`` in order; failures are collected with their error, never skipped.

    The matmul peak is measured first, in the same run and thread setting, unless given.
    """
    from tqdm.auto import tqdm

    if peak_gflops is None:
        peak_gflops = matmul_peak(settings.device, settings.torch_dtype)
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    bar = tqdm(names, desc="bench", unit="block", disable=not progress, leave=False)
    for name in bar:
        bar.set_postfix_str(name)
        try:
            row = bench_entry(name, settings, peak_gflops)
        except Exception as e:  # every failure is reported, with its type and message
            log.debug("bench %s failed", name, exc_info=True)
            failures.append(dict(name=name, error=f"{type(e).__name__}: {e}".splitlines()[0]))
            continue
        compile_error = row.pop("compile_error", None)
        if compile_error:
            failures.append(dict(name=f"{name} (compiled)", error=compile_error))
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return BenchResult(rows, failures, machine_info(settings, peak_gflops))
