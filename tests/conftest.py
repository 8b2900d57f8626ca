"""Shared test setup: one intra-op thread, a fixed seed, headless matplotlib."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

# On a shared 2-core machine small models ran 7-60x slower with 2 intra-op
# threads than with 1, and gave different results for the same seed.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
