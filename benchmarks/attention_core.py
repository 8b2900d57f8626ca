"""Sequence-attention core benchmark: ratios measured side by side in one run.

1. blockzoo ``MultiHeadAttention`` vs ``torch.nn.MultiheadAttention`` (same weights, same
   input): forward (eval, no_grad) and forward+backward (train), time ratio ours / torch.
2. Local-window attention (w = 16, i.e. offsets -16..16) vs full attention at N = 4096:
   time and peak CPU memory, as ratios local / full, against three "full" references:
   fused SDPA, SDPA with the N x N band mask (the exact equivalent), and the explicit
   softmax path. Then both local-window methods (blocked, per query) over a grid of
   configurations, with the one the CPU cost model picks.
3. Each linear-complexity entry's forward time at N = 256, 1024, 4096, with the growth
   factor per 4x of N (4 = linear, 16 = quadratic); multi-head attention as a contrast.

Memory: peak of the CPU allocator's live bytes during one forward, read from
``torch.profiler`` (``profile_memory=True``): the "[memory]" events of the exported trace
carry the allocator's running "Total Allocated"; peak = max minus the value at the
start. It counts tensors allocated through c10's CPU allocator (all ATen tensors and
kernel workspaces), not Python objects.

Timing: the fastest of ``--repeat`` runs after ``--warmup`` runs (on a shared machine the
least-disturbed run is the best estimate of the cost; the median is printed beside it in
section 1), ours and the reference interleaved run by run so that noise hits both.

    python benchmarks/attention_core.py [--threads 1] [--repeat 10] [--warmup 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import blockzoo
from blockzoo.attention import LocalAttention, MultiHeadAttention, band_mask, scaled_dot_product_attention


def runs(fns: dict[str, Callable[[], object]], warmup: int, repeat: int) -> dict[str, list[float]]:
    """Seconds of every run of each function, interleaved run by run."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


def timed(fns: dict[str, Callable[[], object]], warmup: int, repeat: int) -> dict[str, float]:
    """Fastest run of each function, in seconds."""
    return {k: min(v) for k, v in runs(fns, warmup, repeat).items()}


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak live bytes of the CPU allocator during ``fn()`` (torch.profiler memory events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as fh:
            events = json.load(fh)["traceEvents"]
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not mem:
        return 0
    start = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in mem) - start


def ms(s: float) -> str:
    return f"{s * 1e3:9.2f}"


def mib(b: int) -> str:
    return f"{b / 2**20:9.1f}"


def bench_mha(args: argparse.Namespace) -> None:
    b, n, c, h = 8, 128, 256, 8
    print(f"\n## 1. multi_head_attention vs nn.MultiheadAttention  (B={b}, N={n}, C={c}, h={h}, fp32)")
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(c, h, batch_first=True)
    ours = MultiHeadAttention(c, num_heads=h)
    with torch.no_grad():
        ours.qkv.weight.copy_(ref.in_proj_weight)
        ours.qkv.bias.copy_(ref.in_proj_bias)
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())
    x = torch.randn(b, n, c)
    xg = x.clone().requires_grad_()
    ref.eval()
    ours.eval()
    with torch.no_grad():
        diff = (ours(x) - ref(x, x, x, need_weights=False)[0]).abs().max().item()

    def fwd(m: nn.Module, is_ref: bool) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return m(x, x, x, need_weights=False) if is_ref else m(x)
        return run

    def fwd_bwd(m: nn.Module, is_ref: bool) -> Callable[[], object]:
        def run() -> object:
            out = m(xg, xg, xg, need_weights=False)[0] if is_ref else m(xg)
            out.sum().backward()
            return out
        return run

    rows = []
    for label, make, train in (("forward (eval, no_grad)", fwd, False),
                               ("forward+backward (train)", fwd_bwd, True)):
        ref.train(train)
        ours.train(train)
        r = runs({"ours": make(ours, False), "torch": make(ref, True)}, args.warmup, args.repeat)
        t_min = {k: min(v) for k, v in r.items()}
        t_med = {k: statistics.median(v) for k, v in r.items()}
        rows.append((label, t_min, t_med))
    print(f"max |ours - torch| on the output: {diff:.2e}")
    print("| pass | ours ms (min) | torch ms (min) | ratio ours/torch (min) | ratio (median) |")
    print("|---|---:|---:|---:|---:|")
    for label, t, tm in rows:
        print(f"| {label} | {ms(t['ours'])} | {ms(t['torch'])} | {t['ours'] / t['torch']:.2f} "
              f"| {tm['ours'] / tm['torch']:.2f} |")


