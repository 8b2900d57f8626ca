"""The measuring code: rows and fields, FLOP counts, memory, failures listed (no timing asserts)."""

import json

import pytest
import torch
from torch import nn

import blockzoo
from blockzoo.bench import (
    BenchSettings,
    Timing,
    count_flops,
    count_params,
    peak_memory_bytes,
    run_bench,
    time_call,
)
from blockzoo.bench.runner import BENCH_COLUMNS
from blockzoo.checks import check_shape
from blockzoo.cli import main
from blockzoo.registry import Example, images, register, unregister

QUICK = BenchSettings(batch=2, warmup=0, repeats=2)


def test_linear_flops_are_two_in_out_batch() -> None:
    lin = nn.Linear(7, 5)
    assert count_flops(lin, (torch.randn(3, 7),)) == 2 * 7 * 5 * 3


def test_conv_flops_are_two_macs() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    # each output element (B*6*H*W) is a dot product of 4*3*3 terms
    assert count_flops(conv, (torch.randn(2, 4, 5, 7),)) == 2 * (2 * 6 * 5 * 7) * (4 * 9)


def test_timing_median_and_interquartile_range() -> None:
    t = Timing((5.0, 1.0, 3.0, 2.0, 4.0), warmup=0)
    assert t.median_ms == 3.0
    assert t.spread_ms == pytest.approx(4.0 - 2.0)
    assert t.min_ms == 1.0


def test_time_call_runs_warmup_plus_repeats() -> None:
    calls = []
    t = time_call(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and len(t.times_ms) == 5
    assert all(x >= 0 for x in t.times_ms)
    with pytest.raises(ValueError, match="repeats=0"):
        time_call(lambda: None, repeats=0)


def test_cpu_peak_memory_sees_a_known_allocation() -> None:
    n = 1 << 20  # 1 Mi float32 = 4 MiB, twice alive at once

    def f() -> None:
        a = torch.ones(n)
        b = a * 2
        del a, b

    peak = peak_memory_bytes(f)
    assert 8 * 2**20 <= peak < 8 * 2**20 + 64 * 1024
    # the fallback through the public trace export reads the same events
    from torch.profiler import ProfilerActivity, profile

    from blockzoo.bench.memory import _trace_totals

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        f()
    assert abs(max(_trace_totals(prof)) - peak) < 64 * 1024


def test_rows_and_fields_on_tiny_blocks() -> None:
    res = run_bench(["mlp", "se"], QUICK, progress=False, peak_gflops=10.0)
    assert [r["name"] for r in res.rows] == ["mlp", "se"]
    assert not res.failures
    for r in res.rows:
        assert list(r) == BENCH_COLUMNS
        s = blockzoo.spec(r["name"])
        model = s.build_example()
        assert r["params"] == count_params(model)
        assert r["flops"] == count_flops(model.eval(), s.make_input(batch=2))
        assert r["fwd_ms"] > 0 and r["train_ms"] > 0 and r["fwd_iqr_ms"] >= 0
        assert r["samples_s"] == pytest.approx(2 / (r["fwd_ms"] * 1e-3))
        assert r["gflops"] == pytest.approx(r["flops"] / (r["fwd_ms"] * 1e-3) / 1e9)
        assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / 10.0)
        assert r["fwd_mem_mib"] > 0 and r["train_mem_mib"] > 0
    mlp = res.rows[0]
    assert mlp["input"] == "2x12" and mlp["flops"] == 2 * 2 * (12 * 16 + 16 * 16 + 16 * 5)
    assert res.rows[1]["input"] == "2x16x8x8"
    for key in ("device", "torch", "threads", "batch", "dtype", "warmup", "repeats", "matmul_peak_gflops"):
        assert key in res.machine


def test_size_override_applies_to_its_input_kind() -> None:
    res = run_bench(["se", "mlp"], BenchSettings(batch=1, image_size=(5, 11), length=9, warmup=0,
                                                 repeats=1), progress=False, peak_gflops=1.0)
    assert [r["input"] for r in res.rows] == ["1x16x5x11", "1x12"]


