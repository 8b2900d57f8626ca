"""The README's deployment walk-through: train with the engine, export to ONNX,
run it with onnxruntime, and get the same test accuracy as the engine reported."""

import torch

import blockzoo
from blockzoo.cli import main
from blockzoo.data import load_data
from blockzoo.export import run_onnx
from blockzoo.train.checkpoint import load_checkpoint


def test_trained_model_exports_to_onnx_with_the_same_accuracy(tmp_path) -> None:
    runs = tmp_path / "runs"
    assert main(["train", "--epochs", "1", "--quiet", "--runs-dir", str(runs), "--name", "r"]) == 0
    weights = runs / "r" / "model.safetensors"
    onnx = tmp_path / "model.onnx"
    assert main(["export", str(weights), "--format", "onnx", "--out", str(onnx), "--dynamic-batch"]) == 0

    test = load_data("mnist1d").test
    (logits,) = run_onnx(onnx, (test.x,))
    onnx_acc = (logits.argmax(1) == test.y).float().mean().item()
    model = blockzoo.load(weights).eval()
    with torch.no_grad():
        eager_acc = (model(test.x).argmax(1) == test.y).float().mean().item()
    reported = load_checkpoint(runs / "r" / "best.pt")["test"]["acc"]
    assert onnx_acc == eager_acc
    assert abs(onnx_acc - reported) < 1e-6
