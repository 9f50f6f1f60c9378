"""Which W+ rows move a nuisance without changing the label, under each partner rule: swap row sets between the
committed default's inverted train faces and partners drawn anyway or with the same label, and read the mixes with
the probe (advmix/gan/layers.py's swap_scores).

    python bench/partner_rules.py                       # every attribute the probe reads, 2,048 faces
    python bench/partner_rules.py --sets 1-4 2-5 --faces 1024

In the default's train split only skin tone is correlated with the label; every other attribute (glasses, hair,
make-up) is independent of it, as it is in the pool, so this measures what `mixing.bank: pool` offers for them.
Reads data/, models/ and data/latents/ of the committed run (`dvc pull` or `dvc repro extract` first).
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    import torch

    from advmix.gan.layers import pick_partners, read, swap_scores
    from advmix.inputs.data import dataset
    from advmix.inputs.gan import generator, split_latents
    from advmix.inputs.probe import probe
    from advmix.params import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["1", "3", "1-2", "1-3", "2-4", "1-4", "2-5", "3-5", "1-5", "0-4"])
    ap.add_argument("--faces", type=int, default=2048)
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
    print(f"{len(ws)} inverted train faces; the probe agrees with their label on {(reading['label'] == labels).mean():.3f}")
    print("| partners | rows | label change | " + " | ".join(f"{h} transfer" for h in heads) + " |")
    print("|---" * (3 + len(heads)) + "|")
    for rule in ("any", "same_label"):
        partners = pick_partners(labels, rule, np.random.default_rng(p.seed + 1))
        for name in args.sets:
            lo, _, hi = name.partition("-")
            layers = list(range(int(lo), int(hi or lo) + 1))
            s = swap_scores(G, reader, ws, reading, partners, layers)
            print(f"| {rule} | {name} | {s['label_change']:.3f} | "
                  + " | ".join(f"{s[h + '_transfer']:.3f}" for h in heads) + " |", flush=True)


if __name__ == "__main__":
    main()
