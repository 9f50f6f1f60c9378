"""Fault injection: a user's mistake or a broken file gets a non-zero exit, one clear line that names the file or key,
and leaves every earlier output as it was.

One tiny project is built through the real stages once (module scope); each case works on a copy of it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_UPSTREAM
from test_validate import group_disagrees, label_outside_set, rows_shuffled_against_images
from typer.testing import CliRunner

from advmix.cli import app
from advmix.data import load_dataset, save_dataset

PARAMS = {
    **TINY_UPSTREAM,
    "train": {"modes": ["nominal", "advmix"], "seeds": [0], "epochs": 1, "batch": 8, "width": 8, "device": "cpu",
              "advmix": {"partners_k": 2, "steps": 1}},
    "evaluate": {"robust_images": 8, "val_robust_images": 8, "partners_k": 2, "steps": 1, "linf_steps": 1,
                 "worst_mixes": 4},
    "dfr": {"bases": []},  # the DFR refits are tests/test_train.py's
}
STAGES = [["prepare"], ["validate"], ["pool"], ["probe"], ["train-gan"], ["train-encoder"], ["extract"], ["invert-pool"],
          ["analyze-layers"],
          ["train", "--mode", "nominal"], ["train", "--mode", "advmix"], ["evaluate", "--mode", "nominal"],
          ["evaluate", "--mode", "advmix"], ["worst-mixes"], ["report"]]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    here, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(root)
    torch.set_num_threads(1)
    try:
        for stage in STAGES:
            res = invoke(*stage)
            assert res.exit_code == 0, (stage, res.output)
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    return root


@pytest.fixture
def project(built, tmp_path, monkeypatch):
    root = tmp_path / "p"
    shutil.copytree(built, root)
    monkeypatch.chdir(root)
    torch.set_num_threads(1)
    return root


def outputs(root: Path) -> dict[Path, bytes]:
    """Every file the stages wrote (the scratch states aside)."""
    return {f.relative_to(root): f.read_bytes() for folder in ("models", "metrics", "results", "reports", "data")
            for f in (root / folder).rglob("*") if f.is_file()}


def fails(root: Path, args: list[str], code: int, *needles: str) -> str:
    """Run the command; assert its exit code, that its error is one line holding every needle, that nothing the
    stages wrote changed, and that no traceback was printed."""
    before = outputs(root)
    res = invoke(*args)
    assert res.exit_code == code, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    message = res.output[res.output.index("error:"):]  # one line; a params error lists each bad key below it
    for needle in needles:
        assert needle in message, (needle, res.output)
    assert "Traceback" not in res.output
    assert outputs(root) == before
    if os.environ.get("ADVMIX_FAULT_TABLE"):  # `ADVMIX_FAULT_TABLE=faults.md pytest tests/test_faults.py`: the table
        with open(os.environ["ADVMIX_FAULT_TABLE"], "a") as table:
            case = os.environ["PYTEST_CURRENT_TEST"].split("::")[-1].removesuffix(" (call)")
            table.write(f"| {case} | `advmix {' '.join(args)}` | {code} | {errors[0].replace('|', '/')} |\n")
    return errors[0]


def as_user(root: Path, args: list[str], code: int, *needles: str) -> str:
    """`fails`, for `advmix <args>` run in a process of its own without root's right to write anywhere: as root,
    inside a user namespace (`unshare --user`), where a folder's mode binds root too."""
    before = outputs(root)
    prefix = ["unshare", "--user"] if os.geteuid() == 0 else []
    cli = [sys.executable, "-c", "from advmix.cli import app; app()"]
    res = subprocess.run([*prefix, *cli, *args], cwd=root, capture_output=True, text=True, check=False)
    assert res.returncode == code, res.stdout + res.stderr
    errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr and "epoch" not in res.stderr  # refused before any work
    assert outputs(root) == before
    return errors[0]


def break_latents(root: Path, split: str) -> None:
    path = root / "data" / "latents" / f"{split}.npy"
    codes = np.load(path)
    codes[1, 0, 3] = np.nan
    np.save(path, codes)