def _flex_sliding_window(full: nn.Module, x: torch.Tensor, h: int, w: int,
                         block_size: int = 128) -> tuple[Callable[[], object], float] | None:
    """PyTorch's FlexAttention with a |i - j| <= w block mask of ``block_size`` blocks (compiled:
    on CPU its eager form is a reference implementation), on ``full``'s projections; returns the
    forward and its compile seconds, or None where it does not run."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        b, n, c = x.shape
        mask = create_block_mask(lambda _b, _h, i, j: (i - j).abs() <= w, None, None, n, n, device="cpu",
                                 BLOCK_SIZE=block_size)
        attend = torch.compile(flex_attention)

        def fn() -> torch.Tensor:
            q, k, v = full.qkv(x).view(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
            out = attend(q, k, v, block_mask=mask)
            return full.out_proj(out.transpose(1, 2).reshape(b, n, c))

        t0 = time.perf_counter()
        with torch.no_grad():
            fn()  # compiles here
        return fn, time.perf_counter() - t0
    except Exception as e:  # report, don't hide
        print(f"FlexAttention did not run: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
        return None


def _flex_eager_runs(x: torch.Tensor, h: int, w: int) -> None:
    """Whether FlexAttention runs uncompiled on CPU, and what one call costs there (printed)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    b, n, c = x.shape
    q = x.view(b, n, h, c // h).transpose(1, 2)
    mask = create_block_mask(lambda _b, _h, i, j: (i - j).abs() <= w, None, None, n, n, device="cpu")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        t0 = time.perf_counter()
        peak = peak_memory(lambda: flex_attention(q, q, q, block_mask=mask))  # one call, profiled
        took = time.perf_counter() - t0
    print(f"FlexAttention uncompiled (B={b}, h={h}, N={n}, d={c // h}): runs; one call {took:.1f} s "
          f"(under the memory profiler), peak {mib(peak).strip()} MiB: the unfused reference path")


def bench_local(args: argparse.Namespace) -> None:
    b, n, c, h, w = 1, 4096, 64, 4, 16
    print(f"\n## 2. local_attention (w={w}: offsets -{w}..{w}) vs full attention "
          f"(B={b}, N={n}, C={c}, h={h}, fp32, forward, no_grad)")
    torch.manual_seed(0)
    local = LocalAttention(c, window=w, num_heads=h).eval()
    full = MultiHeadAttention(c, num_heads=h).eval()
    with torch.no_grad():
        full.qkv.load_state_dict(local.qkv.state_dict())
        full.out_proj.load_state_dict(local.proj.state_dict())
    x = torch.randn(b, n, c)
    band = ~band_mask(n, w, w)  # nn.MultiheadAttention convention: True = not allowed

    def run(f: Callable[[], object]) -> Callable[[], object]:
        def g() -> object:
            with torch.no_grad():
                return f()
        return g

    def explicit() -> object:
        qkv = full.qkv(x).view(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        out = scaled_dot_product_attention(*qkv, ~band, reference=True)
        return full.out_proj(out.transpose(1, 2).reshape(b, n, c))

    fns = {
        "local (blocked, O(N w))": run(lambda: local(x)),
        "full, fused SDPA": run(lambda: full(x)),
        "full + N x N band mask, SDPA": run(lambda: full(x, attn_mask=band)),
        "full + band mask, explicit softmax": run(explicit),
    }
    if args.flex_eager:
        _flex_eager_runs(x, h, w)
    for bs in args.flex_blocks:
        flex = _flex_sliding_window(full, x, h, w, bs)
        if flex is not None:
            fns[f"FlexAttention sliding window, blocks of {bs} (compiled)"] = run(flex[0])
            with torch.no_grad():
                print(f"FlexAttention, blocks of {bs}: compiled in {flex[1]:.1f} s, "
                      f"max |FlexAttention - local| = {(flex[0]() - local(x)).abs().max().item():.2e}")
    with torch.no_grad():
        err = (local(x) - full(x, attn_mask=band)).abs().max().item()
    t = timed(fns, args.warmup, max(3, args.repeat // 2))
    mem = {k: peak_memory(f) for k, f in fns.items()}
    key = "local (blocked, O(N w))"
    print(f"max |local - band-masked full| = {err:.2e}")
    print("| variant | ms | peak MiB | time ratio local/this | memory ratio local/this |")
    print("|---|---:|---:|---:|---:|")
    for k in fns:
        tr = t[key] / t[k]
        mr = mem[key] / mem[k] if mem[k] else float("nan")
        print(f"| {k} | {ms(t[k])} | {mib(mem[k])} | {tr:.3f} | {mr:.3f} |")
    print("\npeak MiB as N grows (one forward each): local should grow ~linearly, band-masked full ~N^2")
    print("| N | local | full + N x N band mask, SDPA |")
    print("|---:|---:|---:|")
    for size in (1024, 4096, 8192):
        xs = torch.randn(b, size, c)
        bm = ~band_mask(size, w, w)
        m_local = peak_memory(run(lambda xs=xs: local(xs)))
        m_full = peak_memory(run(lambda xs=xs, bm=bm: full(xs, attn_mask=bm)))
        print(f"| {size} | {mib(m_local)} | {mib(m_full)} |")
    bench_local_methods(args)


# (B, N, C, h, w, block_size) for the per-query vs blocked table: the plain-reference
# benchmark's large config (b = 3) and example, short and default blocks, long windows
LOCAL_METHOD_CONFIGS = (
    (8, 8, 16, 4, 2, 3), (8, 32, 16, 4, 2, 3), (8, 256, 64, 4, 2, 3), (8, 256, 64, 4, 2, 1),
    (8, 256, 64, 4, 4, 4), (8, 256, 64, 4, 8, 4), (8, 256, 64, 4, 2, None), (8, 256, 64, 4, 4, None),
    (8, 512, 64, 1, 2, None), (4, 1024, 64, 4, 8, None), (4, 1024, 256, 8, 4, None),
    (1, 1024, 64, 4, 16, 8), (1, 4096, 64, 4, 16, None), (1, 2048, 512, 8, 16, None),
)


def bench_local_methods(args: argparse.Namespace) -> None:
    """Both local-window methods on CPU, with the one the cost model picks: the data behind
    ``blockzoo.attention.local._per_query_wins``."""
    import blockzoo.attention.local as local_mod

    print("\n### local_attention: per-query vs blocked method (forward, eval, no_grad, whole block)")
    print("| B | N | C | h | w | block | blocked ms | per-query ms | blocked / per-query | model picks |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for b, n, c, h, w, bs in LOCAL_METHOD_CONFIGS:
        torch.manual_seed(0)
        m = LocalAttention(c, window=w, num_heads=h, block_size=bs).eval()
        x = torch.randn(b, n, c)

        def forced(method: str, m: nn.Module = m, x: torch.Tensor = x) -> Callable[[], object]:
            def f() -> object:
                local_mod._FORCE = method
                try:
                    with torch.no_grad():
                        return m(x)
                finally:
                    local_mod._FORCE = None
            return f

        t = timed({"blocked": forced("blocked"), "per_query": forced("per_query")}, args.warmup, args.repeat)
        picks = "per-query" if local_mod._per_query_wins(
            b * h, n, w, w, c // h, bs or max(w, 16), torch.device("cpu")) else "blocked"
        print(f"| {b} | {n} | {c} | {h} | {w} | {bs or f'{max(w, 16)} (default)'} | {ms(t['blocked'])} | "
              f"{ms(t['per_query'])} | {t['blocked'] / t['per_query']:.2f} | {picks} |")


LINEAR = {
    "linear_attention": dict(num_heads=4),
    "performer_attention": dict(num_heads=4, num_features=64),
    "ufo_attention": dict(num_heads=4),
    "separable_self_attention": dict(),
    "aft_simple": dict(),
    "aft_conv": dict(kernel_size=7, num_heads=4),
    "external_attention": dict(memory_size=64),
    "linformer_attention": dict(seq_len=4096, num_heads=4, proj_len=64),
    "local_attention": dict(window=16, num_heads=4, block_size=None),
    "multi_head_attention": dict(num_heads=4),  # contrast: quadratic
}


def bench_linear(args: argparse.Namespace) -> None:
    c, sizes = 64, (256, 1024, 4096)
    print(f"\n## 3. linear-complexity entries: forward ms (B=1, C={c}, fp32, eval, no_grad)")
    print("| entry | " + " | ".join(f"N={n}" for n in sizes) + " | x(1024/256) | x(4096/1024) |")
    print("|---|" + "---:|" * (len(sizes) + 2))
    for name, cfg in LINEAR.items():
        torch.manual_seed(0)
        m = blockzoo.create(name, dim=c, **cfg).eval()
        row = []
        for n in sizes:
            x = torch.randn(1, n, c)

            def f(m: nn.Module = m, x: torch.Tensor = x) -> object:
                with torch.no_grad():
                    return m(x)

            row.append(timed({"m": f}, args.warmup, args.repeat)["m"])
        label = name + (" (quadratic, contrast)" if name == "multi_head_attention" else "")
        print(f"| {label} | " + " | ".join(ms(r) for r in row)
              + f" | {row[1] / row[0]:.1f} | {row[2] / row[1]:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--only", choices=("mha", "local", "local-methods", "linear"), default=None,
                   help="one section (local-methods: only the per-query vs blocked table)")
    p.add_argument("--flex-blocks", type=int, nargs="*", default=[128, 16],
                   help="FlexAttention block-mask block sizes to time in section 2 (compiled each)")
    p.add_argument("--flex-eager", action="store_true", help="also run FlexAttention uncompiled once (slow)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("# attention_core benchmark")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical CPUs; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"warm-up {args.warmup}, repeat {args.repeat}")
    if args.only in (None, "mha"):
        bench_mha(args)
    if args.only in (None, "local"):
        bench_local(args)
    if args.only == "local-methods":
        bench_local_methods(args)
    if args.only in (None, "linear"):
        bench_linear(args)


if __name__ == "__main__":
    main()
