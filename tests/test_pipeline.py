"""`dvc repro` of the real dvc.yaml in a temporary git repo, and the CLI's import discipline."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_SIZES, TINY_UPSTREAM, UPSTREAM
from test_validate import zero_image

from advmix.data import load_dataset, save_dataset
from advmix.params import parse_params

ROOT = Path(__file__).parents[1]
SIZES = {"train": 60, "val": 12, "test_iid": 12, "test_balanced": 24, "test_flipped": 12, "pool": 60}


def make_project(tmp: Path, params: dict) -> dict:
    """A git repo holding the code, dvc.yaml and `params`; returns the env to run dvc in it."""
    shutil.copytree(ROOT / "advmix", tmp / "advmix", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", tmp / "dvc.yaml")
    # the full resolved params: dvc.yaml templates read keys such as data.name from the file
    (tmp / "params.yaml").write_text(yaml.safe_dump(parse_params(params).to_dict(), sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false"}
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"],
                ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp, env=env, check=True)
    return env


def dvc(tmp: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=tmp, env=env, capture_output=True, text=True, check=False)


def repro_in_process(root: Path, stages: tuple[str, ...] | None = UPSTREAM) -> None:
    """Run `stages` (default conftest.UPSTREAM, the stages before training; None: every stage) in the test process
    and record them with `dvc commit` (advmix.project.repro_in_process, what `advmix demo` runs), so a later
    `dvc repro` or `dvc status` finds them up to date. The tests that use this are about other things."""
    from advmix.project import repro_in_process as run

    ran = run(root, None if stages is None else list(stages), echo=lambda line: None)
    assert stages is None or set(ran) == set(stages), ran


@pytest.mark.slow
def test_repro_then_noop_then_validation_gate(tmp_path):
    env = make_project(tmp_path, {"data": {"sizes": SIZES}})
    spec = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    spec["stages"]["downstream"] = {"cmd": "python -c \"open('downstream.txt', 'w').write('ran')\"",
                                    "deps": ["metrics/validation.json"], "outs": ["downstream.txt"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))

    # the data stages only: later stages train networks, which other tests cover at a tiny size
    first = dvc(tmp_path, env, "repro", "downstream")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (tmp_path / "downstream.txt").exists()
    second = dvc(tmp_path, env, "repro", "downstream")
    assert second.returncode == 0 and "Running stage" not in second.stdout, second.stdout

    # Corrupt the prepared data (with prepare frozen so DVC does not rebuild it): validation fails, names the
    # expectation, and the downstream stage does not run. One corruption goes through DVC here (each validate
    # process costs ~10 s of imports); test_validate checks that every corruption fails its own expectation.
    spec["stages"]["prepare"]["frozen"] = True  # `dvc freeze` cannot rewrite a templated stage
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    folder = tmp_path / "data" / "synthfaces"
    bad = load_dataset(folder)
    zero_image(bad)
    save_dataset(folder, bad)
    (tmp_path / "downstream.txt").unlink()
    res = dvc(tmp_path, env, "repro", "downstream")
    assert res.returncode != 0 and "FAILED image_contrast" in res.stdout + res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "downstream.txt").exists()


def test_cli_help_imports_no_heavy_library():
    code = ("import sys; from typer.testing import CliRunner; from advmix.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'torchvision', 'great_expectations', 'prefect', 'dvc', 'pandas', 'sklearn')"
            " if m in sys.modules]; print(heavy); assert not heavy; "
            "assert all(s in r.output for s in ('prepare', 'validate', 'params'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def load_bench(name: str):
    """bench/<name>.py as a module (bench/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # a dataclass looks its module up there
    spec.loader.exec_module(bench)
    return bench


def test_repro_times_reads_each_stage_off_dvc_output():
    """bench/repro_times.py: a stage lasts from the line where DVC starts it to the next start, or to the end."""
    bench = load_bench("repro_times")
    out = [(0.0, "Running stage 'prepare':\n"), (1.0, "> advmix prepare\n"), (30.0, "Updating lock file 'dvc.lock'\n"),
           (31.0, "Stage 'probe' is cached - skipping run, checking out outputs\n"),
           (33.5, "Stage 'validate' didn't change, skipping\n"), (34.0, "Running stage 'train@nominal-0':\n"),
           (35.0, "train: 1/8 epochs\n")]
    times = bench.stage_times(out, end=100.0)
    assert [(t.stage, t.how, t.seconds) for t in times] == [
        ("prepare", "ran", 31.0), ("probe", "cached", 2.5), ("validate", "unchanged", 0.5),
        ("train@nominal-0", "ran", 66.0)]
    assert bench.stage_times([(0.0, "nothing ran\n")], end=5.0) == []
    assert "| total | | 100 | |" in bench.table(times)


def test_same_outputs_compares_locks_by_md5_and_metrics_by_key():
    """bench/same_outputs.py: an output's md5 (metrics/ and reports/ aside: they carry timings), then metric keys
    with timings, thread counts and NaN on both sides left out."""
    bench = load_bench("same_outputs")

    def lock(model_md5: str, extra: dict | None = None) -> dict:
        return {"stages": {"train@nominal-0": {"outs": [{"path": "models/c.pt", "md5": model_md5},
                                                        {"path": "metrics/train/n.json", "md5": model_md5}]},
                           **(extra or {})}}

    assert bench.lock_differences(lock("a"), lock("a")) == {}
    assert bench.lock_differences(lock("a"), lock("b")) == {"train@nominal-0": ["models/c.pt"]}
    assert bench.lock_differences(lock("a"), lock("a", {"report": {"outs": []}})) == {"report": ["<only in one>"]}
    before = {"run": {"acc": 0.9, "seconds": 10.0, "torch_threads": 2, "ece": float("nan"), "pgd": [0.5, 0.4]}}
    after = {"run": {"acc": 0.9, "seconds": 12.0, "torch_threads": 1, "ece": float("nan"), "pgd": [0.5, 0.3],
                     "new": 1}}
    assert bench.metric_differences(before, before) == {}
    assert bench.metric_differences(before, after) == {"run.new": ("<absent>", 1), "run.pgd.1": (0.4, 0.3)}


@pytest.mark.slow
def test_colordigits_completes_every_stage_with_the_default_modes_and_dfr_bases(tmp_path):
    """The second embedded dataset (ten classes, a hundred groups) at tiny sizes: every default mode trains and is
    evaluated, DFR refits its default bases, and the report gives a worst-group figure that carries information."""
    params = {**TINY_UPSTREAM, "data": {**TINY_UPSTREAM["data"], "name": "colordigits",
                                        "sizes": {**TINY_SIZES, "train": 100, "val": 40, "test_balanced": 100}},
              "train": {"seeds": [0], "epochs": 1, "batch": 8, "width": 8, "jtt": {"epochs_first": 1}},
              "dfr": {"subsets": 2},
              "evaluate": {"robust_images": 8, "partners_k": 2, "steps": 1, "linf_steps": 1, "worst_mixes": 4}}
    env = make_project(tmp_path, params)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "start"]):  # dvclive in `advmix train` needs a commit
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True)
    p = parse_params(params)
    repro_in_process(tmp_path, None)
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    planned = [*p.train.modes, *(f"dfr_{b}" for b in p.dfr.bases)]
    assert sorted(summary["modes"]) == sorted(planned) and not summary["missing_runs"]
    assert summary["worst_figure"]["key"] == "worst_class_acc"  # 100 groups of about one test image each
    assert any(summary["modes"][m]["test_balanced"]["worst_class_acc"] > 0 for m in planned)
    assert "worst-class accuracy" in (tmp_path / "reports" / "summary.md").read_text()


