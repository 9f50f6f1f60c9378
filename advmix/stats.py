"""Seed statistics: a seed-paired bootstrap confidence interval for a mode's gain over a reference mode (nominal,
or a control such as RandMix).

Two classifiers trained with the same seed share their initial weights, batch order and attack draws, so
their errors are correlated; resampling seeds (not runs) keeps each pair together, which is what makes
the interval narrower than an unpaired one when the seed, not the method, drives most of the spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedGain:
    """A mode against a reference mode over the seeds both have."""

    seeds: list[int]
    relative_error_reduction: float  # (mean reference error - mean mode error) / mean reference error
    relative_error_reduction_ci: tuple[float, float]
    worst_group_gain: float  # mean mode worst-group accuracy - mean reference worst-group accuracy
    worst_group_gain_ci: tuple[float, float]
    n_boot: int
    level: float


def paired_bootstrap(seeds: list[int], reference_error: list[float], mode_error: list[float],
                     reference_wga: list[float], mode_wga: list[float], *, n_boot: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> PairedGain:
    """Percentile bootstrap over seeds: each resample draws len(seeds) seeds with replacement and recomputes
    both statistics from the means of the drawn pairs."""
    e0, e1, w0, w1 = (np.asarray(v, dtype=float) for v in (reference_error, mode_error, reference_wga, mode_wga))
    if not len(seeds) == len(e0) == len(e1) == len(w0) == len(w1) or not len(seeds):
        raise ValueError("paired_bootstrap needs one value per seed for every series")
    idx = np.random.default_rng(seed).integers(0, len(seeds), (n_boot, len(seeds)))
    m0 = e0[idx].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rer = np.where(m0 > 0, (m0 - e1[idx].mean(1)) / m0, np.nan)
    gain = w1[idx].mean(1) - w0[idx].mean(1)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def ci(x: np.ndarray) -> tuple[float, float]:
        lo, hi = np.nanpercentile(x, q)
        return float(lo), float(hi)

    return PairedGain(
        seeds=list(seeds),
        relative_error_reduction=float((e0.mean() - e1.mean()) / e0.mean()) if e0.mean() > 0 else float("nan"),
        relative_error_reduction_ci=ci(rer), worst_group_gain=float(w1.mean() - w0.mean()),
        worst_group_gain_ci=ci(gain), n_boot=n_boot, level=level)