@pytest.mark.slow
def test_nan_in_the_train_codes_stops_training(project):
    break_latents(project, "train")
    before = outputs(project)
    res = invoke("train", "--mode", "advmix")
    assert res.exit_code == 1 and "train.npy: 1 row(s) hold NaN or Inf (the first: row 1)" in res.output
    assert outputs(project) == before


@pytest.mark.slow
@pytest.mark.parametrize("stage,split", [(["train", "--mode", "advmix"], "train"),
                                         (["evaluate", "--mode", "advmix"], "test_balanced")])
def test_permuted_or_stale_codes_are_refused(project, stage, split):
    path = project / "data" / "latents" / f"{split}.npy"
    good = path.read_bytes()
    np.save(path, np.load(path)[::-1].copy())  # the rows of another order: same shape, same ids file
    fails(project, stage, 1, f"{split}.npy", "codes are not the ones", "advmix extract")
    path.write_bytes(good)
    info = project / "data" / "latents" / "info.json"
    kept = info.read_text()
    info.write_text(kept.replace('"generator_sha1": "', '"generator_sha1": "0'))  # made by another generator
    fails(project, stage, 1, f"{split}.npy", "another generator", "advmix extract")
    info.write_text(kept)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [["extract"], ["analyze-layers"], ["train", "--mode", "advmix"],
                                   ["evaluate", "--mode", "advmix"]])
def test_a_generator_with_nan_weights_is_refused_by_every_reader(project, stage):
    path = project / "models" / "gan" / "generator.pt"
    payload = torch.load(path, weights_only=True)
    name = next(k for k, v in payload["g_ema"].items() if v.is_floating_point() and v.numel() > 1)
    payload["g_ema"][name].view(-1)[0] = float("nan")
    torch.save(payload, path)
    fails(project, stage, 1, "generator.pt", "NaN or Inf", name)


@pytest.mark.slow
def test_a_nan_classifier_is_refused(project):
    path = project / "models" / "classifier-advmix-s0.pt"
    payload = torch.load(path, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name].view(-1)[0] = float("inf")
    torch.save(payload, path)
    fails(project, ["evaluate", "--mode", "advmix"], 1, "classifier-advmix-s0.pt", "NaN or Inf", name)


@pytest.mark.slow
def test_nan_in_the_test_codes_stops_evaluation(project):
    break_latents(project, "test_balanced")
    fails(project, ["evaluate", "--mode", "advmix"], 1, "test_balanced.npy", "NaN or Inf", "advmix extract")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "foreign", "hostile"])
def test_a_broken_classifier_is_named(project, damage):
    path = project / "models" / "classifier-advmix-s0.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    else:  # a pickle that would run a shell command when unpickled
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned > pwned.txt",))

        torch.save(Evil(), path)
    line = fails(project, ["evaluate", "--mode", "advmix"], 1, "classifier-advmix-s0.pt", "advmix train")
    if damage == "hostile":
        assert "GLOBAL" in line and "holds code, which advmix never runs" in line
        assert not (project / "pwned.txt").exists()
    for advice in ("weights_only", "safe_globals", "allowlist"):  # never advise turning the safety off
        assert advice not in line, line
    assert invoke("report").exit_code == 0  # the report reads what the evaluations wrote, no classifier


@pytest.mark.slow
def test_a_classifier_is_evaluated_only_as_the_run_it_records(project):
    shutil.copy(project / "models" / "classifier-nominal-s0.pt", project / "models" / "classifier-advmix-s0.pt")
    fails(project, ["evaluate", "--mode", "advmix"], 1, "classifier-advmix-s0.pt", "mode nominal seed 0",
          "not advmix seed 0", "advmix train --mode advmix --seed 0")


@pytest.mark.slow
def test_pool_partners_that_were_not_inverted_are_named(project):
    """mixing.bank: pool before invert-pool has run under it (the project ran under mixing.bank: train): every
    reader of the partners names the file and the stage to run."""
    pool = ["-S", "mixing.bank=pool", "-S", "mixing.partners=same_label"]
    fails(project, ["analyze-layers", *pool], 1, "pool_latents", "advmix invert-pool")
    fails(project, ["train", "--mode", "advmix", *pool], 1, "pool_latents", "advmix invert-pool")


