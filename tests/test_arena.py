"""The arena's bookkeeping on tiny fake runs: resume, retries, summary, plot; its backbones."""

import pytest
import torch
from torch import nn

from blockzoo.bench.arena import (
    ArenaConvNet,
    ArenaSettings,
    ArenaTransformer,
    arena_candidates,
    arena_latencies,
    arena_markdown,
    plan,
    read_results,
    run_arena,
    summarize,
)

CALLS: list[tuple[str, str, int]] = []


def fake_runner(kind: str, block: str, seed: int, settings: ArenaSettings) -> dict:
    CALLS.append((kind, block, seed))
    acc = {"none": 0.5, "se": 0.7}[block] + 0.1 * seed
    return dict(test_acc=acc, params=100 if block == "none" else 150, flops=1000, train_s=1.0 + seed)


def fake_latency(kind: str, block: str, settings: ArenaSettings) -> float:
    return 2.0 if block == "none" else 3.0


@pytest.fixture(autouse=True)
def _clear() -> None:
    CALLS.clear()


def _settings(**kw) -> ArenaSettings:
    return ArenaSettings(**{"blocks": ("se",), "seeds": 2, "epochs": 1, "small_data": True, **kw})


def test_plan_has_baseline_and_seeds() -> None:
    assert plan(_settings()) == [("image", "none", 0), ("image", "none", 1), ("image", "se", 0),
                                 ("image", "se", 1)]
    assert "se" in arena_candidates("image")
    with pytest.raises(ValueError, match="arena kind"):
        arena_candidates("graph")


def test_finished_runs_are_not_rerun(tmp_path) -> None:
    path = tmp_path / "arena.csv"
    rows = run_arena(_settings(), path, runner=fake_runner, progress=False)
    assert len(CALLS) == 4 and len(rows) == 4 and len(read_results(path)) == 4
    CALLS.clear()
    rows = run_arena(_settings(), path, runner=fake_runner, progress=False)
    assert CALLS == [] and len(rows) == 4
    rows = run_arena(_settings(seeds=3), path, runner=fake_runner, progress=False)
    assert CALLS == [("image", "none", 2), ("image", "se", 2)] and len(rows) == 6
    CALLS.clear()
    run_arena(_settings(epochs=2), path, runner=fake_runner, progress=False)  # another budget: new runs
    assert len(CALLS) == 4 and len(read_results(path)) == 10


def test_appends_keep_an_older_files_columns(tmp_path) -> None:
    path = tmp_path / "arena.csv"
    path.write_text("kind,block,seed,data,epochs,small_data,status,test_acc,params,flops,train_s,latency_ms,"
                    "error,finished_at\nimage,none,0,digits,1,True,ok,0.5,100,1000,1.0,9.9,,t\n")
    rows = run_arena(_settings(), path, runner=fake_runner, progress=False)
    assert CALLS == [("image", "none", 1), ("image", "se", 0), ("image", "se", 1)] and len(rows) == 4
    assert all(len(line.split(",")) == 14 for line in path.read_text().splitlines())


def test_interrupted_arena_resumes_where_it_stopped(tmp_path) -> None:
    path = tmp_path / "arena.csv"

    def dies_after_two(kind, block, seed, settings):
        if len(CALLS) == 2:
            raise KeyboardInterrupt
        return fake_runner(kind, block, seed, settings)

    with pytest.raises(KeyboardInterrupt):
        run_arena(_settings(), path, runner=dies_after_two, progress=False)
    assert [(r["block"], r["seed"]) for r in read_results(path)] == [("none", 0), ("none", 1)]
    CALLS.clear()
    rows = run_arena(_settings(), path, runner=fake_runner, progress=False)
    assert CALLS == [("image", "se", 0), ("image", "se", 1)] and len(rows) == 4


