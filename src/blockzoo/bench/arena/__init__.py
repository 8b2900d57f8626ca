"""The attention arena: which attention block should I pick?

Every image-attention block is attached into the same small conv net and trained
on the same images (digits by default); every token-attention block is the
token mixer of the same small transformer trained on the same sequences
(MNIST-1D by default). Same data, same optimiser and budget, K seeds each; the
table reports test accuracy mean ± std, params, FLOPs, training time and
inference latency, and a scatter plots accuracy against latency. A baseline
row (``none``: the same backbone without attention) is trained alongside.

Candidates are registry entries of family ``attention`` whose example keeps the
input shape (``out_shape="same"``); for tokens, only those that mix tokens (so
positional encodings such as RoPE, which mix nothing, are left out).

Runs are resumable: each finished (kind, block, seed, data, epochs, small_data)
result is appended to a CSV as soon as it is done, and a later call skips the
rows already there (failed runs are re-tried, and reported until they pass).

Backbones (letters: B batch, C channels, H W spatial, T time steps, F features,
D model width):

Each block runs at its registered example config (the small settings ``blockzoo
bench`` uses), its width set by the backbone.

- ``ArenaConvNet``: conv3x3(C->w)-BN-ReLU stem; ``stage1`` conv3x3(w->w)-BN-ReLU;
  ``stage2`` conv3x3 stride 2 (w->2w)-BN-ReLU; global average pool; linear head.
  The attention block goes after ``stage1`` and ``stage2`` (``blockzoo.attach``).
- ``ArenaTransformer``: conv1d(F->D, kernel 5) stem (gives tokens their local
  order; no absolute position table, so no size is fixed); ``depth`` pre-norm
  layers ``x = x + mixer(LN(x)); x = x + MLP(LN(x))``; mean over tokens; LN;
  linear head. ``mixer`` is the block under test (identity for ``none``).
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockzoo.act import create_act
from blockzoo.checks import check_shape
from blockzoo.registry import list_blocks, spec

__all__ = [
    "ARENA_COLUMNS",
    "ArenaConvNet",
    "ArenaSettings",
    "ArenaTransformer",
    "arena_candidates",
    "arena_latencies",
    "arena_markdown",
    "build_arena_model",
    "measure_latency",
    "plot_arena",
    "read_results",
    "run_arena",
    "summarize",
    "train_one",
]

log = logging.getLogger("blockzoo.arena")

BASELINE = "none"
KINDS = ("image", "tokens")
ARENA_COLUMNS = [
    "kind", "block", "seed", "data", "epochs", "small_data", "status", "test_acc", "params", "flops",
    "train_s", "error", "finished_at",
]


# --------------------------------------------------------------------------- backbones


def _conv_bn_act(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), create_act("relu"))


class ArenaConvNet(nn.Module):
    """The arena's small conv net for images; attention goes after ``stage1`` and ``stage2``.

    Args:
        in_chans: C, input channels.
        num_classes: K, classes.
        width: w, the stem and ``stage1`` width (``stage2`` has 2w).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W >= 1. Output: (B, K) logits.
    """

    def __init__(self, in_chans: int, num_classes: int, *, width: int = 16) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.stem = _conv_bn_act(in_chans, width)
        self.stage1 = _conv_bn_act(width, width)
        self.stage2 = _conv_bn_act(width, 2 * width, stride=2)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="ArenaConvNet", C=self.in_chans)
        x = self.stage2(self.stage1(self.stem(x)))  # (B, 2w, H/2, W/2)
        return self.head(x.mean((2, 3)))  # (B, K)


class ArenaTransformer(nn.Module):
    """The arena's small pre-norm transformer for sequences; ``mixer`` mixes the tokens.

    Args:
        in_features: F, features per time step.
        num_classes: K, classes.
        mixer: a factory ``f(dim) -> nn.Module`` mapping (B, N, D) to (B, N, D), or
            ``None`` for no token mixing (the baseline).
        dim: D, the model width; depth: layers; mlp_ratio: MLP hidden = ratio * D.

    Shape:
        - Input: (B, T, F), F = in_features, any T. Output: (B, K) logits.
    """

    def __init__(self, in_features: int, num_classes: int, mixer: Callable[[int], nn.Module] | None = None,
                 *, dim: int = 32, depth: int = 2, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.in_features = in_features
        self.stem = nn.Conv1d(in_features, dim, 5, padding=2)
        self.norms1 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.mixers = nn.ModuleList((mixer(dim) if mixer else nn.Identity()) for _ in range(depth))
        self.norms2 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, mlp_ratio * dim), create_act("gelu"),
                          nn.Linear(mlp_ratio * dim, dim))
            for _ in range(depth)
        )
        self.mix = mixer is not None
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B T F", name="ArenaTransformer", F=self.in_features)
        x = self.stem(x.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        for n1, mixer, n2, mlp in zip(self.norms1, self.mixers, self.norms2, self.mlps, strict=True):
            if self.mix:
                x = x + mixer(n1(x))
            x = x + mlp(n2(x))
        return self.head(self.norm(x.mean(1)))  # (B, K)


# --------------------------------------------------------------------------- candidates


def _mixes_tokens(name: str) -> bool:
    """True when changing token 0 changes the block's output at some other token."""
    s = spec(name)
    try:
        torch.manual_seed(0)
        block = s.build().eval()
        (x,) = s.make_input(batch=1, size=(8,))
        y = x.clone()
        y[:, 0] += 1.0
        with torch.no_grad():
            return not torch.allclose(block(x)[:, 1:], block(y)[:, 1:])
    except Exception:  # a block that cannot run here is still a candidate: its run reports why
        return True