@pytest.mark.slow
@pytest.mark.parametrize("content", ["{\n oops", '{"layers": {}}'])
def test_a_broken_layer_analysis_is_named(project, content):
    (project / "metrics" / "layers.json").write_text(content)
    fails(project, ["train", "--mode", "advmix"], 1, "layers.json: not a readable layer analysis",
          "advmix analyze-layers")


@pytest.mark.slow
def test_a_broken_training_state_is_named(project):
    state = project / ".advmix" / "train" / "nominal-s0" / "state.pt"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_bytes(b"\x80\x02garbage")
    fails(project, ["train", "--mode", "nominal"], 1, "state.pt", "training state", "delete it")


@pytest.mark.slow
def test_the_report_refuses_an_incomplete_plan_and_a_nan_metric(project):
    (project / "metrics" / "eval" / "advmix-s0.json").unlink()
    fails(project, ["report"], 1, "advmix-s0", "--allow-missing")
    res = invoke("report", "--allow-missing")
    assert res.exit_code == 0, res.output
    assert json.loads((project / "metrics" / "summary.json").read_text())["missing_runs"] == ["advmix-s0"]
    path = project / "metrics" / "eval" / "nominal-s0.json"
    raw = json.loads(path.read_text())
    next(iter(raw.values()))["splits"]["val"]["ece"] = float("nan")
    path.write_text(json.dumps(raw))
    fails(project, ["report", "--allow-missing"], 1, "nominal-s0.json", "finite number", "ece")


@pytest.mark.slow
def test_a_failed_training_run_keeps_the_previous_outputs(project):
    fails(project, ["train", "--mode", "nominal", "-S", "train.lr=1e30"], 1, "the loss is", "train.lr")


@pytest.mark.slow
def test_training_in_a_git_repository_without_a_commit_says_to_commit(project):
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    fails(project, ["train", "--mode", "nominal"], 1, "no commit yet", "git commit")


@pytest.mark.slow
def test_bad_overrides_name_the_override(project):
    line = fails(project, ["train", "--mode", "nominal", "-S", "train.lrr=0.1"], 2, "train.lrr: unknown key")
    assert line.startswith("error: -S train.lrr")
    fails(project, ["train", "--mode", "nominal", "-S", "train.lr"], 2, "--set 'train.lr'", "KEY=VALUE")


@pytest.mark.slow
def test_kill_during_train_gan_then_rerun_gives_the_uninterrupted_generator(project, monkeypatch):
    """kill -9 mid-training (after a state was written), rerun: the generator equals an uninterrupted run's. Only the
    killed run needs a process of its own; the reference and the rerun run here, on the same single thread."""
    monkeypatch.setenv("ADVMIX_THREADS", "1")
    args = ["train-gan", "-S", "gan.iterations=40", "-S", "gan.checkpoint_minutes=0.001"]
    state = project / ".advmix" / "gan" / "state.pt"
    state.unlink(missing_ok=True)  # the fixture's finished run
    reference = project.parent / "reference"
    shutil.copytree(project, reference)
    monkeypatch.chdir(reference)
    assert invoke(*args).exit_code == 0
    monkeypatch.chdir(project)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "advmix"), *args], cwd=project, env=os.environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before a state was written; raise gan.iterations"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = invoke(*args)
    assert res.exit_code == 0, res.output[-2000:]
    assert json.loads((project / "metrics" / "gan.json").read_text())["gan_resumed_from"] > 0
    mine = torch.load(project / "models" / "gan" / "generator.pt", weights_only=True)["g_ema"]
    theirs = torch.load(reference / "models" / "gan" / "generator.pt", weights_only=True)["g_ema"]
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train-gan", "extract", "analyze-layers"])
def test_a_broken_probe_is_named_before_any_work(project, stage):
    probe = project / "models" / "probe.pt"
    probe.write_bytes(probe.read_bytes()[:64])
    fails(project, [stage], 1, "probe.pt", "advmix probe")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["extract", "analyze-layers", "evaluate"])
