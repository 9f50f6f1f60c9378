"""The seed-paired bootstrap interval, on hand-made cases whose answer is known."""

import numpy as np
import pytest

from advmix.stats import paired_bootstrap


def test_a_constant_gain_has_a_point_interval():
    g = paired_bootstrap([0, 1, 2, 3, 4], [0.2] * 5, [0.1] * 5, [0.6] * 5, [0.8] * 5)
    assert g.relative_error_reduction == pytest.approx(0.5)
    assert g.relative_error_reduction_ci == pytest.approx((0.5, 0.5))
    assert g.worst_group_gain_ci == pytest.approx((0.2, 0.2))


def test_pairing_removes_the_seed_effect():
    """Seeds differ a lot, the method always removes a quarter of the error: the paired interval stays tight and
    above 0, while shuffling the pairs (breaking them) widens it to straddle 0."""
    nominal = [0.05, 0.10, 0.20, 0.30, 0.40, 0.08]
    mode = [0.75 * e for e in nominal]
    wga = [0.5] * 6
    g = paired_bootstrap(list(range(6)), nominal, mode, wga, wga)
    lo, hi = g.relative_error_reduction_ci
    assert 0.2 < lo <= 0.25 <= hi < 0.3
    broken = paired_bootstrap(list(range(6)), nominal, mode[::-1], wga, wga)
    assert broken.relative_error_reduction_ci[0] < 0 < broken.relative_error_reduction_ci[1]


def test_interval_matches_a_direct_bootstrap_and_is_seeded():
    rng = np.random.default_rng(3)
    e0, e1 = rng.uniform(0.1, 0.3, 5), rng.uniform(0.05, 0.25, 5)
    w = rng.uniform(0.5, 0.9, 5)
    g = paired_bootstrap(list(range(5)), e0, e1, w, w + 0.1, n_boot=2000, seed=7)
    idx = np.random.default_rng(7).integers(0, 5, (2000, 5))
    direct = (e0[idx].mean(1) - e1[idx].mean(1)) / e0[idx].mean(1)
    assert g.relative_error_reduction_ci == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])))
    assert g.worst_group_gain_ci == pytest.approx((0.1, 0.1))
    assert paired_bootstrap(list(range(5)), e0, e1, w, w + 0.1, n_boot=2000, seed=7).relative_error_reduction_ci == \
        g.relative_error_reduction_ci


def test_mismatched_series_are_refused():
    with pytest.raises(ValueError, match="one value per seed"):
        paired_bootstrap([0, 1], [0.1, 0.2], [0.1], [0.5, 0.5], [0.5, 0.5])
