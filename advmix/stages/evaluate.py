"""evaluate: one classifier's accuracy, group and fairness metrics, ECE, and semantic and pixel robustness.

Writes metrics/eval/<mode>-s<seed>.json and results/eval/<mode>-s<seed>/by_group.csv. The attacks draw from
`seed` (not the classifier's seed), so every classifier meets the same test images and partners.
"""

from __future__ import annotations

import time

from advmix.inputs.classifier import load_classifier
from advmix.inputs.data import dataset
from advmix.inputs.gan import mixing_inputs, partner_bank, split_latents
from advmix.metrics import EvalConfig, Evaluated, evaluate_classifier, write_result
from advmix.params import POOL


def run(p, mode: str, seed: int | None = None) -> Evaluated:
    from advmix import paths
    from advmix.runtime import pick_device

    seed = p.seed if seed is None else seed
    ds = dataset(p)
    model, payload = load_classifier(mode, seed, with_payload=True)
    device = pick_device(p.train.device, "train.device")
    G = latents = val_latents = val_partners = layers = None
    if paths.GENERATOR.is_file() and paths.latents_file("test_balanced").is_file():
        G, layers, latents = mixing_inputs(p, ds, "test_balanced")
        if paths.latents_file("val").is_file():
            val_latents = split_latents(ds, "val", G)
            if p.mixing.bank == POOL and p.evaluate.val_robust_images:  # the selection figure mixes as training
                val_partners = partner_bank(p, ds, G, val_latents)
    t0 = time.time()
    cfg = EvalConfig(p.evaluate, p.train, p.mixing.partners, p.seed)
    result, by_group = evaluate_classifier(model, ds, cfg, device, G=G, latents=latents, layers=layers,
                                           val_latents=val_latents, val_partners=val_partners)
    return write_result(cfg, ds, mode, seed, payload, result, by_group, device, t0)
