"""The conformance harness really catches faults.

Each toy block below is broken in one way the catalogues we replace are broken;
it is registered only inside its test, and the harness must report it.
"""

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import blockzoo
from blockzoo import testing
from blockzoo.checks import check_shape
from blockzoo.registry import Example, images, register, unregister


class _Base(nn.Module):
    """Toy.

    Args:
        channels: C.

    Shape:
        - Input: (B, C, H, W).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.scale = nn.Parameter(torch.ones(channels))

    def check(self, x: torch.Tensor) -> None:
        check_shape(x, "B C H W", name=type(self).__name__, C=self.channels)


class HardCodedSize(_Base):
    """Pools with a kernel fixed at construction: 8x8 only (like a hard-coded 7x7)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        pooled = nn.functional.avg_pool2d(x, 8)  # assumes H = W = 8
        return x * pooled.view(x.shape[0], self.channels, 1, 1) * self.scale[:, None, None]


class UnusedParameter(_Base):
    """Owns a parameter its forward never touches."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.forgotten = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        return x * self.scale[:, None, None]


class MixesBatch(_Base):
    """Normalises with statistics over the whole batch even in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        return (x - x.mean(0, keepdim=True)) * self.scale[:, None, None]


class BareAssert(_Base):
    """Checks its input with a bare assert (gone under python -O)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 4
        return x * self.scale[:, None, None]


class NondeterministicEval(_Base):
    """Keeps dropping out in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        return nn.functional.dropout(x, 0.5, training=True) * self.scale[:, None, None]


class NaNForOddSizes(_Base):
    """Divides by (W - W) when W is odd: finite at the example size only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        w = x.shape[-1]
        return x * self.scale[:, None, None] / float(w % 2 == 0)


class DeadSoftmaxBias(_Base):
    """Attention pooling whose scoring conv has a bias: one number added to all H W
    logits of the softmax, which cancels it (exact gradient 0, float32 noise ~1e-7)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.score = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        w = self.score(x).flatten(2).softmax(-1)  # (B, 1, N)
        pooled = (x.flatten(2) * w).sum(-1)  # (B, C)
        return x * self.scale[:, None, None] + pooled[:, :, None, None]


class TinyGradient(_Base):
    """The same pooling, but its logit shift is tilted by 1e-6 of each position's mean:
    the softmax cancels all of it but the tilt, so its gradient is ~1e-7 of the others
    (the size of float32 rounding noise) and not zero."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.score = nn.Conv2d(channels, 1, 1, bias=False)
        self.shift = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        logits = self.score(x) + self.shift * (1 + 1e-6 * x.mean(1, keepdim=True))  # (B, 1, H, W)
        w = logits.flatten(2).softmax(-1)  # (B, 1, N)
        pooled = (x.flatten(2) * w).sum(-1)  # (B, C)
        return x * self.scale[:, None, None] + pooled[:, :, None, None]


def _register(cls: type[nn.Module], channels: int = 4, size: tuple[int, int] = (8, 8)) -> str:
    name = f"toy_{cls.__name__.lower()}"
    register(
        name=name, family="attention", paper="toy", arxiv="", year=2000, input="image",
        example=Example(config=dict(channels=channels), inputs=images("channels"), size=size,
                        out_shape="same"),
    )(cls)
    return name


@pytest.fixture
def toy() -> Iterator[object]:
    names: list[str] = []

    def reg(cls: type[nn.Module], **example: object) -> blockzoo.Spec:
        names.append(_register(cls, **example))
        return blockzoo.spec(names[-1])

    yield reg
    for n in names:
        unregister(n)


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (HardCodedSize, testing.check_sizes, r"size \(7, 9\)"),
        (UnusedParameter, testing.check_grad, "forgotten"),
        (DeadSoftmaxBias, testing.check_grad, r"identically zero for \['score.bias'\]"),
        (MixesBatch, testing.check_batch_independence, "changes with the rest of the batch"),
        (BareAssert, testing.check_bad_input, "instead of ShapeError"),
        (NondeterministicEval, testing.check_determinism, "differ"),
        (NaNForOddSizes, testing.check_sizes, "not finite"),
    ],
)
def test_harness_reports_fault(toy, cls, check, message) -> None:
    s = toy(cls)
    with pytest.raises(testing.ConformanceError, match=message) as info:
        check(s)
    assert s.name in str(info.value)
    # And run_all (what the suite runs) reports it too.
    with pytest.raises(testing.ConformanceError):
        testing.run_all(s)


def test_harness_passes_a_correct_block(toy) -> None:
    class Correct(_Base):
        """Scales channels."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.check(x)
            return x * self.scale[:, None, None]

    testing.run_all(toy(Correct))