def arena_candidates(kind: str) -> list[str]:
    """Attention entries for the ``image`` or ``tokens`` arena.

    Image: every shape-keeping (``out_shape="same"``) image entry of family attention.
    Tokens: every shape-keeping tokens entry that mixes tokens (changing token 0 changes
    another token's output), which leaves out positional encodings (RoPE, sinusoidal,
    learned) that only add or rotate per position.
    """
    if kind not in KINDS:
        raise ValueError(f"arena kind {kind!r} not in {KINDS}")
    names = [n for n in list_blocks(family="attention")
             if spec(n).input == kind and spec(n).example.out_shape == "same"]
    return names if kind == "image" else [n for n in names if _mixes_tokens(n)]


def _kind_of(block: str) -> str:
    return spec(block).input


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ArenaSettings:
    """The arena's budget and data: the same for every block.

    ``small_data`` uses each data set's small version (tests, smoke runs);
    ``quick_settings()`` is the ``--quick`` budget: 5 epochs, 2 seeds, full data.
    """

    blocks: tuple[str, ...] = ()
    image_data: str = "digits"
    token_data: str = "mnist1d"
    epochs: int = 15
    seeds: int = 3
    jobs: int = 1
    small_data: bool = False
    batch_size: int = 64
    lr: float = 3e-3
    width: int = 16
    dim: int = 32
    depth: int = 2
    data_dir: str = "data"

    @classmethod
    def quick_settings(cls, **kw: Any) -> ArenaSettings:
        return cls(**{"epochs": 5, "seeds": 2, **kw})

    def data_for(self, kind: str) -> str:
        return self.image_data if kind == "image" else self.token_data


# --------------------------------------------------------------------------- one run


# Constructor arguments that fix a token block's largest sequence length.
_LENGTH_KEYS = ("max_len", "seq_len", "max_seq_len", "num_tokens")


def _block_config(block: str, length: int | None = None) -> dict[str, Any]:
    """The block's registered example config without its input-width argument, and with
    any maximum-length argument set to ``length``: the same small settings ``bench`` uses."""
    s = spec(block)
    cfg = {k: v for k, v in s.example.config.items() if k != s.example.inputs.features}
    if length is not None:
        cfg.update({k: max(length, int(cfg[k])) for k in _LENGTH_KEYS if k in cfg})
    return cfg


