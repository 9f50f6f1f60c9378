"""GAN training throughput on the current device (bf16 autocast + channels_last on CUDA).

    python bench/gan_speed.py --resolution 32 --iterations 50

Prints images/s for the default CPU-sized config; --wide adds a 4x wider one and --paper StyleGAN2's
config-f channels (channel_base 32768, at most 512, w_dim 512, 8 mapping layers). Each run
trains from scratch into a temporary state file; the first iterations include warm-up.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> list[dict]:
    import torch

    from advmix.gan.training import GanConfig, train_gan
    from advmix.params import GanParams
    from advmix.runtime import pick_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, nargs="+", default=[32])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--wide", action="store_true", help="also a 4x wider config (channel_base 4096, max 512)")
    ap.add_argument("--paper", action="store_true", help="also StyleGAN2 config-f channels")
    args = ap.parse_args(argv)

    configs = [("default", {})]
    if args.wide:
        configs.append(("wide", {"channel_base": 4096, "channel_max": 512, "style_dim": 512}))
    if args.paper:
        configs.append(("config-f", {"channel_base": 32768, "channel_max": 512, "style_dim": 512, "n_mlp": 8}))
    rows = []
    for res in args.resolution:
        data = np.random.default_rng(0).integers(0, 255, (512, res, res, 3), dtype=np.uint8)
        for name, extra in configs:
            p = GanParams(iterations=args.iterations, batch=args.batch, device=args.device, **extra)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.time()
                run = train_gan(data, GanConfig(p, 0, True), state_path=Path(tmp) / "state.pt")
                wall = time.time() - t0
            rows.append({"device": str(pick_device(args.device)), "resolution": res, "config": name,
                         "iterations": args.iterations, "images_per_s": round(run.images_per_s, 1),
                         "s_per_iteration": round(wall / args.iterations, 4)})
            print(rows[-1], flush=True)
    if torch.cuda.is_available():
        print("gpu:", torch.cuda.get_device_name(0), "bf16 autocast + channels_last")
    return rows


if __name__ == "__main__":
    main()
