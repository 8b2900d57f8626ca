"""The maths of the seed entries: MLP, softmax/logistic regression, bag of words."""

import pytest
import torch
from torch import nn

import blockzoo
from blockzoo.act import ACTIVATIONS, create_act, create_norm
from blockzoo.mlp import MLP
from blockzoo.models import BowClassifier, LogisticRegression, SoftmaxRegression


def test_identity_mlp_is_one_affine_map() -> None:
    mlp = MLP(6, (9, 7), 4, act_layer="identity").double()
    l1, l2, l3 = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    # W3 (W2 (W1 x + b1) + b2) + b3 = (W3 W2 W1) x + (W3 W2 b1 + W3 b2 + b3)
    w = l3.weight @ l2.weight @ l1.weight
    b = l3.weight @ (l2.weight @ l1.bias + l2.bias) + l3.bias
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(mlp(x), x @ w.T + b)


def test_mlp_layers_and_activation_by_name() -> None:
    for name in ("relu", "prelu", "sigmoid", "tanh", "gelu", "silu"):
        mlp = MLP(3, (4, 5), 2, act_layer=name)
        acts = [m for m in mlp.modules() if isinstance(m, ACTIVATIONS[name])]
        assert len(acts) == 2, name
    x = torch.tensor([[-1.0, 0.5, 2.0]])
    mlp = MLP(3, (3,), 3, act_layer="relu")
    first = mlp.layers[0]
    hidden = torch.relu(first(x))
    torch.testing.assert_close(mlp(x), mlp.layers[-1](hidden))


def test_mlp_without_hidden_layers_is_linear() -> None:
    mlp = MLP(5, (), 2)
    assert [type(m) for m in mlp.layers] == [nn.Linear]


def test_mlp_norm_and_dropout() -> None:
    mlp = MLP(4, (8,), 2, norm_layer="layernorm", dropout=0.5)
    assert any(isinstance(m, nn.LayerNorm) for m in mlp.modules())
    mlp.eval()
    x = torch.randn(3, 4)
    torch.testing.assert_close(mlp(x), mlp(x))
    bn = MLP(4, (8,), 2, norm_layer="batchnorm1d").eval()
    assert bn(torch.randn(2, 5, 4)).shape == (2, 5, 2)  # leading dims flattened for BN


def test_mlp_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dropout"):
        MLP(4, (8,), 2, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_features"):
        MLP(4, (0,), 2)
    with pytest.raises(KeyError, match="did you mean"):
        MLP(4, (8,), 2, act_layer="rellu")


def test_softmax_regression_rows_are_distributions() -> None:
    m = SoftmaxRegression(7, 5)
    logp = m(torch.randn(11, 7) * 10)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(11))
    assert (logp <= 0).all()
    # it is log_softmax of one affine map
    x = torch.randn(3, 7)
    torch.testing.assert_close(m(x), torch.log_softmax(m.linear(x), -1))


def test_logistic_regression_is_sigmoid_of_affine() -> None:
    m = LogisticRegression(4)
    x = torch.randn(6, 4)
    want = 1 / (1 + torch.exp(-(x @ m.linear.weight.T + m.linear.bias)))
    torch.testing.assert_close(m.predict_proba(x), want)


def test_bow_classifier_log_probs() -> None:
    m = BowClassifier(vocab_size=6, num_classes=3)
    counts = torch.tensor([[1.0, 0, 2, 0, 0, 1], [0, 0, 0, 0, 0, 0]])
    logp = m(counts)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2))
    # an empty sentence scores by the bias alone
    torch.testing.assert_close(logp[1], torch.log_softmax(m.linear.bias, -1))


def test_create_act_and_norm() -> None:
    assert isinstance(create_act(None), nn.Identity)
    assert isinstance(create_act(nn.GELU), nn.GELU)
    p = create_act("prelu", dtype=torch.float64)
    assert next(p.parameters()).dtype == torch.float64
    assert isinstance(create_norm("layernorm", 8), nn.LayerNorm)
    assert isinstance(create_norm(None, 8), nn.Identity)
    with pytest.raises(KeyError, match="norm layer"):
        create_norm("layernrom", 8)


def test_registered_mlp_is_the_class() -> None:
    assert isinstance(blockzoo.create("mlp", in_features=12), MLP)
