"""Lesson 2: logistic regression. Separate two Gaussian blobs with p(y=1|x) = sigmoid(w.x + b).

The model outputs the logit w.x + b; the loss (binary cross-entropy with logits)
applies the sigmoid exactly, so log(0) never happens.
Run: python examples/logistic_regression.py [--quick]
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

data = load_data("blobs", quick=QUICK)  # centres (-1,-1) and (1,1)
model = blockzoo.create_model("logistic_regression", in_chans=2, num_classes=1)
result = fit(model, data, output=blockzoo.spec("logistic_regression").output,
             optimizer="sgd", lr=0.5, batch_size=32, epochs=10 if QUICK else 30, quiet=True)

w = model.linear.weight.detach()[0]
print(f"decision boundary: {w[0]:.2f} x1 + {w[1]:.2f} x2 + {model.linear.bias.item():.2f} = 0")
print(f"test accuracy {result.test['acc']:.1%}   (Bayes optimal {data.baselines['Bayes optimal']:.1%})")
assert result.test["acc"] > 0.85, "the blobs are nearly separable"
