"""The generator's sample quality under other gan.* knobs, on the committed pool (docs/selection.md rule 6).

    python bench/gan_levers.py -S gan.r1_gamma=0.01 --json /tmp/r1.json

Trains one generator from scratch with params.yaml plus the -S overrides, on data/pool at the params' seed, as the
train-gan stage would, then prints the stage's quality figures: the probe Fréchet distance between
`gan.eval_samples` samples and as many pool images (real halves for scale), the mean total variation of the
attribute distributions, and the seconds per iteration. Needs `dvc repro probe` (the pool and the probe); reads no
labelled split. Writes nothing to the project: the training state lives in a temporary folder. Run candidates
alone, or side by side with ADVMIX_THREADS=1 each (docs/threads.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    from advmix.data.store import mirror_invariant
    from advmix.gan.training import GanConfig, quality_metrics, train_gan
    from advmix.inputs.data import pool
    from advmix.inputs.probe import probe as load_probe
    from advmix.params import load_params, parse_overrides
    from advmix.runtime import set_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-S", "--set", dest="sets", action="append", default=[], help="a params override, key=value")
    ap.add_argument("--json", type=Path, help="also write the row here")
    args = ap.parse_args(argv)

    p = load_params(overrides=parse_overrides(args.sets))
    threads = set_threads()
    images = pool()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run = train_gan(images.images, GanConfig(p.gan, p.seed, mirror_invariant(images.info)), Path(tmp) / "state.pt")
    seconds = time.time() - t0
    quality = quality_metrics(run.G_ema, load_probe(), images, p.gan.eval_samples, p.seed)
    row = {"overrides": args.sets, "iterations": p.gan.iterations, "seconds": round(seconds, 1),
           "s_per_iteration": round(seconds / p.gan.iterations, 3), "torch_threads": threads,
           "probe_frechet_distance": round(quality["probe_frechet_distance"], 1),
           "probe_frechet_distance_real_halves": round(quality["probe_frechet_distance_real_halves"], 1),
           "attribute_tv_mean": round(quality["attribute_tv_mean"], 4),
           "total_variation": {k: v["total_variation"] for k, v in quality["attributes"].items()}}
    print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(row, indent=1) + "\n")
    return row


if __name__ == "__main__":
    main()
