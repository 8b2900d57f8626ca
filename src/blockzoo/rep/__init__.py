"""Structural re-parameterization blocks (multi-branch in training, one conv at deploy)."""