def test_failures_are_reported_and_retried(tmp_path) -> None:
    path = tmp_path / "arena.csv"

    def se_breaks(kind, block, seed, settings):
        if block == "se" and seed == 0:
            raise RuntimeError("boom\nsecond line")
        return fake_runner(kind, block, seed, settings)

    rows = run_arena(_settings(), path, runner=se_breaks, progress=False)
    failed = [r for r in rows if r["status"] == "failed"]
    assert [(r["block"], r["seed"], r["error"]) for r in failed] == [("se", 0, "RuntimeError: boom")]
    se = next(r for r in summarize(rows) if r["block"] == "se")
    assert se["seeds"] == 1 and se["error"] == "RuntimeError: boom"
    CALLS.clear()
    rows = run_arena(_settings(), path, runner=fake_runner, progress=False)
    assert CALLS == [("image", "se", 0)]
    assert all(r["status"] == "ok" for r in rows) and len(rows) == 4


def test_summary_mean_std_and_markdown(tmp_path) -> None:
    path = tmp_path / "arena.csv"
    rows = run_arena(_settings(seeds=3), path, runner=fake_runner, progress=False)
    summary = {r["block"]: r for r in summarize(rows, arena_latencies(rows, _settings(), fake_latency))}
    assert summary["se"]["acc_mean"] == pytest.approx(80.0)  # 70, 80, 90
    assert summary["se"]["acc_std"] == pytest.approx(10.0)
    assert summary["se"]["acc"] == "80.0 ± 10.0"
    assert summary["none"]["train_s"] == pytest.approx(2.0) and summary["se"]["latency_ms"] == 3.0
    assert [r["block"] for r in summarize(rows)] == ["none", "se"]  # baseline first
    text = arena_markdown(path, tmp_path, _settings(seeds=3), fake_latency)
    assert "| image | se | digits | 3 | 80.0 ± 10.0 | 150 | 1000 | 2 | 3 |" in text
    assert (tmp_path / "arena.png").read_bytes()[:4] == b"\x89PNG"


def test_backbones_any_size() -> None:
    net = ArenaConvNet(1, 10, width=8)
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert net(torch.randn(1, 1, 7, 11)).shape == (1, 10)
    tr = ArenaTransformer(1, 10, lambda d: nn.Linear(d, d), dim=16, depth=2)
    assert tr(torch.randn(2, 40, 1)).shape == (2, 10) and tr(torch.randn(1, 9, 1)).shape == (1, 10)
    base = ArenaTransformer(1, 10, None, dim=16)
    extra = sum(p.numel() for p in tr.parameters()) - sum(p.numel() for p in base.parameters())
    assert extra == 2 * (16 * 16 + 16)  # two Linear(16, 16) mixers


def test_one_real_run_per_kind(tmp_path) -> None:
    """One epoch on the small data sets through the real engine (skipped until it is merged)."""
    pytest.importorskip("blockzoo.train.loop")
    pytest.importorskip("blockzoo.data")
    pytest.importorskip("blockzoo.attach")
    from blockzoo.bench.arena import measure_latency, train_one

    s = ArenaSettings(epochs=1, seeds=1, small_data=True)
    blocks = [("image", "se"), *[("tokens", b) for b in arena_candidates("tokens")[:1]]]
    for kind, block in blocks:
        row = train_one(kind, block, 0, s)
        base = train_one(kind, "none", 0, s)
        assert 0.0 <= row["test_acc"] <= 1.0 and row["train_s"] > 0
        assert row["params"] > base["params"] and row["flops"] >= base["flops"]
        assert measure_latency(kind, block, s, warmup=0, repeats=1) > 0


def test_quick_is_a_representative_set_of_both_kinds() -> None:
    from blockzoo.bench.arena import QUICK_BLOCKS

    s = ArenaSettings.quick_settings()
    assert s.blocks == QUICK_BLOCKS and (s.epochs, s.seeds) == (3, 2)
    for kind in ("image", "tokens"):  # every quick block is still a candidate of its kind
        ours = [b for b in QUICK_BLOCKS if b in arena_candidates(kind)]
        assert len(ours) >= 2, (kind, ours)
    assert sorted(b for k in ("image", "tokens") for b in arena_candidates(k) if b in QUICK_BLOCKS) == sorted(
        QUICK_BLOCKS)
    assert len(plan(s)) == 2 * (2 + len(QUICK_BLOCKS))  # two baselines, two seeds each
    assert ArenaSettings.quick_settings(blocks=("se",)).blocks == ("se",)
