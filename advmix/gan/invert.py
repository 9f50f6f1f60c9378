"""Latent extraction: real images -> W+ codes, the bank that mixing reads.

Two stages, because neither alone is good enough on a CPU budget (an encoder alone loses small labels, per-image
optimisation alone is slow and starts far away):

1. An encoder E: image -> W+ (a small CNN predicting per-layer offsets from w_avg, in units of the per-dimension
   spread of W). It is trained first on generator samples (w+, G(w+)), whose true code is known, with style mixing
   so that the rows of w+ differ; then fine-tuned on the real images of the unlabelled pool with a reconstruction
   loss (pixel MSE + probe-feature loss), which closes the gap between generated and real images. It flattens its
   last feature map instead of pooling it: the label (a mouth) is a few pixels, and global pooling cannot see it.
2. An optional per-image refinement: Adam on the W+ code, starting from E(x), with the same pixel + feature loss.
   The encoder alone loses some labels; a few dozen steps restore them.

Noise inputs are fixed (noise_mode="const") everywhere, so G(w+) is a function of w+ alone and a mix differs from
its source only in the swapped rows. Everything is deterministic for a given seed on the CPU.

With `extract.encoder: PATH` a public pSp or e4e encoder (advmix/gan/encoders.py) takes E's place and the
refinement runs as above. Images are compared at the data's resolution: a larger generator renders at it
(Generator.render_at). The codes are written by advmix/gan/latents.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advmix.files import atomic_torch_save, read_torch
from advmix.gan.encoders import PublicEncoder
from advmix.images import to_tensor
from advmix.mixing import synthesize
from advmix.params import ExtractParams
from advmix.probes import predict

ENCODER_FORMAT = "advmix-encoder"
MIX_PROBABILITY = 0.9  # share of encoder training samples with two codes (rows differ), as in GAN training
Progress = Callable[[int], None] | None


# ----------------------------------------------------------------------------------------------------------------
# Encoder


class Encoder(nn.Module):
    """Image [N, 3, s, s] in [-1, 1] -> W+ [N, n_latent, style_dim] = w_avg + w_std * offsets.

    Predicting offsets from the mean latent, scaled by the spread of W, makes the untrained encoder return w_avg
    (a face) and gives every latent dimension the same scale for the loss. Plain convolutions without batch
    statistics, so a code never depends on which other images share its batch.
    """

    def __init__(self, size: int, n_latent: int, style_dim: int, width: int = 32, hidden: int = 512) -> None:
        super().__init__()
        self.config = {"size": size, "n_latent": n_latent, "style_dim": style_dim, "width": width, "hidden": hidden}
        self.n_latent, self.style_dim = n_latent, style_dim
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2)]
        ch, res, i = width, size, 0
        while res > 4:  # per octave a stride-2 conv, then a 3x3 conv; channels double up to 4 * width
            out = min(width * 2 ** (i + 1), width * 4)
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(out, out, 3, padding=1), nn.LeakyReLU(0.2)]
            ch, res, i = out, res // 2, i + 1
        self.features = nn.Sequential(*layers, nn.Flatten())  # 4 x 4 x ch kept whole: small details survive
        self.head = nn.Sequential(nn.Linear(ch * 16, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, n_latent * style_dim))
        nn.init.zeros_(self.head[-1].weight)  # start at w_avg exactly
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("w_avg", torch.zeros(style_dim))
        self.register_buffer("w_std", torch.ones(style_dim))

    def offsets(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).reshape(-1, self.n_latent, self.style_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_avg + self.w_std * self.offsets(x)


def build_encoder(G, w_avg: Tensor, width: int = 32, seed: int = 0, n_stats: int = 4096) -> Encoder:
    """An encoder from G's images (at G.out_size) to its W+, centred on w_avg and scaled by the spread of
    mapping(z) over n_stats samples."""
    torch.manual_seed(seed)
    enc = Encoder(G.out_size, G.n_latent, G.style_dim, width)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = G.mapping(torch.randn(n_stats, G.style_dim, generator=gen))
    enc.w_avg.copy_(w_avg.detach().reshape(-1).float())
    enc.w_std.copy_(w.std(0).clamp_min(1e-3))
    return enc


def save_encoder(path: str | os.PathLike[str], enc: nn.Module, extra: dict[str, Any] | None = None) -> Path:
    """A plain dict of tensors + config (loadable with weights_only=True), written atomically."""
    payload = {"format": ENCODER_FORMAT, "config": dict(enc.config),
               "state_dict": {k: v.detach().cpu() for k, v in enc.state_dict().items()}, **(extra or {})}
    atomic_torch_save(payload, path)
    return Path(path)


def load_encoder(path: str | os.PathLike[str]) -> nn.Module:
    """advmix's own Encoder, or the PublicEncoder train-encoder saved; in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder not found (run `advmix train-encoder`)")

    blob = read_torch(path, "encoder checkpoint", "rerun `advmix train-encoder`")
    if not isinstance(blob, dict) or blob.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{path}: not an advmix encoder checkpoint; rerun `advmix train-encoder`")
    public = "mode" in blob["config"]  # a pSp/e4e encoder that train-encoder loaded (extract.encoder: PATH)
    enc = PublicEncoder(**blob["config"]) if public else Encoder(**blob["config"])
    enc.load_state_dict(blob["state_dict"])
    return enc.eval()


