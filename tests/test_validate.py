"""The Great Expectations suites pass on good data and name the expectation each corruption breaks."""

import shutil

import numpy as np
import pytest
from conftest import tiny_params
from typer.testing import CliRunner

from advmix.cli import app
from advmix.data import load_dataset, save_dataset
from advmix.data.build import build_dataset
from advmix.data.store import image_digests
from advmix.validate import run_suites

SIZES = {"train": 100, "val": 20, "test_iid": 20, "test_balanced": 40, "test_flipped": 20, "pool": 100}
RHO = 0.95  # 95 of 100 train rows agree exactly: not the default, so a wrong default cannot pass unseen


@pytest.fixture(scope="module")
def good():
    params = tiny_params(sizes=SIZES, rho=RHO)
    return params, build_dataset(params)


def copy(ds):
    return type(ds)(ds.images.copy(), ds.manifest.copy(), dict(ds.info))


def test_good_data_passes(good):
    params, ds = good
    report = run_suites(ds, params)
    assert report.success, report.failures
    assert report.evaluated >= 25
    assert report.agreement["train"] == pytest.approx(RHO)
    assert report.agreement["pool"] == pytest.approx(0.5, abs=0.1)  # independent draws: near 0.5, as validate asks


def zero_image(ds):
    ds.images[3] = 0


def duplicate_across_splits(ds):
    m = ds.manifest
    ds.images[m.index[m.split == "test_balanced"][0]] = ds.images[m.index[m.split == "train"][0]]


def label_outside_set(ds):
    ds.manifest.loc[5, "label"] = 7


def wrong_rho(ds):
    m = ds.manifest
    train = m.index[m.split == "train"][:20]
    m.loc[train, "skin_dark"] = 1 - m.loc[train, "label"]


def correlated_pool(ds):
    """A pool whose label follows the spurious attribute, as a skewed unlabelled collection would."""
    m = ds.manifest
    pool = m.index[m.split == "pool"]
    m.loc[pool, "skin_dark"] = m.loc[pool, "label"]


def pool_image_in_val(ds):
    m = ds.manifest
    ds.images[m.index[m.split == "pool"][0]] = ds.images[m.index[m.split == "val"][0]]


def group_disagrees(ds):
    """A group column that no longer equals label x spurious (Group DRO would train on it)."""
    ds.manifest.loc[7, "group"] = (ds.manifest.loc[7, "group"] + 1) % 4


def rows_shuffled_against_images(ds):
    """Two manifest rows swapped while the images stay: only the per-image hash ties a row to its image."""
    ds.manifest["image_sha1"] = image_digests(ds.images)
    m = ds.manifest
    i, j = m.index[m.label == 0][0], m.index[m.label == 1][0]
    m.loc[[i, j]] = m.loc[[j, i]].to_numpy()


def missing_column(ds):
    ds.manifest = ds.manifest.drop(columns=["makeup"])


def test_a_ten_class_pool_is_judged_against_independence_not_one_half():
    """colordigits' pool: colour independent of the digit agrees with it 10% of the time, and that passes."""
    params = tiny_params(name="colordigits", sizes={**SIZES, "pool": 400}, rho=0.95)
    ds = build_dataset(params)
    report = run_suites(ds, params)
    assert report.success, report.failures
    assert report.agreement["pool"] == pytest.approx(0.1, abs=0.05)
    m = ds.manifest
    pool = m.index[m.split == "pool"]
    m.loc[pool, "color"] = m.loc[pool, "label"]  # every pooled digit in its own colour
    assert "pool_label_independent" in [f.name for f in run_suites(ds, params).failures]


@pytest.mark.parametrize("corrupt,expected", [
    (zero_image, "image_contrast"),
    (duplicate_across_splits, "no_image_in_two_splits"),
    (label_outside_set, "label_set"),
    (wrong_rho, "spurious_agreement_rho"),
    (missing_column, "required_columns"),
    (correlated_pool, "pool_label_independent"),
    (pool_image_in_val, "no_image_in_two_splits"),
    (group_disagrees, "group_is_label_x_spurious"),
    (rows_shuffled_against_images, "rows_match_images"),
])
def test_corruption_fails_named_expectation(good, corrupt, expected):
    params, ds = good
    bad = copy(ds)
    corrupt(bad)
    report = run_suites(bad, params)
    assert not report.success
    names = [f.name for f in report.failures]
    assert expected in names, names


def test_wrong_split_size_fails(good):
    params, ds = good
    bigger = params.model_copy(update={"data": params.data.model_copy(
        update={"sizes": params.data.sizes.model_copy(update={"train": 120})})})
    assert "split_sizes" in [f.name for f in run_suites(ds, bigger).failures]


def test_cli_exit_codes_and_outputs(good, tmp_path, monkeypatch):
    _, ds = good
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"data:\n  rho: {RHO}\n  sizes: {SIZES}\n")
    save_dataset(tmp_path / "data" / "synthfaces", ds)
    runner = CliRunner()
    ok = runner.invoke(app, ["validate"])
    assert ok.exit_code == 0, ok.output
    assert "train          agreement(label, skin_dark) = 0.9500" in ok.stdout
    assert (tmp_path / "reports" / "validation" / "index.html").read_text().count("FAIL") == 0

    bad = load_dataset(tmp_path / "data" / "synthfaces")
    label_outside_set(bad)
    save_dataset(tmp_path / "data" / "synthfaces", bad)
    res = runner.invoke(app, ["validate"])
    assert res.exit_code == 1
    assert ("FAILED label_set: a label is outside 0..n_classes-1 (expect_column_values_to_be_in_set, column label)"
            in res.output)
    import json

    metrics = json.loads((tmp_path / "metrics" / "validation.json").read_text())
    assert metrics["success"] is False and "label_set" in metrics["failed"]

    shutil.rmtree(tmp_path / "data")
    missing = runner.invoke(app, ["validate"])
    assert missing.exit_code == 1 and "run `advmix prepare`" in missing.output


def test_cli_prepare_writes_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("data:\n  name: colordigits\n  sizes: {train: 20, val: 10, test_iid: 10, "
                                          "test_balanced: 100, test_flipped: 10, pool: 20}\n")
    res = CliRunner().invoke(app, ["prepare"])
    assert res.exit_code == 0, res.output
    ds = load_dataset(tmp_path / "data" / "colordigits")
    assert len(ds) == 170 and np.all(ds.manifest.groupby("split").size() > 0)
    bad = CliRunner().invoke(app, ["prepare", "-S", "data.sizes.train=9000"])
    assert bad.exit_code == 1 and "too few" in bad.output
