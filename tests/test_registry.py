"""The registry: lookup, errors with close matches, duplicates, create/create_model."""

import inspect

import pytest
import torch
from torch import nn

import blockzoo
from blockzoo.attention import CBAM
from blockzoo.checks import check_shape, require_divides
from blockzoo.registry import Example, images, register, unregister, vectors


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(KeyError) as info:
        blockzoo.create("mpl")
    assert "did you mean mlp" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(
            name="mlp", family="mlp", paper="x", arxiv="", year=2000, input="vector",
            example=Example(config={}, inputs=vectors("in_features")),
        )(nn.Identity)


def test_register_rejects_bad_facts() -> None:
    ex = Example(config=dict(channels=2), inputs=images())
    with pytest.raises(ValueError, match="family"):
        register(name="x1", family="nope", paper="p", arxiv="", year=1, input="image", example=ex)
    with pytest.raises(ValueError, match="input kind"):
        register(name="x2", family="conv", paper="p", arxiv="", year=1, input="tokens", example=ex)
    with pytest.raises(ValueError, match="snake_case"):
        register(name="BadName", family="conv", paper="p", arxiv="", year=1, input="image",
                 example=ex)
    with pytest.raises(ValueError, match="exemption"):
        register(name="x3", family="conv", paper="p", arxiv="", year=1, input="image",
                 example=ex, exempt={"nonsense": "because of reasons"})


def test_list_filters() -> None:
    assert "mlp" in blockzoo.list_blocks(family="mlp")
    assert "mlp" not in blockzoo.list_blocks(family="model")
    assert blockzoo.list_blocks(pattern="*_regression") == [
        "logistic_regression", "softmax_regression"]
    with pytest.raises(KeyError, match="family"):
        blockzoo.list_blocks(family="attn")


def test_create_passes_exactly_what_the_user_gave() -> None:
    # the class's own defaults, not the tiny example config (which had out_features=5)
    m = blockzoo.create("mlp", in_features=8)
    assert m(torch.randn(2, 8)).shape == (2, 8)
    hidden = blockzoo.create("cbam", channels=64).channel_gate.hidden
    assert hidden == CBAM(64).channel_gate.hidden == 64 // 16  # the paper's reduction 16
    lstm = blockzoo.create("lstm", input_size=1, hidden_size=32)
    assert (lstm.num_layers, lstm.bidirectional) == (1, False)  # torch's nn.LSTM defaults
    with pytest.raises(ValueError, match=r"^cbam: missing required argument 'channels' "
                                         r"\(example: blockzoo.create\('cbam', channels=\d+\)\)$"):
        blockzoo.create("cbam")
    with pytest.raises(ValueError, match="missing required arguments 'input_size', 'hidden_size'"):
        blockzoo.create("lstm")
    with pytest.raises(TypeError, match="cbam: unexpected argument 'reductoin'"):
        blockzoo.create("cbam", channels=8, reductoin=4)


@pytest.mark.parametrize("name", blockzoo.list_blocks())
def test_create_with_the_required_arguments_equals_the_class(name: str) -> None:
    s = blockzoo.spec(name)
    # the required arguments and the input width, at a paper-like width: the class defaults
    # are the papers' (SGE's 64 groups, SA's 64, MoA's reduction 32 need 256 channels)
    keys = {*s.missing_args({}), *([s.width_arg] if s.width_arg in s.example.config else [])}
    required = {k: 256 if k in ("channels", "dim", "dim_out") else s.example.config[k] for k in keys}
    with torch.device("meta"):  # paper-sized defaults (ViT-B: 86M parameters) cost no memory here
        ours, theirs = blockzoo.create(name, **required), s.builder(**required)
    assert repr(ours) == repr(theirs)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    if s.input == "image" and s.family != "model" and s.width_arg == "channels" and name != "csra":
        # attach() builds the block create() builds (csra is a head, not a drop-in)
        c = required.get("channels", s.example.config["channels"])
        net = nn.Sequential(nn.Conv2d(3, c, 3, padding=1))
        extra = {k: v for k, v in required.items() if k != "channels"}
        x = torch.randn(2, 3, *s.example.size)
        attached, _ = blockzoo.attach(net, name, after=nn.Conv2d, example_input=x, **extra)
        assert repr(attached[0].attn) == repr(blockzoo.create(name, channels=c, **extra))


def test_create_model_sets_head_and_input() -> None:
    m = blockzoo.create_model("softmax_regression", num_classes=9, in_chans=5)
    assert m(torch.randn(3, 5)).shape == (3, 9)
    with pytest.raises(ValueError, match="not a model"):
        blockzoo.create_model("mlp")


