"""The numbers behind each figure (not pixels): autograd derivatives, maps, encodings, shapes."""

import math

import pytest
import torch
from torch import nn

import blockzoo
from blockzoo.attention.maps import AttentionMap
from blockzoo.bench.flops import count_flops, count_params
from blockzoo.cli import main
from blockzoo.viz import activation_curves, attention_maps, layer_table, plot_activations
from blockzoo.viz.shapes import conv_arithmetic

PNG = b"\x89PNG\r\n\x1a\n"


def _at(curve: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x0: float) -> tuple[float, float]:
    x, y, dy = curve
    i = int(torch.argmin((x - x0).abs()))
    assert abs(float(x[i]) - x0) < 1e-9
    return float(y[i]), float(dy[i])


def test_activation_derivatives_match_closed_forms() -> None:
    c = activation_curves(["relu", "sigmoid", "tanh", "prelu", "silu", "gelu"])
    assert _at(c["relu"], -2.0)[1] == 0.0 and _at(c["relu"], 3.0)[1] == 1.0
    assert _at(c["sigmoid"], 0.0) == pytest.approx((0.5, 0.25))
    x, _, dy = c["sigmoid"]
    assert float(dy.max()) == pytest.approx(0.25) and float(x[dy.argmax()]) == pytest.approx(0.0)
    assert _at(c["tanh"], 0.0) == pytest.approx((0.0, 1.0))
    s = 1 / (1 + math.exp(-2.0))
    assert _at(c["tanh"], 2.0)[1] == pytest.approx(1 - math.tanh(2.0) ** 2)
    assert _at(c["prelu"], -4.0) == pytest.approx((-1.0, 0.25))  # PReLU's initial slope 0.25
    assert _at(c["silu"], 2.0)[1] == pytest.approx(s + 2.0 * s * (1 - s))  # d/dx x sigmoid(x)
    phi = math.exp(-0.5) / math.sqrt(2 * math.pi)
    assert _at(c["gelu"], 1.0)[1] == pytest.approx(0.5 * (1 + math.erf(1 / math.sqrt(2))) + phi)


