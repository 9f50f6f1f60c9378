"""Groups: the (label, spurious attribute) cells that worst-group accuracy is taken over. A leaf module."""

from __future__ import annotations

import numpy as np


def group_of(label: np.ndarray, spurious: np.ndarray, n_spurious: int) -> np.ndarray:
    """Group id of (label, spurious value): label * n_spurious + spurious value."""
    return np.asarray(label) * n_spurious + np.asarray(spurious)


def group_accuracy(correct: np.ndarray, groups: np.ndarray) -> dict[int, float]:
    """Accuracy of every group present: `correct` says per example whether the prediction was right."""
    correct = np.asarray(correct, dtype=bool)
    return {int(g): float(correct[groups == g].mean()) for g in np.unique(groups)}


def worst_group_acc(correct: np.ndarray, groups: np.ndarray) -> float:
    """The lowest group accuracy (the spurious-correlation literature's headline figure)."""
    return min(group_accuracy(correct, groups).values())
