"""A real user's setup: a public generator larger than the data (it renders at the data's resolution) and a public
e4e encoder in place of advmix's own, down to the report, at tiny sizes. Nothing is downloaded: both are random
networks saved here in their public layouts (rosinality's `g_ema`, e4e's `state_dict`/`opts`/`latent_avg`)."""

import json
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_UPSTREAM, attack_config
from test_pipeline import make_project, repro_in_process

from advmix.attacks import Batch, LatentBank, advmix_attack, residuals
from advmix.gan.encoders import StyleEncoder, save_public_layout
from advmix.gan.invert import build_encoder
from advmix.gan.networks import Generator
from advmix.inputs.gan import at_resolution
from advmix.mixing import codes_per_pass, mix
from advmix.models import build_model
from advmix.stages import StageError

torch.set_num_threads(1)


def big_generator(style_dim: int = 32) -> Generator:
    torch.manual_seed(0)
    return Generator(64, style_dim=style_dim, n_mlp=2, channel_base=256, channel_max=32).eval().requires_grad_(False)


def test_a_larger_generator_renders_at_the_data_resolution_and_alpha_still_gets_a_gradient():
    G = big_generator()
    ws = G.make_ws(torch.randn(3, 32))
    full = G.synthesis(ws)
    assert full.shape == (3, 3, 64, 64)
    at_resolution(G, 16, "g.pt")
    small = G.synthesis(ws)
    assert small.shape == (3, 3, 16, 16)  # synthesised at 64, resized once, antialiased
    assert torch.allclose(small, F.interpolate(full, size=(16, 16), mode="bilinear", antialias=True), atol=1e-6)
    with pytest.raises(StageError, match=r"g\.pt makes 64 px images, fewer than data.resolution \(128 px\)"):
        at_resolution(G, 128, "g.pt")

    # AdvMix's steps on alpha go through the resize: the gradient reaches alpha
    alpha = torch.full((3, 4), 0.5, requires_grad=True)
    partners = G.make_ws(torch.randn(3, 32))
    model = build_model("smallcnn", 2, 16, 8).eval()
    loss = F.cross_entropy(model(G.synthesis(mix(ws, partners, alpha, [2, 3, 4, 5]))), torch.tensor([0, 1, 0]))
    (grad,) = torch.autograd.grad(loss, alpha)
    assert grad.abs().sum() > 0

    # the attacks, the residual and advmix's own encoder all work at 16 px
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    y = torch.tensor([0, 1] * 3)
    w = G.make_ws(torch.randn(6, 32))
    cfg = attack_config(layers=(2, 3, 4, 5), partners="any", residual=True, k=2, steps=1, step_size=0.5)
    out, _ = advmix_attack(model, Batch(x, y, w, torch.arange(6)), LatentBank(w, y), G, cfg, torch.Generator())
    assert out.shape == x.shape
    images = ((x + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    assert residuals(G, images, w).shape == x.shape
    assert build_encoder(G, torch.zeros(32), width=4)(x).shape == (6, G.n_latent, 32)


def test_attacks_synthesise_a_large_generator_in_parts_with_the_same_result():
    """Chunked synthesis inside AdvMix gives what one pass gives: an example's alpha moves only its own image."""
    G = big_generator()
    torch.manual_seed(1)
    x, y = torch.rand(10, 3, 64, 64) * 2 - 1, torch.tensor([0, 1] * 5)
    w = G.make_ws(torch.randn(10, 32))
    model = build_model("smallcnn", 2, 64, 8).eval()
    cfg = attack_config(layers=(2, 3, 4, 5), partners="any", residual=True, k=3, steps=2, step_size=0.5)

    def attack():
        return advmix_attack(model, Batch(x, y, w, torch.arange(10)), LatentBank(w, y), G, cfg,
                             torch.Generator().manual_seed(0))[0]

    whole = attack()
    from advmix import mixing

    saved = mixing.SYNTHESIS_PIXELS
    mixing.SYNTHESIS_PIXELS = 4 * 64 * 64  # four codes per pass: the N*K hard mixes and the steps both split
    try:
        assert codes_per_pass(G) == 4
        parts = attack()
    finally:
        mixing.SYNTHESIS_PIXELS = saved
    assert torch.allclose(whole, parts, atol=1e-5)


@pytest.mark.slow
def test_a_public_64px_generator_and_e4e_encoder_run_every_stage_on_16px_data(tmp_path):
    """extract, analyze-layers, AdvMix training, evaluation and the report with a rosinality-layout 64 px generator
    (gan.pretrained) and an e4e-layout encoder (extract.encoder) on a 16 px dataset."""
    public = tmp_path / "public"
    public.mkdir()
    G = big_generator(style_dim=512)
    torch.save({"g_ema": G.state_dict(), "latent_avg": G.mean_latent(256)}, public / "stylegan2-64.pt")
    torch.manual_seed(0)
    encoder = StyleEncoder(G.n_latent, "Encoder4Editing")
    with torch.no_grad():  # small offsets around latent_avg, and BatchNorm statistics that eval mode reads
        encoder.styles.apply(lambda m: m.weight.mul_(0.1) if isinstance(m, torch.nn.Conv2d) else None)
        for m in encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    save_public_layout(public / "e4e.pt", encoder.eval(), G.mean_latent(256).repeat(G.n_latent, 1), size=64)

    sizes = {"train": 24, "val": 4, "test_iid": 4, "test_balanced": 8, "test_flipped": 4, "pool": 24}
    params = {**TINY_UPSTREAM, "data": {"resolution": 16, "sizes": sizes},
              "gan": {**TINY_UPSTREAM["gan"], "pretrained": str(public / "stylegan2-64.pt"), "eval_samples": 16},
              "extract": {"encoder": str(public / "e4e.pt"), "refine_steps": 2, "refine_batch": 8},
              "train": {"modes": ["nominal", "advmix"], "seeds": [0], "epochs": 1, "batch": 8, "width": 8,
                        "advmix": {"partners_k": 2, "steps": 1}},
              "dfr": {"bases": []},
              "evaluate": {"robust_images": 8, "partners_k": 2, "steps": 1, "linf_steps": 1, "worst_mixes": 4}}
    env = make_project(tmp_path, params)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "start"]):  # dvclive in `advmix train` needs a commit
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True)
    repro_in_process(tmp_path, None)

    encoder_metrics = json.loads((tmp_path / "metrics" / "encoder.json").read_text())
    assert encoder_metrics["public"].endswith("e4e.pt") and encoder_metrics["type"] == "Encoder4Editing"
    codes = np.load(tmp_path / "data" / "latents" / "train.npy")
    assert codes.shape == (24, 10, 512)  # the 64 px generator's W+, from 16 px faces
    inversion = json.loads((tmp_path / "metrics" / "inversion.json").read_text())
    assert np.isfinite(inversion["train"]["psnr"])
    layers = json.loads((tmp_path / "metrics" / "layers.json").read_text())
    assert all(0 <= i < 10 for i in layers["perturbation"]["layers"])
    summary = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert set(summary["modes"]) == {"nominal", "advmix"} and not summary["missing_runs"]
    assert (tmp_path / "reports" / "summary.html").stat().st_size > 1000


def test_a_missing_public_encoder_is_one_line_naming_the_key(tmp_path, monkeypatch):
    from advmix.stages.train_encoder import load_public

    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError, match=r"^extract.encoder: nope\.pt: no such file; give extract.encoder a pSp/e4e"):
        load_public("nope.pt", big_generator(style_dim=512))
    assert not (tmp_path / "models").exists()  # nothing written