class _NeedsEvenSize(nn.Module):
    """Test-only block that rejects odd sizes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="NeedsEven", C=4)
        if x.shape[-1] % 2:
            raise blockzoo.ShapeError(f"NeedsEven: W={x.shape[-1]} must be even")
        return self.conv(x)


@pytest.fixture
def even_block():
    register(name="zz_needs_even", family="conv", paper="test", arxiv="", year=2000, input="image",
             example=Example(config=dict(channels=4), inputs=images(), size=(4, 4)))(_NeedsEvenSize)
    yield "zz_needs_even"
    unregister("zz_needs_even")


def test_failures_are_listed_with_their_error(even_block: str, capsys: pytest.CaptureFixture[str]) -> None:
    res = run_bench(["se", even_block], BenchSettings(batch=1, image_size=(4, 5), warmup=0, repeats=1),
                    progress=False, peak_gflops=1.0)
    assert [r["name"] for r in res.rows] == ["se"]
    assert res.failures == [dict(name=even_block, error="ShapeError: NeedsEven: W=5 must be even")]
    assert main(["bench", "se", even_block, "--size", "4", "5", "--repeats", "1", "--warmup", "0",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Failed:" in out and f"{even_block}: ShapeError: NeedsEven: W=5 must be even" in out


def test_cli_json_and_csv(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "mlp", "--batch", "3", "--repeats", "1", "--warmup", "0", "--no-progress"]
    assert main([*args, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["machine"]["batch"] == 3 and data["failures"] == []
    assert [r["name"] for r in data["rows"]] == ["mlp"]
    assert main([*args, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# device: cpu")
    header = next(line for line in lines if not line.startswith("#"))
    assert header.split(",") == BENCH_COLUMNS


def test_family_filter_and_plot(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "bench.png"
    assert main(["bench", "--family", "attention", "--repeats", "1", "--warmup", "0", "--no-progress",
                 "--format", "markdown", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    for name in blockzoo.list_blocks(family="attention"):
        assert f"| {name} |" in out
    assert "| mlp |" not in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_threads_option_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    before = torch.get_num_threads()
    try:
        assert main(["bench", "mlp", "--threads", "2", "--repeats", "1", "--warmup", "0", "--no-progress",
                     "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["machine"]["threads"] == 2
    finally:
        torch.set_num_threads(before)


def test_bf16_runs() -> None:
    res = run_bench(["mlp"], BenchSettings(batch=2, dtype="bf16", warmup=0, repeats=1), progress=False)
    assert res.rows and res.machine["dtype"] == "bf16" and res.rows[0]["pct_peak"] > 0


def test_bench_at_a_user_config(capsys: pytest.CaptureFixture[str]) -> None:
    # dim=24 with 3 heads (d = 8): input (2, 8, 24); FLOPs q,k,v + out projections + attention
    b, n, c = 2, 8, 24
    args = ["bench", "multi_head_attention", "--config", "dim=24,num_heads=3,qkv_bias=False", "--batch", "2",
            "--repeats", "1", "--warmup", "0", "--no-progress", "--format", "json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    (row,) = data["rows"]
    assert data["machine"]["config"] == "dim=24, num_heads=3, qkv_bias=False"
    assert row["input"] == f"{b}x{n}x{c}"
    assert row["params"] == 3 * c * c + c * c + c  # no q, k, v biases; the output bias
    assert row["flops"] == 2 * b * n * c * 4 * c + 4 * b * n * n * c


def test_bench_config_values_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from blockzoo.cli.common import config_pairs

    assert config_pairs("dim=16, window=(2, 1),act_layer=gelu,x=1.5") == dict(
        dim=16, window=(2, 1), act_layer="gelu", x=1.5)
    args = ["bench", "multi_head_attention", "--repeats", "1", "--warmup", "0", "--no-progress"]
    assert main([*args, "--config", "dim=16,heads=4"]) == 2
    assert "multi_head_attention takes no heads" in capsys.readouterr().err
    assert main([*args, "--config", "16"]) == 2


def test_compiled_columns_join_the_eager_row() -> None:
    from blockzoo.bench.runner import COMPILE_COLUMNS

    settings = BenchSettings(batch=2, warmup=1, repeats=2, compile=True, compile_backend="aot_eager")
    res = run_bench(["se"], settings, progress=False, peak_gflops=1.0)
    assert res.failures == [] and res.machine["compiled"] == "blockzoo.compile, backend aot_eager"
    (row,) = res.rows
    assert list(row) == BENCH_COLUMNS + COMPILE_COLUMNS
    assert row["fwd_speedup"] == pytest.approx(row["fwd_ms"] / row["compiled_fwd_ms"])
    assert row["train_speedup"] == pytest.approx(row["train_ms"] / row["compiled_train_ms"])
    assert row["compile_s"] > 0


def test_compile_failure_keeps_the_eager_row(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", refuse)
    assert main(["bench", "se", "--compile", "--repeats", "1", "--warmup", "0", "--no-progress",
                 "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["machine"]["compiled"] == "blockzoo.compile, backend inductor"
    (row,) = data["rows"]
    assert row["fwd_ms"] > 0 and row["compiled_fwd_ms"] is None
    assert data["failures"] == [{"name": "se (compiled)", "error": "RuntimeError: no compiler here"}]


def test_aot_compiled_forward_joins_the_row(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--compile --aot`` times ``blockzoo.compile(model, example_inputs=..., aot=True)`` (stood in
    for here by the eager model, so no C++ is compiled) and leaves the train columns empty."""
    import blockzoo.export

    seen: dict[str, object] = {}

    def fake_aot(module: torch.nn.Module, example_inputs: object, **kw: object) -> torch.nn.Module:
        seen.update(kw, inputs=example_inputs, training=module.training)
        return module

    monkeypatch.setattr(blockzoo.export, "AOTCompiled", fake_aot)
    assert main(["bench", "se", "--compile", "--aot", "--repeats", "1", "--warmup", "0", "--no-progress",
                 "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["machine"]["compiled"] == "blockzoo.compile(aot=True), AOTInductor, forward only"
    (row,) = data["rows"]
    assert row["compiled_fwd_ms"] > 0
    assert row["fwd_speedup"] == pytest.approx(row["fwd_ms"] / row["compiled_fwd_ms"])
    assert row["compiled_train_ms"] is None and row["train_speedup"] is None and row["compile_s"] >= 0
    assert data["failures"] == []
    assert seen["training"] is False and [t.shape for t in seen["inputs"]] == [(8, 16, 8, 8)]