def test_a_broken_generator_is_named(project, stage):
    generator = project / "models" / "gan" / "generator.pt"
    generator.write_bytes(generator.read_bytes()[:64])
    fails(project, [stage], 1, "generator.pt", "advmix train-gan")


@pytest.mark.slow
@pytest.mark.parametrize("stage", [["pool"], ["extract"], ["analyze-layers"], ["train", "--mode", "nominal"],
                                   ["evaluate", "--mode", "nominal"], ["worst-mixes"]])
def test_stages_refuse_data_that_has_not_passed_validation(project, stage):
    """The probe, the generator and the encoder read data/pool, which `advmix pool` writes from validated data only."""
    result = project / "metrics" / "validation.json"
    result.unlink()
    fails(project, stage, 1, "validation.json", "no validation result", "advmix validate")
    result.write_text(json.dumps({"success": False, "evaluated": 30, "failed": ["label_set"]}))
    fails(project, stage, 1, "validation.json", "failed validation (label_set)", "advmix validate")


@pytest.mark.slow
def test_data_changed_since_validation_is_refused(project):
    manifest = project / "data" / "synthfaces" / "manifest.csv"
    kept = manifest.read_bytes()
    manifest.write_bytes(kept + b"\n")  # any byte: the validated fingerprint no longer matches
    try:
        fails(project, ["pool"], 1, "validation.json", "stale", "advmix validate")
    finally:
        manifest.write_bytes(kept)


@pytest.mark.slow
def test_a_broken_gan_training_state_is_named(project):
    state = project / ".advmix" / "gan" / "state.pt"
    state.write_bytes(state.read_bytes()[:64])
    fails(project, ["train-gan"], 1, "state.pt", "GAN training state", "delete")


@pytest.mark.slow
@pytest.mark.parametrize("corrupt,expectation", [(label_outside_set, "label_set"),
                                                 (group_disagrees, "group_is_label_x_spurious"),
                                                 (rows_shuffled_against_images, "rows_match_images")])
def test_a_corrupt_manifest_fails_validation_and_then_every_stage_refuses_it(project, corrupt, expectation):
    folder = project / "data" / "synthfaces"
    ds = load_dataset(folder)
    corrupt(ds)  # the manifest only: the images stay as they are
    ds.manifest.to_csv(folder / "manifest.csv", index=False)
    res = invoke("validate")
    assert res.exit_code == 1 and f"FAILED {expectation}" in res.output and "Traceback" not in res.output, res.output
    for stage in (["pool"], ["train", "--mode", "nominal"]):
        fails(project, stage, 1, "validation.json", "failed validation", expectation, "advmix validate")


