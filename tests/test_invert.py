"""Latent extraction: refinement recovers W+, rows follow the manifest, runs repeat, bad files fail clearly, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import save_validated, tiny_params
from typer.testing import CliRunner

from advmix.data.store import Dataset
from advmix.gan import invert, latents
from advmix.gan.networks import Generator
from advmix.mixing import synthesize
from advmix.params import ExtractParams

torch.set_num_threads(1)

FAST = ExtractParams(encoder_steps=20, encoder_real_steps=5, batch=8, width=8, refine_steps=30, refine_batch=16,
                     feature_weight=0.0)


@pytest.fixture(scope="module")
def tiny_g():
    torch.manual_seed(0)
    G = Generator(16, style_dim=32, n_mlp=2, channel_base=256, channel_max=32).eval().requires_grad_(False)
    return G, G.mean_latent(256, torch.Generator().manual_seed(0))


def generated(G, n, seed=0):
    """W+ codes whose rows differ (style mixing) and their images, as uint8 like a dataset holds them."""
    with torch.no_grad():
        ws = invert.sample_wplus(G, n, torch.Generator().manual_seed(seed))
        x = G.synthesis(ws, noise_mode="const")
    return ws, x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()


def test_refinement_recovers_wplus(tiny_g):
    """From a guess near the truth (what the encoder gives), refinement moves towards the true code and image."""
    G, w_avg = tiny_g
    ws, _ = generated(G, 8)
    with torch.no_grad():
        x = G.synthesis(ws, noise_mode="const")
        std = G.mapping(torch.randn(1024, G.style_dim, generator=torch.Generator().manual_seed(1))).std(0)
    start = ws + 0.5 * std * torch.randn(ws.shape, generator=torch.Generator().manual_seed(2))

    def errors(steps):
        w = invert.refine(G, start, x, steps=steps, lr=0.05, latent_weight=0.01, w_std=std, batch=4)
        pixel = (synthesize(G, w) - x).square().mean().item()
        return ((w - ws) / std).square().mean().item(), pixel

    (lat0, pix0), (lat30, pix30), (lat100, pix100) = errors(0), errors(30), errors(100)
    assert pix100 < pix30 < 0.2 * pix0, (pix0, pix30, pix100)
    assert lat100 < 0.9 * lat0, (lat0, lat30, lat100)
    # from the mean latent the image is still found (W+ is larger than the image can pin down, so the code is not)
    far = w_avg.reshape(1, 1, -1).expand_as(ws).clone()
    w = invert.refine(G, far, x, steps=60, lr=0.05, batch=8)
    assert (synthesize(G, w) - x).square().mean() < 0.2 * (synthesize(G, far) - x).square().mean()


def test_refinement_is_independent_of_batching(tiny_g):
    """Each code follows its own optimisation: the batch size changes nothing but the speed."""
    G, w_avg = tiny_g
    ws, _ = generated(G, 6, seed=3)
    with torch.no_grad():
        x = G.synthesis(ws, noise_mode="const")
    start = w_avg.reshape(1, 1, -1).expand_as(ws).clone()
    a = invert.refine(G, start, x, steps=5, lr=0.05, batch=6)
    b = invert.refine(G, start, x, steps=5, lr=0.05, batch=2)
    assert torch.allclose(a, b, atol=1e-4)


def tiny_dataset(G, n=12):
    """Generated faces in a manifest whose splits interleave, so a split's rows are not a contiguous block."""
    _, images = generated(G, n, seed=5)
    splits = ["train", "val"] * (n // 2)
    manifest = pd.DataFrame({"id": [f"img-{i:03d}" for i in range(n)], "split": splits, "label": [0, 1] * (n // 2),
                             "group": [0] * n})
    return Dataset(images, manifest, {"n_classes": 2, "attributes": {}})


def encoder_then_codes(G, w_avg, probe, splits: dict[str, np.ndarray], p, seed: int):
    """train-encoder then extract, as the two stages run them (the encoder learns from the train images here)."""
    from advmix.images import to_tensor

    torch.manual_seed(seed)
    enc, _ = invert.train_encoder(G, w_avg, to_tensor(splits["train"]), probe, steps=p.encoder_steps,
                                  real_steps=p.encoder_real_steps, batch=p.batch, lr=p.lr,
                                  feature_weight=p.feature_weight, width=p.width, seed=seed)
    return enc, invert.invert_splits(G, enc, probe, splits, p, seed)


def run_extract(G, w_avg, ds, p=FAST, seed=0):
    parts = {name: ds.split(name) for name in ("train", "val")}
    return encoder_then_codes(G, w_avg, None, {k: s.images for k, s in parts.items()}, p, seed)[1], parts


def test_latent_rows_follow_the_manifest(tiny_g, tmp_path):
    G, w_avg = tiny_g
    ds = tiny_dataset(G)
    out, parts = run_extract(G, w_avg, ds)
    latents.save_latents(tmp_path / "latents", out.latents, {k: s.manifest for k, s in parts.items()})
    from advmix.images import to_tensor

    for name, part in parts.items():
        codes = latents.load_latents(tmp_path / "latents" / f"{name}.npy", part.manifest, G.n_latent, G.style_dim)
        rec = synthesize(G, torch.from_numpy(codes))
        real = to_tensor(part.images)
        dist = (rec[:, None] - real[None]).square().flatten(2).mean(2)  # [code i, image j]
        assert (dist.argmin(1) == torch.arange(len(part))).all(), dist
    m = out.metrics
    assert m["train"]["psnr"] > m["train"]["encoder_only"]["psnr"]


def test_same_seed_same_latents(tiny_g):
    G, w_avg = tiny_g
    ds = tiny_dataset(G, 8)
    p = FAST.model_copy(update={"encoder_steps": 6, "encoder_real_steps": 3, "refine_steps": 3, "feature_weight": 0.1})
    from advmix.probes import build_probe

    torch.manual_seed(0)
    probe = build_probe(16, {"label": 2}, width=4).eval()
    runs = [encoder_then_codes(G, w_avg, probe, {"train": ds.images}, p, seed) for seed in (0, 0, 1)]
    a, b, c = (r.latents["train"] for _, r in runs)
    assert np.array_equal(a, b) and a.dtype == np.float32
    assert not np.array_equal(a, c)
    for x, y in zip(runs[0][0].state_dict().values(), runs[1][0].state_dict().values()):
        assert torch.equal(x, y)


def test_mismatched_latents_fail_clearly(tmp_path):
    manifest = pd.DataFrame({"id": ["a", "b", "c"], "split": ["val"] * 3})
    folder = tmp_path / "latents"
    latents.save_latents(folder, {"val": np.zeros((3, 6, 32), np.float32)}, {"val": manifest})
    assert latents.load_latents(folder / "val.npy", manifest, 6, 32).shape == (3, 6, 32)
    with pytest.raises(latents.LatentsError, match=r"val\.npy.*expected shape \(4, 6, 32\).*found \(3, 6, 32\)"):
        latents.load_latents(folder / "val.npy", pd.concat([manifest, manifest.iloc[:1]]), 6, 32)
    with pytest.raises(latents.LatentsError, match=r"expected shape \(3, 8, 32\).*found \(3, 6, 32\)"):
        latents.load_latents(folder / "val.npy", manifest, 8, 32)
    with pytest.raises(latents.LatentsError, match="other ids or another order"):
        latents.load_latents(folder / "val.npy", manifest.iloc[::-1].reset_index(drop=True), 6, 32)
    np.save(folder / "flat.npy", np.zeros((3, 32), np.float32))
    with pytest.raises(latents.LatentsError, match=r"flat\.npy.*found \(3, 32\)"):
        latents.load_latents(folder / "flat.npy", manifest)
    with pytest.raises(latents.LatentsError, match="not found"):
        latents.load_latents(folder / "test_iid.npy", manifest)
    with pytest.raises(latents.LatentsError, match="2 manifest rows"):
        latents.save_latents(folder, {"val": np.zeros((3, 6, 32), np.float32)}, {"val": manifest.iloc[:2]})


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_g):
    from advmix import paths
    from advmix.gan.checkpoints import save_generator
    from advmix.probes import build_probe, heads_of, save_probe

    monkeypatch.chdir(tmp_path)
    ds = save_validated(tmp_path, tiny_params(resolution=16))
    G, w_avg = tiny_g
    save_generator(paths.GENERATOR, G, config=G.init_kwargs, w_avg=w_avg)
    torch.manual_seed(0)
    save_probe(paths.PROBE, build_probe(16, heads_of(ds.info), width=4).eval(), 16, 4)
    return tmp_path, ds


def test_cli_extract_end_to_end(project):
    from advmix.cli import app

    root, ds = project
    res = CliRunner().invoke(app, ["extract", "-S", "data.resolution=16"])
    assert res.exit_code == 1 and "encoder.pt: encoder not found (run `advmix train-encoder`)" in res.output
    res = CliRunner().invoke(app, ["train-encoder", "-S", "data.resolution=16", "-S", "extract.encoder_steps=4",
                                   "-S", "extract.encoder_real_steps=2", "-S", "extract.batch=4",
                                   "-S", "extract.width=4"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["extract", "-S", "data.resolution=16", "-S", "extract.refine_steps=2",
                                   "-S", "extract.refine_batch=32"])
    assert res.exit_code == 0, res.output
    labelled = ds.manifest[ds.manifest.split != "pool"]
    assert not (root / "data" / "latents" / "pool.npy").exists()  # the pool trains the encoder, it is not inverted
    assert json.loads((root / "metrics" / "encoder.json").read_text())["images"] == (ds.manifest.split == "pool").sum()
    for name, count in labelled.groupby("split").size().items():
        arr = np.load(root / "data" / "latents" / f"{name}.npy")
        assert arr.shape == (count, 6, 32) and arr.dtype == np.float32
    metrics = json.loads((root / "metrics" / "inversion.json").read_text())
    keys = {"psnr", "ssim", "mse", "label_agreement"} | {f"{a}_agreement" for a in ds.info["attributes"]}
    assert set(metrics) == {*labelled["split"].unique(), "images_per_s", "encode_seconds", "refine_seconds",
                            "torch_threads"}
    for name in labelled["split"].unique():
        assert set(metrics[name]) == keys | {"encoder_only"}
        assert set(metrics[name]["encoder_only"]) == keys
        assert all(0 <= metrics[name][k] <= 1 for k in keys if k.endswith("agreement"))
    assert invert.load_encoder(root / "models" / "encoder.pt").config["width"] == 4
    assert (root / "reports" / "inversion.png").stat().st_size > 500
    assert not list((root / "data").glob(".latents*"))  # no temp folders left behind


def test_cli_extract_without_generator_fails_clearly(project):
    from advmix.cli import app

    root, _ = project
    (root / "models" / "gan" / "generator.pt").unlink()
    res = CliRunner().invoke(app, ["extract"])
    assert res.exit_code == 1 and "generator.pt" in res.output
