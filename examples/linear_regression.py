"""Lesson 1: linear regression. Fit y = w x + b to noisy points on the line y = 2x + 1.

The four steps of every training loop (forward, loss, backward, step) run inside
``fit``; here they run with full-batch gradient descent on the mean squared error.
Run: python examples/linear_regression.py [--quick]
"""

import os
import sys

import torch
from torch import nn

from blockzoo.data import load_data
from blockzoo.train import fit

QUICK = "--quick" in sys.argv or os.environ.get("BLOCKZOO_QUICK") == "1"
torch.set_num_threads(1)
torch.manual_seed(0)  # the same weights every run: the lesson (and its test) is reproducible

data = load_data("line", quick=QUICK)  # x in [-1, 1], y = 2x + 1 + noise
model = nn.Linear(1, 1)  # y_hat = w x + b
result = fit(model, data, output="regression", optimizer="sgd", lr=0.5, momentum=0.0,
             weight_decay=0.0, schedule="constant", warmup=0, batch_size=None,  # full batch
             epochs=60 if QUICK else 200, quiet=True)

w, b = model.weight.item(), model.bias.item()
print(f"learned y = {w:.3f} x + {b:.3f}   (true: y = 2x + 1)")
print(f"test MSE {result.test['loss']:.4f}   (noise floor {data.baselines['noise floor']:.4f}, "
      f"predicting the mean {data.baselines['predict the mean']:.2f})")
assert abs(w - 2) < 0.2 and abs(b - 1) < 0.1, "gradient descent should find the line"
