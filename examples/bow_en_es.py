"""Lesson 5: a bag-of-words classifier tells English from Spanish sentences.

Each sentence becomes a vector of word counts over the vocabulary (word order is
thrown away); softmax regression over the counts learns one weight per word and
language (Harris, "Distributional Structure", 1954).
Run: python examples/bow_en_es.py [--quick]
"""

import os
import sys

import torch

import blockzoo
from blockzoo.data import load_data
from blockzoo.data.generated import bag_of_words
from blockzoo.train import fit

QUICK = "--quick" in sys.argv or os.environ.get("BLOCKZOO_QUICK") == "1"
torch.set_num_threads(1)
torch.manual_seed(0)  # the same weights every run: the lesson (and its test) is reproducible

data = load_data("bow_en_es", quick=QUICK)
model = blockzoo.create_model("bow_classifier", in_chans=data.in_chans, num_classes=2)
result = fit(model, data, output="log_probs", optimizer="sgd", lr=0.1, batch_size=1,  # pure SGD
             epochs=5 if QUICK else 20, quiet=True)
print(f"test accuracy {result.test['acc']:.1%}")

for sentence in ["i like to drink water today", "yo creo que el agua es muy buena"]:
    x = bag_of_words([sentence.split()], data.vocab)
    probs = model(x).exp()[0].tolist()
    print(f"{sentence!r}: english {probs[0]:.2f}, spanish {probs[1]:.2f}")
assert result.test["acc"] > 0.8