def build_arena_model(kind: str, block: str, in_chans: int, num_classes: int, settings: ArenaSettings,
                      example: torch.Tensor | None = None) -> nn.Module:
    """The backbone of ``kind`` with ``block`` in it (``none``: without attention).

    The block gets its registered example config (minus the width, which the backbone
    sets); for tokens, maximum-length arguments are raised to the example's length.
    """
    if kind == "image":
        net = ArenaConvNet(in_chans, num_classes, width=settings.width)
        if block != BASELINE:
            from blockzoo.attach import attach

            net, _ = attach(net, block, after=lambda name, _m: name in ("stage1", "stage2"),
                            example_input=example, **_block_config(block))
        return net
    mixer = None
    if block != BASELINE:
        builder = spec(block).builder
        cfg = _block_config(block, None if example is None else example.shape[1])

        def mixer(d: int) -> nn.Module:
            return builder(d, **cfg)

    return ArenaTransformer(in_chans, num_classes, mixer, dim=settings.dim, depth=settings.depth)


def train_one(kind: str, block: str, seed: int, settings: ArenaSettings) -> dict[str, Any]:
    """Train one (block, seed) with the arena's budget; returns its result row."""
    from blockzoo.bench.flops import count_flops, count_params
    from blockzoo.data import load_data
    from blockzoo.train.loop import fit

    data = load_data(settings.data_for(kind), seed=seed, quick=settings.small_data,
                     data_dir=settings.data_dir)
    data = data.view("image" if kind == "image" else "sequence")
    example = data.train.x[:2].float()
    torch.manual_seed(seed)
    model = build_arena_model(kind, block, data.in_chans, data.num_classes, settings, example)
    result = fit(model, data, dict(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                                   seed=seed, quiet=True, device="cpu", plots=False))
    model = result.model.eval()
    x = data.test.x[:1].float()
    return dict(test_acc=float(result.test[result.metric]), params=count_params(model),
                flops=count_flops(model, (x,)), train_s=float(result.seconds))


def measure_latency(kind: str, block: str, settings: ArenaSettings, *, warmup: int = 5,
                    repeats: int = 20) -> float:
    """Median eval-forward time (ms) of the arena model on one batch of test inputs.

    Measured in the calling process after training, one model at a time, so parallel
    training jobs do not disturb it; the weights do not matter for the time, so the
    model is freshly built.
    """
    from blockzoo.bench.timing import time_call
    from blockzoo.data import load_data

    data = load_data(settings.data_for(kind), seed=0, quick=settings.small_data, data_dir=settings.data_dir)
    data = data.view("image" if kind == "image" else "sequence")
    x = data.test.x[: settings.batch_size].float()
    torch.manual_seed(0)
    model = build_arena_model(kind, block, data.in_chans, data.num_classes, settings, x[:2]).eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    return time_call(forward, warmup=warmup, repeats=repeats).median_ms


def arena_latencies(
    rows: Iterable[Mapping[str, Any]],
    settings: ArenaSettings,
    measure: Callable[[str, str, ArenaSettings], float] = measure_latency,
) -> dict[tuple[str, str], float]:
    """``{(kind, block): latency ms}`` for every block with a finished run, measured now."""
    out: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["kind"], r["block"])
        if r["status"] == "ok" and key not in out:
            try:
                out[key] = measure(r["kind"], r["block"], settings)
            except Exception as e:  # trained fine but cannot be timed: leave the cell empty
                log.warning("arena: latency of %s failed: %s", r["block"], e)
    return out