def test_spec_facts_and_example_input() -> None:
    s = blockzoo.spec("mlp")
    assert s.family == "mlp" and s.input == "vector"
    (x,) = s.make_input(batch=5)
    assert x.shape == (5, 12)
    (x64,) = s.make_input(batch=1, dtype=torch.float64)
    assert x64.dtype == torch.float64


def test_register_returns_the_class_unchanged() -> None:
    class Toy(nn.Module):
        """Toy.

        Args:
            channels: C.

        Shape:
            - Input: (B, C, H, W).
        """

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.channels = channels

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            check_shape(x, "B C H W", name="Toy", C=self.channels)
            return x

    try:
        out = register(name="toy_identity", family="conv", paper="p", arxiv="", year=1,
                       input="image", example=Example(config=dict(channels=3), inputs=images()))(Toy)
        assert out is Toy
        assert isinstance(blockzoo.create("toy_identity", channels=3), Toy)
    finally:
        unregister("toy_identity")
    assert "toy_identity" not in blockzoo.list_blocks()


def test_require_divides_returns_the_quotient_or_names_both_values() -> None:
    assert require_divides("MultiHeadAttention", "num_heads", 8, "dim", 64) == 8
    with pytest.raises(ValueError) as info:
        require_divides("MultiHeadAttention", "num_heads", 6, "dim", 64)
    assert str(info.value) == "MultiHeadAttention: num_heads=6 must divide dim=64"
    with pytest.raises(ValueError, match=r"^X: num_heads=0 must divide dim=64 \(or give head_dim\)$"):
        require_divides("X", "num_heads", 0, "dim", 64, hint="(or give head_dim)")  # not ZeroDivisionError
    with pytest.raises(ValueError, match="num_heads=-8 must divide"):
        require_divides("X", "num_heads", -8, "dim", 64)


HEADED = [n for n in blockzoo.list_blocks() if blockzoo.spec(n).family == "attention"
          and "num_heads" in inspect.signature(blockzoo.spec(n).builder).parameters]


# Attention whose head width is its own argument, not the input width / num_heads.
HEAD_WIDTH_FREE = {
    "levit_attention": "heads are key_dim (and attn_ratio * key_dim) wide whatever the input width: "
                       "LeViT-128S runs 6 heads on 256 channels",
}


@pytest.mark.parametrize("name", HEADED)
def test_heads_that_do_not_divide_the_width_are_refused_by_name(name: str) -> None:
    s = blockzoo.spec(name)
    if name not in HEAD_WIDTH_FREE:
        with pytest.raises(ValueError, match=r"num_heads=7 must divide \w+=\d+"):
            s.build_example(num_heads=7)
    else:
        assert s.build_example(num_heads=7) is not None
    with pytest.raises(ValueError, match="num_heads=0"):
        s.build_example(num_heads=0)


def test_check_shape_messages() -> None:
    with pytest.raises(blockzoo.ShapeError) as info:
        check_shape(torch.zeros(8, 32, 7, 7), "B C H W", name="CBAM", C=64)
    assert str(info.value) == "CBAM: expected input (B, C=64, H, W), got (8, 32, 7, 7)"
    with pytest.raises(blockzoo.ShapeError, match=r"got \(3, 4\)"):
        check_shape(torch.zeros(3, 4), "B C H W", name="X")
    assert check_shape(torch.zeros(2, 3, 5, 4), "* F", name="X", F=4) == {"F": 4}
    with pytest.raises(blockzoo.ShapeError, match="got list"):
        check_shape([1, 2], "B F", name="X")
    assert issubclass(blockzoo.ShapeError, ValueError)


def test_paper_numbers_need_their_four_fields_and_take_only_checked_besides():
    kw = dict(family="model", paper="P", arxiv="0000.00000", year=2021, input="image",
              example=Example(config=dict(in_chans=3), inputs=images("in_chans"), size=(8, 8)))
    base = dict(size=(224, 224), params="1M", macs="1G", source="Table 1")
    with pytest.raises(ValueError, match="paper_numbers needs size, params, macs, source"):
        no_macs = {k: base[k] for k in ("size", "params", "source")}
        register(name="paper_numbers_missing_macs", paper_numbers=no_macs, **kw)
    with pytest.raises(ValueError, match=r"got .*'typo'"):
        register(name="paper_numbers_with_typo", paper_numbers={**base, "typo": 1}, **kw)
    # Validation runs when register() is called, before anything is decorated (nothing registers).
    assert callable(register(name="paper_numbers_with_checked", paper_numbers={**base, "checked": "a"}, **kw))
