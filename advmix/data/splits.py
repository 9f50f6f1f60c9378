"""How many images of each (label, spurious value) cell each split holds.

One rule for every dataset: labels are balanced; in train, val and test_iid the spurious
attribute agrees with the label at rate rho; test_flipped agrees at 1 - rho; test_balanced
makes every cell equal, and so does the unlabelled pool (every attribute independent of the label). Agreement means `spurious == label` (both are small integers).
"""

from __future__ import annotations

import numpy as np

from advmix.params import ALL_SPLITS


def agreement_of(split: str, rho: float) -> float | None:
    """Target agreement of a split; None means the cells are balanced."""
    return {"test_balanced": None, "pool": None, "test_flipped": 1.0 - rho}.get(split, rho)


def _even(n: int, k: int) -> np.ndarray:
    out = np.full(k, n // k)
    out[: n % k] += 1
    return out


def cell_counts(n: int, n_classes: int, n_spurious: int, agreement: float | None) -> np.ndarray:
    """counts[label, spurious] summing to n, with balanced labels."""
    counts = np.zeros((n_classes, n_spurious), dtype=int)
    # the agreeing total is rounded once, not per class, so small splits still hit the target
    agreeing = _even(round((agreement or 0.0) * n), n_classes)
    for c, n_c in enumerate(_even(n, n_classes)):
        if agreement is None:
            counts[c] = _even(int(n_c), n_spurious)
            continue
        if n_spurious != n_classes:
            raise ValueError("agreement needs as many spurious values as classes")
        agree = int(agreeing[c])
        others = [s for s in range(n_spurious) if s != c]
        counts[c, others] = _even(int(n_c) - agree, len(others))
        counts[c, c] = agree
    return counts


def draw_cells(counts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (label, spurious) arrays realising `counts`."""
    label = np.repeat(np.arange(counts.shape[0]), counts.sum(1))
    spurious = np.concatenate([np.repeat(np.arange(counts.shape[1]), row) for row in counts])
    order = rng.permutation(len(label))
    return label[order], spurious[order]


def plan(sizes: dict[str, int], rho: float, n_classes: int, n_spurious: int) -> dict[str, np.ndarray]:
    return {s: cell_counts(sizes.get(s, 0), n_classes, n_spurious, agreement_of(s, rho)) for s in ALL_SPLITS}
