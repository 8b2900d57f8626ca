"""Lesson 3: an MLP on a Pima-style CSV (eight measurements, label 0/1 in the last column).

Usage: python examples/mlp_pima_csv.py [PATH.csv] [--quick]. Without a path, a
synthetic file in the Pima Indians diabetes layout is written to a temp folder
(the real file, Smith et al. 1988, can be passed instead). Features are
standardised with the training split's statistics only.
"""

import os
import sys
import tempfile

import torch

import blockzoo
from blockzoo.data import load_data
from blockzoo.train import fit

QUICK = "--quick" in sys.argv or os.environ.get("BLOCKZOO_QUICK") == "1"
torch.set_num_threads(1)
paths = [a for a in sys.argv[1:] if not a.startswith("--")]
if paths:
    path = paths[0]
else:  # synthetic rows: pregnancies, glucose, pressure, skin, insulin, bmi, pedigree, age, outcome
    g = torch.Generator().manual_seed(0)
    n = 200 if QUICK else 768
    x = torch.randn(n, 8, generator=g) * torch.tensor([3, 30, 12, 15, 100, 7, 0.3, 12]) + torch.tensor(
        [4, 120, 70, 20, 80, 32, 0.5, 33])
    risk = 0.05 * (x[:, 1] - 120) + 0.15 * (x[:, 5] - 32) + 0.05 * (x[:, 7] - 33)
    y = (risk + torch.randn(n, generator=g) > 0).float()
    path = os.path.join(tempfile.mkdtemp(), "pima_style.csv")
    with open(path, "w") as f:
        f.write("pregnancies,glucose,pressure,skin,insulin,bmi,pedigree,age,outcome\n")
        for row, t in zip(x.tolist(), y.tolist(), strict=True):
            f.write(",".join(f"{v:.3f}" for v in row) + f",{int(t)}\n")

data = load_data(f"csv:{path}")  # task inferred from the labels: binary
model = blockzoo.create("mlp", in_features=data.in_chans, hidden_features=(12, 8), out_features=1)
result = fit(model, data, output="logits", optimizer="adam", lr=1e-2, batch_size=16,
             epochs=10 if QUICK else 60, quiet=True)
print(f"{data.task} task, {data.in_chans} features: test accuracy {result.test['acc']:.1%}")
assert result.test["acc"] > 0.6
