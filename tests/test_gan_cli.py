"""probe -> train-gan -> analyze-layers through the CLI on a tiny dataset, and loading a pretrained generator."""

import json

import pytest
import torch
from conftest import save_validated, tiny_params
from typer.testing import CliRunner

from advmix.cli import app

TINY_GAN = ["-S", "gan.style_dim=32", "-S", "gan.n_mlp=2", "-S", "gan.channel_base=256", "-S", "gan.channel_max=32",
            "-S", "gan.batch=8", "-S", "gan.iterations=4", "-S", "gan.eval_samples=32", "-S", "data.resolution=16",
            "-S", "mixing.analysis_pairs=16", "-S", "probe.epochs=1", "-S", "probe.width=8"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    save_validated(tmp_path, tiny_params(resolution=16))
    return tmp_path


def run(*args):
    res = CliRunner().invoke(app, [*args, *TINY_GAN])
    assert res.exit_code == 0, res.output
    return res


@pytest.mark.slow
def test_probe_train_gan_analyze_layers(project):
    run("probe")
    assert "probe_label_acc" in json.loads((project / "metrics" / "probe.json").read_text())
    run("train-gan")
    for f in ("models/gan/generator.pt", ".advmix/gan/state.pt", "reports/gan/samples.png", "reports/gan/mixing.png"):
        assert (project / f).is_file(), f
    gan = json.loads((project / "metrics" / "gan.json").read_text())
    assert gan["gan_iterations"] == 4 and gan["probe_frechet_distance"] > 0
    assert gan["gan_images"] == 40  # the unlabelled pool
    assert set(gan["attributes"]) >= {"label", "skin_dark", "hair"}
    assert abs(sum(gan["attributes"]["hair"]["generated"]) - 1) < 1e-3

    encoder = ["-S", "extract.encoder_steps=4", "-S", "extract.encoder_real_steps=2", "-S", "extract.batch=4",
               "-S", "extract.width=4"]
    assert "pool images" in run("train-encoder", *encoder).output
    assert json.loads((project / "metrics" / "encoder.json").read_text())["images"] == 40
    run("extract", "-S", "extract.refine_steps=2")
    res = run("analyze-layers")
    assert "auto layers" in res.output
    layers = json.loads((project / "metrics" / "layers.json").read_text())
    assert set(layers) >= {"layers", "auto", "perturbation"}
    pert = layers["perturbation"]
    assert pert["spurious"] == "skin_dark" and pert["partners"] == "any" and pert["layers"] == layers["auto"]
    assert set(pert["real"]) >= {"label_change", "spurious_transfer", "any_partner"} and pert["real"]["n"] == 8  # the held-out half
    assert (project / "reports" / "layers.png").stat().st_size > 1000

    # the same generator as gan.pretrained: nothing is trained, the outputs are rewritten
    (project / "models" / "gan" / "generator.pt").rename(project / "g.pt")
    run("train-gan", "-S", f"gan.pretrained={project / 'g.pt'}")
    assert json.loads((project / "metrics" / "gan.json").read_text())["gan_iterations"] == 0
    from advmix.gan.checkpoints import load_generator

    mine, theirs = load_generator(project / "models" / "gan" / "generator.pt")[0], load_generator(project / "g.pt")[0]
    assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(), strict=True))


def test_pretrained_errors_are_clear(project):
    (project / "bad.pt").write_bytes(b"not a checkpoint")
    res = CliRunner().invoke(app, ["train-gan", *TINY_GAN, "-S", f"gan.pretrained={project / 'bad.pt'}"])
    assert res.exit_code == 1 and "bad.pt" in res.output


def test_the_generator_learns_from_the_pool_alone(project):
    """The pool (24 images here) is the generator's data, whatever the labelled sizes."""
    save_validated(project, tiny_params(resolution=16, sizes={
        "train": 40, "val": 8, "test_iid": 8, "test_balanced": 16, "test_flipped": 8, "pool": 24}))
    run("probe")
    run("train-gan", "-S", "gan.iterations=1")
    assert json.loads((project / "metrics" / "gan.json").read_text())["gan_images"] == 24


def test_no_pool_is_a_clear_error(project):
    save_validated(project, tiny_params(resolution=16, sizes={
        "train": 40, "val": 8, "test_iid": 8, "test_balanced": 16, "test_flipped": 8, "pool": 0}))
    res = CliRunner().invoke(app, ["pool", *TINY_GAN])
    assert res.exit_code == 1 and "data.sizes.pool: 0" in res.output
    assert "Traceback" not in res.output
    import shutil

    shutil.rmtree(project / "data" / "pool")  # the fixture's pool (a failed `advmix pool` leaves it as it was)
    res = CliRunner().invoke(app, ["train-gan", *TINY_GAN])
    assert res.exit_code == 1 and "data/pool: missing; run `advmix pool`" in res.output