# --------------------------------------------------------------------------- CSV, resume


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an arena CSV, numbers parsed; [] when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["seed"], r["epochs"] = int(r["seed"]), int(r["epochs"])
        r["small_data"] = r["small_data"] == "True"
        for k in ("test_acc", "train_s"):
            r[k] = float(r[k]) if r.get(k) else None
        for k in ("params", "flops"):
            r[k] = int(r[k]) if r.get(k) else None
    return rows


def _key(kind: str, block: str, seed: int, data: str, epochs: int, small_data: bool) -> tuple:
    return (kind, block, int(seed), data, int(epochs), bool(small_data))


def _append(path: Path, row: Mapping[str, Any]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ARENA_COLUMNS
    if not new:
        with path.open(newline="") as f:
            columns = next(csv.reader(f))  # keep an existing file's column order
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="")
        if new:
            w.writeheader()
        w.writerow(row)


def _job(runner: Callable[..., dict[str, Any]], kind: str, block: str, seed: int,
         settings: ArenaSettings) -> dict[str, Any]:
    torch.set_num_threads(1)
    row: dict[str, Any] = dict(kind=kind, block=block, seed=seed, data=settings.data_for(kind),
                               epochs=settings.epochs, small_data=settings.small_data)
    try:
        row.update(runner(kind, block, seed, settings), status="ok", error="")
    except Exception as e:  # reported in the table and re-tried on the next call
        row.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0])
    row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return row


def plan(settings: ArenaSettings) -> list[tuple[str, str, int]]:
    """All (kind, block, seed) runs of these settings, baselines first."""
    if settings.blocks:
        for b in settings.blocks:
            if b != BASELINE:
                spec(b)
        blocks = list(settings.blocks)
    else:
        blocks = [b for k in KINDS for b in arena_candidates(k)]
    kinds_used = sorted({_kind_of(b) for b in blocks if b != BASELINE} or set(KINDS))
    bad = [b for b in blocks if b != BASELINE and _kind_of(b) not in KINDS]
    if bad:
        raise ValueError(f"arena: {bad} take neither image nor tokens input")
    runs = [(k, BASELINE, s) for k in kinds_used for s in range(settings.seeds)]
    runs += [(_kind_of(b), b, s) for b in blocks if b != BASELINE for s in range(settings.seeds)]
    return runs


def run_arena(
    settings: ArenaSettings,
    csv_path: str | Path,
    *,
    runner: Callable[..., dict[str, Any]] = train_one,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every (block, seed) not already finished in ``csv_path``; append each result as it ends.

    Returns the rows of these settings (old and new). ``settings.jobs > 1`` trains in
    that many processes (each with one thread); ``runner`` must then be picklable.
    """
    from tqdm.auto import tqdm

    csv_path = Path(csv_path)
    done = {_key(r["kind"], r["block"], r["seed"], r["data"], r["epochs"], r["small_data"])
            for r in read_results(csv_path) if r["status"] == "ok"}
    todo = [(k, b, s) for k, b, s in plan(settings)
            if _key(k, b, s, settings.data_for(k), settings.epochs, settings.small_data) not in done]
    log.info("arena: %d runs to do, %d already in %s", len(todo), len(done), csv_path)
    bar = tqdm(total=len(todo), desc="arena", unit="run", disable=not progress, leave=False)
    if settings.jobs <= 1:
        for k, b, s in todo:
            bar.set_postfix_str(f"{b} seed {s}")
            _append(csv_path, _job(runner, k, b, s, settings))
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(settings.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_job, runner, k, b, s, settings) for k, b, s in todo]
            for fut in as_completed(futures):
                _append(csv_path, fut.result())
                bar.update()
    bar.close()
    return results_for(read_results(csv_path), settings)


def results_for(rows: Iterable[Mapping[str, Any]], settings: ArenaSettings) -> list[dict[str, Any]]:
    """The rows of ``settings``' plan (latest row per run)."""
    wanted = {_key(k, b, s, settings.data_for(k), settings.epochs, settings.small_data)
              for k, b, s in plan(settings)}
    latest: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = _key(r["kind"], r["block"], r["seed"], r["data"], r["epochs"], r["small_data"])
        if key in wanted and (key not in latest or latest[key]["status"] != "ok"):
            latest[key] = dict(r)
    return list(latest.values())


# --------------------------------------------------------------------------- summary


def _fmt_pm(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def summarize(rows: Iterable[Mapping[str, Any]],
              latency: Mapping[tuple[str, str], float] | None = None) -> list[dict[str, Any]]:
    """One row per (kind, block): accuracy mean ± std over seeds, params, FLOPs, times, failures.

    ``latency`` (from ``arena_latencies``) fills the ``latency_ms`` column.
    """
    latency = latency or {}
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["block"]), []).append(r)
    out = []
    for (kind, block), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        failed = [r for r in rs if r["status"] != "ok"]
        row: dict[str, Any] = dict(kind=kind, block=block, data=rs[0]["data"], seeds=len(ok))
        if ok:
            mean, std = _fmt_pm([100 * r["test_acc"] for r in ok])
            row.update(acc=f"{mean:.1f} ± {std:.1f}", acc_mean=mean, acc_std=std,
                       params=ok[0]["params"], flops=ok[0]["flops"],
                       train_s=statistics.fmean(r["train_s"] for r in ok),
                       latency_ms=latency.get((kind, block)))
        if failed:
            row["error"] = failed[-1]["error"]
        out.append(row)
    return sorted(out, key=lambda r: (r["kind"], r["block"] != BASELINE, -r.get("acc_mean", -math.inf)))


