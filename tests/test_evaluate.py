"""Evaluation metrics against their definitions and against fairlearn called directly; Group DRO and AugMix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference, false_negative_rate

from advmix.classifier_training import group_dro_loss
from advmix.data.store import Dataset
from advmix.groups import group_of
from advmix.metrics import expected_calibration_error, split_metrics, stratified_subset

INFO = {"n_classes": 2, "classes": ["not_smiling", "smiling"], "spurious": "skin_dark",
        "attributes": {"skin_dark": [0, 1]}}


def split_of(label, spurious) -> Dataset:
    label, spurious = np.asarray(label), np.asarray(spurious)
    manifest = pd.DataFrame({"label": label, "skin_dark": spurious, "group": group_of(label, spurious, 2)})
    return Dataset(np.zeros((len(label), 4, 4, 3), np.uint8), manifest, INFO)


def probs_of(pred, confidence=0.9):
    pred = np.asarray(pred)
    p1 = np.where(pred == 1, confidence, 1 - confidence)
    return np.stack([1 - p1, p1], 1)


def random_case(seed=0, n=400):
    rng = np.random.default_rng(seed)
    y, s = rng.integers(0, 2, n), rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.8, y, 1 - y)
    pred = np.where((s == 1) & (rng.random(n) < 0.2), 1, pred)  # a skew towards 1 for s = 1
    return y, s, pred


def test_fairness_equals_fairlearn_on_the_same_predictions():
    y, s, pred = random_case()
    ds = split_of(y, s)
    m, rows = split_metrics(probs_of(pred), ds, ds.manifest["group"].to_numpy(), bins=10)
    assert m["eod"] == pytest.approx(equalized_odds_difference(y, pred, sensitive_features=s))
    assert m["dpd"] == pytest.approx(demographic_parity_difference(y, pred, sensitive_features=s))
    fnr = MetricFrame(metrics=false_negative_rate, y_true=y, y_pred=pred, sensitive_features=s)
    assert m["deo"] == pytest.approx(fnr.difference())  # DEO = |FNR gap| (gan-debiasing)
    assert m["eod"] > 0.05 and m["dpd"] > 0.05  # the skew is seen
    acc = MetricFrame(metrics=lambda a, b: float(np.mean(a == b)), y_true=y, y_pred=pred,
                      sensitive_features=ds.manifest["group"].to_numpy())
    assert m["worst_group_acc"] == pytest.approx(acc.group_min())
    assert sorted(r["acc"] for r in rows) == pytest.approx(sorted(acc.by_group.to_numpy()))


def test_constant_model_has_the_expected_fairness_values():
    y, s, _ = random_case(1)
    ds = split_of(y, s)
    m, rows = split_metrics(probs_of(np.ones_like(y)), ds, ds.manifest["group"].to_numpy(), bins=10)
    assert m["dpd"] == 0 and m["eod"] == 0 and m["deo"] == 0  # everyone predicted positive: no gap anywhere
    assert m["acc"] == pytest.approx(np.mean(y == 1))
    assert m["worst_group_acc"] == 0.0  # the negative groups are all wrong
    assert {r["group"] for r in rows if r["acc"] == 1.0} == {"smiling/skin_dark=0", "smiling/skin_dark=1"}
    assert all(r["selection_rate"] == 1.0 for r in rows)
    assert m["ece"] == pytest.approx(abs(np.mean(y == 1) - 0.9))  # one confidence bin


def test_worst_group_below_the_averages_and_train_weighting():
    y, s, pred = random_case(2)
    ds = split_of(y, s)
    train_groups = np.array([0] * 90 + [1] * 5 + [2] * 5 + [3] * 90)
    m, rows = split_metrics(probs_of(pred), ds, train_groups, bins=10)
    acc = {r["group"]: r["acc"] for r in rows}
    expect = (90 * acc["not_smiling/skin_dark=0"] + 5 * acc["not_smiling/skin_dark=1"]
              + 5 * acc["smiling/skin_dark=0"] + 90 * acc["smiling/skin_dark=1"]) / 190
    assert m["avg_acc_train_weighted"] == pytest.approx(expect)
    assert m["worst_group_acc"] <= min(m["avg_acc_train_weighted"], m["acc"])


def test_ece_definition():
    probs = np.array([[0.1, 0.9], [0.1, 0.9], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([1, 0, 1, 1])  # bin 0.9: acc 0.5, conf 0.9; bin 0.6: acc 1.0, conf 0.6
    assert expected_calibration_error(probs, y, bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    perfect = np.array([[0.0, 1.0]] * 4)
    assert expected_calibration_error(perfect, np.ones(4, int), bins=15) == 0.0


def test_stratified_subset_is_balanced_and_seeded():
    groups = np.array([0] * 50 + [1] * 5 + [2] * 50 + [3] * 50)
    rows = stratified_subset(groups, 40, seed=0)
    counts = np.bincount(groups[rows], minlength=4)
    assert counts.tolist() == [12, 5, 12, 11] and len(set(rows.tolist())) == 40
    assert np.array_equal(rows, stratified_subset(groups, 40, seed=0))
    assert not np.array_equal(rows, stratified_subset(groups, 40, seed=1))
    assert len(stratified_subset(groups, 1000, seed=0)) == len(groups)


def test_group_dro_upweights_the_worst_group():
    losses = torch.tensor([0.1, 0.1, 2.0, 2.0, 0.5], requires_grad=True)
    groups = torch.tensor([0, 0, 1, 1, 2])
    q = torch.full((4,), 0.25)
    loss = group_dro_loss(losses, groups, q, step_size=0.5)
    assert q.sum().item() == pytest.approx(1.0)
    assert q[1] > q[2] > q[0] and q[3] == pytest.approx(q[0] / np.exp(0.05))  # group 3 absent: weight kept
    assert loss.item() == pytest.approx((q[0] * 0.1 + q[1] * 2.0 + q[2] * 0.5).item())
    loss.backward()
    assert losses.grad[2] > losses.grad[0] > 0


def test_group_dro_adjustment_gives_a_small_group_more_weight():
    losses = torch.tensor([1.0, 1.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1])
    plain, adjusted = torch.full((2,), 0.5), torch.full((2,), 0.5)
    group_dro_loss(losses, groups, plain, step_size=0.5)
    sizes = torch.tensor([900.0, 9.0])  # the train counts: group 1 is the rare one
    group_dro_loss(losses, groups, adjusted, step_size=0.5, adjustment=2.0 / sizes.sqrt())
    assert plain[0] == pytest.approx(plain[1])  # equal losses: equal weights
    assert adjusted[1] / adjusted[0] == pytest.approx(np.exp(0.5 * (2 / 3 - 2 / 30)), rel=1e-5)


def test_augmix_changes_images_reproducibly_and_leaves_the_global_rng(one_thread):
    from conftest import attack_config

    from advmix.attacks import Batch, augmix

    x = torch.rand(6, 3, 16, 16) * 2 - 1
    batch = Batch(x, torch.zeros(6, dtype=torch.long))
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a, y = augmix(None, batch, None, None, attack_config(), torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), before)
    b, _ = augmix(None, batch, None, None, attack_config(), torch.Generator().manual_seed(1))
    c, _ = augmix(None, batch, None, None, attack_config(), torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(y, batch.y)
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    per_image = (a - x).abs().flatten(1).mean(1)
    assert (per_image > 1e-3).all() and per_image.std() > 0  # every image changed, not all the same way
