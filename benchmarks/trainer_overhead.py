"""Engine overhead: seconds per epoch of ``blockzoo.train.fit`` vs a minimal hand-written loop.

Same model (the MNIST-1D CNN), data (MNIST-1D, 3600 training signals), batch size,
optimizer (AdamW) and seed. The hand-written loop is the tutorials' four steps and
nothing else: shuffle, index a batch, forward, loss, backward, step. The engine adds
its schedule and metric sums (row 2, validation cut to one sample), the end-of-epoch
validation pass over 400 samples (row 3) and writing metrics.csv and the last/best
checkpoints (row 4). Runs alternate (hand, engine,
hand, ...) so that load from other processes hits both alike; medians of wall and of
process CPU time are reported, and the ratio of the fastest runs (noise only ever
adds time, so the minimum is the least disturbed estimate of each loop's cost).

    python benchmarks/trainer_overhead.py [--epochs 3] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

import blockzoo
from blockzoo.data import TensorData, load_data
from blockzoo.train import evaluate, fit, load_checkpoint, objective


def hand_loop(data, epochs: int, batch: int, seed: int) -> tuple[float, float]:
    torch.manual_seed(seed)
    model = blockzoo.create_model("mnist1d_cnn", num_classes=10, in_chans=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    x, y = data.train.x, data.train.y
    g = torch.Generator().manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])  # forward, loss
            opt.zero_grad()
            loss.backward()  # backward
            opt.step()  # step
    return (time.perf_counter() - t0) / epochs, (time.process_time() - c0) / epochs


def engine(data, epochs: int, batch: int, seed: int, run_dir: str | None) -> tuple[float, float]:
    torch.manual_seed(seed)
    model = blockzoo.create_model("mnist1d_cnn", num_classes=10, in_chans=1)
    c0 = time.process_time()
    res = fit(model, data, epochs=epochs, batch_size=batch, seed=seed, quiet=True, plots=False,
              run_dir=run_dir)
    cpu = time.process_time() - c0
    # CPU of the final test pass (and best-weights reload), measured again, is not per-epoch cost
    c1 = time.process_time()
    if run_dir is not None:
        load_checkpoint(f"{run_dir}/best.pt")
    evaluate(model, data.test, objective("classification", "logits", 10))
    cpu -= time.process_time() - c1
    # wall: from the first step to the end of the last epoch, its validation pass and
    # its checkpoint on disk included (the final test pass excluded)
    return res.seconds / epochs, cpu / epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data("mnist1d")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"model mnist1d_cnn, data mnist1d train {tuple(data.train.x.shape)}, batch {args.batch}, "
          f"AdamW; warm-up 1 epoch each; {args.repeats} repeats x {args.epochs} epochs, medians")
    hand_loop(data, 1, args.batch, 0)
    engine(data, 1, args.batch, 0, None)
    # the same data with a 1-sample validation split: the engine's per-step cost alone
    no_val = replace(data, val=TensorData(data.val.x[:1], data.val.y[:1]))
    times: dict[str, list[tuple[float, float]]] = {"hand": [], "engine-val": [], "engine": [],
                                                   "engine+files": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            times["hand"].append(hand_loop(data, args.epochs, args.batch, r))
            times["engine-val"].append(engine(no_val, args.epochs, args.batch, r, None))
            times["engine"].append(engine(data, args.epochs, args.batch, r, None))
            times["engine+files"].append(engine(data, args.epochs, args.batch, r, f"{tmp}/run{r}"))
    base = {stat: {i: stat(t[i] for t in times["hand"]) for i in (0, 1)} for stat in (min, statistics.median)}
    print(f"\n{'loop':<42} {'wall s/ep':>9} {'ratio':>6} {'min ratio':>9} {'CPU s/ep':>9} {'ratio':>6}")
    labels = {"hand": "hand-written (4 steps)",
              "engine-val": "blockzoo fit (validation on 1 sample)",
              "engine": "blockzoo fit (+ validation, 400 samples)",
              "engine+files": "blockzoo fit (+ metrics.csv, checkpoints)"}
    for k, v in times.items():
        w, c = statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)
        w_min = min(t[0] for t in v)
        med = base[statistics.median]
        print(f"{labels[k]:<42} {w:9.3f} {w / med[0]:6.3f} {w_min / base[min][0]:9.3f} {c:9.3f} "
              f"{c / med[1]:6.3f}")
    print("(ratio: medians; min ratio: fastest run over fastest run, the least disturbed estimate)")
    print("(CPU = process time: less disturbed than wall time when other jobs share the cores)")


if __name__ == "__main__":
    main()
