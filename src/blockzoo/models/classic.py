"""The classic image classifiers the tutorials walk through.

Papers: Learning representations by back-propagating errors (Rumelhart, Hinton,
Williams, Nature 323, 1986) — the MLP; Gradient-Based Learning Applied to Document
Recognition (LeCun et al., Proc. IEEE 86(11), 1998) — LeNet-5; Learning Multiple
Layers of Features from Tiny Images (Krizhevsky, tech. report, 2009) — CIFAR-10 and
its small three-conv network; Going Deeper with Convolutions (Szegedy et al.,
arXiv 1409.4842, 2014) — GoogLeNet.

Letters: B batch, C input channels (in_chans), H W spatial, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockzoo.act import LayerSpec, create_act
from blockzoo.checks import ShapeError, check_shape, require
from blockzoo.conv.conv_bn_act import ConvBnAct
from blockzoo.conv.inception import InceptionBlock
from blockzoo.mlp.mlp import MLP
from blockzoo.registry import Example, images, register

__all__ = ["CifarCNN", "InceptionNet", "LeNet5", "MLPClassifier"]


def logits_shape(shape: Any, cfg: Any) -> tuple[int, int]:
    """Output shape of a classifier: (B, num_classes)."""
    return (shape[0], cfg["num_classes"])


def check_min_size(x: torch.Tensor, minimum: int, name: str, why: str) -> None:
    """Raise ``ShapeError`` naming the model when H or W is below ``minimum``."""
    if min(x.shape[-2:]) < minimum:
        raise ShapeError(f"{name}: expected input (B, C, H, W) with H, W >= {minimum} ({why}), "
                         f"got {tuple(x.shape)}")


@register(
    name="mlp_classifier",
    family="model",
    paper="Learning representations by back-propagating errors",
    arxiv="Nature 323, 533-536",
    year=1986,
    input="image",
    output="logits",
    example=Example(
        config=dict(in_chans=1, num_classes=10, img_size=(8, 8)),
        inputs=images("in_chans"),
        size=(8, 8),
        sizes=(),
        out_shape=logits_shape,
        tiny=dict(hidden_features=(4,), num_classes=3),
    ),
    size_arg="img_size",
)
class MLPClassifier(nn.Module):
    r"""MLP classifier on images: flatten the pixels, then a multi-layer perceptron.

    Rumelhart, Hinton & Williams, "Learning representations by back-propagating errors", 1986.

    Equation::

        logits = MLP(flatten(x))          flatten: (C, H, W) -> C H W features

    Args:
        in_chans: C, the image channels.
        num_classes: K.
        img_size: (H, W), fixed: the first layer has C H W inputs (an int means square).
        hidden_features: the hidden layer sizes.
        act_layer: the activation.
        dropout: dropout after each hidden activation.

    Shape:
        - Input: (B, C, H, W) with C = in_chans and (H, W) = img_size exactly (the
          flattened pixels are the features, so the size is part of the model).
        - Output: (B, K) logits, K = num_classes.

    Example:
        >>> model = MLPClassifier(1, 10, img_size=28, hidden_features=(256, 128))
        >>> model(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 10,
        *,
        img_size: int | Sequence[int] = (28, 28),
        hidden_features: int | Sequence[int] = (256,),
        act_layer: LayerSpec = "relu",
        dropout: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.in_chans, self.num_classes, self.img_size = in_chans, num_classes, (h, w)
        self.mlp = MLP(in_chans * h * w, hidden_features, num_classes, act_layer=act_layer,
                       dropout=dropout, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.img_size
        check_shape(x, "B C H W", name="MLPClassifier", C=self.in_chans, H=h, W=w)
        return self.mlp(x.flatten(1))  # (B, C H W) -> (B, K)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}, img_size={self.img_size}"


@register(
    name="lenet5",
    family="model",
    paper="Gradient-Based Learning Applied to Document Recognition",
    arxiv="Proc. IEEE 86(11), 2278-2324",
    year=1998,
    input="image",
    output="logits",
    example=Example(
        config=dict(in_chans=1, num_classes=10),
        inputs=images("in_chans"),
        size=(28, 28),
        sizes=((12, 10), (9, 15)),
        out_shape=logits_shape,
        tiny=dict(num_classes=3),
    ),
)
class LeNet5(nn.Module):
    r"""LeNet-5: conv 5x5 - pool - conv 5x5 - pool - three fully connected layers.

    LeCun et al., "Gradient-Based Learning Applied to Document Recognition", Proc. IEEE 1998.

    Equation (layer names of the paper)::

        C1 = act(conv5x5_{C->6, pad 2}(x));    S2 = pool2x2(C1)
        C3 = act(conv5x5_{6->16}(S2));          S4 = pool2x2(C3)
        C5 = act(W_5 flatten(adapt_5x5(S4)));   F6 = act(W_6 C5);   logits = W_7 F6

    At 28x28 (MNIST, padded by C1 as the paper pads to 32x32) and at 32x32 without
    the padding the maps are the paper's 28 -> 14 -> 10 -> 5.

    Args:
        in_chans: C, the image channels.
        num_classes: K.
        act_layer: the activation (paper: a scaled tanh).
        pool: ``"avg"`` (the paper's subsampling) or ``"max"``.

    Shape:
        - Input: (B, C, H, W), C = in_chans, H, W >= 9 (C3's 5x5 conv needs a 5x5 S2 map).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        S2/S4 have no trainable coefficient and bias; C3 connects to all six S2
        maps (not the paper's sparse table); the output is a linear layer, not the
        Euclidean RBF units; an adaptive average pool to 5x5 before C5 lets sizes
        other than 28x28 work (an identity at 28x28).

    Example:
        >>> model = LeNet5(1, 10)
        >>> model(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 10,
        *,
        act_layer: LayerSpec = "tanh",
        pool: str = "avg",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(pool in ("avg", "max"), f"LeNet5: pool={pool!r} must be 'avg' or 'max'")
        self.in_chans, self.num_classes = in_chans, num_classes
        fk = dict(device=device, dtype=dtype)
        pool_cls = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        kw = dict(norm_layer=None, act_layer=act_layer, **fk)
        self.features = nn.Sequential(
            ConvBnAct(in_chans, 6, 5, padding=2, **kw),  # C1
            pool_cls(2, ceil_mode=True),  # S2
            ConvBnAct(6, 16, 5, padding=0, **kw),  # C3
            pool_cls(2, ceil_mode=True),  # S4
            nn.AdaptiveAvgPool2d(5),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120, **fk), create_act(act_layer, **fk),  # C5
            nn.Linear(120, 84, **fk), create_act(act_layer, **fk),  # F6
            nn.Linear(84, num_classes, **fk),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="LeNet5", C=self.in_chans)
        check_min_size(x, 9, "LeNet5", "C3's 5x5 conv needs a 5x5 map after S2")
        return self.classifier(self.features(x))

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


@register(
    name="cifar_cnn",
    family="model",
    paper="Learning Multiple Layers of Features from Tiny Images",
    arxiv="https://www.cs.toronto.edu/~kriz/learning-features-2009-TR.pdf",
    year=2009,
    input="image",
    output="logits",
    example=Example(
        config=dict(in_chans=3, num_classes=10),
        inputs=images("in_chans"),
        size=(16, 16),
        out_shape=logits_shape,
        tiny=dict(widths=(2, 2, 3), hidden=3, num_classes=3),
    ),
)
class CifarCNN(nn.Module):
    r"""The three-conv CIFAR-10 network: (conv 5x5 - ReLU - pool) x 3, flatten, two linear layers.

    The small network trained on CIFAR-10 (Krizhevsky, "Learning Multiple Layers of
    Features from Tiny Images", 2009; cuda-convnet's ``layers-18pct``, Caffe's
    ``cifar10_quick``), the one the tutorials train first.

    Equation::

        h_0 = x;   h_i = maxpool2x2(act(conv5x5_{pad 2}(h_{i-1})))      i = 1, 2, 3
        logits = W_2 act(W_1 flatten(adapt_{g x g}(h_3)))

    At 32x32 the maps are 32 -> 16 -> 8 -> 4, so with g = 4 the adaptive pool is
    the identity and this is exactly the tutorial network.

    Args:
        in_chans: C, the image channels.
        num_classes: K.
        widths: the three convs' output channels (cifar10_quick: 32, 32, 64).
        hidden: the first linear layer's width (cifar10_quick: 64).
        head_grid: g, the grid the last map is pooled to before flattening.
        act_layer: the activation.
        dropout: dropout before each linear layer.

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W (pools round up).
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        The adaptive average pool to g x g (identity at 32x32) makes other sizes
        work; the pools round up (``ceil_mode``) so odd sizes keep their border.

    Example:
        >>> model = CifarCNN(3, 10)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        *,
        widths: Sequence[int] = (32, 32, 64),
        hidden: int = 64,
        head_grid: int = 4,
        act_layer: LayerSpec = "relu",
        dropout: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(len(widths) == 3, f"CifarCNN: widths={tuple(widths)} must have three values")
        self.in_chans, self.num_classes = in_chans, num_classes
        fk = dict(device=device, dtype=dtype)
        layers: list[nn.Module] = []
        prev = in_chans
        for w in widths:
            layers += [ConvBnAct(prev, w, 5, norm_layer=None, act_layer=act_layer, **fk),
                       nn.MaxPool2d(2, ceil_mode=True)]
            prev = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(head_grid))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(prev * head_grid * head_grid, hidden, **fk),
            create_act(act_layer, **fk),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes, **fk),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="CifarCNN", C=self.in_chans)
        return self.classifier(self.features(x))

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"


