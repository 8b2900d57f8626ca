"""Whole image classifiers: the papers' sizes and costs, every input size, attention= inside."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blockzoo
from blockzoo.attention.channel import SqueezeExcite
from blockzoo.bench.flops import count_flops, count_params
from blockzoo.cli import main as cli_main
from blockzoo.conv import BasicBlock, Bottleneck
from blockzoo.models import CifarCNN, ResNet

IMAGE_MODELS = ["mlp_classifier", "lenet5", "cifar_cnn", "inception_net", "resnet18", "resnet34",
                "resnet50", "resnext50", "convmixer", "vit_tiny"]


def test_resnet18_matches_the_paper_params_and_flops() -> None:
    """ResNet-18 at 224x224, 1000 classes: 11.69M parameters, 1.8 G multiply-adds (Table 1)."""
    model = blockzoo.create_model("resnet18", num_classes=1000, in_chans=3).eval()
    assert count_params(model) == 11_689_512
    flops = count_flops(model, (torch.randn(1, 3, 224, 224),))
    # torch's flop counter counts a multiply-add as 2 FLOPs: 1.8 G MACs = 3.6 GFLOPs
    assert abs(flops - 3.6e9) / 3.6e9 < 0.02, flops


@pytest.mark.parametrize("name, params", [
    ("resnet34", 21_797_672),
    ("resnet50", 25_557_032),
    ("resnext50", 25_028_904),
])
def test_deeper_resnets_match_the_published_parameter_counts(name, params) -> None:
    assert count_params(blockzoo.create_model(name, num_classes=1000, in_chans=3)) == params


def test_info_reports_resnet18_parameters(capsys) -> None:
    assert cli_main(["info", "resnet18"]) == 0
    assert "11,689,512" in capsys.readouterr().out


def test_list_family_model_shows_the_image_models(capsys) -> None:
    assert cli_main(["list", "--family", "model"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in IMAGE_MODELS)


SIZES = [(8, 8), (28, 28), (32, 32)]


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("size", SIZES)
def test_models_work_at_digit_mnist_and_cifar_sizes(name, size) -> None:
    kw = {"img_size": size} if name == "mlp_classifier" else {}
    if name in ("inception_net", "resnet18", "resnet34", "resnet50", "resnext50"):
        kw["width"] = {"inception_net": 0.125}.get(name, 8)
    if name == "resnext50":
        kw.update(cardinality=2, base_width=32)
    if name == "convmixer":
        kw.update(dim=16, depth=2, patch_size=2, kernel_size=5)
    if name == "vit_tiny":
        kw.update(img_size=size, patch_size=4, dim=16, depth=1, num_heads=2)
    model = blockzoo.create_model(name, num_classes=7, in_chans=2, **kw).eval()
    x = torch.randn(2, 2, *size)
    if name == "lenet5" and min(size) < 9:
        with pytest.raises(blockzoo.ShapeError, match=r"LeNet5.*H, W >= 9"):
            model(x)
        return
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    with pytest.raises(blockzoo.ShapeError):
        model(torch.randn(2, 3, *size))  # wrong in_chans


@pytest.mark.parametrize("name", ["resnet18", "cifar_cnn", "lenet5", "inception_net", "convmixer",
                                  "vit_tiny"])
def test_models_work_at_224(name) -> None:
    kw = {"width": 8} if name == "resnet18" else {}
    if name == "vit_tiny":
        kw = {"depth": 1}
    if name == "inception_net":
        kw = {"width": 0.0625, "stem": "imagenet"}
    if name == "convmixer":
        kw = {"dim": 16, "depth": 1}
    model = blockzoo.create_model(name, num_classes=4, in_chans=3, **kw).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 4)


def test_convmixer_needs_one_patch() -> None:
    model = blockzoo.create_model("convmixer", num_classes=3, in_chans=1, dim=8, depth=1, patch_size=7)
    with pytest.raises(blockzoo.ShapeError, match=r"ConvMixer.*H, W >= 7"):
        model(torch.randn(1, 1, 6, 20))


def test_cifar_cnn_at_32x32_is_the_tutorial_network() -> None:
    model = CifarCNN(3, 10).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 32, (5, 5)), (32, 32, (5, 5)), (32, 64, (5, 5))]
    x = torch.randn(2, 3, 32, 32)
    pre_head = model.features[:-1](x)
    assert pre_head.shape == (2, 64, 4, 4)  # 32 -> 16 -> 8 -> 4: the adaptive pool is the identity
    torch.testing.assert_close(model.features(x), pre_head)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1024, 64), (64, 10)]


def test_lenet5_maps_are_the_papers_at_28x28() -> None:
    model = blockzoo.create_model("lenet5", num_classes=10, in_chans=1)
    x = torch.randn(1, 1, 28, 28)
    feats = model.features[:-1](x)
    assert feats.shape == (1, 16, 5, 5)  # 28 -> 28 -> 14 -> 10 -> 5
    assert count_params(model) == 61_706  # LeNet-5 with full C3 connections and a linear output


def test_resnet_stems() -> None:
    x = torch.randn(1, 3, 32, 32)
    small = ResNet("basic", (1, 1, 1, 1), 10, 3, stem="cifar", width=8).eval()
    big = ResNet("basic", (1, 1, 1, 1), 10, 3, stem="imagenet", width=8).eval()
    assert small.forward_features(x).shape == (1, 64, 4, 4)  # / 8 over three strided stages
    assert big.forward_features(x).shape == (1, 64, 1, 1)  # / 32


def test_resnet_with_attention_puts_one_block_on_every_residual_branch() -> None:
    plain = blockzoo.create_model("resnet18", num_classes=10)
    se = blockzoo.create_model("resnet18", num_classes=10, attention="se")
    blocks = [m for m in se.modules() if isinstance(m, BasicBlock)]
    attns = [m for m in se.modules() if isinstance(m, SqueezeExcite)]
    assert len(blocks) == 8 and all(isinstance(b.attn, SqueezeExcite) for b in blocks)
    # SE with the class default r = 16 on each block's output channels
    assert [a.channels for a in attns] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert count_params(se) - count_params(plain) == sum(count_params(a) for a in attns)
    with torch.no_grad():
        assert torch.isfinite(se.eval()(torch.randn(1, 3, 32, 32))).all()


def test_resnet50_attention_and_zero_init() -> None:
    model = blockzoo.create_model("resnet50", num_classes=10, width=8, attention="se",
                                  attention_kwargs=dict(reduction=4), zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and all(isinstance(b.attn, SqueezeExcite) for b in blocks)
    assert all(not b.bn3.weight.any() for b in blocks)


def test_model_argument_errors() -> None:
    with pytest.raises(ValueError, match="stem="):
        blockzoo.create_model("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="not a model"):
        blockzoo.create_model("resnet_basic")
    with pytest.raises(blockzoo.ShapeError, match="MLPClassifier"):
        model = blockzoo.create_model("mlp_classifier", num_classes=3, in_chans=1, img_size=8)
        model(torch.randn(1, 1, 9, 8))


# --------------------------------------------------------------------------- the lessons


def _example(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["cnn_images", "attach_attention", "degradation"])
def test_examples_run_quick(name, tmp_path) -> None:
    import importlib

    try:
        engine = importlib.import_module("blockzoo.train")
    except ImportError:
        engine = None
    if not hasattr(engine, "fit"):
        pytest.skip("the training engine has not landed in this checkout")
    out = _example(name).main(["--quick", "--out", str(tmp_path)])
    assert out
    if name == "degradation":
        assert (tmp_path / "degradation.png").is_file()
        assert all(v == v and v > 0 for v in out.values())  # finite training losses
    elif name == "cnn_images":
        assert set(out) >= {"cifar_cnn", "mlp_classifier"} and all(0 <= a <= 1 for a in out.values())
    else:
        assert len(out) == 2 and all(len(v) == 1 for v in out.values())


# --------------------------------------------------------------------------- ViT


@pytest.mark.parametrize("name, params", [
    ("vit_tiny", 5_717_416), ("vit_small", 22_050_664), ("vit_base", 86_567_656),
])
def test_vit_parameter_counts_at_224(name, params) -> None:
    """ViT-Ti/S/B at patch 16, 224x224, 1000 classes: the published 5.7M / 22.1M / 86.6M."""
    assert count_params(blockzoo.create_model(name, num_classes=1000, in_chans=3)) == params


def test_vit_forward_is_the_papers_equations() -> None:
    from blockzoo.models.vit import VisionTransformer

    model = VisionTransformer(2, 5, img_size=(8, 12), patch_size=4, dim=16, depth=2, num_heads=2).eval()
    x = torch.randn(3, 2, 8, 12)
    # z_0 = [x_class; E x_p^1..N] + E_pos: patches in row-major order, E a p x p stride-p conv
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, C, 2, 3, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(3, 6, -1)  # (B, N, C p p)
    tokens = patches @ model.patch_embed.proj.weight.flatten(1).T + model.patch_embed.proj.bias
    z = torch.cat([model.cls_token.expand(3, -1, -1), tokens], 1) + model.pos_embed
    for block in model.blocks:
        z = block(z)
    want = model.head(model.norm(z[:, 0]))
    torch.testing.assert_close(model(x), want)


def test_vit_mean_pool_and_position_embedding_resize() -> None:
    from blockzoo.models.vit import VisionTransformer

    model = VisionTransformer(1, 4, img_size=8, patch_size=2, dim=8, depth=1, num_heads=2, pool="mean").eval()
    assert model.cls_token is None and model.pos_embed.shape == (1, 16, 8)
    assert model.position_embedding(4, 4) is model.pos_embed  # the learned grid: unchanged
    resized = model.position_embedding(2, 3)
    grid = model.pos_embed.reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(2, 3), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(resized, want)
    x = torch.randn(2, 1, 4, 5)  # padded to 4 x 6: a 2 x 3 grid
    z = model.forward_features(x)
    assert z.shape == (2, 6, 8)
    torch.testing.assert_close(model(x), model.head(model.norm(z.mean(1))))


# The MNIST-1D paper's baselines (Greydanus & Kobak, arXiv 2011.14439), sizes from the paper's
# code, notebooks/models.py of github.com/greydanus/mnist1d (its print of count_params agrees):
#   LinearBase(40, 10):            40*10 + 10                                     =    410
#   MLPBase(40, 10, hidden 100):   (40*100 + 100) + (100*100 + 100) + (100*10 + 10) = 15_210
#   ConvBase(channels 25, linear_in 125): conv1 1*25*5 + 25 = 150; conv2, conv3 25*25*3 + 25
#     = 1900 each; lengths 40 -> 19 -> 10 -> 5, so linear 25*5*10 + 10 = 1260   =  5_210
#   GRUBase(1, 10, hidden 6, 40 steps, bidirectional): per direction 3*(6*1 + 6*6 + 6 + 6) = 162,
#     two directions 324; linear 2*6*40*10 + 10 = 4810                          =  5_134
MNIST1D_PAPER = {"mnist1d_paper_logistic": 410, "mnist1d_paper_mlp": 15_210, "mnist1d_paper_cnn": 5_210,
                 "mnist1d_paper_gru": 5_134}


def _mnist1d_paper(name: str, dtype=torch.float32) -> nn.Module:
    size = dict(in_features=40) if name in ("mnist1d_paper_logistic", "mnist1d_paper_mlp") else dict(
        input_size=1, seq_len=40)
    return blockzoo.create(name, num_classes=10, dtype=dtype, **size)


@pytest.mark.parametrize("name", MNIST1D_PAPER)
def test_mnist1d_paper_models_have_the_papers_sizes(name: str) -> None:
    assert count_params(_mnist1d_paper(name)) == MNIST1D_PAPER[name]
    assert blockzoo.spec(name).arxiv == "2011.14439"


def test_mnist1d_paper_mlp_is_residual_and_cnn_flattens_its_last_map() -> None:
    torch.manual_seed(0)
    mlp = _mnist1d_paper("mnist1d_paper_mlp", torch.float64)
    x = torch.randn(5, 40, dtype=torch.float64)
    h1 = F.relu(mlp.linear1(x))
    ref = mlp.linear3(h1 + F.relu(mlp.linear2(h1)))  # h2 = h1 + relu(W2 h1 + b2)
    torch.testing.assert_close(mlp(x), ref, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the second layer off: the residual path alone is left
        mlp.linear2.weight.zero_()
        mlp.linear2.bias.fill_(-1.0)
    torch.testing.assert_close(mlp(x), mlp.linear3(h1), rtol=1e-12, atol=1e-12)

    cnn = _mnist1d_paper("mnist1d_paper_cnn", torch.float64)
    s = torch.randn(3, 40, 1, dtype=torch.float64)
    h = s.transpose(1, 2)
    for conv in (cnn.conv1, cnn.conv2, cnn.conv3):
        h = F.relu(F.conv1d(h, conv.weight, conv.bias, stride=2, padding=1))
    assert h.shape == (3, 25, 5)  # the paper's linear_in = 125
    torch.testing.assert_close(cnn(s), cnn.linear(h.reshape(3, 125)), rtol=1e-12, atol=1e-12)
    with pytest.raises(blockzoo.ShapeError, match="T=40"):
        cnn(torch.randn(3, 41, 1, dtype=torch.float64))


def test_mnist1d_paper_gru_equals_torch_gru_read_at_every_step() -> None:
    """GRUBase: torch.nn.GRU (bidirectional, zero state), outputs of all 40 steps flattened."""
    torch.manual_seed(0)
    model = _mnist1d_paper("mnist1d_paper_gru", torch.float64)
    ref = nn.GRU(1, 6, batch_first=True, bidirectional=True, dtype=torch.float64)
    ref.load_state_dict(model.gru.state_dict())
    x = torch.randn(4, 40, 1, dtype=torch.float64)
    out, _ = ref(x, torch.zeros(2, 4, 6, dtype=torch.float64))
    torch.testing.assert_close(model(x), model.linear(out.reshape(4, -1)), rtol=1e-10, atol=1e-10)
