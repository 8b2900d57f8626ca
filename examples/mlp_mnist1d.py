"""Lesson 4: a multi-layer perceptron on MNIST-1D (Greydanus & Kobak, arXiv 2011.14439).

The signals (length 40) are fed as flat vectors: the MLP sees no notion of
position, which is why the paper's MLP (68%) trails its CNN (94%); compare with
``blockzoo train`` (the CNN).
Run: python examples/mlp_mnist1d.py [--quick]
"""

import os
import sys

import torch

import blockzoo
from blockzoo.data import load_data
from blockzoo.train import fit

QUICK = "--quick" in sys.argv or os.environ.get("BLOCKZOO_QUICK") == "1"
torch.set_num_threads(1)
torch.manual_seed(0)  # the same weights every run: the lesson (and its test) is reproducible

data = load_data("mnist1d", quick=QUICK).view("vector")  # (B, 40)
model = blockzoo.create("mlp", in_features=40, hidden_features=(100, 100), out_features=10)
result = fit(model, data, output="logits", optimizer="adam", lr=1e-2, weight_decay=0.0,
             batch_size=100, epochs=30 if QUICK else 50, quiet=True)

print(f"MLP test accuracy on MNIST-1D: {result.test['acc']:.1%}")
for name, acc in data.baselines.items():
    print(f"  paper's {name:20s} {acc:.0%}")
assert result.test["acc"] > (0.2 if QUICK else 0.55)
