"""Forward+backward time of blockzoo's recurrent layers vs the nearest torch.nn module.

Batch 32, T = 128, hidden 256 (input 256), fp32. Each row times ours and the
reference on the same input in the same run, alternating them repeat by repeat,
and prints the median of each and their ratio (ours / torch; 1.00 = as fast).

    python benchmarks/recurrent.py                 # CPU, 1 thread
    python benchmarks/recurrent.py --device cuda   # where a GPU is available
    python benchmarks/recurrent.py --quick         # smaller shapes, a smoke run

Rows: the native configs (Elman, LSTM, GRU: the fused kernel, expected ~1.0),
lengths (padded + lengths vs nn.LSTM on a PackedSequence, packing timed in both),
the time loop for the same LSTM maths (fused=False: the cost of the loop; the LSTM
runs the hand-derived scan of recurrent/scan.py, the GRU its autograd loop), and
the configs with no fused kernel (peephole LSTM, Jordan: the scan) against the
nearest torch module (nn.LSTM, nn.RNN), which computes less. The "(autograd loop)"
rows run the same layers inside ``scan.autograd_loop()``: the time loop recorded
by autograd step by step, as before the scans (and as under torch.compile/export);
the next three rows time the scan against that loop on the same layer directly.
The last row times the scan's CPU tanh (``_tanh_``: 2 sigmoid(2x) - 1 in place)
against ``Tensor.tanh_`` on one step's (B, H) tensor (a refill copy in both).
Results and older measurements: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from blockzoo.bench.report import render
from blockzoo.recurrent import GRU, LSTM, ElmanRNN, JordanRNN
from blockzoo.recurrent.scan import _tanh_, autograd_loop


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _fwd_bwd(run: Callable[[], torch.Tensor], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    out = run()
    out.float().square().mean().backward()
    _sync(device)
    return time.perf_counter() - t0


class _AutogradLoop(nn.Module):
    """The same layer run through the step-by-step autograd loop (the reference of the scan)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
        with autograd_loop():
            return self.layer(x, lengths)


def _case(ours: nn.Module, ref: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None,
          copy: bool, loop: bool) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    if copy:
        ref.load_state_dict(ours.state_dict())

    def run_ours() -> torch.Tensor:
        with autograd_loop() if loop else contextlib.nullcontext():
            return ours(x, lengths)[0]

    def run_ref() -> torch.Tensor:
        if isinstance(ref, _AutogradLoop):
            return ref(x, lengths)[0]
        if lengths is None:
            return ref(x)[0]
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=x.shape[1])[0]

    return run_ours, run_ref


def _tanh_row(b: int, h: int, dev: str, warmup: int, repeats: int, calls: int = 200) -> dict:
    """The scan's in-place tanh against ``tanh_`` on (B, H), alternating, median per call."""
    src = torch.randn(b, h, device=dev)
    buf = torch.empty_like(src)

    def per_call(fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(buf.copy_(src))
        _sync(dev)
        return (time.perf_counter() - t0) / calls

    def ref(x: torch.Tensor) -> torch.Tensor:
        return x.tanh_()

    times: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup + repeats):
        a, r = per_call(_tanh_), per_call(ref)
        if i >= warmup:
            times[0].append(a)
            times[1].append(r)
    mo, mr = statistics.median(times[0]), statistics.median(times[1])
    return {"ours": f"_tanh_ ({b}, {h}), no grad", "ms": round(mo * 1e3, 4), "torch": "tanh_",
            "torch ms": round(mr * 1e3, 4), "ratio": round(mo / mr, 2)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--T", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--format", default="table", choices=("table", "markdown", "csv", "json"))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.T, args.hidden, args.warmup, args.repeats = 4, 16, 32, 1, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, t, h, dev = args.batch, args.T, args.hidden, args.device
    fk = dict(device=dev)
    x = torch.randn(b, t, h, device=dev, requires_grad=True)
    lengths = torch.randint(t // 2, t + 1, (b,))
    lengths[0] = t
    bt = dict(batch_first=True, **fk)
    cases = [
        ("elman (tanh)", "nn.RNN", ElmanRNN(h, h, **fk), nn.RNN(h, h, **bt), None, True),
        ("lstm", "nn.LSTM", LSTM(h, h, **fk), nn.LSTM(h, h, **bt), None, True),
        ("gru", "nn.GRU", GRU(h, h, **fk), nn.GRU(h, h, **bt), None, True),
        ("lstm 2 layers bidir", "nn.LSTM", LSTM(h, h, 2, bidirectional=True, **fk),
         nn.LSTM(h, h, 2, bidirectional=True, **bt), None, True),
        ("lstm + lengths", "nn.LSTM packed", LSTM(h, h, **fk), nn.LSTM(h, h, **bt), lengths, True),
        ("gru + lengths", "nn.GRU packed", GRU(h, h, **fk), nn.GRU(h, h, **bt), lengths, True),
        ("lstm loop (fused=False)", "nn.LSTM", LSTM(h, h, fused=False, **fk), nn.LSTM(h, h, **bt), None,
         True),
        ("gru loop (fused=False)", "nn.GRU", GRU(h, h, fused=False, **fk), nn.GRU(h, h, **bt), None, True),
        ("peephole lstm (scan)", "nn.LSTM", LSTM(h, h, peephole=True, **fk), nn.LSTM(h, h, **bt), None,
         False),
        ("peephole lstm + lengths", "nn.LSTM packed", LSTM(h, h, peephole=True, **fk), nn.LSTM(h, h, **bt),
         lengths, False),
        ("jordan (scan)", "nn.RNN", JordanRNN(h, h, **fk), nn.RNN(h, h, **bt), None, False),
    ]
    # the same three through the step-by-step autograd loop
    loops = [(f"{name.split(' (')[0]} (autograd loop)", *rest) for name, *rest in cases[-3:]]
    # and the scan against that loop on the same layer, timed side by side
    direct = [(name, "autograd loop", ours, _AutogradLoop(ours), lens, False)
              for name, _, ours, _, lens, _ in cases[-3:]]
    rows = []
    for name, ref_name, ours, ref, lens, copy in cases + loops + direct:
        run_ours, run_ref = _case(ours, ref, x, lens, copy, loop=name.endswith("(autograd loop)"))
        for _ in range(args.warmup):
            _fwd_bwd(run_ours, dev)
            _fwd_bwd(run_ref, dev)
        t_ours, t_ref = [], []
        for _ in range(args.repeats):
            t_ours.append(_fwd_bwd(run_ours, dev))
            t_ref.append(_fwd_bwd(run_ref, dev))
        mo, mr = statistics.median(t_ours), statistics.median(t_ref)
        rows.append({"ours": name, "ms": round(mo * 1e3, 2), "torch": ref_name,
                     "torch ms": round(mr * 1e3, 2), "ratio": round(mo / mr, 2)})
    rows.append(_tanh_row(b, h, dev, args.warmup, args.repeats))
    machine = torch.cuda.get_device_name() if dev.startswith("cuda") else (platform.processor() or
                                                                           platform.machine())
    print(f"recurrent forward+backward, fp32, B={b}, T={t}, input={h}, hidden={h}; device {dev} ({machine}); "
          f"torch {torch.__version__}; threads {torch.get_num_threads()}; warm-up {args.warmup}, "
          f"repeats {args.repeats} (median, alternating ours/torch)")
    print(render(rows, args.format))
    return rows


if __name__ == "__main__":
    main()