def test_activation_figure(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    path = plot_activations(["relu", "tanh"], tmp_path / "a.png")
    assert path.read_bytes()[:8] == PNG
    out = tmp_path / "b.png"
    assert main(["plot", "activations", "--names", "sigmoid", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.read_bytes()[:8] == PNG


def test_attention_maps_read_through_the_hook(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    s = blockzoo.spec("se")
    block = s.build_example().eval()
    (x,) = s.make_input(batch=2)
    maps = attention_maps(block, (x,))
    (kind, gate), = maps.values()
    assert kind == "channel" and gate.shape == (2, 16, 1, 1)
    assert torch.allclose(block(x), x * gate)  # the recorded gate is the one that scaled x
    out = tmp_path / "se.png"
    assert main(["plot", "attention", "se", "--size", "6", "10", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    assert main(["plot", "attention", "mlp"]) == 2
    assert "not an attention block" in capsys.readouterr().err


def test_posenc_sinusoidal_dot_depends_on_offset_only() -> None:
    pytest.importorskip("blockzoo.attention.positional")
    from blockzoo.viz.posenc import encoding_table, offset_dot_products

    n, d = 20, 16
    table = encoding_table("sinusoidal", n, d)
    assert table.shape == (n, d)
    w = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    assert torch.allclose(table[3, 0::2], torch.sin(3 * w))
    assert torch.allclose(table[3, 1::2], torch.cos(3 * w))
    curves = offset_dot_products("sinusoidal", n, d, anchors=[0, 5, 9])
    for off, dots in curves.values():
        closed = torch.cos(off[:, None].double() * w[None, :]).sum(-1)  # sum_i cos(k w_i)
        assert torch.allclose(dots, closed)


def test_posenc_rope_dot_depends_on_offset_only(tmp_path) -> None:
    pytest.importorskip("blockzoo.attention.positional")
    from blockzoo.viz.posenc import offset_dot_products

    curves = offset_dot_products("rope", 24, 8, anchors=[2, 10])
    by_offset = {}
    for off, dots in curves.values():
        for k, v in zip(off.tolist(), dots.tolist(), strict=True):
            by_offset.setdefault(k, []).append(v)
    assert all(max(v) - min(v) < 1e-9 for v in by_offset.values())
    assert curves[2][1][2] == pytest.approx(8.0)  # |R_m 1|^2 = d at offset 0
    out = tmp_path / "rope.png"
    assert main(["plot", "posenc", "--kind", "rope", "--length", "16", "--dim", "8", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG


def test_conv_arithmetic() -> None:
    conv = nn.Conv2d(3, 8, 7, stride=2, padding=3)
    assert conv_arithmetic(conv, (1, 3, 224, 225)) == "floor((224+2*3-7)/2)+1=112; floor((225+2*3-7)/2)+1=113"
    assert nn.functional.conv2d(torch.zeros(1, 3, 224, 225), conv.weight, stride=2, padding=3).shape[-2:] == (
        112, 113)
    pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    assert conv_arithmetic(pool, (1, 1, 8, 8)) == "ceil((8+2*1-3)/2)+1=5; ceil((8+2*1-3)/2)+1=5"
    assert pool(torch.zeros(1, 1, 8, 8)).shape[-2:] == (5, 5)
    assert conv_arithmetic(nn.ReLU(), (1, 2)) == ""


class _Toy(nn.Module):
    """Params owned by a container and a matmul in a container's own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6))
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.conv(x)).mean((2, 3)) * self.scale
        return self.head(h @ torch.eye(6))


def test_layer_table_totals_equal_model_totals() -> None:
    model, x = _Toy(), torch.randn(2, 2, 8, 10)
    rows = layer_table(model, (x,))
    by = {r.name: r for r in rows}
    assert list(by) == ["(root)", "conv", "pool", "head"]
    assert by["conv"].out_shape == "(2, 6, 8, 10)" and by["pool"].out_shape == "(2, 6, 4, 5)"
    assert by["conv"].flops == 2 * (2 * 6 * 8 * 10) * (2 * 9) and by["head"].flops == 2 * 2 * 6 * 4
    assert by["(root)"].params == 6 and by["(root)"].flops == 2 * 2 * 6 * 6  # the eye matmul
    assert sum(r.params for r in rows) == count_params(model)
    assert sum(r.flops for r in rows) == count_flops(model, (x,))


@pytest.mark.parametrize("name", ["se", "mlp", *{"resnet18"} & set(blockzoo.list_blocks())])
def test_shapes_totals_equal_info(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shapes", name, "--format", "csv"]) == 0
    total = capsys.readouterr().out.strip().splitlines()[-1].split(",")
    assert main(["info", name]) == 0
    info = capsys.readouterr().out
    params = int(info.split("params:")[1].split()[0].replace(",", ""))
    flops = int(info.split("FLOPs:")[1].split()[0].replace(",", ""))
    assert total[0] == "TOTAL" and (int(total[3]), int(total[4])) == (params, flops)


def test_shapes_input_option(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "s.png"
    assert main(["shapes", "se", "--input", "3,8,5,7", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "input (3, 8, 5, 7)" in out and "(3, 8, 1, 1)" in out and png.read_bytes()[:8] == PNG
    assert main(["shapes", "se", "--input", "3,8,5"]) == 2
    assert "give B,C,H,W" in capsys.readouterr().err


# Token blocks whose "weights" map is not a row-stochastic (B, h, N, M) tensor, and why.
WEIGHTS_NOT_ROWS_OVER_KEYS = {
    "emsa": "ResT applies instance normalisation to the softmax map (A = IN(softmax(...)))",
    "separable_self_attention": "its map is the (B, N, 1) context scores, a softmax over N (dim 1)",
}


@pytest.mark.parametrize("name", [n for n in blockzoo.list_blocks(family="attention")
                                  if blockzoo.spec(n).input == "tokens"] or ["none"])
def test_token_attention_weights_are_distributions(name: str) -> None:
    """Every token block's recorded softmax weights (kind "weights") sum to 1 over the keys,
    as ``AttentionMap`` documents, so the figures can draw them as distributions."""
    if name == "none":
        pytest.skip("no token-attention block registered on this branch")
    if name in WEIGHTS_NOT_ROWS_OVER_KEYS:
        pytest.skip(WEIGHTS_NOT_ROWS_OVER_KEYS[name])
    s = blockzoo.spec(name)
    model = s.build_example().eval()
    if not any(isinstance(m, AttentionMap) for m in model.modules()):
        pytest.skip(f"{name} exposes no AttentionMap")
    for kind, t in attention_maps(model, s.make_input(batch=2)).values():
        if kind == "weights":
            assert (t >= 0).all() and torch.allclose(t.sum(-1), torch.ones(()), atol=1e-5)
