"""How many images of each (label, spurious value) cell each split holds.

One rule for every dataset: labels are balanced; in train, val and test_iid the spurious
attribute agrees with the label at rate rho; test_flipped agrees at 1 - rho; test_balanced
makes every cell equal, and so does the unlabelled pool (every attribute independent of the label). Agreement means `spurious == label` (both are small integers).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from advmix.data.store import DatasetError
from advmix.params import ALL_SPLITS, POOL, SPLITS


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


def draw_rows(label: np.ndarray, spurious: np.ndarray, partition: np.ndarray, part_of: dict[str, int],
              sizes: dict[str, int], rho: float, n_classes: int, rng: np.random.Generator,
              shortage: Callable[[str, int, int, tuple[int, int] | None], str]) -> list[tuple[str, int]]:
    """(split, row) pairs from a labelled table (celeba, folder): each labelled split takes its cells (`plan`) from
    rows of its partition (`part_of[split]`); the pool takes `sizes["pool"]` rows of the train partition that no
    split took, without looking at labels. Shuffled, then ordered by split. (So here the pool follows the labelled
    params, unlike the embedded datasets' pool: a generator for many celeba or folder tasks comes from one run, then
    `gan.pretrained`.)

    `shortage(split, need, found, (label, spurious) or None for the pool)` is the error message when rows run out.
    """
    cells = plan(sizes, rho, n_classes=n_classes, n_spurious=n_classes)
    taken = np.zeros(len(label), dtype=bool)
    chosen: list[tuple[str, int]] = []
    for split in SPLITS:
        want_label, want_spur = draw_cells(cells[split], rng)
        for y in range(n_classes):
            for s in range(n_classes):
                need = int(np.sum((want_label == y) & (want_spur == s)))
                rows = np.flatnonzero((partition == part_of[split]) & (label == y) & (spurious == s) & ~taken)
                if len(rows) < need:
                    raise DatasetError(shortage(split, need, len(rows), (y, s)))
                pick = rng.choice(rows, need, replace=False)
                taken[pick] = True
                chosen += [(split, int(i)) for i in pick]
    rest = np.flatnonzero((partition == part_of["train"]) & ~taken)
    n_pool = sizes.get(POOL, 0)
    if len(rest) < n_pool:
        raise DatasetError(shortage(POOL, n_pool, len(rest), None))
    chosen += [(POOL, int(i)) for i in rng.choice(rest, n_pool, replace=False)]
    order = rng.permutation(len(chosen))
    return sorted((chosen[i] for i in order), key=lambda t: ALL_SPLITS.index(t[0]))


def numbered(split: pd.Series, prefix: str) -> tuple[list[str], np.ndarray]:
    """Row ids and numbers counted within the labelled splits and, apart, within the pool (`pool-000000`, ...): the
    pool's ids and image streams do not depend on the labelled sizes."""
    is_pool = (split == POOL).to_numpy()
    number = np.where(is_pool, np.cumsum(is_pool) - 1, np.cumsum(~is_pool) - 1)
    return [f"{'pool' if q else prefix}-{i:06d}" for q, i in zip(is_pool, number)], number