@pytest.mark.slow
def test_run_refuses_a_params_file_without_a_section_before_dvc_starts(project):
    """advmix fills a missing section with defaults, but DVC reads the declared keys from the file, would fail inside
    the pipeline and delete that stage's earlier outputs (metrics/validation.json) on the way."""
    shutil.copy(Path(__file__).parents[1] / "dvc.yaml", project / "dvc.yaml")
    assert invoke("params", "--write").exit_code == 0
    path = project / "params.yaml"
    tree = yaml.safe_load(path.read_text())
    del tree["probe"]
    path.write_text(yaml.safe_dump(tree))
    fails(project, ["run"], 2, "params.yaml: no probe section", "advmix params --write")
    # ... and before Prefect is imported: Prefect's log handlers keep the stderr of the moment, which in-process
    # callers (CliRunner, notebooks) close afterwards, and every later flow in that process then fails to log
    code = ("import sys; from typer.testing import CliRunner; from advmix.cli import app; "
            "r = CliRunner().invoke(app, ['run']); assert r.exit_code == 2, r.output; print('prefect' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stdout + res.stderr
    assert invoke("params", "--write").exit_code == 0  # the fix the message names
    assert "probe" in yaml.safe_load(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("read_only,args,names", [
    ("models", ["probe"], "models/probe.pt"),
    ("metrics/train", ["train", "--mode", "nominal"], "metrics/train/nominal-s0.json"),
    ("metrics", ["validate"], "metrics/validation.json"),
    ("params.yaml", ["params", "--write"], "params.yaml"),
])
def test_a_read_only_output_is_named_before_any_work(project, read_only, args, names):
    if os.geteuid() == 0 and subprocess.run(["unshare", "--user", "true"], check=False).returncode:
        pytest.skip("root without user namespaces: a folder's mode does not bind root")
    target = project / read_only
    target.chmod(0o555 if target.is_dir() else 0o444)
    try:
        as_user(project, args, 1, f"{read_only}: read-only", names, f"chmod u+w {read_only}")
    finally:
        target.chmod(0o755 if target.is_dir() else 0o644)


@pytest.mark.slow
def test_a_manifest_without_its_label_column_is_named(project):
    manifest = project / "data" / "synthfaces" / "manifest.csv"
    frame = pd.read_csv(manifest)
    frame.drop(columns=["label"]).to_csv(manifest, index=False)
    res = invoke("validate")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "FAILED required_columns: manifest.csv lacks a column" in res.output and "'label'" in res.output


@pytest.mark.slow
def test_the_same_image_in_two_splits_is_said_in_words(project):
    folder = project / "data" / "synthfaces"
    ds = load_dataset(folder)
    val = np.flatnonzero(ds.manifest.split == "val")[:3]
    train = np.flatnonzero(ds.manifest.split == "train")[:3]
    ds.images[val] = ds.images[train]
    ds.manifest.loc[val, "image_sha1"] = ds.manifest.loc[train, "image_sha1"].to_numpy()
    save_dataset(folder, ds)
    res = invoke("validate")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "FAILED no_image_in_two_splits: the same image is in several splits" in res.output


def folder_project(project: Path, edit) -> None:
    """A Waterbirds-layout folder dataset beside the project, `edit`ed, and params that point data.folder at it."""
    from test_folder import SIZES, make_waterbirds

    root = make_waterbirds(project / "birds")
    edit(root)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"] = {**params["data"], "name": "folder", "rho": 0.75, "resolution": 16, "sizes": SIZES,
                      "folder": {"root": str(root)}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def header_only(root: Path) -> None:
    (root / "metadata.csv").write_text((root / "metadata.csv").read_text().splitlines()[0] + "\n")


def listed_twice(root: Path) -> None:
    meta = pd.read_csv(root / "metadata.csv")
    twin = meta.iloc[[0]].assign(y=1 - meta.y.iloc[0])
    pd.concat([meta, twin]).to_csv(root / "metadata.csv", index=False)


def bomb(root: Path) -> None:
    """Every image declares 30000 x 30000 px in its PNG header (PIL checks the size before decoding)."""
    import struct
    import zlib

    for png in root.rglob("*.png"):
        data = bytearray(png.read_bytes())
        header = b"IHDR" + struct.pack(">II", 30000, 30000) + bytes(data[24:29])
        data[12:29] = header
        data[29:33] = struct.pack(">I", zlib.crc32(header))
        png.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("edit,needles", [
    (header_only, ("metadata.csv: no rows, only a header", "one image per row")),
    (listed_twice, ("metadata.csv: '000.bird/img_0000.png' is listed on lines 2 and", "y=0, y=1", "list each image once")),
    (bomb, ("too large to read", "900000000 pixels", "downscale it")),
])
def test_a_broken_folder_dataset_is_named(project, edit, needles):
    folder_project(project, edit)
    fails(project, ["prepare"], 1, *needles)



@pytest.mark.slow
def test_a_negative_seed_is_refused_by_the_schema(project):
    """numpy's generators refuse a negative seed deep inside prepare; the schema says so first."""
    fails(project, ["params", "-S", "seed=-1", "--write"], 2, "seed: input should be greater than or equal to 0")
    fails(project, ["prepare", "-S", "seed=-1"], 2, "seed: input should be greater than or equal to 0")