def test_bad_input_must_name_the_block(toy) -> None:
    class Anonymous(_Base):
        """Raises ShapeError without saying who."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 4 or x.shape[1] != self.channels:
                raise blockzoo.ShapeError(f"bad shape {tuple(x.shape)}")
            return x

    with pytest.raises(testing.ConformanceError, match="does not name the block"):
        testing.check_bad_input(toy(Anonymous))


def test_wrong_output_shape_is_reported(toy) -> None:
    class Shrinks(_Base):
        """Halves the spatial size although registered as shape-preserving."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.check(x)
            return nn.functional.avg_pool2d(x, 2) * self.scale[:, None, None]

    with pytest.raises(testing.ConformanceError, match="expected output shape"):
        testing.check_forward(toy(Shrinks))


# Channels and sizes from one channel up; the decision must not depend on them. (With one
# pixel, the softmax has one entry and the score conv is rightly dead too.)
GRAD_EXAMPLES = [dict(channels=1, size=(2, 3)), dict(channels=4, size=(8, 8)),
                 dict(channels=3, size=(7, 9)), dict(channels=32, size=(16, 15))]


@pytest.mark.parametrize("example", GRAD_EXAMPLES, ids=lambda e: f"c{e['channels']}-{e['size']}")
def test_dead_parameter_is_caught_with_room_to_spare(toy, example) -> None:
    # Float64 leaves the dead bias about 1e-16 of the median gradient: it is found even
    # with a tolerance 100x tighter than the harness's, so rounding cannot decide it.
    s = toy(DeadSoftmaxBias, **example)
    assert testing.zero_grad_parameters(s) == ["score.bias"]
    assert testing.zero_grad_parameters(s, rtol=testing.ZERO_GRAD_RTOL / 100) == ["score.bias"]
    with pytest.raises(testing.ConformanceError, match=r"identically zero for \['score.bias'\]"):
        testing.check_grad(s)
    testing.check_grad(s, allow_zero=True)


@pytest.mark.parametrize("example", GRAD_EXAMPLES, ids=lambda e: f"c{e['channels']}-{e['size']}")
def test_tiny_but_true_gradient_is_not_flagged(toy, example) -> None:
    s = toy(TinyGradient, **example)
    # the premise: shift's true gradient is tiny next to the others, yet not zero
    torch.manual_seed(0)
    block = s.build_example().double()
    (x,) = s.make_input(batch=3, seed=2, dtype=torch.float64)
    (block(x) * torch.randn(x.shape, dtype=torch.float64)).sum().backward()
    ratio = block.shift.grad.abs().item() / block.score.weight.grad.abs().max().item()
    assert 1e-9 < ratio < 1e-5
    # ...and it stays clear of the tolerance even when that is made 100x looser
    assert testing.zero_grad_parameters(s, rtol=testing.ZERO_GRAD_RTOL * 100) == []
    testing.check_grad(s)


def test_stride_ignored_by_the_shape_rule_is_reported(toy) -> None:
    class Strided(nn.Module):
        """Downsamples by its stride, registered with a rule that keeps the size.

        Args:
            channels: C.
            stride: s.

        Shape:
            - Input: (B, C, H, W); output (B, C, ceil(H / s), ceil(W / s)).
        """

        def __init__(self, channels: int, *, stride: int = 1) -> None:
            super().__init__()
            self.channels = channels
            self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            check_shape(x, "B C H W", name="Strided", C=self.channels)
            return self.conv(x)

    s = toy(Strided)  # the example builds stride 1, where "same" holds
    testing.check_forward(s)
    with pytest.raises(testing.ConformanceError, match=r"stride=2: expected output shape"):
        testing.check_sizes(s)
