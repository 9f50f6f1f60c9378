"""The cost of each training mode relative to nominal, on the current device (bf16 + channels_last on CUDA).

    python bench/train_cost.py --resolution 32 --batch 64 --n-batches 20

Runs advmix.classifier_training.train_classifier for `--epochs` epochs of n_batches batches per mode, on random images with
random W+ codes and a randomly initialised generator of the default (CPU-sized) config unless --generator names a
checkpoint, and times the steps of the last epoch (its first step, which follows the validation, is not timed); a
mode's seconds per batch and each floor pass are medians, so one hiccup of a shared machine moves neither much.
K, S, the clean ratio and the residual default to params.yaml's. Prints a table: seconds per batch, the ratio to nominal, and the ratio
to the mode's floor. The mixing layers are the `middle+fine` preset (the count matters for cost, not which ones).

The floor of a mode is nominal's measured step plus the passes the mode cannot avoid for the replaced share of a
batch (n = batch x (1 - clean ratio) examples), each timed alone on the same device:
  advmix   K generator forwards per example (the hard mixes, in one batch of n*K codes, no gradient) and S
           generator + classifier forward/backward passes of n codes (the steps on alpha);
  randmix  one generator forward of n codes;
  linf     PGD steps x one classifier forward/backward of n images;
  groupdro nominal's step; augmix, colorjitter, huejitter: none given (torchvision's per-image CPU work).
A ratio near 1 says the mode's loop adds little beyond that work. For AdvMix the bench also prints what its attack
must do beyond the floor as defined (the classifier's forward over the n*K hard mixes, which picks the worst
partner, and the forward that scores the last alpha iterate), timed alone and not counted in the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from advmix.modes import NAMES as MODES


def main(argv: list[str] | None = None) -> list[dict]:
    import pandas as pd
    import torch

    from advmix.attacks import AttackConfig
    from advmix.classifier_training import TrainConfig, train_classifier
    from advmix.data.store import Dataset
    from advmix.gan.networks import Generator
    from advmix.mixing import layer_groups
    from advmix.params import parse_params
    from advmix.runtime import pick_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-batches", type=int, default=10)
    ap.add_argument("--model", default="smallcnn", choices=["smallcnn", "resnet18"])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    ap.add_argument("--k", type=int, help="AdvMix partners per example (default: train.advmix.partners_k)")
    ap.add_argument("--steps", type=int, help="AdvMix steps on alpha (default: train.advmix.steps; PGD keeps 5)")
    ap.add_argument("--clean-ratio", type=float, help="default: train.clean_ratio")
    ap.add_argument("--residual", action=argparse.BooleanOptionalAction, help="default: train.residual")
    ap.add_argument("--generator", type=Path, help="a generator checkpoint instead of a random default-config one")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    defaults = parse_params({}).train
    args.k = defaults.advmix.partners_k if args.k is None else args.k
    args.steps = defaults.advmix.steps if args.steps is None else args.steps
    args.clean_ratio = defaults.clean_ratio if args.clean_ratio is None else args.clean_ratio
    args.residual = defaults.residual if args.residual is None else args.residual

    res, n = args.resolution, args.batch * args.n_batches
    if args.generator is not None:
        from advmix.gan.checkpoints import load_generator

        G = load_generator(args.generator)[0]
        res = G.size
    else:
        gan = parse_params({}).gan
        torch.manual_seed(0)
        G = Generator(res, style_dim=gan.style_dim, n_mlp=gan.n_mlp, channel_base=gan.channel_base,
                      channel_max=gan.channel_max).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, res, res, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, n)
    manifest = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "split": "train", "label": labels,
                             "group": labels * 2 + rng.integers(0, 2, n)})
    train = Dataset(images, manifest, {"n_classes": 2})
    val = Dataset(images[: args.batch], manifest[: args.batch].reset_index(drop=True), {"n_classes": 2})
    latents = rng.normal(size=(n, G.n_latent, G.style_dim)).astype(np.float32)
    layers = layer_groups(res)["middle+fine"]
    p = parse_params({"data": {"resolution": res}, "mixing": {"layers": layers}, "train": {
        "model": args.model, "width": args.width, "epochs": args.epochs, "batch": args.batch,
        "clean_ratio": args.clean_ratio,
        "residual": args.residual, "advmix": {"partners_k": args.k, "steps": args.steps}, "device": args.device,
        "checkpoint_minutes": 1e6}})

    floors = floor_seconds(G, p, layers, latents, args, pick_device(args.device))
    rows = []
    for mode in args.modes:
        stamps: list[float] = []

        def stamp(done, total, stats, stamps=stamps):
            if done > total - args.n_batches:  # the last epoch's steps
                stamps.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as tmp:
            config = TrainConfig(p.train, AttackConfig.from_params(p.train, p.mixing.partners, layers), p.seed)
            train_classifier(mode, train, val, config, Path(tmp) / "state.pt", None, G=G, latents=latents,
                             progress=stamp)
        timed = np.diff(stamps) if len(stamps) > 1 else np.array([float("nan")])
        rows.append({"mode": mode, "s_per_batch": float(np.median(timed)), "batches_timed": len(timed)})
    base = next((r["s_per_batch"] for r in rows if r["mode"] == "nominal"), float("nan"))
    for r in rows:
        extra = floors.get(r["mode"])
        r["floor_s"] = None if extra is None else base + extra
        r["x_floor"] = None if extra is None else r["s_per_batch"] / r["floor_s"]
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"device: {name}{' (bf16 autocast + channels_last)' if device.type == 'cuda' else ''}; {args.model} "
          f"width {args.width}, {res} px, batch {args.batch}, clean ratio {args.clean_ratio}, AdvMix K={args.k} "
          f"S={args.steps}, {len(layers)} mixing layers, G {sum(q.numel() for q in G.parameters()) / 1e6:.2f}M")
    print(f"{'mode':8s} {'s/batch':>9s} {'img/s':>9s} {'x nominal':>10s} {'floor s':>9s} {'x floor':>8s}")
    for r in rows:
        r["x_nominal"] = r["s_per_batch"] / base
        floor = "n/a" if r["floor_s"] is None else f"{r['floor_s']:.4f}"
        ratio = "n/a" if r["x_floor"] is None else f"{r['x_floor']:.2f}"
        print(f"{r['mode']:8s} {r['s_per_batch']:9.4f} {args.batch / r['s_per_batch']:9.1f} {r['x_nominal']:10.2f} "
              f"{floor:>9s} {ratio:>8s}")
    if "advmix" in args.modes:
        print(f"advmix beyond its floor, timed alone: {floors['advmix_beyond']:.4f} s per batch (the classifier's "
              f"forward over the {args.k} hard mixes per example and the forward of the last alpha iterate)")
    return rows


def floor_seconds(G, p, layers: list[int], latents: np.ndarray, args, device, repeats: int = 9) -> dict[str, float]:
    """Seconds per batch of the passes each mode cannot avoid beyond nominal's step (see the module docstring)."""
    import torch

    from advmix.mixing import mix
    from advmix.models import build_model

    n = max(1, round(args.batch * (1 - args.clean_ratio)))
    k, t = args.k, p.train
    G = G.to(device).eval().requires_grad_(False)
    model = build_model(t.model, 2, G.size, t.width).to(device).eval()
    w = torch.from_numpy(latents[: n * k]).to(device)
    y = torch.zeros(n, dtype=torch.long, device=device)

    def timed(fn) -> float:
        """The median of `repeats` timed calls after a warm-up: a hiccup of a shared machine moves it less than a mean."""
        fn()
        seconds = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        return float(np.median(seconds))

    def hard_mixes():
        with torch.no_grad():
            G.synthesis(w, noise_mode="const")

    def alpha_step():
        a = torch.ones(n, len(layers), device=device, requires_grad=True)
        x = G.synthesis(mix(w[:n], w[n: 2 * n] if k > 1 else w[:n], a, layers), noise_mode="const")
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(x.float()), y), a)

    def one_forward():
        with torch.no_grad():
            G.synthesis(w[:n], noise_mode="const")

    x0 = torch.zeros(n, 3, G.size, G.size, device=device)

    def pgd_step():
        x = x0.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), x)

    xk = torch.zeros(n * k, 3, G.size, G.size, device=device)

    def score_hard_mixes():
        with torch.no_grad():
            model(xk)

    def last_iterate():
        with torch.no_grad():
            model(G.synthesis(w[:n], noise_mode="const").float())

    return {"nominal": 0.0, "groupdro": 0.0,
            "advmix": timed(hard_mixes) + t.advmix.steps * timed(alpha_step),
            # what the AdvMix attack does beyond its floor (printed, not counted): the classifier's forward over the
            # n*K hard mixes, which picks the worst partner, and the forward that scores the last alpha iterate
            "advmix_beyond": timed(score_hard_mixes) + timed(last_iterate),
            "randmix": timed(one_forward),
            "linf": t.linf.steps * timed(pgd_step)}


if __name__ == "__main__":
    main()
