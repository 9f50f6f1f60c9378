"""StyleGAN2 training: non-saturating logistic loss, lazy R1, EMA generator, style-mixing regularisation.

Small datasets get two augmentations: x-flips of the reals, and DiffAugment-style differentiable
translation / colour / cutout applied to every image the discriminator sees, real or fake, so the
generator never learns the augmentation. Style mixing at a high probability is what separates the
layers that carry the label from the ones that carry nuisances: a mix of two latents at a random row must
still look real, so each attribute settles in a contiguous range of W+ rows.

The loop writes its whole state atomically every few minutes and at the end (advmix/resume.py); a rerun
with the same params and data continues from it. Under `torchrun` each rank draws its own batches and torch's
DistributedDataParallel averages the gradients of the generator and discriminator steps (bucketed
all-reduce overlapped with the backward pass). The lazy R1 step is a double backward, which DDP's
reducer does not support, so it runs on the bare discriminator and averages its gradients by hand.
One process runs the bare networks: its results are those of the loop without DDP, bit for bit.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from advmix import resume
from advmix.figures import grid
from advmix.gan.networks import Discriminator, Generator, SynthesisFromZ
from advmix.images import to_tensor, to_uint8
from advmix.params import GanParams
from advmix.probes import predict, targets_of
from advmix.runtime import average_grads, rank_and_device

STATE_VERSION = 2  # the layout of the training state (advmix.resume)


def generator_config(p: GanParams, resolution: int) -> dict[str, Any]:
    return {"size": resolution, "style_dim": p.style_dim, "n_mlp": p.n_mlp, "channel_base": p.channel_base,
            "channel_max": p.channel_max}


class GanDivergedError(ValueError):
    """A non-finite loss: training stops at that iteration instead of writing a NaN generator."""


@dataclass
class GanRun:
    """What train_gan returns (on every torchrun rank; rank 0 writes)."""

    G_ema: Any  # the EMA generator, on the CPU in float32
    w_avg: Any  # its mean W (4,096 mapped samples), for truncation and inversion
    config: dict[str, Any]  # generator_config: what rebuilds the network
    iterations: int
    seconds: float  # of the whole run, resumed parts included
    images_per_s: float  # of this process's part of the run
    resumed_from: int  # the iteration a matching state let it start at (0: from scratch)
    rank: int
    world: int
    last: dict[str, float]  # the last iteration's losses

    def figures(self) -> dict[str, Any]:
        """The run's figures for metrics/gan.json."""
        return {"iterations": self.iterations, "seconds": self.seconds, "images_per_s": self.images_per_s,
                "resumed_from": self.resumed_from}


@dataclass(frozen=True)
class GanConfig:
    """Everything train_gan reads besides the images, built by the train-gan stage. The knobs are gan.*, each
    documented once in GanParams (advmix/params.py)."""

    gan: GanParams  # gan.*: architecture, optimiser, regularisation, batch, iterations, augmentation, device
    seed: int  # initial weights, batches, latents and noise
    mirror: bool  # whether a mirrored image is still a real one (the dataset's); False turns gan.augment's flip off


def fingerprint(cfg: GanConfig, images: np.ndarray) -> str:
    """What a resumable state must match: the training params, the seed and the data."""
    keep = cfg.gan.model_dump(mode="json", exclude={"checkpoint_minutes", "eval_samples", "device", "pretrained"})
    return resume.fingerprint([keep, cfg.seed, cfg.mirror], images=images)


