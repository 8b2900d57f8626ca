"""MNIST-1D models: blockzoo's default 1-D CNN and the paper's four baselines.

Paper: Scaling Down Deep Learning with MNIST-1D (Greydanus & Kobak), arXiv
2011.14439, 2020. Its Table 1 compares four small models trained with one recipe
(Adam, learning rate 1e-2, no weight decay, batches of 100, 6000 steps): logistic
regression 32%, an MLP 68%, a CNN 94% and a bidirectional GRU 91% test accuracy.

- ``Mnist1dCNN`` (``mnist1d_cnn``): blockzoo's own, bigger CNN that ``blockzoo
  train`` trains by default (pooled over time, so any length works).
- ``Mnist1dLogistic``, ``Mnist1dMLP``, ``Mnist1dConvNet``, ``Mnist1dGRU``
  (``mnist1d_paper_*``): the paper's four baselines with the sizes of the paper's
  code (``notebooks/models.py`` of github.com/greydanus/mnist1d: ``LinearBase``,
  ``MLPBase``, ``ConvBase``, ``GRUBase``); ``blockzoo reproduce mnist1d`` trains them
  with the paper's recipe.

Letters: B batch, T time steps (signal length), F input features per step,
W width (conv channels), H hidden units, D directions, K classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_act
from blockzoo.checks import check_shape, require
from blockzoo.recurrent import GRU
from blockzoo.registry import Example, register, sequence, vectors

__all__ = [
    "PAPER_MODELS",
    "Mnist1dCNN",
    "Mnist1dConvNet",
    "Mnist1dGRU",
    "Mnist1dLogistic",
    "Mnist1dMLP",
    "conv_out_len",
]

_PAPER = "Scaling Down Deep Learning with MNIST-1D"


def _logits(shape: Any, cfg: Any) -> tuple[int, int]:
    return (shape[0], cfg["num_classes"])


@register(
    name="mnist1d_cnn",
    family="model",
    paper="Scaling Down Deep Learning with MNIST-1D",
    arxiv="2011.14439",
    year=2020,
    input="sequence",
    output="logits",
    example=Example(
        config=dict(input_size=1, num_classes=10),
        inputs=sequence("input_size"),
        size=(40,),
        out_shape=lambda shape, cfg: (shape[0], cfg["num_classes"]),
        tiny=dict(width=3, num_classes=3),
    ),
)
class Mnist1dCNN(nn.Module):
    r"""1-D CNN for signal classification: four convolutions, mean+max pooling, a linear head.

    Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", arXiv 2011.14439.

    Equation, with x the signal as (B, F, T)::

        h1 = act(conv5(x))                  kernel 5, stride 1
        h2 = act(conv3_s2(h1))              kernel 3, stride 2
        h3 = act(conv3_s2(h2))              kernel 3, stride 2
        h4 = act(conv3(h3))                 kernel 3, stride 1
        z  = [mean_t h4, max_t h4]          (B, 2W)
        y  = W_out z + b_out                logits (B, K)

    Args:
        input_size: F, features per time step (1 for MNIST-1D).
        num_classes: K, the number of classes.
        width: W, channels of every convolution.
        act_layer: activation by name.

    Shape:
        - Input: (B, T, F), F = input_size, any T >= 1.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        The paper's CNN flattens its last feature map into the head, which fixes the
        signal length at 40; here the map is pooled over time (mean and max
        concatenated), so any length works, and a fourth convolution is added.
        With the default training recipe (AdamW, cosine schedule, 25 epochs) it
        reaches about 95% test accuracy (see ``blockzoo train``).

    Example:
        >>> net = Mnist1dCNN(1, 10)
        >>> net(torch.randn(2, 40, 1)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        input_size: int = 1,
        num_classes: int = 10,
        *,
        width: int = 64,
        act_layer: LayerSpec = "relu",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(input_size > 0, f"Mnist1dCNN: input_size={input_size} must be positive")
        require(num_classes > 0, f"Mnist1dCNN: num_classes={num_classes} must be positive")
        require(width > 0, f"Mnist1dCNN: width={width} must be positive")
        self.input_size = input_size
        self.num_classes = num_classes
        self.width = width
        fk = dict(device=device, dtype=dtype)
        self.features = nn.Sequential(
            nn.Conv1d(input_size, width, 5, padding=2, **fk),
            create_act(act_layer),
            nn.Conv1d(width, width, 3, stride=2, padding=1, **fk),
            create_act(act_layer),
            nn.Conv1d(width, width, 3, stride=2, padding=1, **fk),
            create_act(act_layer),
            nn.Conv1d(width, width, 3, padding=1, **fk),
            create_act(act_layer),
        )
        self.head = nn.Linear(2 * width, num_classes, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B T F", name="Mnist1dCNN", F=self.input_size)
        h = self.features(x.transpose(1, 2))  # (B, W, T')
        # z = [mean_t h, max_t h]
        z = torch.cat([h.mean(-1), h.amax(-1)], dim=1)  # (B, 2W)
        return self.head(z)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, num_classes={self.num_classes}, width={self.width}"


# The paper's Table 1 row of each baseline model (test accuracy).
PAPER_MODELS = {
    "mnist1d_paper_logistic": ("logistic regression", 0.32),
    "mnist1d_paper_mlp": ("MLP", 0.68),
    "mnist1d_paper_cnn": ("CNN", 0.94),
    "mnist1d_paper_gru": ("GRU", 0.91),
}


def conv_out_len(length: int, kernel_size: int, stride: int, padding: int) -> int:
    """Output length of a 1-D convolution: floor((T + 2p - k) / s) + 1."""
    return (length + 2 * padding - kernel_size) // stride + 1


@register(
    name="mnist1d_paper_logistic",
    family="model",
    paper=_PAPER,
    arxiv="2011.14439",
    year=2020,
    input="vector",
    output="logits",
    example=Example(config=dict(in_features=40, num_classes=10), inputs=vectors("in_features"),
                    out_shape=_logits),
)
class Mnist1dLogistic(nn.Module):
    r"""The MNIST-1D paper's logistic-regression baseline: one affine map of the 40 samples.

    Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", arXiv 2011.14439,
    Table 1 (32% test accuracy); ``LinearBase`` of the paper's code (410 parameters).

    Equation::

        logits = W x + b                    softmax cross-entropy in training

    Args:
        in_features: F, the signal length (40 for MNIST-1D).
        num_classes: K.

    Shape:
        - Input: (B, F), F = in_features (the signal as a vector).
        - Output: (B, K) logits, K = num_classes.

    Example:
        >>> Mnist1dLogistic(40, 10)(torch.randn(2, 40)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_features: int = 40, num_classes: int = 10, *, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        require(in_features > 0, f"Mnist1dLogistic: in_features={in_features} must be positive")
        require(num_classes > 0, f"Mnist1dLogistic: num_classes={num_classes} must be positive")
        self.in_features, self.num_classes = in_features, num_classes
        self.linear = nn.Linear(in_features, num_classes, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B F", name="Mnist1dLogistic", F=self.in_features)
        return self.linear(x)  # (B, K)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


@register(
    name="mnist1d_paper_mlp",
    family="model",
    paper=_PAPER,
    arxiv="2011.14439",
    year=2020,
    input="vector",
    output="logits",
    example=Example(config=dict(in_features=40, num_classes=10, hidden_size=32),
                    inputs=vectors("in_features"), out_shape=_logits,
                    tiny=dict(hidden_size=4, num_classes=3)),
)
class Mnist1dMLP(nn.Module):
    r"""The MNIST-1D paper's MLP baseline: two hidden layers, the second one residual.

    Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", arXiv 2011.14439,
    Table 1 (68% test accuracy); ``MLPBase`` of the paper's code (hidden size 100,
    15,210 parameters).

    Equation::

        h1 = relu(W1 x + b1)
        h2 = h1 + relu(W2 h1 + b2)          the residual connection
        logits = W3 h2 + b3

    Args:
        in_features: F, the signal length (40 for MNIST-1D).
        num_classes: K.
        hidden_size: H, the width of both hidden layers.

    Shape:
        - Input: (B, F), F = in_features.
        - Output: (B, K) logits, K = num_classes.

    Example:
        >>> Mnist1dMLP(40, 10)(torch.randn(2, 40)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_features: int = 40, num_classes: int = 10, *, hidden_size: int = 100,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(in_features > 0, f"Mnist1dMLP: in_features={in_features} must be positive")
        require(num_classes > 0, f"Mnist1dMLP: num_classes={num_classes} must be positive")
        require(hidden_size > 0, f"Mnist1dMLP: hidden_size={hidden_size} must be positive")
        fk = dict(device=device, dtype=dtype)
        self.in_features, self.num_classes, self.hidden_size = in_features, num_classes, hidden_size
        self.linear1 = nn.Linear(in_features, hidden_size, **fk)
        self.linear2 = nn.Linear(hidden_size, hidden_size, **fk)
        self.linear3 = nn.Linear(hidden_size, num_classes, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B F", name="Mnist1dMLP", F=self.in_features)
        h = self.linear1(x).relu()  # (B, H)
        # h2 = h1 + relu(W2 h1 + b2)
        h = h + self.linear2(h).relu()  # (B, H)
        return self.linear3(h)  # (B, K)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"hidden_size={self.hidden_size}")


@register(
    name="mnist1d_paper_cnn",
    family="model",
    paper=_PAPER,
    arxiv="2011.14439",
    year=2020,
    input="sequence",
    output="logits",
    example=Example(config=dict(input_size=1, num_classes=10, seq_len=20, channels=8),
                    inputs=sequence("input_size"), size=(20,), sizes=(), out_shape=_logits,
                    tiny=dict(channels=3, num_classes=3)),
    size_arg="seq_len",
)
class Mnist1dConvNet(nn.Module):
    r"""The MNIST-1D paper's CNN baseline: three strided 1-D convolutions, flattened, linear.

    Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", arXiv 2011.14439,
    Table 1 (94% test accuracy); ``ConvBase`` of the paper's code (25 channels; at
    T = 40 the last map is 25 x 5 = 125 features; 5,210 parameters).

    Equation, with x the signal as (B, F, T)::

        h1 = relu(conv_k5_s2_p1(x))         T1 = floor((T - 3) / 2) + 1
        h2 = relu(conv_k3_s2_p1(h1))        T2 = floor((T1 - 1) / 2) + 1
        h3 = relu(conv_k3_s2_p1(h2))        T3 = floor((T2 - 1) / 2) + 1
        logits = W flatten(h3) + b          W: (K, C T3)

    Args:
        input_size: F, features per time step (1 for MNIST-1D).
        num_classes: K.
        seq_len: T, the signal length (fixed: the head reads every position).
        channels: C, channels of every convolution.

    Shape:
        - Input: (B, T, F), T = seq_len, F = input_size.
        - Output: (B, K) logits, K = num_classes.

    Example:
        >>> Mnist1dConvNet(1, 10, seq_len=40)(torch.randn(2, 40, 1)).shape
        torch.Size([2, 10])
    """

    def __init__(self, input_size: int = 1, num_classes: int = 10, *, seq_len: int = 40,
                 channels: int = 25, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        require(input_size > 0, f"Mnist1dConvNet: input_size={input_size} must be positive")
        require(num_classes > 0, f"Mnist1dConvNet: num_classes={num_classes} must be positive")
        require(channels > 0, f"Mnist1dConvNet: channels={channels} must be positive")
        t = seq_len
        for k in (5, 3, 3):
            t = conv_out_len(t, k, 2, 1)
        require(t >= 1, f"Mnist1dConvNet: seq_len={seq_len} is too short for three stride-2 "
                "convolutions (needs >= 3)")
        fk = dict(device=device, dtype=dtype)
        self.input_size, self.num_classes, self.seq_len, self.channels = (
            input_size, num_classes, seq_len, channels)
        self.conv1 = nn.Conv1d(input_size, channels, 5, stride=2, padding=1, **fk)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1, **fk)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1, **fk)
        self.linear = nn.Linear(channels * t, num_classes, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B T F", name="Mnist1dConvNet", T=self.seq_len, F=self.input_size)
        h = self.conv1(x.transpose(1, 2)).relu()  # (B, C, T1)
        h = self.conv2(h).relu()  # (B, C, T2)
        h = self.conv3(h).relu()  # (B, C, T3)
        return self.linear(h.flatten(1))  # (B, C T3) -> (B, K)

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, num_classes={self.num_classes}, seq_len={self.seq_len}, "
                f"channels={self.channels}")


@register(
    name="mnist1d_paper_gru",
    family="model",
    paper=_PAPER,
    arxiv="2011.14439",
    year=2020,
    input="sequence",
    output="logits",
    example=Example(config=dict(input_size=1, num_classes=10, seq_len=12),
                    inputs=sequence("input_size"), size=(12,), sizes=(), out_shape=_logits,
                    tiny=dict(hidden_size=2, num_classes=3)),
    size_arg="seq_len",
)
class Mnist1dGRU(nn.Module):
    r"""The MNIST-1D paper's GRU baseline: a bidirectional GRU, a linear map of every step's output.

    Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", arXiv 2011.14439,
    Table 1 (91% test accuracy); ``GRUBase`` of the paper's code (hidden size 6 per
    direction, zero initial state, the head reads all 40 steps: 5,134 parameters).

    Equation::

        o_1..o_T = BiGRU(x_1..x_T)          o_t = [fwd h_t, bwd h_t], (D H) each
        logits = W [o_1, ..., o_T] + b      W: (K, T D H)

    Args:
        input_size: F, features per time step (1 for MNIST-1D).
        num_classes: K.
        seq_len: T, the signal length (fixed: the head reads every step).
        hidden_size: H, hidden units per direction.
        bidirectional: D = 2 if True, else 1.

    Shape:
        - Input: (B, T, F), T = seq_len, F = input_size.
        - Output: (B, K) logits, K = num_classes.

    Example:
        >>> Mnist1dGRU(1, 10, seq_len=40)(torch.randn(2, 40, 1)).shape
        torch.Size([2, 10])
    """

    def __init__(self, input_size: int = 1, num_classes: int = 10, *, seq_len: int = 40,
                 hidden_size: int = 6, bidirectional: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        require(input_size > 0, f"Mnist1dGRU: input_size={input_size} must be positive")
        require(num_classes > 0, f"Mnist1dGRU: num_classes={num_classes} must be positive")
        require(seq_len > 0, f"Mnist1dGRU: seq_len={seq_len} must be positive")
        require(hidden_size > 0, f"Mnist1dGRU: hidden_size={hidden_size} must be positive")
        fk = dict(device=device, dtype=dtype)
        d = 2 if bidirectional else 1
        self.input_size, self.num_classes, self.seq_len, self.hidden_size, self.bidirectional = (
            input_size, num_classes, seq_len, hidden_size, bidirectional)
        self.gru = GRU(input_size, hidden_size, 1, bidirectional=bidirectional, **fk)
        self.linear = nn.Linear(seq_len * d * hidden_size, num_classes, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B T F", name="Mnist1dGRU", T=self.seq_len, F=self.input_size)
        out, _ = self.gru(x)  # (B, T, D H), zero initial state
        return self.linear(out.flatten(1))  # (B, T D H) -> (B, K)

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, num_classes={self.num_classes}, seq_len={self.seq_len}, "
                f"hidden_size={self.hidden_size}, bidirectional={self.bidirectional}")