# GoogLeNet's 3a, 3b and 4a blocks: (in, 1x1, red3, 3x3, red5, 5x5, pool proj); with
# width != 1 each block's input is the previous block's scaled output.
_GOOGLENET = {
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
}


@register(
    name="inception_net",
    family="model",
    paper="Going Deeper with Convolutions",
    arxiv="1409.4842",
    year=2014,
    input="image",
    output="logits",
    example=Example(
        config=dict(in_chans=3, num_classes=10),
        inputs=images("in_chans"),
        size=(16, 16),
        out_shape=logits_shape,
        tiny=dict(width=0.0625, num_classes=3),
    ),
)
class InceptionNet(nn.Module):
    r"""A small GoogLeNet: a stem, Inception blocks 3a, 3b, pool, 4a, global pooling, a linear head.

    Szegedy et al., "Going Deeper with Convolutions", arXiv 1409.4842 (Table 1's
    first three Inception blocks, with their 1x1 reductions).

    Equation::

        h = stem(x);  h = 3b(3a(h));  h = 4a(maxpool3x3_s2(h))
        logits = W dropout(GAP(h)) + b

    Args:
        in_chans: C, the image channels.
        num_classes: K.
        width: multiplies every channel count of the paper (1.0: 192 -> 256 -> 480 -> 512).
        stem: ``"cifar"`` (one 3x3 conv, for small images) or ``"imagenet"``
            (the paper's 7x7/2 conv, pool, 1x1, 3x3, pool: / 8 before 3a).
        dropout: before the linear head (paper: 0.4).
        norm_layer: the norm after every conv (paper: none; BN trains easily).

    Shape:
        - Input: (B, C, H, W), C = in_chans, any H, W.
        - Output: (B, K) logits, K = num_classes.

    Deviations:
        Only blocks 3a-4a (the paper has nine); BN after every conv; no auxiliary
        classifiers; a "cifar" stem for small images.

    Example:
        >>> model = InceptionNet(3, 10, width=0.25)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        *,
        width: float = 1.0,
        stem: str = "cifar",
        dropout: float = 0.4,
        norm_layer: LayerSpec = "batchnorm",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        require(stem in ("cifar", "imagenet"), f"InceptionNet: stem={stem!r} must be 'cifar' or 'imagenet'")
        require(width > 0, f"InceptionNet: width={width} must be > 0")
        self.in_chans, self.num_classes = in_chans, num_classes
        fk = dict(device=device, dtype=dtype)

        def sc(v: int) -> int:
            return max(1, round(v * width))

        kw = dict(norm_layer=norm_layer, **fk)
        if stem == "cifar":
            self.stem = ConvBnAct(in_chans, sc(192), 3, **kw)
        else:
            self.stem = nn.Sequential(
                ConvBnAct(in_chans, sc(64), 7, stride=2, **kw),
                nn.MaxPool2d(3, 2, padding=1),
                ConvBnAct(sc(64), sc(64), 1, **kw),
                ConvBnAct(sc(64), sc(192), 3, **kw),
                nn.MaxPool2d(3, 2, padding=1),
            )
        blocks: dict[str, InceptionBlock] = {}
        prev = sc(192)
        for k, (_, *branches) in _GOOGLENET.items():
            blocks[k] = InceptionBlock(prev, *[sc(v) for v in branches], **kw)
            prev = blocks[k].dim_out
        self.inception3a, self.inception3b = blocks["3a"], blocks["3b"]
        self.pool3 = nn.MaxPool2d(3, 2, padding=1)
        self.inception4a = blocks["4a"]
        self.num_features = blocks["4a"].dim_out
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(self.num_features, num_classes, **fk),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, "B C H W", name="InceptionNet", C=self.in_chans)
        h = self.inception3b(self.inception3a(self.stem(x)))
        h = self.inception4a(self.pool3(h))
        return self.head(h)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, num_classes={self.num_classes}"
