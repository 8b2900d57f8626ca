"""The backbone arena: which models it trains (from the registry), the cost cap, the resize
rule, a real one-epoch run that resumes, and the CLI's errors."""

import pytest
import torch

from blockzoo.bench.arena import (
    BACKBONE,
    ArenaSettings,
    arena_data,
    arena_markdown,
    backbone_candidates,
    backbone_skips,
    plan,
    read_results,
    run_arena,
)
from blockzoo.checks import ConfigError
from blockzoo.cli import main
from blockzoo.registry import list_blocks, spec

TINY = ("mixer_tiny", "lenet5")  # 8x8 (the digits' own size) and 28x28 (upsampled)


def _settings(**kw) -> ArenaSettings:
    kw = {"blocks": TINY, "seeds": 1, "epochs": 1, "small_data": True, **kw}
    return ArenaSettings.backbone_settings(**kw)


def test_candidates_are_the_registrys_image_classifiers() -> None:
    names = backbone_candidates()
    for n in ("resnet18", "vit_tiny", "swin_tiny", "mixer_tiny", "lenet5", "cifar_cnn"):
        assert n in names
    for n in ("lstm_classifier", "tabular_mlp", "bow_classifier", "mnist1d_cnn", "se", "mlp"):
        assert n not in names  # sequences, vectors, or not a model
    assert all(spec(n).family == "model" and spec(n).input == "image" for n in names)
    expected = [n for n in list_blocks(family="model") if spec(n).input == "image"
                and spec(n).output in ("logits", "log_probs")]
    assert names == expected  # read from the registry: models registered later join


def test_cost_cap_skips_with_the_reason_and_plan_leaves_them_out() -> None:
    assert backbone_skips(_settings(), list(TINY)) == {}
    skips = backbone_skips(_settings(max_mflops=0.5), list(TINY))  # lenet5 ~0.8 MFLOPs at 28x28
    assert list(skips) == ["lenet5"]
    assert "MFLOPs per 28x28 image, over the arena's cap of 0.5" in skips["lenet5"]
    mixer_only = [(BACKBONE, "mixer_tiny", 0), (BACKBONE, "mixer_tiny", 1)]
    assert plan(_settings(max_mflops=0.5, seeds=2)) == mixer_only
    assert plan(_settings(seeds=2)) == [(BACKBONE, m, s) for s in (0, 1) for m in TINY]  # no baseline


def test_non_classifiers_and_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="se, lstm_classifier are not an image classifier"):
        plan(_settings(blocks=("se", "lstm_classifier")))
    with pytest.raises(ConfigError, match="arena 'models'"):
        ArenaSettings(arena="models")
    with pytest.raises(ConfigError, match="max_mflops"):
        ArenaSettings(max_mflops=0)


def test_data_resized_to_the_models_example_size() -> None:
    s = _settings()
    lenet = arena_data(BACKBONE, "lenet5", s, 0)
    assert lenet.shape == (1, 28, 28) and spec("lenet5").example.size == (28, 28)
    mixer = arena_data(BACKBONE, "mixer_tiny", s, 0)
    assert mixer.shape == (1, 8, 8) and len(mixer.test) == len(lenet.test)
    assert torch.equal(mixer.test.y, lenet.test.y)
    # a constant image stays constant when resized (bilinear interpolation averages)
    const = torch.full((1, 1, 8, 8), 0.7)
    from blockzoo.bench.arena.one_run import _resized

    assert torch.allclose(_resized(const, (28, 28)), torch.full((1, 1, 28, 28), 0.7), atol=1e-6)


def test_real_one_epoch_run_writes_rows_and_resumes(tmp_path) -> None:
    pytest.importorskip("blockzoo.train.loop")
    path = tmp_path / "arena_backbones.csv"
    rows = run_arena(_settings(), path, progress=False)
    assert [(r["kind"], r["block"], r["data"], r["status"]) for r in rows] == [
        (BACKBONE, "mixer_tiny", "digits@8x8", "ok"), (BACKBONE, "lenet5", "digits@28x28", "ok")]
    for r in rows:
        assert 0.0 <= r["test_acc"] <= 1.0 and r["params"] > 0 and r["flops"] > 0 and r["train_s"] > 0
    lenet = next(r for r in rows if r["block"] == "lenet5")
    assert lenet["params"] == 61706  # LeNet-5 with 10 classes and 1 channel
    calls = []

    def runner(kind, block, seed, settings):
        calls.append(block)
        raise AssertionError("a finished run was run again")

    again = run_arena(_settings(), path, runner=runner, progress=False)
    assert calls == [] and len(again) == 2 and len(read_results(path)) == 2

    def fake_latency(kind, block, settings):
        return 1.0

    text = arena_markdown(path, tmp_path, _settings(max_mflops=0.5), fake_latency, png_name="bb.png")
    assert "| backbone | mixer_tiny | digits@8x8 | 1 |" in text  # lenet5 is over this cap: not in the plan
    assert "Not trained here:\n- lenet5: " in text
    assert (tmp_path / "bb.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("argv", "message"), [
    (["--kind", "backbones", "--data", "tokens:mnist1d"], "--kind backbones trains image classifiers"),
    (["--kind", "backbones", "--quick"], "--quick is the attention arena's preview"),
    (["--max-mflops", "10"], "use it with --kind backbones"),
    (["--kind", "backbones", "--blocks", "se"], "se is not an image classifier"),
    (["--kind", "backbones", "--max-mflops", "0"], "expected a number > 0"),
    (["--kind", "models"], "invalid choice: 'models'"),
])
def test_cli_argument_errors_are_clear(argv, message, tmp_path, capsys) -> None:
    assert main(["arena", *argv, "--csv", str(tmp_path / "x.csv"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.csv").exists()
