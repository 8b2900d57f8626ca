"""Whole networks built from registered blocks, with classification heads."""

from blockzoo.models.linear import BowClassifier, LogisticRegression, SoftmaxRegression

__all__ = ["BowClassifier", "LogisticRegression", "SoftmaxRegression"]