SUMMARY_COLUMNS = ["kind", "block", "data", "seeds", "acc", "params", "flops", "train_s", "latency_ms"]


def plot_arena(summary: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Accuracy (mean ± std over seeds) against inference latency, one panel per input kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in summary if "acc_mean" in r and r.get("latency_ms") is not None]
    kinds = [k for k in KINDS if any(r["kind"] == k for r in ok)] or ["image"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rs = [r for r in ok if r["kind"] == kind]
        for r in rs:
            base = r["block"] == BASELINE
            if base:
                ax.axhline(r["acc_mean"], color="black", lw=0.8, ls="--", label="backbone without attention")
            ax.errorbar(r["latency_ms"], r["acc_mean"], yerr=r["acc_std"], fmt="s" if base else "o",
                        color="black" if base else None, capsize=3)
            ax.annotate(r["block"], (r["latency_ms"], r["acc_mean"]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        ax.set_xlabel("inference latency of one batch (ms, median)")
        ax.set_xscale("log")
        ax.set_ylabel("test accuracy (%), mean ± std over seeds")
        ax.set_title(f"{kind} attention on {rs[0]['data'] if rs else '-'}")
        ax.grid(alpha=0.3)
        if any(r["block"] == BASELINE for r in rs):
            ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def settings_text(settings: ArenaSettings) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(settings).items() if k not in ("blocks", "jobs"))


def arena_markdown(csv_path: str | Path, out_dir: str | Path, settings: ArenaSettings,
                   measure: Callable[[str, str, ArenaSettings], float] = measure_latency) -> str:
    """The arena table (markdown) and plot (``arena.png`` in ``out_dir``) from a results CSV.

    Latencies are measured now (``measure``), one block at a time.
    """
    from blockzoo.bench.report import render

    rows = results_for(read_results(csv_path), settings)
    summary = summarize(rows, arena_latencies(rows, settings, measure))
    png = plot_arena(summary, Path(out_dir) / "arena.png")
    lines = [render(summary, "markdown", SUMMARY_COLUMNS)]
    fails = [r for r in summary if r.get("error")]
    if fails:
        lines.append("\nFailed runs:\n" + "\n".join(f"- {r['block']}: {r['error']}" for r in fails))
    lines.append(f"\n![accuracy vs latency]({png.name})")
    return "\n".join(lines)
