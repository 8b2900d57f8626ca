"""attach(): attention blocks into a user's own network, with its weights untouched."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blockzoo
from blockzoo.attach import Attached
from blockzoo.attention.channel import SqueezeExcite
from blockzoo.bench.flops import count_params


class UserBlock(nn.Module):
    """A plain residual block as a user writes it, with no blockzoo in it."""

    def __init__(self, c: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.down = nn.Sequential(nn.Conv2d(c, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.down(x))


class UserNet(nn.Module):
    """A user's small ResNet-like CNN with a size-bound head (flatten of a 4x4 map)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(UserBlock(8, 8, 1), UserBlock(8, 16, 2))
        self.layer2 = nn.Sequential(UserBlock(16, 24, 2))
        self.head = nn.Linear(24 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(self.stem(x))).flatten(1))


def pretrained() -> UserNet:
    torch.manual_seed(0)
    net = UserNet()
    net.train()
    with torch.no_grad():  # some "training" so the BN statistics are not the defaults
        for _ in range(3):
            net(torch.randn(4, 3, 16, 16))
    return net.eval()


def test_attach_se_to_a_user_cnn() -> None:
    net = pretrained()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params_before = count_params(net)
    net, where = blockzoo.attach(net, "se", after="layer*.*.bn2", reduction=2,
                                 example_input=torch.randn(1, 3, 16, 16))
    assert where == ["layer1.0.bn2", "layer1.1.bn2", "layer2.0.bn2"]
    ses = [m for m in net.modules() if isinstance(m, SqueezeExcite)]
    assert [s.channels for s in ses] == [8, 16, 24]  # read from the dry run
    # the parameter count grows by exactly the SE blocks' parameters: C*(C/2) + C/2 + (C/2)*C + C each
    assert count_params(net) - params_before == sum(count_params(s) for s in ses)
    assert sum(count_params(s) for s in ses) == sum(c * (c // 2) * 2 + c // 2 + c for c in (8, 16, 24))
    # the original weights (and BN statistics: the dry run ran in eval) are bit-identical
    after = net.state_dict()
    for k, v in before.items():
        new = k.replace(".bn2.", ".bn2.module.") if ".bn2." in k else k
        assert torch.equal(after[new], v), k
    y = net(torch.randn(2, 3, 16, 16))
    assert y.shape == (2, 5) and torch.isfinite(y).all()


def test_attached_block_computes_attention_after_the_module() -> None:
    net = pretrained()
    x = torch.randn(2, 3, 16, 16)
    net, _ = blockzoo.attach(net, "se", after="layer1.0.bn2", example_input=x[:1], reduction=2)
    wrapped = net.layer1[0].bn2
    assert isinstance(wrapped, Attached)
    z = torch.randn(2, 8, 16, 16)
    torch.testing.assert_close(wrapped(z), wrapped.attn(wrapped.module(z)))


def test_old_checkpoint_loads_into_the_attached_model() -> None:
    net = pretrained()
    ckpt = copy.deepcopy(net.state_dict())
    fresh = UserNet().eval()
    fresh, _ = blockzoo.attach(fresh, "se", after=nn.BatchNorm2d, example_input=torch.randn(1, 3, 16, 16))
    result = fresh.load_state_dict(ckpt, strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(".attn." in k for k in result.missing_keys)
    assert torch.equal(fresh.layer1[0].bn2.module.running_var, net.layer1[0].bn2.running_var)


def test_selectors_class_glob_predicate() -> None:
    x = torch.randn(1, 3, 16, 16)
    _, by_class = blockzoo.attach(pretrained(), "se", after=nn.BatchNorm2d, example_input=x)
    assert len(by_class) == 1 + 3 * 3  # stem BN + (bn1, bn2, down BN) per block
    _, by_glob = blockzoo.attach(pretrained(), "se", after="*.down", example_input=x)
    assert by_glob == ["layer1.0.down", "layer1.1.down", "layer2.0.down"]
    _, by_pred = blockzoo.attach(pretrained(), "se", example_input=x,
                                 after=lambda n, m: isinstance(m, nn.Conv2d) and m.stride == (2, 2))
    assert by_pred == ["layer1.1.conv1", "layer1.1.down.0", "layer2.0.conv1", "layer2.0.down.0"]


def test_nested_matches_and_factory_blocks() -> None:
    """A module and its child both match: both wrapped, each with its own channel count."""
    x = torch.randn(1, 3, 16, 16)
    made = []

    def factory(c: int) -> nn.Module:
        made.append(c)
        return SqueezeExcite(c, reduction=1)

    net, where = blockzoo.attach(pretrained(), factory, after=lambda n, m: n in ("layer1.1", "layer1.1.bn1"),
                                 example_input=x)
    assert sorted(where) == ["layer1.1", "layer1.1.bn1"] and sorted(made) == [16, 16]
    assert isinstance(net.layer1[1], Attached) and isinstance(net.layer1[1].module.bn1, Attached)
    assert torch.isfinite(net(x)).all()


def test_attached_model_trains_and_copies() -> None:
    x = torch.randn(1, 3, 16, 16)
    # reduction 2: with the default 16, an 8-channel SE has one hidden unit, which may start dead
    net, _ = blockzoo.attach(pretrained(), "se", after="layer*.*.bn2", example_input=x, reduction=2)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, t = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    loss0 = F.cross_entropy(net(x), t)
    loss0.backward()
    ses = [m for m in net.modules() if isinstance(m, SqueezeExcite)]
    assert all(p.grad is not None and p.grad.any() for s in ses for p in s.parameters())
    opt.step()
    assert F.cross_entropy(net(x), t) < loss0
    net.eval()
    clone = copy.deepcopy(net)
    torch.testing.assert_close(clone(x), net(x))


def test_attach_to_our_resnet_matches_attention_option_count() -> None:
    net = blockzoo.create_model("resnet18", num_classes=10)
    plain = count_params(net)
    net, where = blockzoo.attach(net, "se", after="layer*.*.bn2")
    assert len(where) == 8
    built = blockzoo.create_model("resnet18", num_classes=10, attention="se")
    assert count_params(net) - plain == count_params(built) - plain


def test_bad_selectors_and_blocks_raise_clear_errors() -> None:
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"matches no submodule of UserNet.*layer1"):
        blockzoo.attach(pretrained(), "se", after="layer9.*", example_input=x)
    with pytest.raises(ValueError, match="matches no submodule"):
        blockzoo.attach(pretrained(), "se", after=nn.LSTM, example_input=x)
    with pytest.raises(ValueError, match="must be a module class"):
        blockzoo.attach(pretrained(), "se", after=3, example_input=x)
    with pytest.raises(ValueError, match="give after="):
        blockzoo.attach(pretrained(), "se", example_input=x)
    with pytest.raises(ValueError, match=r"not an image \(B, C, H, W\)"):
        blockzoo.attach(pretrained(), "se", after="head", example_input=x)
    with pytest.raises(ValueError, match="did you mean se"):
        blockzoo.attach(pretrained(), "sse", after="head", example_input=x)

    class Unused(UserNet):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.BatchNorm2d(3)

    with pytest.raises(ValueError, match="never calls it"):
        blockzoo.attach(Unused(), "se", after="spare", example_input=x)


def test_dry_run_leaves_mode_and_statistics_alone() -> None:
    net = pretrained().train()
    stats = net.layer1[0].bn1.running_mean.clone()
    batches = net.layer1[0].bn1.num_batches_tracked.clone()
    net, _ = blockzoo.attach(net, "se", after="layer*.*.bn2", example_input=torch.randn(1, 3, 16, 16))
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(net.layer1[0].bn1.running_mean, stats)
    assert torch.equal(net.layer1[0].bn1.num_batches_tracked, batches)


def test_attach_infers_the_input_for_size_agnostic_models() -> None:
    net = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.AdaptiveAvgPool2d(1))
    net, where = blockzoo.attach(net, "se", after=nn.Conv2d, reduction=2)
    assert where == ["0", "2"] and net[0].attn.channels == 6 and net[2].attn.channels == 4
    assert net(torch.randn(3, 2, 9, 7)).shape == (3, 4, 1, 1)


def test_readme_attach_example_runs() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = next(c for c in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "attach(" in c)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["where"] == ["1", "4"]
    assert tuple(namespace["logits"].shape) == (2, 10)
