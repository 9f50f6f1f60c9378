"""What one replaced example costs AdvMix with a large generator beside a small classifier, against the default.

    python bench/mix_cost.py --device cpu

Per configuration, random networks (nothing is downloaded): the 32 px default (the CPU generator of params.yaml,
classifier at 32 px) and StyleGAN2 config-f at 256 px (FFHQ-256's channels: 512 up to 32 px, then 512, 256, 128;
w 512-d, 8 mapping layers) beside a 64 px classifier, the generator rendering at 64 px (Generator.render_at).
Each runs `advmix_attack` with the default K and S (train.advmix) on a tiny batch, after one warm-up call, and
prints seconds per replaced example, how many codes one generator pass takes (codes_per_pass), and, on CUDA, the
peak memory. Give the machine's `python bench/gan_speed.py --iterations 30 --device cpu` figure beside it.
"""

from __future__ import annotations

import argparse
import json
import time


def measure(size: int, classifier: int, gan: dict, batch: int, repeats: int, device) -> dict:
    import torch

    from advmix.attacks import AttackConfig, Batch, LatentBank, advmix_attack
    from advmix.gan.networks import Generator
    from advmix.mixing import codes_per_pass
    from advmix.models import build_model
    from advmix.params import Params

    p = Params()
    torch.manual_seed(0)
    G = Generator(size, **gan).to(device).eval().requires_grad_(False).render_at(classifier)
    model = build_model(p.train.model, 2, classifier, p.train.width).to(device).eval()
    with torch.no_grad():
        bank = G.make_ws(torch.randn(64, G.style_dim, device=device))
    labels = torch.arange(64) % 2
    x = torch.rand(batch, 3, classifier, classifier, device=device) * 2 - 1
    rows = torch.arange(batch)
    cfg = AttackConfig.from_params(p.train, "any", range(2, 6))  # the default K, S, step and residual
    one = Batch(x, labels[rows].to(device), bank[rows], rows)
    advmix_attack(model, one, LatentBank(bank, labels), G, cfg, torch.Generator().manual_seed(0))  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for r in range(repeats):
        advmix_attack(model, one, LatentBank(bank, labels), G, cfg, torch.Generator().manual_seed(r + 1))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / (repeats * batch)
    out = {"generator_px": size, "classifier_px": classifier, "k": cfg.k, "steps": cfg.steps, "batch": batch,
           "codes_per_pass": codes_per_pass(G), "seconds_per_replaced_example": round(seconds, 4),
           "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    from advmix.params import Params
    from advmix.runtime import pick_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4, help="replaced examples per attack call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    g = Params().gan
    default = {"style_dim": g.style_dim, "n_mlp": g.n_mlp, "channel_base": g.channel_base, "channel_max": g.channel_max}
    ffhq256 = {"style_dim": 512, "n_mlp": 8, "channel_base": 32768, "channel_max": 512}
    rows = [measure(32, 32, default, args.batch, args.repeats, device),
            measure(256, 64, ffhq256, args.batch, args.repeats, device)]
    for row in rows:
        print(json.dumps(row))
    print(f"256 px generator / 32 px default: {rows[1]['seconds_per_replaced_example'] / rows[0]['seconds_per_replaced_example']:.0f}x "
          "per replaced example")
    return rows


if __name__ == "__main__":
    main()
