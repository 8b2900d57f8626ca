"""Shared test setup: one intra-op thread, a fixed seed, headless matplotlib."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

# One thread: small models run fastest so on a few shared cores, and the same seed
# gives the same numbers (benchmarks/threads.py measures it).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
