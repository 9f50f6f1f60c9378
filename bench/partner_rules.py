"""Which W+ rows move a nuisance without changing the label, under each partner rule: swap row sets between the
committed default's inverted train faces and partners drawn anyway or with the same label, and read the mixes with
the probe (advmix/gan/layers.py's swap_scores).

    python bench/partner_rules.py                       # every attribute the probe reads, 2,048 faces
    python bench/partner_rules.py --sets 1-4 2-5 --faces 1024
    python bench/partner_rules.py --sets 0-1 0,1,3,5 0,1,3 1,3,5 --as-trained

`--as-trained` also reads each mix as training builds it, G(w_mix) + (x - G(w_x)) (`train.residual`), and
without the residual, and judges both against the probe's reading of the real images: how much of the nuisance a
training mix moves on the real face, not in the generator's own image. `--footprint TAU ...` keeps the residual
only where the mix leaves the reconstruction G(w_x) alone (a partial residual).

In the default's train split only skin tone is correlated with the label; every other attribute (glasses, hair,
make-up) is independent of it, as it is in the pool, so this measures what `mixing.bank: pool` offers for them.
Reads data/, models/ and data/latents/ of the committed run (`dvc pull` or `dvc repro extract` first).
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    import torch

    from advmix.attacks import residuals
    from advmix.gan.layers import as_trained, change_scores, classes, pick_partners, read, swap_scores
    from advmix.inputs.data import dataset
    from advmix.inputs.gan import generator, split_latents
    from advmix.inputs.probe import probe
    from advmix.mixing import mix, synthesize
    from advmix.params import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["1", "3", "1-2", "1-3", "2-4", "1-4", "2-5", "3-5", "1-5", "0-4"])
    ap.add_argument("--faces", type=int, default=2048)
    ap.add_argument("--as-trained", action="store_true",
                    help="also read the mixes with and without the residual, against the real images' reading")
    ap.add_argument("--footprint", nargs="*", type=float, default=[], metavar="TAU",
                    help="also keep the residual only where the mix leaves G(w_x) alone (pixel change below TAU)")
    args = ap.parse_args()

    p = load_params()
    ds = dataset(p)
    G, _ = generator(ds)
    reader = probe()
    bank = split_latents(ds, "train", G)
    rows = np.random.default_rng(p.seed).permutation(len(bank))[: args.faces]
    ws, labels = torch.from_numpy(bank[rows]), ds.split("train").manifest["label"].to_numpy()[rows]
    reading = read(G, reader, ws)
    heads = [h for h in reading if h != "label"]
    if args.as_trained or args.footprint:
        images = ds.split("train").images[rows]
        real = classes(reader, images)
    if args.footprint:  # x - G(w_x) and G(w_x), the same for every row set and tau
        residual = residuals(G, images, ws)
        with torch.no_grad():
            own = synthesize(G, ws).float()

    def scores(out: dict) -> dict[str, float]:
        """as_trained's figures in swap_scores' keys."""
        return {"label_change": out["label_change"], **{f"{h}_transfer": v for h, v in out["transfers"].items()}}

    def footprint(partners: np.ndarray, layers: list[int], tau: float) -> dict[str, float]:
        """G(w_mix) + m * (x - G(w_x)), m = 1 - |G(w_mix) - G(w_x)| / tau clipped to [0, 1] (the channels' max): the
        residual kept only where the mix leaves the reconstruction alone."""
        with torch.no_grad():
            generated = synthesize(G, mix(ws, ws[partners], 1.0, layers)).float()
        keep = (1 - (generated - own).abs().amax(1, keepdim=True) / tau).clamp(0, 1)
        mixed = classes(reader, (generated + keep * residual).clamp(-1, 1))
        return {**change_scores(mixed, real, {h: v[partners] for h, v in real.items()}), "kept": float(keep.mean())}

    print(f"{len(ws)} inverted train faces; the probe agrees with their label on {(reading['label'] == labels).mean():.3f}")
    if args.as_trained or args.footprint:
        print("the probe on the real faces agrees with its reading of their inversions: "
              + ", ".join(f"{h} {(real[h] == reading[h]).mean():.3f}" for h in reading))
    print("| partners | rows | read | label change | " + " | ".join(f"{h} transfer" for h in heads) + " |")
    print("|---" * (4 + len(heads)) + "|")
    for rule in ("any", "same_label"):
        partners = pick_partners(labels, rule, np.random.default_rng(p.seed + 1))
        for name in args.sets:
            if "," in name:
                layers = [int(i) for i in name.split(",")]
            else:
                lo, _, hi = name.partition("-")
                layers = list(range(int(lo), int(hi or lo) + 1))
            rows_out = {"generated": swap_scores(G, reader, ws, reading, partners, layers)}
            if args.as_trained:
                both = as_trained(G, reader, ws, images, labels, heads[0], layers, rule, p.seed + 1)
                rows_out["real + residual"] = scores(both[True])
                rows_out["real, no residual"] = scores(both[False])
            for tau in args.footprint:
                out = footprint(partners, layers, tau)
                rows_out[f"real + residual off the mix's footprint (tau {tau}, {out['kept']:.0%} kept)"] = out
            for how, s in rows_out.items():
                print(f"| {rule} | {name} | {how} | {s['label_change']:.3f} | "
                      + " | ".join(f"{s[h + '_transfer']:.3f}" for h in heads) + " |", flush=True)


if __name__ == "__main__":
    main()