@pytest.mark.slow
def test_pool_partners_leave_the_labelled_codes_and_feed_the_analysis_and_training(tmp_path):
    """`mixing.bank: pool`: invert-pool inverts as many pool images as train has, with each one's class as the probe
    reads it, and leaves the labelled splits' codes alone; analyze-layers and the mixing modes draw their same-label
    partners from them, and the pipeline completes."""
    tiny_eval = {"robust_images": 8, "val_robust_images": 8, "partners_k": 2, "steps": 1, "linf_steps": 1,
                 "worst_mixes": 4}
    params = {**TINY_UPSTREAM, "probe": {"epochs": 30, "width": 8},  # a probe that reads both classes in the pool
              "train": {"modes": ["nominal", "randmix", "advmix"], "seeds": [0], "epochs": 1, "batch": 8, "width": 8},
              "dfr": {"bases": []}, "evaluate": tiny_eval}
    env = make_project(tmp_path, params)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "start"]):  # dvclive in `advmix train` needs a commit
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True)
    repro_in_process(tmp_path, ("check-params", "prepare", "validate", "pool", "probe", "train-gan", "train-encoder",
                                "extract", "invert-pool"))
    latents, partners = tmp_path / "data" / "latents", tmp_path / "data" / "pool_latents"
    own = {split: np.load(latents / f"{split}.npy") for split in ("train", "test_balanced")}
    assert not (latents / "pool.npy").exists() and not (partners / "pool.npy").exists()  # mixing.bank: train

    tree = yaml.safe_load((tmp_path / "params.yaml").read_text())
    tree["mixing"].update(bank="pool", partners="same_label")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    repro_in_process(tmp_path, None)
    for split, codes in own.items():
        assert np.array_equal(np.load(latents / f"{split}.npy"), codes), split
    pool = np.load(partners / "pool.npy")
    classes = json.loads((partners / "info.json").read_text())["pool_classes"]
    assert len(pool) == len(own["train"]) == len(classes) and set(classes) <= {0, 1}
    assert json.loads((tmp_path / "metrics" / "layers.json").read_text())["partner_bank"] == "pool"
    trained = json.loads((tmp_path / "metrics" / "layers_as_trained.json").read_text())  # pool partners' images
    assert trained["residual"] is True and trained["other_residual"]["residual"] is False
    assert 0 <= trained["label_change"] <= 1 and trained["partners"] == "same_label"
    assert "advmix" in json.loads((tmp_path / "metrics" / "summary.json").read_text())["modes"]
    val_figure = json.loads((tmp_path / "metrics" / "eval" / "advmix-s0.json").read_text())
    assert 0 <= next(iter(val_figure.values()))["val_semantic_robust_acc"] <= 1  # partners from the pool, as trained
