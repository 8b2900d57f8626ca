"""Engine overhead: seconds per epoch of ``blockzoo.train.fit`` vs a minimal hand-written loop.

Same model (the MNIST-1D CNN), data (MNIST-1D, 3600 training signals), batch size,
optimizer (AdamW) and seed. The hand-written loop is the tutorials' four steps and
nothing else: shuffle, index a batch, forward, loss, backward, step. The engine adds
its schedule and metric sums (validation cut to one sample), the end-of-epoch
validation pass over 400 samples (compare with the hand-written loop that runs
the same pass) and writing metrics.csv and the last/best checkpoints.
Each repeat runs the hand-written loops, the three engine variants, then the
hand-written loops again, and each time is divided by the mean of the two
hand-written times around it: on a shared machine whose speed drifts from
second to second, these paired ratios stay steady where ratios of separate medians
do not. The median paired ratio (and its quartiles) is reported, for wall and for
process CPU time.

    python benchmarks/trainer_overhead.py [--epochs 3] [--repeats 10] [--threads 1]
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


def hand_loop(data, epochs: int, batch: int, seed: int, validate: bool = False) -> tuple[float, float]:
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
        if validate:  # the same pass the engine runs each epoch: loss and accuracy on val
            model.eval()
            with torch.no_grad():
                loss_sum, right = 0.0, 0
                for i in range(0, len(data.val), 2 * batch):
                    out = model(data.val.x[i:i + 2 * batch])
                    yv = data.val.y[i:i + 2 * batch]
                    loss_sum += F.cross_entropy(out, yv, reduction="sum").item()
                    right += int((out.argmax(1) == yv).sum())
            model.train()
    return (time.perf_counter() - t0) / epochs, (time.process_time() - c0) / epochs


def engine(data, epochs: int, batch: int, seed: int, run_dir: str | None) -> tuple[float, float]:
    torch.manual_seed(seed)
    model = blockzoo.create_model("mnist1d_cnn", num_classes=10, in_chans=1)
    c0 = time.process_time()
    res = fit(model, data, epochs=epochs, batch_size=batch, seed=seed, quiet=True, plots=False,
              run_dir=run_dir)
    cpu = time.process_time() - c0
    # CPU of the final test and val passes (and best-weights reload), measured again, is not
    # per-epoch cost
    c1 = time.process_time()
    if run_dir is not None:
        load_checkpoint(f"{run_dir}/best.pt")
    for split in (data.test, data.val):
        evaluate(model, split, objective("classification", "logits", 10))
    cpu -= time.process_time() - c1
    # wall: from the first step to the end of the last epoch, its validation pass and
    # its checkpoint on disk included (the final test pass excluded)
    return res.seconds / epochs, cpu / epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data("mnist1d")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"model mnist1d_cnn, data mnist1d train {tuple(data.train.x.shape)}, batch {args.batch}, "
          f"AdamW; warm-up 1 epoch each; {args.repeats} repeats x {args.epochs} epochs")
    hand_loop(data, 1, args.batch, 0)
    engine(data, 1, args.batch, 0, None)
    # the same data with a 1-sample validation split: the engine's per-step cost alone
    no_val = replace(data, val=TensorData(data.val.x[:1], data.val.y[:1]))
    labels = {"engine-val": "blockzoo fit (validation on 1 sample)",
              "engine": "blockzoo fit (+ validation, 400 samples)",
              "engine+files": "blockzoo fit (+ metrics.csv, checkpoints)"}
    hand: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    ratios: dict[str, list[tuple[float, float]]] = {k: [] for k in [*labels, "hand+val"]}
    vs_val: dict[str, list[float]] = {"engine": [], "engine+files": []}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in labels}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            # each repeat: the hand-written loop without and with validation, the three
            # engine runs, the two hand-written runs again; each run is compared with the
            # mean of the hand-written runs just around it (paired ratios)
            before = [hand_loop(data, args.epochs, args.batch, r, v) for v in (False, True)]
            runs = {"engine-val": engine(no_val, args.epochs, args.batch, r, None),
                    "engine": engine(data, args.epochs, args.batch, r, None),
                    "engine+files": engine(data, args.epochs, args.batch, r, f"{tmp}/run{r}")}
            after = [hand_loop(data, args.epochs, args.batch, r, v) for v in (False, True)]
            ref = [[(before[v][i] + after[v][i]) / 2 for i in (0, 1)] for v in (0, 1)]
            for v in (0, 1):
                hand[bool(v)] += [before[v], after[v]]
            ratios["hand+val"].append((ref[1][0] / ref[0][0], ref[1][1] / ref[0][1]))
            for k, t in runs.items():
                times[k].append(t)
                ratios[k].append((t[0] / ref[0][0], t[1] / ref[0][1]))
                if k in vs_val:
                    vs_val[k].append(t[0] / ref[1][0])

    def q(v: list[float], f: float) -> float:
        return statistics.quantiles(v, n=4)[int(f * 4) - 1] if len(v) > 1 else v[0]

    def row(label: str, ts: list[tuple[float, float]], rs: list[tuple[float, float]] | None,
            rv: list[float] | None = None) -> None:
        w = [r[0] for r in rs] if rs else [1.0]
        c = [r[1] for r in rs] if rs else [1.0]
        iqr = f"{q(w, 0.25):6.3f}-{q(w, 0.75):6.3f}" if rs else ""
        print(f"{label:<42} {statistics.median(t[0] for t in ts):9.3f} {statistics.median(w):6.3f} "
              f"{iqr:>13} {statistics.median(t[1] for t in ts):9.3f} {statistics.median(c):6.3f} "
              f"{f'{statistics.median(rv):8.3f}' if rv else ''}")

    print(f"\n{'loop':<42} {'wall s/ep':>9} {'ratio':>6} {'IQR':>13} {'CPU s/ep':>9} {'ratio':>6} "
          f"{'vs hand+val':>8}")
    row("hand-written (4 steps)", hand[False], None)
    row("hand-written + validation (400 samples)", hand[True], ratios["hand+val"])
    for k, label in labels.items():
        row(label, times[k], ratios[k], vs_val.get(k))
    print("(ratio: median over repeats of each run / the mean of the hand-written runs just before and"
          " after it; IQR: its quartiles; vs hand+val: wall ratio to the hand-written loop that also"
          " validates)")
    print("(CPU = process time: less disturbed than wall time when other jobs share the cores)")


if __name__ == "__main__":
    main()
