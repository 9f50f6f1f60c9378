"""Real `dvc repro` / `dvc exp run` of the classifier stage on a tiny project: a kill inside the stage, then the
run-cache restoring earlier params without training, evaluating or refitting. The project's first run happens in
the test process (a stage process costs ~10 s of imports here) and `dvc commit` records it."""

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_UPSTREAM, UPSTREAM
from test_pipeline import dvc, make_project, repro_in_process

from advmix import paths

TINY = {**TINY_UPSTREAM,  # every stage at its smallest: the test is about DVC, not about the networks
        "train": {"modes": ["nominal"], "seeds": [0], "epochs": 3, "batch": 8, "width": 8},
        "dfr": {"bases": ["nominal"]},
        "evaluate": {"robust_images": 8, "val_robust_images": 8, "partners_k": 2, "steps": 1, "linf_steps": 1}}
STAGE = "train@nominal-0"
DOWNSTREAM = ("evaluate@nominal-0", "dfr@nominal-0")  # both read the classifier
RUN_ONLY = ("seconds", "images_per_s", "resumed_from_epoch", "torch_threads")  # what may differ between runs


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def train_metrics(root: Path) -> dict:
    (run,) = json.loads((root / paths.train_metrics("nominal", 0)).read_text()).values()
    return run


def set_lr(root: Path, lr: float) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"] = lr
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny project reproduced up to one nominal classifier and committed (the base of `dvc exp run`)."""
    root = tmp_path_factory.mktemp("runs")
    env = make_project(root, TINY)
    env["ADVMIX_THREADS"] = "1"
    (root / ".gitignore").write_text(f"{paths.SCRATCH}/\n")

    def commit(message: str) -> None:
        subprocess.run(["git", "add", "-A"], cwd=root, check=True)
        subprocess.run(["git", "commit", "-qm", message], cwd=root, env=env, check=True)

    commit("code and params")  # dvclive in `advmix train` needs a commit to exist (an empty repo fails)
    # run here and recorded by `dvc commit`, which saves each stage to the run-cache as `dvc repro` does
    repro_in_process(root, (*UPSTREAM, STAGE, *DOWNSTREAM))
    commit("tiny run")
    return root, env


@pytest.mark.slow
def test_a_killed_repro_finishes_on_the_rerun_and_the_run_cache_restores_earlier_params(project):
    root, env = project
    model = root / paths.classifier("nominal", 0)
    first_model, first = md5(model), train_metrics(root)
    lr = yaml.safe_load((root / "params.yaml").read_text())["train"]["lr"]

    # kill -9 the whole `dvc repro` once the stage has saved its first epoch, then rerun: no stale lock, and the
    # stage resumes from its scratch state (outside every DVC output) to the weights of an uninterrupted run
    set_lr(root, lr / 2)
    state = root / paths.train_state("nominal", 0)
    proc = subprocess.Popen(["dvc", "repro", STAGE], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and state.exists(), "the stage ended (or never started) before it saved a state"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = dvc(root, env, "repro", STAGE)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    resumed = train_metrics(root)
    assert resumed["resumed_from_epoch"] >= 1
    clean = dvc(root, env, "repro", "--force", "--no-run-cache", "--single-item", STAGE)
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-3000:]
    uninterrupted = train_metrics(root)
    assert uninterrupted["resumed_from_epoch"] == 0
    assert {k: v for k, v in resumed.items() if k not in RUN_ONLY} == {
        k: v for k, v in uninterrupted.items() if k not in RUN_ONLY}
    assert uninterrupted["val_acc"] != first["val_acc"] or md5(model) != first_model  # lr / 2 trained anew
    evaluation = root / paths.eval_metrics("nominal", 0)
    first_eval = evaluation.read_bytes()
    downstream = dvc(root, env, "repro", *DOWNSTREAM)
    assert downstream.returncode == 0, downstream.stdout[-3000:] + downstream.stderr[-3000:]

    # back to the committed params through `dvc exp run`: DVC restores the first classifier, its evaluation and
    # its DFR refit from the run-cache; nothing trains, evaluates or refits
    back = dvc(root, env, "exp", "run", "-S", f"train.lr={lr}", STAGE, *DOWNSTREAM)
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-3000:]
    for stage in (STAGE, *DOWNSTREAM):
        assert f"Stage '{stage}' is cached - skipping run" in back.stdout, back.stdout
    assert [line for line in back.stdout.splitlines() if line.startswith("> advmix")] == ["> advmix check-params"]
    assert md5(model) == first_model and train_metrics(root) == first and evaluation.read_bytes() == first_eval


@pytest.mark.slow
def test_repro_completes_for_seeds_without_the_upstream_seed_and_modes_without_advmix(project):
    """`seed` 0 drives the upstream stages, train.seeds is [1] and train.modes has no AdvMix: `dvc repro` trains,
    evaluates and refits seed 1, finds the worst mixes against nominal-s1, and the report reads only the
    evaluations (no classifier of `seed`, no AdvMix model)."""
    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["seed"] == 0 and "advmix" not in params["train"]["modes"]
    params["train"]["seeds"] = [1]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    res = dvc(root, env, "repro")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for stage in ("train@nominal-1", "evaluate@nominal-1", "dfr@nominal-1", "worst-mixes", "report"):
        assert f"Running stage '{stage}'" in res.stdout, (stage, res.stdout[-3000:])
    assert not any(f"Running stage '{s}'" in res.stdout for s in UPSTREAM if s != "check-params")  # it reads all
    summary = json.loads((root / paths.SUMMARY_METRICS).read_text())
    assert list(summary["modes"]) == ["nominal", "dfr_nominal"] and summary["modes"]["nominal"]["seeds"] == [1]
    assert "advmix_vs_nominal" not in summary["comparisons"]
    assert "AdvMix against nominal: not measured" in (root / paths.SUMMARY_MD).read_text()
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert "models/classifier-nominal-s1.pt" in {d["path"] for d in lock["worst-mixes"]["deps"]}
    assert not any(d["path"].startswith("models/") for d in lock["report"]["deps"])


def outputs(root: Path) -> dict[str, str]:
    """md5 of every file the stages wrote (the scratch states aside)."""
    return {f.relative_to(root).as_posix(): md5(f) for folder in ("data", "models", "metrics", "results", "reports")
            for f in (root / folder).rglob("*") if f.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("key,value,says", [
    ("data.rho", 1.5, "data.rho: input should be less than or equal to 1"),
    ("seed", -1, "seed: input should be greater than or equal to 0"),
    ("train.seeds", [], "train.seeds"),
    ("train.modes", ["nominal", "advmixx"], "train.modes.1: input should be"),  # DVC alone: "train.advmixx missing"
    ("train.epochs", 0, "train.epochs: input should be greater than or equal to 1"),  # a key only late stages read
])
def test_a_bad_params_edit_stops_repro_before_dvc_removes_any_output(project, key, value, says):
    """check-params runs first (every stage is downstream of it), so no stage's outputs are deleted; with the edit
    undone, DVC sees the project as it was."""
    root, env = project
    path = root / "params.yaml"
    good = path.read_text()
    tree = yaml.safe_load(good)
    section, _, leaf = key.rpartition(".")
    (tree[section] if section else tree)[leaf] = value
    before, status = outputs(root), dvc(root, env, "status").stdout
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    try:
        res = dvc(root, env, "repro")
    finally:
        path.write_text(good)
    assert res.returncode != 0 and says in res.stdout + res.stderr, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    assert outputs(root) == before
    assert dvc(root, env, "status").stdout == status


@pytest.mark.slow
def test_another_spurious_attribute_or_rho_keeps_the_pool_probe_generator_and_encoder(tmp_path):
    """One generator for many tasks: a variant of the labelled splits reruns prepare, validate, pool (which writes
    the same bytes), extract and what follows, but DVC skips the probe, the generator, the encoder and the pool
    partners' inversion."""
    env = make_project(tmp_path, TINY_UPSTREAM)
    repro_in_process(tmp_path)
    shared = {"pool", "probe", "train-gan", "train-encoder", "invert-pool"}
    kept = {path: md5(tmp_path / path) for path in ("data/pool/images.npy", "data/pool/manifest.csv",
                                                    "models/probe.pt", "models/gan/generator.pt", "models/encoder.pt")}
    original = (tmp_path / "params.yaml").read_text()

    def variant(**data) -> None:
        params = yaml.safe_load(original)
        params["data"].update(data)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    for change in ({"spurious": "glasses"}, {"rho": 0.9}):
        variant(**change)
        res = dvc(tmp_path, env, "status", "--json")
        changed = set(json.loads(res.stdout))
        assert "prepare" in changed and not changed & shared, (change, changed)

    variant(spurious="glasses", rho=0.9)  # both at once, run for real up to the inversion of the labelled splits
    res = dvc(tmp_path, env, "repro", "extract")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ran = set(re.findall(r"Running stage '([^']+)'", res.stdout))
    assert ran == {"check-params", "prepare", "validate", "pool", "extract"}, res.stdout[-3000:]
    assert {path: md5(tmp_path / path) for path in kept} == kept  # the pool rewritten to the same bytes
