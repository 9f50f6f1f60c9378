"""Shipped profiles (profiles/*.yaml) and `advmix params --profile NAME --write`, down to `dvc repro` of the GPU
profile at tiny sizes on the CPU."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_pipeline import dvc, make_project, repro_in_process
from typer.testing import CliRunner

from advmix.cli import app
from advmix.params import load_params, load_profile, parse_params, render_params
from advmix.paths import PROFILES as PROFILES_DIR

ROOT = Path(__file__).parents[1]
PROFILES = sorted(p.stem for p in (ROOT / PROFILES_DIR).glob("*.yaml"))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def project(tmp_path, monkeypatch):
    shutil.copytree(ROOT / PROFILES_DIR, tmp_path / PROFILES_DIR)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_shipped_profiles():
    assert {"cpu", "gpu", "celeba-gpu"} <= set(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_passes_the_schema_and_writes_a_full_params_file(project, name):
    expected = load_profile(name)
    res = invoke("params", "--profile", name, "--write")
    assert res.exit_code == 0, res.output
    written = (project / "params.yaml").read_text()
    assert load_params("params.yaml") == expected
    assert yaml.safe_load(written) == expected.to_dict()  # every section, as DVC's templates need
    assert "# advmix params" in written  # the cpu profile's comments come along


def test_the_profiles_differ_where_they_say():
    cpu, gpu, celeba = load_profile("cpu", root=ROOT), load_profile("gpu", root=ROOT), load_profile("celeba-gpu", root=ROOT)
    assert (gpu.data.resolution, gpu.train.model) == (64, "resnet18") and gpu.gan.iterations > cpu.gan.iterations
    assert gpu.gan.channel_max > cpu.gan.channel_max
    assert gpu.train.advmix == cpu.train.advmix and gpu.mixing == cpu.mixing  # the method's settings are kept
    assert (celeba.data.name, celeba.data.celeba.target, celeba.data.celeba.spurious) == ("celeba", "Smiling", "Male")
    assert celeba.data.resolution in (64, 128) and "pretrained" in (ROOT / PROFILES_DIR / "celeba-gpu.yaml").read_text()


def test_the_committed_params_are_the_cpu_profile(monkeypatch):
    monkeypatch.chdir(ROOT)
    res = invoke("params", "--profile", "cpu")
    assert res.exit_code == 0, res.output
    assert res.output == (ROOT / "params.yaml").read_text()


def test_write_fills_in_missing_sections_and_overrides_apply(project):
    (project / "params.yaml").write_text("data:\n  rho: 0.9\n")
    res = invoke("params", "--write", "-S", "train.epochs=3")
    assert res.exit_code == 0, res.output
    written = yaml.safe_load((project / "params.yaml").read_text())
    assert set(written) == {"seed", "data", "validate", "probe", "gan", "mixing", "extract", "train", "dfr", "evaluate"}
    assert written["data"]["rho"] == 0.9 and written["train"]["epochs"] == 3
    assert written["train"] == {**parse_params({}).to_dict()["train"], "epochs": 3}  # the rest: the schema's


def test_profile_and_override_errors_are_one_clear_line(project):
    before = "data:\n  rho: 0.9\n"
    (project / "params.yaml").write_text(before)
    res = invoke("params", "--profile", "nope", "--write")
    assert res.exit_code == 2 and "profile 'nope'" in res.output and "cpu" in res.output
    res = invoke("params", "--write", "-S", "train.nope=1")
    assert res.exit_code == 2 and "-S train.nope" in res.output and "train.nope: unknown key" in res.output
    (project / "bad.yaml").write_text("data: {rho: 2}\n")
    res = invoke("params", "--profile", "bad.yaml")
    assert res.exit_code == 2 and "data.rho" in res.output and "bad.yaml" in res.output
    assert (project / "params.yaml").read_text() == before  # nothing written on a failure


def test_render_keeps_the_template_layout():
    template = (ROOT / PROFILES_DIR / "cpu.yaml").read_text()
    p = load_profile("cpu", {"train.seeds": [0, 1], "data.celeba.root": "/data/celeba"}, root=ROOT)
    text = render_params(p, template)
    assert "  seeds: [0, 1]" in text and "root: /data/celeba" in text
    assert len(text.splitlines()) == len(template.splitlines())


TINY = {"data.sizes.train": 40, "data.sizes.val": 8, "data.sizes.test_iid": 8, "data.sizes.test_balanced": 16,
        "data.sizes.test_flipped": 8, "data.sizes.pool": 40, "probe.epochs": 1, "gan.iterations": 2, "gan.batch": 4,
        "gan.eval_samples": 16, "mixing.analysis_pairs": 8, "extract.encoder_steps": 2,
        "extract.encoder_real_steps": 1, "extract.batch": 4, "extract.refine_steps": 1, "train.epochs": 1,
        "train.batch": 8, "train.modes": "[nominal,advmix]", "train.seeds": "[0]", "evaluate.robust_images": 8,
        "evaluate.val_robust_images": 8, "evaluate.partners_k": 2, "evaluate.steps": 1, "evaluate.linf_steps": 1,
        "evaluate.worst_mixes": 4, "dfr.bases": "[advmix]",
        # the networks narrowed too (the profile's 64 px and ResNet-18 stay): its 256-channel GAN alone takes minutes
        "gan.style_dim": 32, "gan.channel_base": 2048, "gan.channel_max": 32, "extract.width": 4,
        "probe.width": 8, "train.width": 16}


@pytest.mark.slow
def test_the_gpu_profile_runs_end_to_end_on_cpu_at_tiny_sizes(tmp_path, monkeypatch):
    """`advmix params --profile gpu --write`, then every stage of dvc.yaml as DVC resolves it for that params file,
    recorded by `dvc commit` and up to date for `dvc status`: the profile's 64 px and ResNet-18, with the split
    sizes, iterations, epochs and widths cut. (The stages run in the test process: `dvc repro` itself is tested on
    the default's stages in test_dvc_runs, and a stage process costs ~10 s of imports here.)"""
    env = make_project(tmp_path, {})
    shutil.copytree(ROOT / PROFILES_DIR, tmp_path / PROFILES_DIR)
    monkeypatch.chdir(tmp_path)
    res = invoke("params", "--profile", "gpu", "--write", *[a for k, v in TINY.items() for a in ("-S", f"{k}={v}")])
    assert res.exit_code == 0, res.output
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "gpu profile"]):  # dvclive wants a commit
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True)
    repro_in_process(tmp_path, stages=None)
    status = dvc(tmp_path, env, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout[-3000:] + status.stderr[-3000:]
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert {"nominal", "advmix"} <= set(summary["modes"])
    gan = json.loads((tmp_path / "metrics" / "gan.json").read_text())
    assert gan["gan_iterations"] == 2
    p = load_params(tmp_path / "params.yaml")
    assert (p.data.resolution, p.train.model, p.gan.iterations) == (64, "resnet18", 2)
    assert p.data.sizes.pool == 40 and p.train.epochs == 1


@pytest.mark.slow
def test_advmix_demo_runs_the_quick_profile_to_a_smoke_report(tmp_path):
    """The README's first look, as a user runs it from the checkout: one command, a new project, every stage of
    the quick profile, a report whose first line says its numbers are a smoke run, and `dvc status` up to date."""
    folder = tmp_path / "demo"
    res = subprocess.run([str(Path(sys.executable).parent / "advmix"), "demo", str(folder)], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"report: {folder / 'reports' / 'summary.html'}" in res.stdout
    first = (folder / "reports" / "summary.md").read_text().splitlines()
    assert "smoke run" in "\n".join(first[:3]).lower(), first[:3]
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=folder, capture_output=True, text=True,
                            check=False)
    assert "up to date" in status.stdout, status.stdout[-3000:]
    assert set(load_params(folder / "params.yaml").train.modes) == {"nominal", "randmix", "advmix", "colorjitter"}
    again = subprocess.run([str(Path(sys.executable).parent / "advmix"), "demo", str(folder)], cwd=ROOT,
                           capture_output=True, text=True, check=False)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr and "Traceback" not in again.stderr