@contextlib.contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; the previous state comes back afterwards."""
    saved = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in modules if m is not None]
    for m, _, _ in saved:
        m.eval().requires_grad_(False)
    try:
        yield
    finally:
        for m, training, flags in saved:
            m.train(training)
            for p, flag in zip(m.parameters(), flags):
                p.requires_grad_(flag)


def sample_wplus(G, n: int, gen: torch.Generator, mix_probability: float = MIX_PROBABILITY) -> Tensor:
    """W+ codes of random samples; most take their rows from two codes split at a random layer."""
    z, z2 = torch.randn(n, G.style_dim, generator=gen), torch.randn(n, G.style_dim, generator=gen)
    cut = torch.randint(1, G.n_latent, (n,), generator=gen)
    cut = torch.where(torch.rand(n, generator=gen) < mix_probability, cut, torch.full_like(cut, G.n_latent))
    return G.make_ws(z, mix_z=z2, mix_index=cut)


def recon_loss(G, ws: Tensor, target: Tensor, probe: nn.Module | None, feature_weight: float,
               target_features: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-image loss (pixel MSE + feature_weight * probe-feature MSE) and the reconstruction.

    Per image, so that a batched optimisation is the sum of independent ones.
    """
    rec = G.synthesis(ws, noise_mode="const")
    loss = (rec - target).square().flatten(1).mean(1)
    if probe is not None and feature_weight > 0:
        if target_features is None:
            with torch.no_grad():
                target_features = probe.embed(target)
        loss = loss + feature_weight * (probe.embed(rec) - target_features).square().flatten(1).mean(1)
    return loss, rec


