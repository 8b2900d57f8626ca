"""Lesson: vanishing gradients. A deep sigmoid MLP against a deep ReLU one (--grad-stats).

Each sigmoid scales a gradient by at most 1/4, so through many layers the first
layers of a sigmoid net learn far more slowly; ReLU passes gradients unscaled where
it is active. ``grad_stats=True`` logs each layer's mean gradient norm per epoch
and draws runs/<name>/grad_flow.png.
Run: python examples/grad_flow_sigmoid_vs_relu.py [--quick]
"""

import os
import sys

import torch

import blockzoo
from blockzoo.data import load_data
from blockzoo.train import fit

QUICK = "--quick" in sys.argv or os.environ.get("BLOCKZOO_QUICK") == "1"
torch.set_num_threads(1)

data = load_data("digits", quick=QUICK).view("vector")  # (B, 64)
ratios = {}
for act in ("sigmoid", "relu"):
    torch.manual_seed(0)
    model = blockzoo.create("mlp", in_features=64, hidden_features=(32,) * 8, out_features=10, act_layer=act)
    result = fit(model, data, optimizer="sgd", lr=0.05, epochs=2 if QUICK else 10, grad_stats=True,
                 quiet=True, run_dir=f"runs/grad_flow_{act}", overwrite=True)
    norms = result.grad_history[0]  # first epoch, {parameter name: mean gradient norm}
    first, last = norms["layers.0.weight"], norms[f"layers.{len(model.layers) - 1}.weight"]
    ratios[act] = first / last
    print(f"{act:8s} first/last layer gradient norm {ratios[act]:.2e}   "
          f"test accuracy {result.test['acc']:.1%}")
print("figures: runs/grad_flow_sigmoid/grad_flow.png, runs/grad_flow_relu/grad_flow.png")
assert ratios["sigmoid"] < ratios["relu"] / 10, "the sigmoid net's first layer should get far less gradient"
