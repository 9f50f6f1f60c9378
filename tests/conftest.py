"""Shared fixtures. Analytics are off and Prefect gets a temporary home for the whole session."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="advmix-prefect-")
# a private registry of running advmix processes (advmix.runtime): the stages the tests start count this worker,
# and no advmix run elsewhere on the machine counts the tests
os.environ["ADVMIX_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="advmix-runtime-")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs in pytest-xdist workers (pyproject's addopts). Each takes its share of the cores through the
    # rule every stage uses; with torch's default threads two workers would spin against each other (10-20x
    # slower). The stages a test starts inherit PYTEST_XDIST_WORKER_COUNT and take the same share.
    from advmix.runtime import set_threads

    set_threads()

import pytest

from advmix.params import Params, parse_params

UPSTREAM = ("check-params", "prepare", "validate", "pool", "probe", "train-gan", "train-encoder", "extract",
            "invert-pool", "analyze-layers")  # before training
TINY_SIZES = {"train": 40, "val": 8, "test_iid": 8, "test_balanced": 16, "test_flipped": 8, "pool": 40}
TINY_UPSTREAM = {  # prepare .. analyze-layers at their smallest, for tests of what comes after them
    "data": {"resolution": 16, "sizes": TINY_SIZES},
    "probe": {"epochs": 1, "width": 8},
    "gan": {"style_dim": 32, "n_mlp": 2, "channel_base": 256, "channel_max": 32, "batch": 8, "iterations": 4,
            "eval_samples": 32},
    "mixing": {"analysis_pairs": 16},
    "extract": {"encoder_steps": 4, "encoder_real_steps": 2, "batch": 4, "width": 4, "refine_steps": 2},
}


def tiny_params(**data) -> Params:
    """Default params with tiny splits; keyword arguments override `data.*`."""
    return parse_params({"data": {"sizes": TINY_SIZES, **data}})


def save_validated(root, p: Params):
    """Build `p`'s dataset into the project folder `root` (the cwd), write `p` as its params.yaml and pass the
    validate stage over it, as every later stage requires, then write its pool (data/pool/) when it has one; returns
    the dataset."""
    import yaml

    from advmix.data import save_dataset
    from advmix.data.build import build_dataset
    from advmix.stages import pool, validate

    ds = build_dataset(p)
    save_dataset(root / "data" / p.data.name, ds)
    (root / "params.yaml").write_text(yaml.safe_dump(p.to_dict(), sort_keys=False))
    assert validate.run(p).report.success
    if p.data.sizes.pool:
        pool.run(p)
    return ds


@pytest.fixture
def tiny() -> Params:
    return tiny_params()


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: small tensors gain nothing from more, and CI has 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Seconds each long file took on 2 cores (`pytest --durations=0`, summed per file; re-measured 2026-12-05 after the
# flow tests shared one Prefect server and the two torchrun tests one launch). Only the order they give matters:
# pytest-xdist hands whole files to its two workers in the order below (pyproject's --no-loadscope-reorder; by default
# it would order files by their number of tests, which put the longest file, one test of 200 s, last), and the longest
# first balances the workers.
FILE_SECONDS = {"test_flows.py": 93, "test_dvc_runs.py": 90, "test_profiles.py": 68, "test_train.py": 46,
                "test_faults.py": 40, "test_dvc_wiring.py": 34, "test_pipeline.py": 28, "test_data.py": 23,
                "test_ddp.py": 21}


def pytest_collection_modifyitems(items):
    """The longest files first (FILE_SECONDS), then the other files with an end-to-end (`slow`) test, then the rest;
    each file's tests kept together and in order."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (-FILE_SECONDS.get(item.path.name, 0), item.path not in slow_files))


def attack_config(**fields):
    """An AttackConfig with the default params' values (the attacks keep no defaults of their own), `fields` set."""
    from dataclasses import replace

    from advmix.attacks import AttackConfig

    return replace(AttackConfig.from_params(parse_params({}).train, "any", ()), **fields)