def train_encoder(G, w_avg: Tensor, real: Tensor, probe: nn.Module | None, *, steps: int, real_steps: int,
                  batch: int, lr: float, feature_weight: float, width: int = 32, seed: int = 0,
                  mirror: bool = True, progress: Progress = None) -> tuple[Encoder, dict[str, float]]:
    """Train E on generator samples (latent loss), then fine-tune it on real images (reconstruction loss).

    The latent phase needs no backward pass through G, so it is cheap and teaches E the whole of W+; the real
    phase pays for G's backward pass to adapt E to real images, which the generator never reproduces exactly.
    `real` holds [-1, 1] images (the train split). Returns (E in eval mode, losses of the last 50 steps).
    """
    enc = build_encoder(G, w_avg, width, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(enc.parameters(), lr=lr, betas=(0.9, 0.99))
    stats: dict[str, list[float]] = {"latent_loss": [], "real_loss": []}
    enc.train()
    with _frozen(G, probe):
        for _ in range(steps):
            with torch.no_grad():
                ws = sample_wplus(G, batch, gen)
                x = G.synthesis(ws, noise_mode="const")
            loss = ((enc(x) - ws) / enc.w_std).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stats["latent_loss"].append(loss.item())
            if progress is not None:
                progress(1)
        for g in opt.param_groups:  # a gentler rate: the latent phase already found the right region
            g["lr"] = lr * 0.5
        for _ in range(real_steps if len(real) else 0):
            idx = torch.randint(0, len(real), (batch,), generator=gen)
            x = real[idx]
            if mirror:  # mirrored faces are faces: more real views (a mirrored digit is not a digit)
                flip = torch.rand(batch, generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss, _ = recon_loss(G, enc(x), x, probe, feature_weight)
            loss = loss.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stats["real_loss"].append(loss.item())
            if progress is not None:
                progress(1)
    enc.eval()
    return enc, {k: float(np.mean(v[-50:])) if v else float("nan") for k, v in stats.items()}


@torch.no_grad()
def encode(enc: Encoder, x: Tensor, batch: int = 256) -> Tensor:
    """E(x) for [-1, 1] images, in chunks."""
    enc.eval()
    return torch.cat([enc(c) for c in x.split(batch)]) if len(x) else x.new_zeros(0, enc.n_latent, enc.style_dim)


def refine(G, ws: Tensor, target: Tensor, probe: nn.Module | None = None, *, steps: int, lr: float,
           feature_weight: float = 0.0, latent_weight: float = 0.0, w_std: Tensor | None = None, batch: int = 256,
           progress: Progress = None) -> Tensor:
    """Per-image Adam on W+ from `ws` towards `target` ([-1, 1] images), `batch` images at a time.

    The loss is summed over images, and Adam acts per coordinate, so each code follows its own optimisation
    whatever else shares its batch. Adam also moves coordinates the image barely sees by a full step; the
    `latent_weight` pull towards the start (in units of `w_std`, the spread of W) keeps those where the encoder
    put them, so that a refined row still means what it means in other images after a swap.
    `progress(n)` is called with the number of images finished.
    """
    scale = (w_std if w_std is not None else torch.ones(ws.shape[-1])).to(ws)
    out = []
    with _frozen(G, probe):
        for w0, x in zip(ws.split(batch), target.split(batch)):
            w0 = w0.detach()
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=lr)
            with torch.no_grad():
                feats = probe.embed(x) if probe is not None and feature_weight > 0 else None
            for _ in range(steps):
                loss, _ = recon_loss(G, w, x, probe, feature_weight, feats)
                if latent_weight > 0:
                    loss = loss + latent_weight * ((w - w0) / scale).square().flatten(1).mean(1)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
            out.append(w.detach())
            if progress is not None:
                progress(len(x))
    return torch.cat(out) if out else ws.detach().clone()


# ----------------------------------------------------------------------------------------------------------------
# Metrics


def _gaussian_window(size: int, sigma: float) -> Tensor:
    g = torch.exp(-(torch.arange(size, dtype=torch.float32) - (size - 1) / 2).square() / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: Tensor, b: Tensor, data_range: float = 2.0) -> Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5, valid region, mean over channels); images in [-1, 1]."""
    win = min(11, a.shape[-1], a.shape[-2])
    k = _gaussian_window(win, 1.5 * win / 11).to(a).expand(a.shape[1], 1, win, win)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, k, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a.square(), blur(b * b) - mu_b.square()
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def reconstruction_metrics(real: Tensor, rec: Tensor, probe: nn.Module | None = None) -> dict[str, float]:
    """PSNR, SSIM, MSE (means over images, [-1, 1] scale) and the probe's agreement between real and reconstructed.

    label_agreement: the probe gives the same label for G(E(x)) as for x; <head>_agreement likewise for every
    nuisance attribute the probe reads. The reconstruction is clipped to [-1, 1], as an image would be.
    """
    rec = rec.clamp(-1, 1)
    mse = (rec - real).square().flatten(1).mean(1)
    psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))
    out = {"psnr": float(psnr.mean()), "ssim": float(ssim(real, rec).mean()), "mse": float(mse.mean())}
    if probe is not None:
        p_real, p_rec = predict(probe, real), predict(probe, rec)
        for head in p_real:
            key = "label_agreement" if head == "label" else f"{head}_agreement"
            out[key] = float(np.mean(p_real[head].argmax(1) == p_rec[head].argmax(1)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# The stage


@dataclass
class Inversion:
    """What `invert_splits` returns."""

    latents: dict[str, np.ndarray]  # split -> float32 N x n_latent x style_dim, in the split's row order
    metrics: dict[str, Any]  # metrics/inversion.json: reconstruction per split (refined and encoder-only), speed
    reconstructions: dict[str, tuple[Tensor, Tensor]]  # split -> (encoder-only, refined) images, for the figure


def invert_splits(G, enc: nn.Module, probe: nn.Module | None, splits: dict[str, np.ndarray], p: ExtractParams,
                  seed: int, progress: Progress = None) -> Inversion:
    """Invert every split with the encoder of `train-encoder` (advmix's own or a public one), then refine each code
    if `p.mode` (extract.*) asks."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    real = {name: to_tensor(images) for name, images in splits.items()}
    enc_codes, enc_recs = {}, {}
    for name, x in real.items():
        enc_codes[name] = encode(enc, x, p.refine_batch)
        enc_recs[name] = synthesize(G, enc_codes[name], p.refine_batch)
    encode_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    codes, recs = {}, {}
    for name, x in real.items():
        if p.mode == "refine" and p.refine_steps > 0:
            codes[name] = refine(G, enc_codes[name], x, probe, steps=p.refine_steps, lr=p.refine_lr,
                                 feature_weight=p.feature_weight, latent_weight=p.latent_weight, w_std=enc.w_std,
                                 batch=p.refine_batch, progress=progress)
            recs[name] = synthesize(G, codes[name], p.refine_batch)
        else:
            codes[name], recs[name] = enc_codes[name], enc_recs[name]
            if progress is not None:
                progress(len(x))
    refine_seconds = time.perf_counter() - t1
    n = sum(len(x) for x in real.values())
    metrics: dict[str, Any] = {}
    for name, x in real.items():
        metrics[name] = {**reconstruction_metrics(x, recs[name], probe),
                         "encoder_only": reconstruction_metrics(x, enc_recs[name], probe)}
    metrics["images_per_s"] = n / max(encode_seconds + refine_seconds, 1e-9)
    metrics["encode_seconds"] = encode_seconds
    metrics["refine_seconds"] = refine_seconds
    return Inversion(latents={k: v.float().numpy() for k, v in codes.items()}, metrics=metrics,
                     reconstructions={k: (enc_recs[k], recs[k]) for k in real})


def comparison_images(real: Tensor, encoder_only: Tensor, refined: Tensor, n: int = 12) -> Tensor:
    """Rows real / encoder only / refined for the first n images, for figures.grid(ncol=n)."""
    n = min(n, len(real))
    return torch.cat([real[:n], encoder_only[:n].clamp(-1, 1), refined[:n].clamp(-1, 1)])