def diff_augment(x, policy: list[str], gen):
    """Differentiable augmentations applied identically in kind (not in draw) to reals and fakes."""
    n, _, h, w = x.shape
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, generator=gen).to(dev)

    if "color" in policy:
        x = x + (rand(n, 1, 1, 1) - 0.5) * 0.5  # brightness
        mean = x.mean(1, keepdim=True)
        x = (x - mean) * (rand(n, 1, 1, 1) * 2) + mean  # saturation
        mean = x.mean([1, 2, 3], keepdim=True)
        x = (x - mean) * (rand(n, 1, 1, 1) + 0.5) + mean  # contrast
    if "translation" in policy:
        shift = max(1, h // 8)
        pad = F.pad(x, (shift, shift, shift, shift), mode="reflect")
        dx = (rand(n) * (2 * shift + 1)).long().clamp(max=2 * shift)
        dy = (rand(n) * (2 * shift + 1)).long().clamp(max=2 * shift)
        x = _shift(pad, dy, dx, h, w)
    if "cutout" in policy:
        size = h // 2
        cy = (rand(n) * (h - size + 1)).long()
        cx = (rand(n) * (w - size + 1)).long()
        yy = torch.arange(h, device=dev)[None, :, None]
        xx = torch.arange(w, device=dev)[None, None, :]
        hole = ((yy >= cy[:, None, None]) & (yy < (cy + size)[:, None, None])
                & (xx >= cx[:, None, None]) & (xx < (cx + size)[:, None, None]))
        x = x * (~hole)[:, None].to(x.dtype)
    return x


def _shift(padded, dy, dx, h: int, w: int):
    """Crop an h x w window at offset (dy, dx) per sample from a padded batch (differentiable)."""
    n, c = padded.shape[:2]
    rows = (torch.arange(h, device=padded.device)[None, :] + dy[:, None])  # n x h
    cols = (torch.arange(w, device=padded.device)[None, :] + dx[:, None])  # n x w
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, padded.shape[3]))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def train_gan(images: np.ndarray, cfg: GanConfig, state_path: Path,
              progress: Callable[[int, dict], None] | None = None) -> GanRun:
    """Train on uint8 N x H x W x 3 images.

    `progress(done, stats)` is called after every iteration. The training state is saved to
    `state_path` every `gan.checkpoint_minutes` and at the end; a matching state there is resumed.
    """

    p, seed, mirror = cfg.gan, cfg.seed, cfg.mirror
    # ---- Ranks and devices; networks and optimisers, seeded the same on every rank.
    rank, world, device = rank_and_device(p.device, "gan.device")
    torch.manual_seed(seed * 1000)  # the same initial weights on every rank
    gen = torch.Generator().manual_seed(seed * 1000 + rank + 1)  # each rank its own batches and latents
    resolution = images.shape[1]
    arch = generator_config(p, resolution)
    G = Generator(**arch).to(device)
    D = Discriminator(resolution, channel_base=p.channel_base, channel_max=p.channel_max).to(device)
    if world > 1:
        torch.manual_seed(seed * 1000 + rank)  # and its own noise inputs
    if device.type == "cuda":
        G = G.to(memory_format=torch.channels_last)
        D = D.to(memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # lazy regularisation: the R1 step runs every r1_every steps, so D's Adam is adjusted as in StyleGAN2
    c = p.r1_every / (p.r1_every + 1)
    g_opt = torch.optim.Adam(G.parameters(), lr=p.lr, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(D.parameters(), lr=p.lr * c, betas=(0.0, 0.99**c))

    # ---- Resume a state of the same run (params, seed, data, world size), if there is one.
    fp = fingerprint(cfg, images)
    start, elapsed = 0, 0.0
    state = resume.load_state(state_path, version=STATE_VERSION, fp=fp, world=world, what="GAN training state",
                              fix=f"delete {state_path} to start over")
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
        g_opt.load_state_dict(state["g_opt"])
        d_opt.load_state_dict(state["d_opt"])
        resume.restore_rngs(state["ranks"][rank], gen)
        start, elapsed = int(state["iteration"]), float(state["seconds"])

    # ---- What every iteration draws from: latents (style-mixed at p.style_mixing), real batches, D's inputs.
    reals = to_tensor(images)
    beta = 0.5 ** (p.batch * world / p.ema_half_life_images)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                       enabled=False)

    def latents(n: int) -> dict[str, Any]:
        """A batch of z, and at p.style_mixing a second z with the W+ row where it takes over: make_ws's arguments."""
        z = torch.randn(n, p.style_dim, generator=gen).to(device)
        if torch.rand((), generator=gen).item() < p.style_mixing:
            z2 = torch.randn(n, p.style_dim, generator=gen).to(device)
            return {"z": z, "mix_z": z2, "mix_index": int(torch.randint(1, G.n_latent, (), generator=gen))}
        return {"z": z}

    def real_batch():
        idx = torch.randint(0, len(reals), (p.batch,), generator=gen)
        x = reals[idx]
        if mirror and "flip" in p.augment:
            flip = torch.rand(p.batch, generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x.to(device)

    def d_input(x):
        x = diff_augment(x, [a for a in p.augment if a != "flip"], gen)
        return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x

    # ---- Several ranks: DDP wraps the generator's step and the discriminator's (their gradients averaged by its
    # bucketed all-reduce during the backward pass). The D step's fakes come from the bare G (no backward reaches
    # it) and the G step's D is the bare D (its gradients are dropped), so a wrapper's gradients are averaged only
    # in its own step. Buffers are not broadcast: every rank builds the same networks from the same seed.
    synthesise = SynthesisFromZ(G)
    G_step, D_step = synthesise, D
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        G_step = torch.nn.parallel.DistributedDataParallel(synthesise, device_ids=ids, broadcast_buffers=False)
        D_step = torch.nn.parallel.DistributedDataParallel(D, device_ids=ids, broadcast_buffers=False)

    stats: dict[str, float] = {}
    last_save = time.time()
    t0 = time.time() - elapsed
    for it in range(start, p.iterations):
        # ---- Discriminator step: fakes down, reals up.
        with amp:
            fake = synthesise(**latents(p.batch), noise_mode="random").detach()
            real = real_batch()
            d_loss = F.softplus(D_step(d_input(fake))).mean() + F.softplus(-D_step(d_input(real))).mean()
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        stats["d_loss"] = d_loss.item()

        # ---- Lazy R1 on the reals, every r1_every iterations: a double backward, so the bare D, averaged by hand.
        if p.r1_gamma > 0 and it % p.r1_every == 0:
            real = real_batch().requires_grad_(True)
            with amp:
                score = D(d_input(real)).float().sum()
            (grad,) = torch.autograd.grad(score, real, create_graph=True)
            r1 = grad.float().pow(2).sum([1, 2, 3]).mean()
            d_opt.zero_grad(set_to_none=True)
            (p.r1_gamma / 2 * r1 * p.r1_every).backward()
            average_grads(D, world)
            d_opt.step()
            stats["r1"] = r1.item()

        # ---- Generator step: make D call the fakes real.
        with amp:
            g_loss = F.softplus(-D(d_input(G_step(**latents(p.batch), noise_mode="random")))).mean()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        stats["g_loss"] = g_loss.item()
        # ---- Stop on a non-finite loss, before the state is saved.
        broken = [k for k, v in stats.items() if not math.isfinite(v)]
        if broken:  # the last state on disk is the last good one
            raise GanDivergedError(f"train-gan: {broken[0]} is {stats[broken[0]]} at iteration {it + 1}; likely "
                                   f"non-finite images, or gan.lr {p.lr} too high (lower it and rerun)")

        # ---- EMA of the generator (half-life p.ema_half_life_images).
        with torch.no_grad():
            for pe, pg in zip(G_ema.parameters(), G.parameters()):
                pe.lerp_(pg, 1.0 - beta)
            for be, bg in zip(G_ema.buffers(), G.buffers()):
                be.copy_(bg)

        # ---- Progress, and every p.checkpoint_minutes the whole state, atomically.
        done = it + 1
        if progress is not None and rank == 0:
            progress(done, stats)
        if done == p.iterations or resume.save_due(last_save, p.checkpoint_minutes, world, device):
            resume.save_state(state_path, {
                "iteration": done, "seconds": time.time() - t0, "G": G.state_dict(), "D": D.state_dict(),
                "G_ema": G_ema.state_dict(), "g_opt": g_opt.state_dict(), "d_opt": d_opt.state_dict()},
                resume.rank_part(gen), version=STATE_VERSION, fp=fp, rank=rank, world=world)
            last_save = time.time()

    # ---- The EMA generator and its mean W.
    G_ema = G_ema.cpu().float()
    w_avg = G_ema.mean_latent(4096, torch.Generator().manual_seed(seed))
    seconds = time.time() - t0
    return GanRun(G_ema=G_ema, w_avg=w_avg, config=arch, iterations=p.iterations, seconds=seconds,
                  images_per_s=(p.iterations - start) * p.batch * world / max(1e-9, seconds - elapsed),
                  resumed_from=start, rank=rank, world=world, last=stats)


def sample_images(G, n: int, seed: int, noise_mode: str = "const", batch: int = 256):
    """n samples of G at truncation 1, deterministic in `seed`."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch):
            z = torch.randn(min(batch, n - start), G.style_dim, generator=gen)
            out.append(G.synthesis(G.make_ws(z), noise_mode=noise_mode))
    return torch.cat(out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to two feature sets (the formula behind FID).

    tr sqrt(Ca Cb) is taken as the sum of square roots of the eigenvalues of sqrt(Ca) Cb sqrt(Ca),
    which is symmetric, so it stays real and stable when the covariances are singular.
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean)


def quality_metrics(G, probe, real, n: int, seed: int) -> dict[str, Any]:
    """Download-free quality: Fréchet distance in the probe's feature space, attribute distributions."""

    fake = sample_images(G, n, seed)
    real_x = to_tensor(real.images[:n])
    with torch.no_grad():
        feats = [torch.cat([probe.embed(c) for c in x.split(256)]).numpy() for x in (real_x, fake)]
    half = len(real_x) // 2
    out: dict[str, Any] = {
        "probe_frechet_distance": frechet_distance(feats[0], feats[1]),
        "probe_frechet_distance_real_halves": frechet_distance(feats[0][:half], feats[0][half:]),
        "attributes": {},
    }
    pred = predict(probe, fake)
    truth = targets_of(real, probe.heads_spec)
    for head, k in probe.heads_spec.items():
        gen_dist = np.bincount(pred[head].argmax(1), minlength=k) / len(fake)
        real_dist = np.bincount(truth[head], minlength=k) / len(truth[head])
        out["attributes"][head] = {"real": [round(float(v), 4) for v in real_dist],
                                   "generated": [round(float(v), 4) for v in gen_dist],
                                   "total_variation": round(float(0.5 * np.abs(gen_dist - real_dist).sum()), 4)}
    out["attribute_tv_mean"] = float(np.mean([v["total_variation"] for v in out["attributes"].values()]))
    return out


def mixing_grid(G, keep: list[int], n: int, seed: int) -> np.ndarray:
    """Row i keeps sample i's layers outside `keep`'s complement; column j donates its other layers.

    The top row shows the donors, the left column the sources; cell (i, j) is source i with the
    layers not in `keep` taken from donor j.
    """

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ws = G.make_ws(torch.randn(2 * n, G.style_dim, generator=gen))
        src, don = ws[:n], ws[n:]
        cells = [torch.ones(1, 3, G.out_size, G.out_size)]
        cells += [G.synthesis(don[j:j + 1]) for j in range(n)]
        donate = [i for i in range(G.n_latent) if i not in keep]
        for i in range(n):
            cells.append(G.synthesis(src[i:i + 1]))
            mixed = src[i:i + 1].repeat(n, 1, 1)
            mixed[:, donate] = don[:, donate]
            cells.append(G.synthesis(mixed))
    return grid(to_uint8(torch.cat(cells)), ncol=n + 1, scale=max(1, 96 // G.out_size))
